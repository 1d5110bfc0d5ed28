"""StableDiffusionPipeline on tiny random SD 1.x-like and SDXL-like folders."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dreamlayer_jax.errors import InputError
from dreamlayer_jax.models.clip import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
from dreamlayer_jax.models.tokenizer import write_word_tokenizer
from dreamlayer_jax.models.unet import UNet2DConditionModel
from dreamlayer_jax.models.unet_config import UNetConfig
from dreamlayer_jax.models.vae import AutoencoderKL, VAEConfig
from dreamlayer_jax.pipeline.text2img import StableDiffusionPipeline
from dreamlayer_jax.schedulers.factory import save_scheduler, scheduler_from_config

WORDS = ["a", "red", "cat", "blue", "dog", "on", "sofa"]
SCHEDULER = {"_class_name": "PNDMScheduler", "num_train_timesteps": 1000,
             "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
             "set_alpha_to_one": False, "steps_offset": 1, "skip_prk_steps": True}
VAE = {"block_out_channels": [8, 16], "down_block_types": ["DownEncoderBlock2D"] * 2,
       "up_block_types": ["UpDecoderBlock2D"] * 2, "norm_num_groups": 4, "latent_channels": 4,
       "layers_per_block": 1, "sample_size": 16}
UNET = {"sample_size": 8, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "block_out_channels": [16, 32],
        "layers_per_block": 1, "attention_head_dim": 8, "norm_num_groups": 8}
TIME_DIM = 4


def random_init(build, seed: int):
    """`build()` with numpy-random weights: eager JAX initializers compile one XLA
    program per parameter shape, which costs minutes on a busy CPU."""
    graphdef, abstract = nnx.split(nnx.eval_shape(build))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = str(path[-2].key) if len(path) > 1 else ""
        if leaf.ndim >= 2:
            scale = 1 / np.sqrt(np.prod(leaf.shape[:-1]))
            return jnp.asarray(rng.normal(0, scale, leaf.shape), leaf.dtype)
        base = 1.0 if name == "scale" else 0.0
        return jnp.asarray(base + rng.normal(0, 0.02, leaf.shape), leaf.dtype)

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, abstract))


def _text_encoder(folder, cls, seed, **extra):
    tokenizer = folder / f"tokenizer{extra.pop('suffix', '')}"
    write_word_tokenizer(tokenizer, WORDS, 16)
    vocab = len(json.loads((tokenizer / "vocab.json").read_text()))
    config = CLIPTextConfig.from_dict({
        "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 2, "max_position_embeddings": 16, "vocab_size": vocab,
        "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1, **extra})
    return random_init(lambda: cls(config, rngs=nnx.Rngs(0)), seed)


def write_tiny_sd(folder, sdxl: bool = False):
    """A random 16x16-pixel SD folder (8x8 latents); SDXL-like with `sdxl`."""
    _text_encoder(folder, CLIPTextModel, 1).save_pretrained(folder / "text_encoder")
    unet = {**UNET, "cross_attention_dim": 16}
    if sdxl:
        pooled = 8
        _text_encoder(folder, CLIPTextModelWithProjection, 2, suffix="_2",
                      projection_dim=pooled).save_pretrained(folder / "text_encoder_2")
        unet.update(cross_attention_dim=32, addition_embed_type="text_time",
                    addition_time_embed_dim=TIME_DIM, use_linear_projection=True,
                    projection_class_embeddings_input_dim=6 * TIME_DIM + pooled)
        (folder / "model_index.json").write_text(json.dumps(
            {"_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": True}))
    random_init(lambda: UNet2DConditionModel(UNetConfig.from_dict(unet), rngs=nnx.Rngs(0)),
                3).save_pretrained(folder / "unet")
    random_init(lambda: AutoencoderKL(VAEConfig.from_dict(VAE), rngs=nnx.Rngs(0)),
                4).save_pretrained(folder / "vae")
    save_scheduler(scheduler_from_config(SCHEDULER, "ddim"), folder / "scheduler")
    return folder


@pytest.fixture(scope="module")
def sd_pipe(tmp_path_factory):
    return StableDiffusionPipeline.from_pretrained(write_tiny_sd(tmp_path_factory.mktemp("sd")))


@pytest.fixture(scope="module")
def sdxl_pipe(tmp_path_factory):
    folder = write_tiny_sd(tmp_path_factory.mktemp("sdxl"), sdxl=True)
    return StableDiffusionPipeline.from_pretrained(folder)


def test_sd_sample_shape_determinism_and_one_compilation(sd_pipe):
    prompts = ["a red cat", "a blue dog on a sofa"]
    # the jit cache is shared by every jitted copy of the function in this process (other
    # test files' pipelines may have filled it): count what this test adds
    before = sd_pipe.generate_fn._cache_size()
    first = sd_pipe(prompts, num_inference_steps=4, seed=1)
    assert first.shape == (2, 16, 16, 3) and first.dtype == np.uint8
    compiled = sd_pipe.generate_fn._cache_size()
    assert compiled - before <= 1
    again = sd_pipe(prompts, num_inference_steps=4, seed=1)
    np.testing.assert_array_equal(first, again)
    other = sd_pipe(prompts, num_inference_steps=4, seed=2, guidance_scale=3.0)
    assert not np.array_equal(first, other)
    assert sd_pipe.generate_fn._cache_size() == compiled  # new seed and guidance: no recompile
    assert not np.array_equal(first[0], first[1])  # each prompt its own image


def test_sd_scheduler_override_reads_the_folder_config(sd_pipe):
    assert sd_pipe.scheduler.kind == "ddim"
    assert sd_pipe.with_scheduler("euler").kind == "euler"


def test_sd_rejects_bad_arguments(sd_pipe):
    with pytest.raises(InputError):
        sd_pipe(["a cat"], height=15)
    with pytest.raises(InputError):
        sd_pipe(["a cat"], negative_prompt=["x", "y"])
    with pytest.raises(InputError):
        sd_pipe(["a cat"], num_inference_steps=0)


def test_sdxl_conditioning_concatenates_both_encoders(sdxl_pipe):
    conditioner = sdxl_pipe.conditioner
    assert conditioner.is_sdxl
    hidden, added = conditioner(["a cat", ""], (16, 24), zero_empty=True)
    assert hidden.shape == (2, 16, 32)
    assert added["text_embeds"].shape == (2, 8)
    np.testing.assert_array_equal(np.asarray(added["time_ids"][0]), [16, 24, 0, 0, 16, 24])
    assert np.all(np.asarray(hidden[1]) == 0) and np.all(np.asarray(added["text_embeds"][1]) == 0)
    assert np.any(np.asarray(hidden[0]) != 0)


def test_sdxl_sample_two_steps(sdxl_pipe):
    images = sdxl_pipe(["a red cat"], num_inference_steps=2, seed=0)
    assert images.shape == (1, 16, 16, 3) and images.dtype == np.uint8
    assert images.std() > 0


def test_sd_conditioning_has_no_added_cond_and_keeps_empty_prompts(sd_pipe):
    hidden, added = sd_pipe.conditioner(["a cat", ""], (16, 16), zero_empty=True)
    assert added is None and hidden.shape == (2, 16, 16)
    assert np.any(np.asarray(hidden[1]) != 0)  # SD 1.x encodes "" (no force_zeros flag)
