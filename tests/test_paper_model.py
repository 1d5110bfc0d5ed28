"""The paper variant's UNet: new parts start as the identity, context maps follow the
global prompt's token owners, the foreground K/V pair and the layer assign embedding act
on their own slots, the blend schedule, the layer-axis sharding, and the concatenated
global prompt."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dreamlayer_jax.attention.context import LayerContext, make_roles
from dreamlayer_jax.errors import InputError
from dreamlayer_jax.models.layer_unet import DreamLayerConfig, DreamLayerUNet
from dreamlayer_jax.pipeline.paper_prompts import concat_layer_tokens

B, L, T = 2, 4, 32
PAPER = DreamLayerConfig(variant="paper", max_layers=5, context_width=16, context_heads=2,
                         context_layers=1, box_margin=0.0)


@pytest.fixture(scope="module")
def paper_unet(tiny_pipe):
    return DreamLayerUNet(nnx.clone(tiny_pipe.unet.unet), PAPER, rngs=nnx.Rngs(3))


@pytest.fixture(scope="module")
def inputs(tiny_pipe):
    key = jax.random.key(0)
    h, w, c = tiny_pipe.latent_shape()
    latents = jax.random.normal(key, (B, L, h, w, c))
    text = jax.random.normal(jax.random.fold_in(key, 1), (B, L, T, 16))
    valid = jnp.array([[True, True, True, True], [True, True, False, True]])
    owner = np.full((B, T), -1)
    owner[:, 1:3], owner[:, 3:6], owner[:, 6:8] = 0, 1, 2  # bg, fg 1, fg 2 spans
    own = np.zeros((B, L, T), bool)
    own[:, :, 1:4] = True
    ctx = LayerContext(layer_valid=valid, roles=make_roles(valid),
                       boxes=jnp.tile(jnp.array([0.0, 0.0, 1.0, 1.0]), (B, L, 1)), text=text,
                       token_owner=jnp.asarray(owner), own_tokens=jnp.asarray(own),
                       box_margin=0.0)
    return latents, jnp.array([900, 300]), ctx


def _plain(ctx: LayerContext) -> LayerContext:
    return ctx.replace_switches(caca=False, lssa=False)


def test_paper_parts_start_as_the_identity(tiny_pipe, paper_unet, inputs):
    latents, t, ctx = inputs
    # CACA on (maps extracted from the same softmax) but no LSSA: plain SD per layer.
    out = paper_unet(latents, t, ctx.replace_switches(lssa=False))
    plain = tiny_pipe.unet(latents, t, _plain(ctx))
    np.testing.assert_allclose(np.asarray(out), np.asarray(plain), atol=1e-5)


def test_lssa_couples_the_layers_and_padded_layers_change_nothing(paper_unet, inputs):
    latents, t, ctx = inputs
    base = paper_unet(latents, t, ctx)
    moved = paper_unet(latents.at[:, 0].add(1.0), t, ctx)
    assert np.abs(np.asarray(moved[:, 1] - base[:, 1])).max() > 1e-4
    padded = paper_unet(latents.at[1, 2].set(5.0), t, ctx.replace(text=ctx.text.at[1, 2].add(3)))
    for layer in (0, 1, 3):
        np.testing.assert_allclose(np.asarray(padded[1, layer]), np.asarray(base[1, layer]),
                                   atol=1e-5)


def test_context_maps_follow_the_global_prompts_token_owners(paper_unet, inputs):
    latents, t, ctx = inputs
    _, aux = paper_unet(latents, t, ctx, return_aux=True)
    owner = np.asarray(ctx.token_owner)
    swapped = np.where(owner == 1, 2, np.where(owner == 2, 1, owner))
    _, aux_swapped = paper_unet(latents, t, ctx.replace(token_owner=jnp.asarray(swapped)),
                                return_aux=True)
    initial, again = np.asarray(aux["initial_maps"]), np.asarray(aux_swapped["initial_maps"])
    np.testing.assert_allclose(again[0, 1], initial[0, 2], atol=1e-6)
    np.testing.assert_allclose(again[0, 2], initial[0, 1], atol=1e-6)
    assert initial[0, 1].min() == pytest.approx(0.0) and initial[0, 1].max() == pytest.approx(1.0)
    for name in ("context_maps", "initial_maps", "own_maps"):  # zero off valid foregrounds
        maps = np.asarray(aux[name])
        assert not maps[:, 0].any() and not maps[:, -1].any() and not maps[1, 2].any()
    # the context-aware layers start as the identity (zero head)
    np.testing.assert_allclose(np.asarray(aux["context_maps"]), initial, atol=1e-6)


def test_a_foreground_without_tokens_in_the_global_prompt_has_no_map(paper_unet, inputs):
    latents, t, ctx = inputs
    model = nnx.clone(paper_unet)
    model.context_layers.head.bias[...] = jnp.ones_like(model.context_layers.head.bias[...])
    unnamed = ctx.replace(token_owner=jnp.where(ctx.token_owner == 2, -1, ctx.token_owner))
    _, aux = model(latents, t, unnamed, return_aux=True)
    maps = np.asarray(aux["context_maps"])
    assert not maps[:, 2].any() and maps[0, 1].min() > 0.5  # the head's bias moved fg 1


def test_foreground_kv_pair_and_assign_embedding_act_on_their_own_slots(paper_unet, inputs):
    latents, t, ctx = inputs
    base = np.asarray(paper_unet(latents, t, _plain(ctx)))
    model = nnx.clone(paper_unet)
    attn = model.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    attn.to_k_fg.kernel[...] = attn.to_k_fg.kernel[...] * 3.0
    fg_kv = np.asarray(model(latents, t, _plain(ctx)))
    np.testing.assert_allclose(fg_kv[:, [0, 3]], base[:, [0, 3]], atol=1e-6)
    assert np.abs(fg_kv[0, 1:3] - base[0, 1:3]).max() > 1e-4

    model = nnx.clone(paper_unet)
    model.layer_assign[...] = model.layer_assign[...].at[PAPER.max_layers - 1].set(1.0)
    assigned = np.asarray(model(latents, t, _plain(ctx)))
    np.testing.assert_allclose(assigned[:, :3], base[:, :3], atol=1e-6)
    assert np.abs(assigned[:, 3] - base[:, 3]).max() > 1e-4  # the global slot's embedding


def test_the_blend_acts_only_while_t_is_at_least_t_g(paper_unet, inputs):
    latents, _, ctx = inputs
    late = nnx.clone(paper_unet)
    late.config = dataclasses.replace(PAPER, blend_until=400.0)
    for t, same in ((jnp.array([900, 900]), True), (jnp.array([500, 500]), False)):
        a = np.asarray(paper_unet(latents, t, ctx))
        b = np.asarray(late(latents, t, ctx))
        assert np.allclose(a, b, atol=1e-6) == same


def test_too_many_layer_slots_are_refused(paper_unet, inputs):
    latents, t, ctx = inputs
    six = jnp.concatenate([latents, latents[:, :2]], axis=1)
    valid = jnp.ones((B, 6), bool)
    wide = ctx.replace(layer_valid=valid, roles=make_roles(valid),
                       boxes=jnp.concatenate([ctx.boxes, ctx.boxes[:, :2]], 1),
                       text=jnp.concatenate([ctx.text, ctx.text[:, :2]], 1),
                       own_tokens=jnp.concatenate([ctx.own_tokens, ctx.own_tokens[:, :2]], 1))
    with pytest.raises(InputError, match="at most 5"):
        paper_unet(six, t, wide)


@pytest.mark.parametrize("layer_axis", [2, 4])
def test_sharded_layer_axis_equals_one_device(paper_unet, inputs, layer_axis):
    if jax.device_count() < 8:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
    from dreamlayer_jax.parallel.mesh import layer_sharding, make_mesh

    latents, t, ctx = inputs
    mesh = make_mesh(data=2, fsdp=1, layer=layer_axis, devices=jax.devices()[: 2 * layer_axis])
    graphdef, params = nnx.split(paper_unet)

    def call(params, latents, t, ctx):
        return nnx.merge(graphdef, params)(latents, t, ctx)

    ref = jax.jit(call)(params, latents, t, ctx)
    on_mesh = ctx.replace(mesh=mesh)  # LSSA partitioned over the layer axis
    out = jax.jit(call)(params, jax.device_put(latents, layer_sharding(mesh, 5)), t,
                        jax.device_put(on_mesh, on_mesh.shardings(mesh)))
    scale = max(1.0, float(np.abs(ref).max()))
    assert np.abs(np.asarray(out) - np.asarray(ref)).max() <= 1e-5 * scale


def test_paper_sampling_sharded_over_the_layer_axis_equals_one_device(tiny_paper_model_dir):
    if jax.device_count() < 8:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
    from dreamlayer_jax.parallel.mesh import make_mesh
    from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline
    from dreamlayer_jax.pipeline.scene import Layer, Scene

    pipe = DreamLayerPipeline.from_pretrained(tiny_paper_model_dir)
    scenes = [Scene(background="a blue wall", layers=[Layer("a red star"),
                                                      Layer("a green ring")])] * 2
    mesh = make_mesh(data=2, fsdp=1, layer=2, devices=jax.devices()[:4])
    single = pipe(scenes, num_inference_steps=2, seed=[0, 1])
    sharded = pipe(scenes, num_inference_steps=2, seed=[0, 1], mesh=mesh)
    for a, b in zip(single, sharded):
        scale = max(1.0, float(np.abs(a.latents).max()))
        assert np.abs(a.latents - b.latents).max() <= 1e-5 * scale


def _reference_concat(ids, valid, eos, pad):
    """The global slot's ids built with Python lists."""
    out = []
    for b in range(ids.shape[0]):
        body, owner = [], []
        for slot in range(ids.shape[1] - 1):
            if not valid[b, slot]:
                continue
            row = list(ids[b, slot, 1:])
            n = row.index(eos) if eos in row else len(row)
            body += row[:n]
            owner += [slot] * n
        length = ids.shape[2]
        row = [ids[b, 0, 0], *body, eos] + [pad] * length
        own = [-1, *owner, -1] + [-1] * length
        if len(body) + 2 > length:
            row, own = row[: length - 1] + [eos], own[: length - 1] + [-1]
        out.append((row[:length], own[:length], len(body) + 2))
    return out


def test_concatenated_global_prompt_matches_a_python_reference():
    rng = np.random.default_rng(0)
    eos, pad, length = 1, 0, 12
    ids = np.full((6, 4, length), pad)
    ids[..., 0] = 49
    for b in range(6):
        for slot in range(4):
            n = rng.integers(0, 5)
            ids[b, slot, 1:n + 1] = rng.integers(2, 40, n)
            ids[b, slot, n + 1] = eos
    valid = rng.random((6, 4)) > 0.3
    valid[:, 0] = valid[:, -1] = True
    got = concat_layer_tokens(jnp.asarray(ids), jnp.asarray(valid), eos_id=eos, pad_id=pad)
    for b, (row, owner, total) in enumerate(_reference_concat(ids, valid, eos, pad)):
        np.testing.assert_array_equal(np.asarray(got.ids[b, -1]), row)
        np.testing.assert_array_equal(np.asarray(got.token_owner[b]), owner)
        assert int(got.lengths[b]) == total
        np.testing.assert_array_equal(np.asarray(got.ids[b, :-1]), ids[b, :-1])
