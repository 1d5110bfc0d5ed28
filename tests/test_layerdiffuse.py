"""LayerDiffuse's released weights: loaded by path, and equal to PyTorch.

The references (`layerdiffuse_reference.py`) are LayerDiffuse's own modules rebuilt from
diffusers' blocks, with random weights saved as bare safetensors files (fp32 and fp16),
exactly as LayerDiffuse ships them.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, traverse_util

from dreamlayer_jax.codecs.latent import LatentCodec
from dreamlayer_jax.codecs.layerdiffuse import (
    LayerDiffuseTransparency,
    grey_composite,
    load_transparency,
)
from dreamlayer_jax.codecs.transparency import TransparencyDecoder, TransparencyDecoderConfig
from dreamlayer_jax.errors import InputError, WeightsError
from dreamlayer_jax.io.layerdiffuse import load_transparent_decoder, load_transparent_encoder
from dreamlayer_jax.io.torch_to_nnx import ShapeOnlyRngs, _torch_shape, torch_key
from dreamlayer_jax.models.transparent_encoder import pad_rgb
from dreamlayer_jax.models.transparent_vae import TransparentVAEDecoder, UNet1024Config
from dreamlayer_jax.models.vae import AutoencoderKL

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
from layerdiffuse_reference import (  # noqa: E402
    UNet1024,
    assert_relative,
    estimate_augmented,
    nchw,
    nhwc,
    offset_encoder,
    randomise_,
    save,
)
from layerdiffuse_reference import pad_rgb as reference_pad_rgb  # noqa: E402

SMALL = (8, 8, 16, 16, 16, 32, 32)  # LayerDiffuse's structure, narrower blocks


@nnx.jit
def predict(model, rgb, latent):
    return model.predict(rgb, latent)


@nnx.jit
def augmented(model, rgb, latent):
    return model.decode_augmented(rgb, latent)


def rounded_to_fp16(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the model with its weights rounded to fp16 and back (what an fp16 file
    holds)."""
    return copy.deepcopy(model).half().float()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A narrow random UNet1024 saved fp32 and fp16, its inputs and PyTorch's outputs."""
    root = tmp_path_factory.mktemp("small")
    model = randomise_(UNet1024(block_out_channels=SMALL), seed=0)
    fp32 = save(model.state_dict(), root / "decoder_fp32.safetensors")
    fp16 = save(model.state_dict(), root / "decoder_fp16.safetensors", torch.float16)
    rng = np.random.default_rng(0)
    rgb = rng.uniform(size=(2, 64, 64, 3)).astype(np.float32)
    latent = rng.normal(size=(2, 8, 8, 4)).astype(np.float32)
    # TTA: one resnet per block (compiles faster), a 64 x 128 input (both rotation shapes)
    shallow = randomise_(UNet1024(block_out_channels=SMALL, layers_per_block=1), seed=2)
    wide = (rgb[:1].repeat(2, axis=2), latent[:1].repeat(2, axis=2))
    with torch.no_grad():
        out = {"fp32": nhwc(model(nchw(rgb), nchw(latent))),
               "tta": nhwc(estimate_augmented(shallow, nchw(wide[0]), nchw(wide[1])))}
        out["fp16"] = nhwc(rounded_to_fp16(model)(nchw(rgb), nchw(latent)))
    return {"fp32": fp32, "fp16": fp16, "rgb": rgb, "latent": latent, "wide": wide,
            "out": out, "config": UNet1024Config(block_out_channels=SMALL), "root": root,
            "model": model, "shallow": save(shallow.state_dict(), root / "shallow.safetensors")}


@pytest.fixture(scope="module")
def small_decoder(small):
    return load_transparent_decoder(small["fp32"], small["config"])


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """LayerDiffuse's real decoder config, random, saved fp16 like the released file."""
    model = rounded_to_fp16(randomise_(UNet1024(), seed=1))
    path = save(model.state_dict(), tmp_path_factory.mktemp("real") / "decoder.safetensors",
                torch.float16)
    rng = np.random.default_rng(1)
    rgb = rng.uniform(size=(1, 64, 64, 3)).astype(np.float32)
    latent = rng.normal(size=(1, 8, 8, 4)).astype(np.float32)
    with torch.no_grad():
        expected = nhwc(model(nchw(rgb), nchw(latent)))
    return {"model": model, "path": path, "rgb": rgb, "latent": latent, "expected": expected}


def test_every_pytorch_key_fills_one_parameter_of_the_right_shape_at_the_real_config(real):
    state = real["model"].state_dict()
    assert len(state) == 538
    assert sum(v.numel() for v in state.values()) == 104_104_804
    abstract = nnx.eval_shape(lambda: TransparentVAEDecoder(UNet1024Config(),
                                                            rngs=ShapeOnlyRngs()))
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(abstract, nnx.Param)))
    ours = {torch_key(p): _torch_shape(p, v.shape) for p, v in flat.items()}
    assert ours == {k: tuple(v.shape) for k, v in state.items()}


def test_fp32_file_matches_pytorch_at_reduced_widths(small, small_decoder):
    out = predict(small_decoder, small["rgb"], small["latent"])
    assert_relative(out, small["out"]["fp32"], "raw [alpha, R, G, B]")


def test_fp16_file_loads_into_float32_and_matches_pytorch(small):
    decoder = load_transparent_decoder(small["fp16"], small["config"])
    assert decoder.conv_in.kernel.dtype == jnp.float32
    out = predict(decoder, small["rgb"], small["latent"])
    assert_relative(out, small["out"]["fp16"], "fp16 weights, f32 compute")


def test_real_widths_match_pytorch(real):
    decoder = load_transparent_decoder(real["path"])
    out = predict(decoder, real["rgb"], real["latent"])
    assert_relative(out, real["expected"], "real config")


def test_augmented_decoding_is_the_lower_median_of_eight_passes(small):
    config = UNet1024Config(block_out_channels=SMALL, layers_per_block=1)
    decoder = load_transparent_decoder(small["shallow"], config)
    out = np.asarray(augmented(decoder, *small["wide"]))
    expected = small["out"]["tta"]
    assert_relative(out[..., 3], expected[..., 0], "TTA alpha")
    assert_relative(out[..., :3], expected[..., 1:], "TTA RGB")


def test_sizes_not_multiple_of_64_or_a_wrong_latent_are_input_errors(small_decoder):
    with pytest.raises(InputError, match="multiples of 64"):
        small_decoder(jnp.zeros((1, 32, 64, 3)), jnp.zeros((1, 4, 8, 4)))
    with pytest.raises(InputError, match=r"latent \[1, 8, 8, 4\]"):
        small_decoder(jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 16, 16, 4)))


def rgba_image(n: int, h: int, w: int, seed: int) -> np.ndarray:
    """Random RGBA with transparent, opaque and partly transparent regions."""
    rng = np.random.default_rng(seed)
    rgba = rng.uniform(size=(n, h, w, 4)).astype(np.float32)
    rgba[:, : h // 3, :, 3] = 0.0
    rgba[:, h // 3: h // 2, : w // 2, 3] = 1.0
    return rgba


def test_pad_rgb_matches_layerdiffuse_pyramid_padding():
    rgba = rgba_image(2, 40, 56, seed=2)
    rgba[1, :, 30:, 3] = 0.0
    ours = np.asarray(jax.jit(pad_rgb)(rgba))
    expected = np.stack([reference_pad_rgb(x) for x in rgba])
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    opaque = rgba[..., 3] == 1.0
    np.testing.assert_allclose(ours[opaque], rgba[..., :3][opaque], atol=1e-6)


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    blocks = rounded_to_fp16(randomise_(offset_encoder(), seed=3))
    state = {f"blocks.{k}": v for k, v in blocks.state_dict().items()}
    path = tmp_path_factory.mktemp("encoder") / "vae_transparent_encoder.safetensors"
    return blocks, save(state, path, torch.float16)


def test_offset_encoder_matches_pytorch_on_alpha_and_padded_rgb(encoder_file):
    blocks, path = encoder_file
    assert sorted({int(k.split(".")[0]) for k in blocks.state_dict()}) == list(range(0, 17, 2))
    encoder = load_transparent_encoder(path)
    rgba = rgba_image(2, 64, 64, seed=4)
    feed = np.concatenate([rgba[..., 3:], np.stack([reference_pad_rgb(x) for x in rgba])], -1)
    with torch.no_grad():
        expected = nhwc(blocks(nchw(feed.astype(np.float32))))
    assert expected.shape == (2, 8, 8, 4)
    assert_relative(jax.jit(encoder.offset)(rgba), expected, "offset")


# --- LatentCodec mode "layerdiffuse" ------------------------------------------------------

TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                block_out_channels=(8, 8, 8, 8), layers_per_block=1, sample_size=64)


@pytest.fixture(scope="module")
def vae(tmp_path_factory):
    from diffusers import AutoencoderKL as TorchAutoencoderKL

    folder = tmp_path_factory.mktemp("vae")
    randomise_(TorchAutoencoderKL(**TINY_VAE), seed=5).save_pretrained(folder)
    return AutoencoderKL.from_pretrained(folder)


@pytest.fixture(scope="module")
def converted(small, encoder_file, tmp_path_factory):
    """A converted folder (small decoder + encoder), written by the library, not the CLI."""
    from dreamlayer_jax.cli.convert_layerdiffuse import write_folder

    out = tmp_path_factory.mktemp("converted") / "layerdiffuse"
    write_folder({"decoder": small["fp32"], "encoder": encoder_file[1]}, out)
    config = json.loads((out / "transparent_decoder" / "config.json").read_text())
    config["block_out_channels"] = list(SMALL)
    (out / "transparent_decoder" / "config.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="module")
def codec(vae, converted):
    """The "layerdiffuse" LatentCodec of the converted folder, with its encode (without and
    with a key) and decode compiled once for all codec tests."""
    codec = LatentCodec(vae, load_transparency(None, converted))
    encode = jax.jit(lambda x: (codec.encode(x), codec.encode(x, jax.random.key(0))))
    decode = jax.jit(lambda z: (codec.decode(z), codec.decode_rgb(z)))
    return codec, encode, decode


def test_codec_encodes_grey_composite_moved_by_the_offset(vae, codec, encoder_file):
    codec, encode, _ = codec
    assert isinstance(codec.transparency, LayerDiffuseTransparency)
    assert codec.transparency.encoder is not None
    assert codec.transparency_mode == "layerdiffuse"
    rgba = rgba_image(1, 64, 64, seed=6)
    latents, drawn = encode(rgba)
    assert latents.shape == drawn.shape == (1, 8, 8, 4)
    grey = 0.5 + (rgba[..., :3] - 0.5) * rgba[..., 3:]
    np.testing.assert_allclose(grey_composite(rgba), grey)
    posterior = jax.jit(vae.encode)(grey * 2 - 1)
    feed = np.concatenate([rgba[..., 3:], np.stack([reference_pad_rgb(x) for x in rgba])], -1)
    with torch.no_grad():
        offset = nhwc(encoder_file[0](nchw(feed.astype(np.float32))))
    expected = (posterior.mean + posterior.std * offset) * vae.config.scaling_factor
    assert_relative(latents, expected, "scaled latent of grey composite + std * offset")
    assert not np.allclose(drawn, latents)


def test_codec_decodes_unscaled_latents_into_clipped_rgba_with_alpha_last(vae, codec, small):
    _, encode, decode = codec
    latents = np.random.default_rng(7).normal(size=(1, 8, 8, 4)).astype(np.float32)
    rgba, rgb = decode(latents)
    assert rgba.shape == (1, 64, 64, 4)
    with torch.no_grad():
        def reference(z):
            y = np.clip(nhwc(small["model"](nchw(np.asarray(rgb)), nchw(z))), 0, 1)
            return np.concatenate([y[..., 1:], y[..., :1]], axis=-1)

        expected = reference(latents / vae.config.scaling_factor)
        scaled = reference(latents)
    np.testing.assert_allclose(rgba, expected, atol=1e-4)
    assert float(np.abs(scaled - expected).max()) > 1e-2  # the scaled latent would differ
    round_trip, _ = decode(encode(rgba_image(1, 64, 64, seed=6))[0])
    assert round_trip.shape == (1, 64, 64, 4)
    assert float(round_trip.min()) >= 0.0 and float(round_trip.max()) <= 1.0


def test_model_folder_config_selects_the_mode_and_the_own_decoder_still_loads(
        small, converted, tmp_path):
    assert load_transparency(tmp_path) is None
    own = tmp_path / "own"
    TransparencyDecoder(TransparencyDecoderConfig(), rngs=nnx.Rngs(0)).save_pretrained(
        own / "transparency_decoder")
    assert isinstance(load_transparency(own), TransparencyDecoder)
    layered = tmp_path / "layered"
    (layered / "transparency_decoder").parent.mkdir()
    (layered / "transparency_decoder").symlink_to(converted)
    assert isinstance(load_transparency(layered), LayerDiffuseTransparency)
    assert load_transparency(own, converted).encoder is not None  # the path wins
    with pytest.raises(WeightsError, match="does not exist"):
        load_transparency(own, tmp_path / "nowhere.safetensors")


def test_dreamlayer_pipeline_samples_rgba_layers_through_layerdiffuse_decoder(
        converted, tmp_path):
    """`DreamLayerPipeline.from_pretrained(..., transparency=PATH)` on a latent-codec model:
    the foregrounds' alpha comes from LayerDiffuse's decoder (a pixel model refuses it)."""
    from diffusers import AutoencoderKL as TorchAutoencoderKL
    from tiny_model import TINY_SCHEDULER, TINY_TEXT, TINY_UNET, WORDS, write_tiny_model

    from dreamlayer_jax.errors import ConfigError
    from dreamlayer_jax.pipeline.create import create_model_folder
    from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline
    from dreamlayer_jax.pipeline.scene import Layer, Scene

    folder = create_model_folder(
        tmp_path / "model", unet=TINY_UNET, text_encoder=TINY_TEXT, words=WORDS,
        dreamlayer={"max_layers": 3, "codec": "latent", "resolution": 64},
        scheduler=TINY_SCHEDULER)
    randomise_(TorchAutoencoderKL(**TINY_VAE), seed=5).save_pretrained(folder / "vae")
    pipe = DreamLayerPipeline.from_pretrained(folder, transparency=converted)
    assert pipe.codec.transparency_mode == "layerdiffuse"
    result = pipe(Scene("a red star in front of a blue wall", "a blue wall",
                        [Layer("a red star", (0.0, 0.0, 1.0, 1.0))]),
                  num_inference_steps=2, seed=0)
    layer = result.layers[0]
    assert layer.shape == (64, 64, 4) and len(np.unique(layer[..., 3])) > 1
    with pytest.raises(ConfigError, match="pixel"):
        DreamLayerPipeline.from_pretrained(write_tiny_model(tmp_path / "pixel"),
                                           transparency=converted)


# --- bad files and the converter --------------------------------------------------------

def bad_file(kind: str, small: dict, folder: Path) -> Path:
    """A broken copy of the small fp16 decoder."""
    from safetensors.torch import load_file

    path = folder / f"{kind}.safetensors"
    if kind == "truncated":
        data = small["fp16"].read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path
    state = load_file(str(small["fp16"]))
    if kind == "nan":
        state["mid_block.attentions.0.to_q.weight"][0, 0] = float("nan")
    elif kind == "keys":
        state.pop("conv_out.bias")
        state["conv_out.extra"] = torch.zeros(1, dtype=torch.float16)
    elif kind == "shapes":  # the narrow decoder where the real config is expected
        return small["fp16"]
    return save(state, path)


BAD = {"truncated": "cannot read weights file", "nan": "1 tensors hold NaN or Inf",
       "keys": r"missing: conv_out\.bias.*unexpected: conv_out\.extra",
       "shapes": r"mis-shaped: .*conv_in\.weight \(8, 3, 3, 3\) \(expected \(32, 3, 3, 3\)\)"}


@pytest.mark.parametrize("kind", list(BAD))
def test_a_broken_decoder_file_is_one_weights_error(small, tmp_path, kind):
    with pytest.raises(WeightsError, match=BAD[kind]):
        load_transparent_decoder(bad_file(kind, small, tmp_path))


def test_converter_writes_a_folder_that_loads_with_the_weights_unchanged(
        real, encoder_file, tmp_path):
    from dreamlayer_jax.cli.convert_layerdiffuse import main

    out = tmp_path / "out" / "layerdiffuse"
    files = [real["path"], encoder_file[1]]
    assert main([*map(str, files), "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["_class_name"] == "LayerDiffuse"
    assert set(config["parts"]) == {"decoder", "encoder"}
    for file, part in zip(files, ("transparent_decoder", "transparent_encoder")):
        copied = out / part / "diffusion_pytorch_model.safetensors"
        assert copied.read_bytes() == file.read_bytes()
        assert json.loads((out / part / "config.json").read_text())["source_file"] == file.name
    decoder_config = json.loads((out / "transparent_decoder" / "config.json").read_text())
    assert decoder_config["_class_name"] == "UNet1024"
    assert UNet1024Config.from_dict(decoder_config) == UNet1024Config()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("kind", ["truncated", "nan", "keys", "shapes", "twice", "missing"])
def test_converter_refuses_bad_input_with_one_line_and_writes_nothing(
        small, tmp_path, capsys, kind):
    from dreamlayer_jax.cli.convert_layerdiffuse import main

    if kind == "twice":
        files = [small["fp16"], small["fp32"]]
    elif kind == "missing":
        files = [tmp_path / "nowhere.safetensors"]
    else:
        files = [bad_file(kind, small, tmp_path)]
    out = tmp_path / "out"
    assert main([*map(str, files), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert kind != "twice" or "two LayerDiffuse decoder files" in err[0]
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_converter_entry_point_exits_2_on_a_file_that_is_not_layerdiffuse(tmp_path):
    bogus = save({"weight": torch.zeros(2)}, tmp_path / "bogus.safetensors")
    result = subprocess.run(
        [sys.executable, "-m", "dreamlayer_jax.cli.convert_layerdiffuse", str(bogus), "--out",
         str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        result.stderr.strip()] and "not a LayerDiffuse file" in result.stderr
    assert not (tmp_path / "out").exists()
