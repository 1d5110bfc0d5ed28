"""Training mode "transparency": the LatentCodec's transparency decoder learns alpha and
RGB from RGBA layers while every other weight stays as it was."""

import json
import shutil

import jax
import numpy as np
import pytest
from flax import nnx
from tiny_model import SMALL_UNET, small_train_fields, write_small_train_model

from dreamlayer_jax.codecs.transparency import TransparencyDecoder, TransparencyDecoderConfig
from dreamlayer_jax.errors import ConfigError
from dreamlayer_jax.models.vae import AutoencoderKL, VAEConfig
from dreamlayer_jax.parallel.mesh import make_mesh
from dreamlayer_jax.pipeline.create import create_model_folder
from dreamlayer_jax.training.config import TrainConfig


@pytest.fixture(scope="module")
def latent_model(tmp_path_factory):
    """A 16x16 model whose codec is a tiny VAE (downsample 2) + transparency decoder."""
    from tiny_model import TINY_SCHEDULER, TINY_TEXT, WORDS

    folder = create_model_folder(
        tmp_path_factory.mktemp("latent") / "model",
        unet={**SMALL_UNET, "in_channels": 4, "out_channels": 4}, text_encoder=TINY_TEXT,
        words=WORDS, dreamlayer={"max_layers": 4, "codec": "latent", "resolution": 16},
        scheduler=TINY_SCHEDULER)
    AutoencoderKL(VAEConfig(block_out_channels=(8, 16), norm_num_groups=4,
                            down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2),
                  rngs=nnx.Rngs(0)).save_pretrained(folder / "vae")
    TransparencyDecoder(TransparencyDecoderConfig(downsample=2, hidden_channels=16,
                                                  norm_num_groups=4),
                        rngs=nnx.Rngs(1)).save_pretrained(folder / "transparency_decoder")
    return folder


def _trainer(model, workdir, **overrides):
    from dreamlayer_jax.training.loop import Trainer

    cfg = TrainConfig(**small_train_fields(model, mode="transparency", **overrides))
    return Trainer(cfg, workdir, mesh=make_mesh(1, 1, 1, devices=jax.devices()[:1]))


def test_transparency_mode_fits_alpha_and_exports_only_the_decoder(latent_model, tmp_path):
    trainer = _trainer(latent_model, tmp_path, num_steps=60, checkpoint_every=60,
                       learning_rate=1e-2, ema_decay=0.0)
    losses = [loss for _, loss in trainer.run()]
    start, end = np.mean(losses[:5]), np.mean(losses[-5:])
    # from a random decoder: down by over a third in 60 steps (measured: 0.37 -> 0.20). It
    # cannot reach 0: a dark opaque pixel and a transparent one share the premultiplied RGB
    # the VAE encodes, and this VAE is random.
    assert end < 0.65 * start, (start, end)

    from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline

    export = tmp_path / "export"
    for name in ("unet", "dreamlayer", "vae", "text_encoder"):
        for src in sorted((latent_model / name).iterdir()):
            assert (export / name / src.name).read_bytes() == src.read_bytes(), src
    before = TransparencyDecoder.from_pretrained(latent_model, "transparency_decoder")
    after = TransparencyDecoder.from_pretrained(export, "transparency_decoder")
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b),
                           nnx.to_pure_dict(nnx.state(before)),
                           nnx.to_pure_dict(nnx.state(after)))
    assert all(jax.tree.leaves(changed))
    assert DreamLayerPipeline.from_pretrained(export).codec.transparency is not None


def test_transparency_mode_refuses_a_pixel_codec_model(tmp_path):
    model = write_small_train_model(tmp_path / "pixel")
    with pytest.raises(ConfigError, match="pixel codec"):
        _trainer(model, tmp_path / "run")


# --- LayerDiffuse's decoder (TransparentVAEDecoder, codec mode "layerdiffuse") ----------

LD_DECODER = {"block_out_channels": (8, 8, 8, 8), "layers_per_block": 1,
              "down_block_types": ("DownBlock2D",) * 3 + ("AttnDownBlock2D",),
              "up_block_types": ("AttnUpBlock2D",) + ("UpBlock2D",) * 3}
LD_ENCODER = {"channels": (8, 8, 8, 8, 8, 8), "strides": (1, 2, 1, 2, 1, 2)}


@pytest.fixture(scope="module")
def ld_model(latent_model, tmp_path_factory):
    """`latent_model` with a VAE that downsamples by 8 (as LayerDiffuse's decoder needs)
    and no transparency decoder of its own."""
    from test_text2img import random_init

    folder = tmp_path_factory.mktemp("ld") / "model"
    shutil.copytree(latent_model, folder, ignore=shutil.ignore_patterns(
        "vae", "transparency_decoder"))
    config = VAEConfig(block_out_channels=(8,) * 4, norm_num_groups=4,
                       down_block_types=("DownEncoderBlock2D",) * 4,
                       up_block_types=("UpDecoderBlock2D",) * 4)
    random_init(lambda: AutoencoderKL(config, rngs=nnx.Rngs(0)), 0).save_pretrained(
        folder / "vae")
    return folder


def _pure(module) -> dict:
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(module)))


def _ld_trainer(model, workdir, **overrides):
    return _trainer(model, workdir, **{"synthetic_resolution": 32, **overrides})


class Interrupted(Exception):
    pass


def _interrupt(step: int) -> None:
    raise Interrupted(step)


def test_layerdiffuse_decoder_trains_from_a_weights_file_resumes_and_exports(ld_model, tmp_path):
    """Starting from a written decoder + offset encoder folder: the run starts from those
    weights, survives an interruption (resumed from its checkpoint), lowers the loss and
    exports a folder `load_transparency` reads back (the offset encoder kept, untouched)
    into a codec that decodes."""
    from test_text2img import random_init

    from dreamlayer_jax.codecs.latent import LatentCodec
    from dreamlayer_jax.codecs.layerdiffuse import LayerDiffuseTransparency, load_transparency
    from dreamlayer_jax.models.transparent_encoder import OffsetEncoderConfig, TransparentVAEEncoder
    from dreamlayer_jax.models.transparent_vae import TransparentVAEDecoder, UNet1024Config
    from dreamlayer_jax.training.transparency import save_transparency

    vae = AutoencoderKL.from_pretrained(ld_model, "vae")
    start = LayerDiffuseTransparency(
        random_init(lambda: TransparentVAEDecoder(UNet1024Config.from_dict(LD_DECODER),
                                                  rngs=nnx.Rngs(0)), 7),
        random_init(lambda: TransparentVAEEncoder(OffsetEncoderConfig.from_dict(LD_ENCODER),
                                                  rngs=nnx.Rngs(0)), 8))
    weights = save_transparency(start.decoder, LatentCodec(vae, start), tmp_path / "start")
    assert json.loads((weights / "config.json").read_text())["_class_name"] == "LayerDiffuse"

    trainer = _ld_trainer(ld_model, tmp_path / "run", transparency=str(weights),
                          num_steps=20, checkpoint_every=10, learning_rate=1e-2,
                          warmup_steps=0, end_lr_ratio=1.0, ema_decay=0.0)
    assert trainer.transparency_codec.transparency_mode == "layerdiffuse"
    np.testing.assert_equal(trainer._host_params, _pure(start.decoder))
    trainer.on_checkpoint = _interrupt  # the run stops once step 10 is saved
    with pytest.raises(Interrupted):
        trainer.run()
    losses = [loss for _, loss in trainer.history]
    trainer.on_checkpoint = None
    resumed = trainer.run(resume=True)
    assert [step for step, _ in resumed] == list(range(11, 21))
    losses += [loss for _, loss in resumed]
    first, last = np.mean(losses[:4]), np.mean(losses[-4:])
    # measured: 0.93 -> 0.28 (a random VAE: a colour under low alpha is not recoverable)
    assert last < 0.6 * first, (first, last)

    exported = tmp_path / "run" / "export"
    for path in (exported / "transparency_decoder", None):  # --transparency PATH, the folder
        loaded = load_transparency(exported if path is None else None, path)
        assert isinstance(loaded, LayerDiffuseTransparency) and loaded.encoder is not None
    np.testing.assert_equal(_pure(loaded.encoder), _pure(start.encoder))
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), _pure(loaded.decoder),
                           _pure(start.decoder))
    assert any(jax.tree.leaves(changed))
    latents = jax.random.normal(jax.random.key(0), (2, 4, 4, 4))
    rgba = np.asarray(jax.jit(LatentCodec(vae, loaded).decode)(latents))
    assert rgba.shape == (2, 32, 32, 4) and np.all((rgba >= 0) & (rgba <= 1))


def test_layerdiffuse_decoder_from_scratch_takes_the_configured_widths(ld_model, tmp_path):
    from dreamlayer_jax.codecs.layerdiffuse import load_transparency

    trainer = _ld_trainer(ld_model, tmp_path, transparency="layerdiffuse",
                          transparency_config=LD_DECODER, num_steps=1)
    decoder = trainer.transparency_codec.transparency.decoder
    assert decoder.config.block_out_channels == (8, 8, 8, 8)
    assert trainer.transparency_codec.transparency.encoder is None
    trainer.export(tmp_path / "export", trainer.initial_state())
    loaded = load_transparency(tmp_path / "export")
    assert loaded.encoder is None
    np.testing.assert_equal(_pure(loaded.decoder), _pure(decoder))


def test_layerdiffuse_training_refuses_what_it_cannot_train(latent_model, tmp_path):
    with pytest.raises(ConfigError, match="mode='transparency'"):
        TrainConfig(model="m", transparency="layerdiffuse")  # mode "diffusion"
    with pytest.raises(ConfigError, match="fresh decoder"):
        TrainConfig(model="m", mode="transparency", transparency="x.safetensors",
                    transparency_config=LD_DECODER)
    with pytest.raises(ConfigError, match="unknown keys"):
        TrainConfig(model="m", mode="transparency", transparency="layerdiffuse",
                    transparency_config={"widths": 8})
    with pytest.raises(ConfigError, match="downsamples by 2"):  # LayerDiffuse needs 1/8
        _trainer(latent_model, tmp_path, transparency="layerdiffuse",
                 transparency_config=LD_DECODER)
