"""`training.vae`: a small AutoencoderKL trained on synthetic layers flattened on grey,
exported in diffusers layout, and the latent-codec model folder built around it."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_model import TINY_SCHEDULER, TINY_TEXT, TINY_UNET, WORDS

from dreamlayer_jax.data.synthetic import SyntheticSceneGenerator
from dreamlayer_jax.errors import ConfigError
from dreamlayer_jax.models.vae import AutoencoderKL
from dreamlayer_jax.pipeline.create import create_model_folder
from dreamlayer_jax.training.vae import flattened_layers, image_pool, to_signed, train_vae

# 16 px -> 2 x 2 x 4: downscale 8, which LayerDiffuse's transparent decoder needs
TINY_VAE = {"block_out_channels": [8, 8, 8, 8], "norm_num_groups": 4}
TINY_DECODER = {"block_out_channels": [8, 8, 8, 8], "layers_per_block": 1,
                "down_block_types": ["DownBlock2D"] * 3 + ["AttnDownBlock2D"],
                "up_block_types": ["AttnUpBlock2D"] + ["UpBlock2D"] * 3,
                "attention_head_dim": 4, "norm_num_groups": 4}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("vae") / "vae"
    record = train_vae(out, config=TINY_VAE, resolution=16, steps=40, batch=8,
                       learning_rate=3e-3, scenes=16, held_out=4, log_every=10, log=None)
    return out, record


def test_flattened_layers_put_foregrounds_on_grey():
    scene = SyntheticSceneGenerator(resolution=16).sample(3)
    images = flattened_layers(scene)
    assert images.shape == (len(scene.layers) + 2, 16, 16, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[0], scene.background)
    np.testing.assert_array_equal(images[-1], scene.composite)
    clear = scene.layers[0][..., 3] == 0
    assert clear.any() and np.all(np.abs(images[1][clear].astype(int) - 128) <= 1)
    opaque = scene.layers[0][..., 3] == 255
    np.testing.assert_array_equal(images[1][opaque], scene.layers[0][..., :3][opaque])


def test_training_lowers_the_loss_and_the_export_loads_back(trained):
    out, record = trained
    first, last = record["history"][0], record["history"][-1]
    assert last["l1"] < 0.7 * first["l1"], record["history"]
    assert record["held_out_psnr_db"] > record["held_out_psnr_db_at_init"]
    config = json.loads((out / "config.json").read_text())
    assert config["_class_name"] == "AutoencoderKL"
    assert config["scaling_factor"] == pytest.approx(1.0 / record["latent_std"])
    assert (out / "diffusion_pytorch_model.safetensors").is_file()

    vae = AutoencoderKL.from_pretrained(out)
    x = to_signed(image_pool(2, 16, seed=99))
    z = vae.encode(x).mode()
    assert z.shape == (len(x), 2, 2, 4)
    recon = vae.decode(z)
    assert recon.shape == x.shape
    # the round trip is closer to the picture than a flat grey picture is
    assert float(jnp.mean(jnp.abs(recon - x))) < float(jnp.mean(jnp.abs(x)))


def test_latent_model_folder_with_the_vae_and_a_transparent_decoder(trained, tmp_path):
    from dreamlayer_jax.codecs.latent import LatentCodec
    from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline

    vae_folder, _ = trained
    folder = create_model_folder(
        tmp_path / "model", unet={**TINY_UNET, "sample_size": 2}, text_encoder=TINY_TEXT,
        words=WORDS, dreamlayer={"max_layers": 4, "codec": "latent", "resolution": 16},
        scheduler=TINY_SCHEDULER, vae=vae_folder, transparency=TINY_DECODER)
    assert (folder / "vae" / "config.json").read_bytes() == \
        (vae_folder / "config.json").read_bytes()
    assert not (folder / "vae" / "train_vae.json").exists()
    codec = DreamLayerPipeline.from_pretrained(folder).codec
    assert isinstance(codec, LatentCodec) and codec.transparency_mode == "layerdiffuse"
    rgba = jax.random.uniform(jax.random.key(0), (2, 16, 16, 4))
    latents = codec.encode(rgba)
    assert latents.shape == (2, 2, 2, 4)
    decoded = codec.decode(latents)
    assert decoded.shape == (2, 16, 16, 4)
    assert bool(jnp.all((decoded >= 0) & (decoded <= 1)))


def test_pixel_codec_refuses_a_vae(trained, tmp_path):
    with pytest.raises(ConfigError, match="pixel codec"):
        create_model_folder(tmp_path / "m", unet=TINY_UNET, text_encoder=TINY_TEXT,
                            words=WORDS, dreamlayer={"codec": "pixel", "resolution": 8},
                            scheduler=TINY_SCHEDULER, vae=trained[0])
