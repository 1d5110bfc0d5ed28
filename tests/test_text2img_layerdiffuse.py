"""The plain text-to-image pipeline with LayerDiffuse's files: its SDXL attention patches
merged into the UNet and its transparent decoder turning the images into RGBA (files
written by the test on a tiny SDXL-shaped folder whose VAE downsamples by 8)."""

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file
from test_text2img import random_init, write_tiny_sd

from dreamlayer_jax.codecs.latent import LatentCodec
from dreamlayer_jax.codecs.layerdiffuse import LayerDiffuseTransparency
from dreamlayer_jax.codecs.transparency import TransparencyDecoder, TransparencyDecoderConfig
from dreamlayer_jax.errors import ConfigError, InputError
from dreamlayer_jax.models.transparent_vae import TransparentVAEDecoder, UNet1024Config
from dreamlayer_jax.models.vae import AutoencoderKL, VAEConfig
from dreamlayer_jax.pipeline.text2img import StableDiffusionPipeline, decode_images

DECODER = UNet1024Config(block_out_channels=(8,) * 4, layers_per_block=1,
                         down_block_types=("DownBlock2D",) * 3 + ("AttnDownBlock2D",),
                         up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * 3)
CONSTANT = np.array([0.25, 0.2, 0.4, 0.8], np.float32)  # [alpha, R, G, B]: no x.5 in uint8
TO_Q = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q"  # down_blocks.0


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny SDXL folder with an 8x VAE, LayerDiffuse-style patch files for it, a random
    decoder and a decoder whose output is `CONSTANT` everywhere."""
    root = tmp_path_factory.mktemp("ld_t2i")
    folder = write_tiny_sd(root / "sdxl", sdxl=True)
    vae = VAEConfig(block_out_channels=(8,) * 4, norm_num_groups=4, layers_per_block=1,
                    down_block_types=("DownEncoderBlock2D",) * 4,
                    up_block_types=("UpDecoderBlock2D",) * 4)
    random_init(lambda: AutoencoderKL(vae, rngs=nnx.Rngs(0)), 5).save_pretrained(folder / "vae")
    rng = np.random.default_rng(0)
    lora = {f"{TO_Q}::lora::0": rng.normal(0, 0.1, (16, 4)).astype(np.float16),
            f"{TO_Q}::lora::1": rng.normal(0, 0.1, (4, 16)).astype(np.float16)}
    diff = {"diffusion_model.input_blocks.0.0.weight::diff::0":
            rng.normal(0, 0.1, (16, 4, 3, 3)).astype(np.float16)}
    save_file(lora, str(root / "layer_xl_transparent_attn.safetensors"))
    save_file(diff, str(root / "layer_xl_transparent_conv.safetensors"))
    decoder = random_init(lambda: TransparentVAEDecoder(DECODER, rngs=nnx.Rngs(0)), 6)
    decoder.save_pretrained(root / "decoder")
    decoder.conv_out.kernel[...] = decoder.conv_out.kernel[...] * 0
    decoder.conv_out.bias[...] = decoder.conv_out.bias[...] * 0 + CONSTANT
    decoder.save_pretrained(root / "constant")
    return {"folder": folder, "root": root, "lora": lora, "diff": diff,
            "patches": [root / "layer_xl_transparent_attn.safetensors",
                        root / "layer_xl_transparent_conv.safetensors"]}


def test_sdxl_with_the_patches_and_the_decoder_generates_rgba(files):
    plain = StableDiffusionPipeline.from_pretrained(files["folder"])
    pipe = StableDiffusionPipeline.from_pretrained(
        files["folder"], transparency=files["root"] / "constant", unet_patches=files["patches"])
    assert isinstance(pipe.transparency, LayerDiffuseTransparency)
    # the patches merged: conv_in += diff, to_q += up @ down (nnx layout)
    delta = files["diff"]["diffusion_model.input_blocks.0.0.weight::diff::0"].astype(np.float32)
    np.testing.assert_allclose(np.asarray(pipe.unet.conv_in.kernel[...]),
                               np.asarray(plain.unet.conv_in.kernel[...])
                               + delta.transpose(2, 3, 1, 0), atol=1e-6)
    up, down = (files["lora"][f"{TO_Q}::lora::{i}"].astype(np.float32) for i in (0, 1))
    to_q = lambda p: np.asarray(  # noqa: E731
        p.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.kernel[...])
    np.testing.assert_allclose(to_q(pipe), to_q(plain) + (up @ down).T, atol=1e-6)

    images = pipe(["a red cat", "a blue dog"], num_inference_steps=2, height=16, width=16)
    assert images.shape == (2, 16, 16, 4) and images.dtype == np.uint8
    expected = np.round(np.array([*CONSTANT[1:], CONSTANT[0]]) * 255)  # RGBA, alpha last
    np.testing.assert_array_equal(images, np.broadcast_to(expected, images.shape))
    with pytest.raises(InputError, match="multiple of 8"):
        pipe(["a red cat"], num_inference_steps=2, height=12, width=16)


def test_decoding_follows_the_codecs_layerdiffuse_conventions(files):
    """The pipeline's decode is `LatentCodec`'s in mode "layerdiffuse" (VAE RGB in [0, 1]
    and the unscaled latent into the decoder), in uint8."""
    pipe = StableDiffusionPipeline.from_pretrained(files["folder"],
                                                   transparency=files["root"] / "decoder")
    latents = np.random.default_rng(1).normal(size=(2, 2, 2, 4)).astype(np.float32)
    images = np.asarray(nnx.jit(decode_images)(pipe.vae, pipe.transparency, latents))
    rgba = np.asarray(nnx.jit(lambda v, t, z: LatentCodec(v, t).decode(z))(
        pipe.vae, pipe.transparency, latents))
    assert images.shape == (2, 16, 16, 4) and len(np.unique(images[..., 3])) > 1
    assert np.abs(images.astype(int) - np.round(rgba * 255)).max() <= 1


def test_the_projects_own_decoder_is_refused_by_the_plain_pipeline(files, tmp_path):
    own = tmp_path / "own"
    config = TransparencyDecoderConfig(hidden_channels=8, norm_num_groups=4)
    random_init(lambda: TransparencyDecoder(config, rngs=nnx.Rngs(0)), 0).save_pretrained(own)
    with pytest.raises(ConfigError, match="LayerDiffuse's"):
        StableDiffusionPipeline.from_pretrained(files["folder"], transparency=own)


def test_dreamlayer_pipeline_takes_the_same_files(files):
    """DreamLayer's pipeline on the same SDXL folder: the patches merge into its base UNet
    as in the plain pipeline, and its codec decodes through LayerDiffuse's decoder."""
    from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline

    plain = StableDiffusionPipeline.from_pretrained(files["folder"],
                                                    unet_patches=files["patches"])
    pipe = DreamLayerPipeline.from_pretrained(
        files["folder"], transparency=files["root"] / "constant", unet_patches=files["patches"])
    assert pipe.codec.transparency_mode == "layerdiffuse"
    np.testing.assert_array_equal(np.asarray(pipe.unet.unet.conv_in.kernel[...]),
                                  np.asarray(plain.unet.conv_in.kernel[...]))
