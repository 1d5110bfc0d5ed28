"""AutoencoderKL matches diffusers' PyTorch AutoencoderKL on a tiny random model."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL as TorchAutoencoderKL
from safetensors.torch import load_file, save_file

from dreamlayer_jax.errors import ConfigError, InputError, WeightsError
from dreamlayer_jax.models.vae import AutoencoderKL, DiagonalGaussian, VAEConfig

TINY = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    block_out_channels=(8, 16),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=4,
    sample_size=16,
)
WEIGHTS = "diffusion_pytorch_model.safetensors"


def randomise_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give every parameter (norm scales and biases included) a non-trivial random value."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1:
                fan_in = p[0].numel()
                p.copy_(torch.randn_like(p) / fan_in**0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            else:
                p.copy_(0.3 * torch.randn_like(p))
    return model.eval()


def assert_close(actual, expected, what: str) -> None:
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, what
    tol = 1e-4 * max(1.0, float(np.abs(expected).max()))
    err = float(np.abs(actual - expected).max())
    assert err <= tol, f"{what}: max abs diff {err:.3g} > {tol:.3g}"


def to_nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def to_nhwc(x: torch.Tensor) -> np.ndarray:
    return x.detach().numpy().transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A random diffusers VAE saved as a diffusers folder, and the module's reference outputs."""
    folder = tmp_path_factory.mktemp("vae")
    torch_vae = randomise_(TorchAutoencoderKL(**TINY), seed=0)
    torch_vae.save_pretrained(folder, safe_serialization=True)
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    latent = rng.normal(size=(2, 8, 8, 4)).astype(np.float32)
    with torch.no_grad():
        posterior = torch_vae.encode(to_nchw(image)).latent_dist
        reference = {
            "mean": to_nhwc(posterior.mean),
            "logvar": to_nhwc(posterior.logvar),
            "decoded": to_nhwc(torch_vae.decode(to_nchw(latent)).sample),
            "reconstructed": to_nhwc(torch_vae(to_nchw(image), sample_posterior=False).sample),
        }
    return folder, torch_vae, image, latent, reference


@pytest.fixture(scope="module")
def vae(saved):
    return AutoencoderKL.from_pretrained(saved[0])


def test_config_is_read_from_diffusers_config_json(vae):
    assert vae.config.block_out_channels == (8, 16)
    assert vae.config.scaling_factor == pytest.approx(0.18215)
    assert vae.config.shift_factor is None
    assert vae.config.downscale == 2


@pytest.fixture(scope="module")
def outputs(saved, vae):
    """Posterior, decoded latent and reconstruction of the JAX model, in one compiled call."""
    _, _, image, latent, _ = saved
    return jax.jit(lambda x, z: (vae.encode(x), vae.decode(z), vae(x)))(image, latent)


def test_encode_matches_diffusers_mean_and_logvar(saved, outputs):
    reference, posterior = saved[-1], outputs[0]
    assert_close(posterior.mean, reference["mean"], "posterior mean")
    assert_close(posterior.logvar, reference["logvar"], "posterior logvar")
    assert_close(posterior.std, np.exp(0.5 * reference["logvar"]), "posterior std")


def test_decode_matches_diffusers(saved, outputs):
    assert_close(outputs[1], saved[-1]["decoded"], "decoded image")


def test_call_without_key_reconstructs_from_the_posterior_mode(saved, outputs):
    assert_close(outputs[2], saved[-1]["reconstructed"], "reconstruction")


def test_bfloat16_compute_stays_close_to_float32(saved):
    folder, _, _, latent, reference = saved
    vae = AutoencoderKL.from_pretrained(folder, dtype=jnp.bfloat16)
    decoded = jax.jit(lambda z: vae.decode(z))(latent)
    assert decoded.dtype == jnp.bfloat16
    expected = reference["decoded"]
    err = np.abs(np.asarray(decoded, np.float32) - expected).max()
    assert err <= 0.05 * np.abs(expected).max()


def test_sample_is_deterministic_per_key_and_differs_across_keys():
    moments = np.random.default_rng(1).normal(size=(2, 4, 4, 8)).astype(np.float32)
    posterior = DiagonalGaussian.from_moments(jnp.asarray(moments))
    draw = jax.jit(lambda p, seed: p.sample(jax.random.key(seed)))
    a, again, other = (np.asarray(draw(posterior, seed)) for seed in (3, 3, 4))
    np.testing.assert_array_equal(a, again)
    assert not np.allclose(a, other)
    assert a.shape == posterior.mean.shape


def test_logvar_is_clamped_like_diffusers():
    moments = jnp.concatenate([jnp.zeros((1, 1, 1, 2)), jnp.array([[[[-100.0, 100.0]]]])], -1)
    posterior = DiagonalGaussian.from_moments(moments)
    np.testing.assert_array_equal(np.asarray(posterior.logvar), [[[[-30.0, 20.0]]]])


def test_save_pretrained_writes_a_folder_diffusers_loads(saved, vae, tmp_path):
    _, torch_vae, *_ = saved
    vae.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["_class_name"] == "AutoencoderKL"
    reloaded = TorchAutoencoderKL.from_pretrained(tmp_path)
    expected = torch_vae.state_dict()
    for key, value in reloaded.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)


def test_variant_without_quant_convs_or_mid_attention_matches_diffusers(tmp_path):
    config = dict(TINY, use_quant_conv=False, use_post_quant_conv=False,
                  mid_block_add_attention=False, layers_per_block=2)
    torch_vae = randomise_(TorchAutoencoderKL(**config), seed=1)
    torch_vae.save_pretrained(tmp_path, safe_serialization=True)
    vae = AutoencoderKL.from_pretrained(tmp_path)
    assert vae.quant_conv is None and vae.post_quant_conv is None
    image = np.random.default_rng(2).uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32)
    with torch.no_grad():
        expected = to_nhwc(torch_vae(to_nchw(image), sample_posterior=False).sample)
    assert_close(jax.jit(lambda x: vae(x))(image), expected, "reconstruction")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("encoder.mid_block.attentions.0.to_q.weight"),
         r"missing: encoder\.mid_block\.attentions\.0\.to_q\.weight"),
        (lambda s: s.update({"decoder.conv_out.bias": torch.zeros(5)}),
         r"mis-shaped: decoder\.conv_out\.bias \(5,\) \(expected \(3,\)\)"),
    ],
)
def test_a_checkpoint_that_does_not_fit_names_the_tensor(saved, tmp_path, edit, message):
    folder = saved[0]
    state = load_file(str(folder / WEIGHTS))
    edit(state)
    save_file(state, str(tmp_path / WEIGHTS))
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(WeightsError, match=message):
        AutoencoderKL.from_pretrained(tmp_path)


def test_unsupported_block_types_are_a_config_error():
    raw = dict(TINY, down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"])
    with pytest.raises(ConfigError, match="AttnDownEncoderBlock2D"):
        VAEConfig.from_dict(raw)


def test_images_of_the_wrong_shape_are_an_input_error(vae):
    with pytest.raises(InputError, match="multiples of 2"):
        vae.encode(jnp.zeros((1, 15, 16, 3)))
    with pytest.raises(InputError, match=r"\[N, H, W, 4\]"):
        vae.decode(jnp.zeros((1, 8, 8, 3)))
