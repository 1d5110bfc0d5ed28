"""Codecs: PixelCodec round trips and exact compositing, LatentCodec loading and shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dreamlayer_jax.codecs.latent import LatentCodec
from dreamlayer_jax.codecs.pixel import PixelCodec, pixel_shuffle, pixel_unshuffle
from dreamlayer_jax.codecs.transparency import TransparencyDecoder, TransparencyDecoderConfig
from dreamlayer_jax.data.compositing import alpha_composite_float
from dreamlayer_jax.models.layer_unet import DreamLayerConfig
from dreamlayer_jax.models.vae import AutoencoderKL, VAEConfig
from dreamlayer_jax.pipeline.components import load_codec


def random_rgba(key, n=2, size=8):
    rgba = jax.random.uniform(key, (n, size, size, 4))
    return rgba.at[..., 3].set(jnp.where(rgba[..., 3] > 0.3, rgba[..., 3], 0.0))


@pytest.mark.parametrize("factor", [1, 2])
def test_pixel_codec_round_trips_visible_pixels(factor):
    codec = PixelCodec(factor)
    rgba = random_rgba(jax.random.key(0))
    z = codec.encode(rgba)
    assert z.shape == (2, 8 // factor, 8 // factor, 4 * factor**2)
    back = np.asarray(codec.decode(z))
    alpha = np.asarray(rgba[..., 3])
    np.testing.assert_allclose(back[..., 3], alpha, atol=1e-6)
    visible = alpha > 0.3
    np.testing.assert_allclose(back[..., :3][visible], np.asarray(rgba[..., :3])[visible],
                               atol=1e-5)


def test_pixel_unshuffle_is_inverted_by_shuffle():
    x = jnp.arange(2 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 4, 6, 3)
    np.testing.assert_array_equal(np.asarray(pixel_shuffle(pixel_unshuffle(x, 2), 2)), x)


def test_pixel_latent_over_is_the_premultiplied_alpha_composite():
    codec = PixelCodec(2)
    key = jax.random.key(1)
    background = jax.random.uniform(key, (1, 8, 8, 4)).at[..., 3].set(1.0)
    layer = random_rgba(jax.random.fold_in(key, 1), n=1)
    gate = jnp.ones((1, 4, 4, 1))
    z = codec.latent_over(codec.encode(background), codec.encode(layer), gate)
    expected = alpha_composite_float(np.asarray(background[0, ..., :3]), [np.asarray(layer[0])])
    np.testing.assert_allclose(np.asarray(codec.decode(z))[0, ..., :3], expected, atol=1e-5)


@pytest.fixture(scope="module")
def latent_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("latent")
    vae = AutoencoderKL(VAEConfig(block_out_channels=(8, 16), norm_num_groups=4,
                                  down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2),
                        rngs=nnx.Rngs(0))
    vae.save_pretrained(folder / "vae")
    decoder = TransparencyDecoder(TransparencyDecoderConfig(downsample=2, hidden_channels=8,
                                                            norm_num_groups=4),
                                  rngs=nnx.Rngs(1))
    decoder.save_pretrained(folder / "transparency_decoder")
    return folder


def test_latent_codec_loads_from_a_folder_and_decodes_rgba(latent_folder):
    codec = load_codec(latent_folder, DreamLayerConfig(codec="latent"))
    assert isinstance(codec, LatentCodec) and codec.transparency is not None
    assert (codec.downsample, codec.latent_channels) == (2, 4)
    rgba = random_rgba(jax.random.key(2))
    z = codec.encode(rgba)
    assert z.shape == (2, 4, 4, 4)
    out = np.asarray(codec.decode(z))
    assert out.shape == (2, 8, 8, 4)
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
    assert codec.compositor.latent_alpha(z) is None


def test_latent_codec_without_a_transparency_decoder_decodes_opaque(latent_folder):
    vae = AutoencoderKL.from_pretrained(latent_folder, "vae")
    out = np.asarray(LatentCodec(vae).decode(jnp.zeros((1, 4, 4, 4))))
    np.testing.assert_array_equal(out[..., 3], 1.0)
