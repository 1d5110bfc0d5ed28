"""The layer-axis UNet: independence without CACA/LSSA, padding, LoRA, and sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dreamlayer_jax.attention.context import LayerContext, make_roles
from dreamlayer_jax.models.layer_unet import DreamLayerConfig, DreamLayerUNet
from dreamlayer_jax.pipeline.scene import FULL_BOX, Layer, Scene

B, L = 2, 4


@pytest.fixture(scope="module")
def inputs(tiny_pipe):
    key = jax.random.key(0)
    h, w, c = tiny_pipe.latent_shape()
    latents = jax.random.normal(key, (B, L, h, w, c))
    text = jax.random.normal(jax.random.fold_in(key, 1), (B, L, 32, 16))
    valid = jnp.array([[True, True, True, True], [True, True, False, True]])
    boxes = jnp.tile(jnp.array([0.0, 0.0, 1.0, 1.0]), (B, L, 1))
    boxes = boxes.at[:, 1].set(jnp.array([0.0, 0.0, 0.5, 0.5]))
    boxes = boxes.at[:, 2].set(jnp.array([0.5, 0.25, 1.0, 1.0]))
    ctx = LayerContext(layer_valid=valid, roles=make_roles(valid), boxes=boxes, text=text,
                       box_margin=0.0)
    t = jnp.array([10, 500])
    return latents, t, ctx


def test_without_caca_and_lssa_each_layer_is_the_plain_unet_on_that_layer(tiny_pipe, inputs):
    latents, t, ctx = inputs
    model = tiny_pipe.unet
    out = model(latents, t, ctx.replace_switches(caca=False, lssa=False))
    for layer in range(L):
        plain = model.unet(latents[:, layer], t, ctx.text[:, layer])
        np.testing.assert_allclose(np.asarray(out[:, layer]), np.asarray(plain), atol=1e-5)


def test_padded_layers_change_no_valid_layer(tiny_pipe, inputs):
    latents, t, ctx = inputs
    model = tiny_pipe.unet
    base = model(latents, t, ctx)
    changed = model(latents.at[1, 2].set(7.0), t, ctx.replace(text=ctx.text.at[1, 2].set(3.0)))
    for layer in (0, 1, 3):
        np.testing.assert_allclose(np.asarray(changed[1, layer]), np.asarray(base[1, layer]),
                                   atol=1e-6)
    assert np.abs(np.asarray(changed[1, 2] - base[1, 2])).max() > 1e-3


def test_layer_attention_couples_layers_and_role_embedding_starts_at_zero(tiny_pipe, inputs):
    latents, t, ctx = inputs
    model = tiny_pipe.unet
    base = model(latents, t, ctx)
    moved_global = model(latents.at[:, -1].add(1.0), t, ctx)
    assert np.abs(np.asarray(moved_global[:, 1] - base[:, 1])).max() > 1e-4
    np.testing.assert_array_equal(np.asarray(model.role_embedding.embedding[...]), 0.0)


def test_lora_starts_as_the_identity_and_trains_its_own_parameters(tiny_pipe, inputs):
    latents, t, ctx = inputs
    base_unet = tiny_pipe.unet.unet
    lora_model = DreamLayerUNet(nnx.clone(base_unet), DreamLayerConfig(lora_rank=2),
                                rngs=nnx.Rngs(1))
    np.testing.assert_allclose(np.asarray(lora_model(latents, t, ctx)),
                               np.asarray(tiny_pipe.unet(latents, t, ctx)), atol=1e-5)
    names = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(lora_model))}
    assert any(n.endswith("to_q/lora_up/kernel") for n in names)


def test_sharded_over_data_and_layer_equals_one_device(tiny_pipe, inputs):
    if jax.device_count() < 8:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
    from dreamlayer_jax.parallel.mesh import layer_sharding, make_mesh

    latents, t, ctx = inputs
    mesh = make_mesh(data=2, fsdp=1, layer=4)
    graphdef, params = nnx.split(tiny_pipe.unet)

    @jax.jit
    def call(params, latents, t, ctx):
        return nnx.merge(graphdef, params)(latents, t, ctx)

    ref = call(params, latents, t, ctx)
    put = lambda a: jax.device_put(a, layer_sharding(mesh, a.ndim))  # noqa: E731
    out = call(params, put(latents), t, jax.tree.map(put, ctx))
    assert out.sharding.spec[1] == "layer"
    scale = max(1.0, float(np.abs(ref).max()))
    assert np.abs(np.asarray(out) - np.asarray(ref)).max() <= 1e-5 * scale

    scenes = [Scene("a red star in front of a blue wall", "a blue wall",
                    [Layer("a red star", (0.1, 0.1, 0.6, 0.6)),
                     Layer("a blue ring", FULL_BOX)])] * 2
    single = tiny_pipe(scenes, num_inference_steps=3, seed=[0, 1])
    sharded = tiny_pipe(scenes, num_inference_steps=3, seed=[0, 1], mesh=mesh)
    for a, b in zip(single, sharded):
        scale = max(1.0, float(np.abs(a.latents).max()))
        assert np.abs(a.latents - b.latents).max() <= 1e-5 * scale
