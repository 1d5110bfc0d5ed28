"""DreamLayer on an SDXL-style base model: two text encoders, pooled text and size ids.

One small random SDXL-style DreamLayer folder per module (pixel codec, 16x16 RGBA
unshuffled to 8x8x16 latents): every layer gets its own prompt's pooled embedding and
the canvas's `time_ids`; the unconditional branch is zeros (`force_zeros_for_empty_prompt`).
A plain diffusers-layout SDXL folder (VAE codec) is fine-tuned with LoRA end to end.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_model import SMALL_UNET, TINY_SCHEDULER, TINY_TEXT, WORDS, small_train_fields

from dreamlayer_jax.errors import ConfigError
from dreamlayer_jax.parallel.mesh import make_mesh
from dreamlayer_jax.pipeline.create import create_model_folder
from dreamlayer_jax.pipeline.decompose import decompose
from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline
from dreamlayer_jax.pipeline.scene import Layer, Scene
from dreamlayer_jax.training.checkpoint import Checkpointer
from dreamlayer_jax.training.config import TrainConfig

POOLED, TIME_DIM = 8, 4
SDXL_UNET = {**SMALL_UNET, "cross_attention_dim": 32, "addition_embed_type": "text_time",
             "addition_time_embed_dim": TIME_DIM,
             "projection_class_embeddings_input_dim": POOLED + 6 * TIME_DIM}
DREAMLAYER = {"max_layers": 4, "codec": "pixel", "pixel_unshuffle": 2, "resolution": 16,
              "box_margin": 0.0}
SCENE = Scene("a red circle in front of a blue wall", "a blue wall",
              (Layer("a red circle", (0.1, 0.2, 0.6, 0.7)),))


@pytest.fixture(scope="module")
def sdxl_model(tmp_path_factory):
    return create_model_folder(
        tmp_path_factory.mktemp("sdxl") / "model", unet=SDXL_UNET, text_encoder=TINY_TEXT,
        text_encoder_2={**TINY_TEXT, "projection_dim": POOLED}, words=WORDS,
        dreamlayer=DREAMLAYER, scheduler=TINY_SCHEDULER)


@pytest.fixture(scope="module")
def sdxl_pipe(sdxl_model):
    return DreamLayerPipeline.from_pretrained(sdxl_model)


def test_every_layer_gets_its_prompts_pooled_text_and_the_canvas_size(sdxl_pipe):
    assert sdxl_pipe.conditioner.is_sdxl
    ctx, uncond = sdxl_pipe.layer_context([SCENE])
    prompts = SCENE.prompts  # background, foreground, global: 3 slots, all valid
    hidden, pooled = sdxl_pipe.conditioner.encode(prompts)
    assert ctx.text.shape == (1, 3, *hidden.shape[1:]) and hidden.shape[-1] == 2 * 16
    np.testing.assert_allclose(ctx.added["text_embeds"][0], pooled, atol=1e-6)
    np.testing.assert_allclose(ctx.text[0], hidden, atol=1e-6)
    np.testing.assert_array_equal(ctx.added["time_ids"][0],
                                  np.tile([16, 16, 0, 0, 16, 16], (3, 1)))
    # unconditional branch: empty prompts are zeros (SDXL's force_zeros_for_empty_prompt)
    assert not np.any(np.asarray(uncond.text)) and not np.any(
        np.asarray(uncond.added["text_embeds"]))
    np.testing.assert_array_equal(uncond.added["time_ids"], ctx.added["time_ids"])


def test_layer_unet_feeds_each_layer_its_added_conditioning(sdxl_pipe):
    """With CACA/LSSA off and the zero role embedding, every layer's prediction is the base
    SDXL UNet's on that layer's own prompt, pooled text and size ids."""
    ctx, _ = sdxl_pipe.layer_context([SCENE], caca=False, lssa=False)
    x = jax.random.normal(jax.random.key(0), (1, 3, 8, 8, 16))
    t = jnp.int32(500)
    layered = sdxl_pipe.unet(x, t, ctx)[0]
    base = sdxl_pipe.unet.unet(x[0], jnp.full((3,), t), ctx.text[0],
                               {k: v[0] for k, v in ctx.added.items()})
    np.testing.assert_allclose(layered, base, atol=1e-5)
    other = ctx.replace(added={**ctx.added, "text_embeds": ctx.added["text_embeds"][:, ::-1]})
    assert not np.allclose(sdxl_pipe.unet(x, t, other)[0], layered, atol=1e-4)


def test_sdxl_style_model_samples_layers(sdxl_pipe):
    result = sdxl_pipe(SCENE, num_inference_steps=2, seed=0)
    assert result.background.shape == (16, 16, 3) and len(result.layers) == 1
    assert result.layers[0].shape == (16, 16, 4) and result.composite.shape == (16, 16, 3)


def test_sdxl_style_model_decomposes_a_picture(sdxl_pipe):
    picture = np.zeros((16, 16, 3), np.uint8)
    picture[..., 2] = 200
    picture[4:11, 2:10] = (220, 30, 30)
    result = decompose(sdxl_pipe, picture, [Layer("a red circle", (0.1, 0.2, 0.6, 0.7))],
                                 "a blue wall", num_inference_steps=2, seed=0)
    assert result.background.shape == (16, 16, 3) and result.layers[0].shape == (16, 16, 4)


def test_added_conditioning_without_a_second_encoder_is_refused(tmp_path):
    from dreamlayer_jax.training.loop import Trainer

    model = create_model_folder(
        tmp_path / "mismatch", unet={**SDXL_UNET, "cross_attention_dim": 16},
        text_encoder=TINY_TEXT, words=WORDS, dreamlayer=DREAMLAYER, scheduler=TINY_SCHEDULER)
    with pytest.raises(ConfigError, match="addition_embed_type='text_time' does not match"):
        Trainer(TrainConfig(**small_train_fields(model)), tmp_path / "run")


def test_a_plain_sdxl_folder_loads_at_its_native_resolution_with_lora_overrides(tmp_path):
    from test_text2img import write_tiny_sd

    folder = write_tiny_sd(tmp_path / "plain", sdxl=True)  # diffusers layout, no dreamlayer/
    pipe = DreamLayerPipeline.from_pretrained(folder, dreamlayer={"lora_rank": 2,
                                                                  "max_layers": 4})
    config = pipe.config
    assert (config.resolution, config.lora_rank, config.max_layers) == (16, 2, 4)
    assert config.codec == "latent" and pipe.conditioner.is_sdxl
    assert pipe.latent_shape() == (8, 8, 4)
    with pytest.raises(ConfigError, match="max_layers=2 must be >= 3"):
        DreamLayerPipeline.from_pretrained(folder, dreamlayer={"max_layers": 2})


@pytest.mark.filterwarnings("ignore:prompt truncated")  # the toy tokenizer spells unknown words
def test_lora_fine_tuning_of_a_plain_sdxl_folder_samples_restores_and_exports(tmp_path):
    """The SDXL fine-tuning path end to end: a diffusers-layout SDXL folder (VAE codec),
    LoRA added by the config, both encoders in the step, half the prompts dropped (zeros),
    eval scenes sampled, a checkpoint restored, the export reloaded and sampled."""
    from test_text2img import write_tiny_sd

    from dreamlayer_jax.pipeline.components import is_dreamlayer_param
    from dreamlayer_jax.training.loop import Trainer

    folder = write_tiny_sd(tmp_path / "plain", sdxl=True)
    cfg = TrainConfig(**small_train_fields(
        folder, num_steps=2, checkpoint_every=2, train_params="dreamlayer",
        dreamlayer={"lora_rank": 2, "max_layers": 4}, prompt_dropout=0.5, sample_every=2,
        eval_scenes=2, sample_steps=2))
    trainer = Trainer(cfg, tmp_path / "run", mesh=make_mesh(1, 1, 1, devices=jax.devices()[:1]))
    assert len(trainer.text_params) == 2
    history = trainer.run()
    assert [s for s, _ in history] == [1, 2] and all(np.isfinite(l) for _, l in history)
    assert list((tmp_path / "run" / "samples").glob("*.png"))  # eval grid sampled at step 2
    # the checkpoint (EMA over the adapters only) restores as saved
    state, _, step = trainer.restore(Checkpointer(tmp_path / "run", keep=1))
    assert step == 2
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.ema),
                 jax.device_get(trainer.state.ema))
    exported = DreamLayerPipeline.from_pretrained(tmp_path / "run" / "export")
    assert exported.config.lora_rank == 2 and exported.conditioner.is_sdxl
    assert exported.conditioner.force_zeros_for_empty_prompt
    result = exported(SCENE, num_inference_steps=2, seed=0)
    assert np.isfinite(result.layers[0]).all()
    base = DreamLayerPipeline.from_pretrained(folder, dreamlayer={"lora_rank": 2})
    new, old = (jax.tree_util.tree_leaves_with_path(nnx_params(p.unet))
                for p in (exported, base))
    trained = []
    for (path, a), (_, b) in zip(new, old, strict=True):
        keys = tuple(str(getattr(k, "key", k)) for k in path)
        if is_dreamlayer_param(keys):
            trained.append(not np.array_equal(a, b))
        else:  # the frozen SDXL weights are exported unchanged
            np.testing.assert_array_equal(a, b, err_msg=str(keys))
    assert len(trained) > 1 and any(trained)


def nnx_params(module):
    from flax import nnx

    return nnx.to_pure_dict(nnx.state(module, nnx.Param))


def test_paper_variant_global_layer_reads_the_concatenated_prompt_with_both_encoders(
        sdxl_model):
    pipe = DreamLayerPipeline.from_pretrained(
        sdxl_model, dreamlayer={"variant": "paper", "context_width": 16, "context_heads": 2,
                                "context_layers": 1})
    assert pipe.config.variant == "paper"
    scene = Scene("", "a blue wall", (Layer("a red circle"),))
    ctx, uncond = pipe.layer_context([scene])
    # the word tokenizers give the joined prompt exactly the concatenated tokens
    hidden, pooled = pipe.conditioner.encode(["a blue wall a red circle"])
    np.testing.assert_allclose(ctx.text[0, -1], hidden[0], atol=1e-5)
    np.testing.assert_allclose(ctx.added["text_embeds"][0, -1], pooled[0], atol=1e-5)
    owner = np.asarray(ctx.token_owner[0])
    assert owner.tolist()[:9] == [-1, 0, 0, 0, 1, 1, 1, -1, -1]
    assert (np.asarray(uncond.token_owner) == -1).all()
    result = pipe(scene, num_inference_steps=2, seed=0)
    assert len(result.layers) == 1 and result.layers[0].shape == (16, 16, 4)
