"""CLIP text encoders match transformers' PyTorch models on tiny random configs."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from dreamlayer_jax.errors import ConfigError, InputError, WeightsError
from dreamlayer_jax.io import nnx_state_to_torch
from dreamlayer_jax.models.clip import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=64, projection_dim=16,
            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16,
            bos_token_id=0, pad_token_id=1)
LEGACY = dict(TINY, hidden_act="quick_gelu", eos_token_id=2)  # SD 1.x style: pool at argmax
MODERN = dict(TINY, hidden_act="gelu", eos_token_id=5)  # pool at the first eos token
WEIGHTS = "model.safetensors"


def randomise_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give every parameter (layer-norm scales and biases included) a random value."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1:
                p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            else:
                p.copy_(0.3 * torch.randn_like(p))
    return model.eval()


def assert_close(actual, expected, what: str) -> None:
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: {actual.shape} != {expected.shape}"
    tol = 1e-4 * max(1.0, float(np.abs(expected).max()))
    err = float(np.abs(actual - expected).max())
    assert err <= tol, f"{what}: max abs diff {err:.3g} > {tol:.3g}"


def input_ids() -> np.ndarray:
    """[3, 10] ids; row 0 holds the eos id (5) twice, before a larger id, then padding."""
    rng = np.random.default_rng(0)
    ids = rng.integers(6, 64, size=(3, 10)).astype(np.int32)
    ids[:, 0] = 0
    ids[0, 3:6] = [5, 5, 63]
    ids[1, 7:] = [5, 1, 1]
    ids[2, 9] = 5
    return ids


def reference(torch_model: torch.nn.Module, ids: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = torch_model(torch.from_numpy(ids).long(), output_hidden_states=True)
    ref = {"last_hidden_state": out.last_hidden_state.numpy(),
           "hidden_states": [h.numpy() for h in out.hidden_states]}
    if hasattr(out, "text_embeds"):
        ref["text_embeds"] = out.text_embeds.numpy()
    else:
        ref["pooler_output"] = out.pooler_output.numpy()
    return ref


@pytest.fixture(scope="module")
def legacy_folder(tmp_path_factory):
    """transformers 5's CLIPTextModel.save_pretrained output (keys without `text_model.`)."""
    folder = tmp_path_factory.mktemp("clip_legacy")
    torch_model = randomise_(transformers.CLIPTextModel(transformers.CLIPTextConfig(**LEGACY)), 0)
    torch_model.save_pretrained(folder)
    return folder, reference(torch_model, input_ids())


@pytest.fixture(scope="module")
def projection_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip_projection")
    config = transformers.CLIPTextConfig(**MODERN)
    torch_model = randomise_(transformers.CLIPTextModelWithProjection(config), 1)
    torch_model.save_pretrained(folder)
    with torch.no_grad():
        pooled = torch_model.text_model(torch.from_numpy(input_ids()).long()).pooler_output
    return folder, torch_model, {**reference(torch_model, input_ids()),
                                 "pooler_output": pooled.numpy()}


def run(model, ids: np.ndarray):
    return jax.jit(lambda x: model(x, output_hidden_states=True))(ids)


def test_text_model_matches_transformers(legacy_folder):
    folder, ref = legacy_folder
    assert not any(k.startswith("text_model.") for k in load_file(str(folder / WEIGHTS)))
    model = CLIPTextModel.from_pretrained(folder)
    out = run(model, input_ids())
    assert out.text_embeds is None
    assert len(out.hidden_states) == len(ref["hidden_states"]) == 3
    assert_close(out.last_hidden_state, ref["last_hidden_state"], "last_hidden_state")
    assert_close(out.pooler_output, ref["pooler_output"], "pooler_output")
    for i, (ours, theirs) in enumerate(zip(out.hidden_states, ref["hidden_states"])):
        assert_close(ours, theirs, f"hidden_states[{i}]")


def test_text_model_with_projection_matches_transformers(projection_folder):
    folder, _, ref = projection_folder
    model = CLIPTextModelWithProjection.from_pretrained(folder)
    ids = input_ids()
    # Row 0 tells the two pooling rules apart: first eos at 3, largest id at 5.
    assert model.text_model.eos_position(ids).tolist() == [3, 7, 9]
    out = run(model, ids)
    assert_close(out.last_hidden_state, ref["last_hidden_state"], "last_hidden_state")
    assert_close(out.pooler_output, ref["pooler_output"], "pooler_output")
    assert_close(out.hidden_states[-2], ref["hidden_states"][-2], "hidden_states[-2]")
    assert_close(out.text_embeds, ref["text_embeds"], "text_embeds")


def test_bfloat16_compute_stays_close_to_float32(projection_folder):
    folder, _, ref = projection_folder
    model = CLIPTextModelWithProjection.from_pretrained(folder, dtype=jnp.bfloat16)
    out = jax.jit(lambda x: model(x))(input_ids())
    assert out.text_embeds.dtype == jnp.bfloat16
    err = np.abs(np.asarray(out.text_embeds, np.float32) - ref["text_embeds"]).max()
    assert err <= 0.05 * np.abs(ref["text_embeds"]).max()


def test_hub_layout_with_prefix_and_position_ids_loads_the_same_weights(legacy_folder, tmp_path):
    folder, _ = legacy_folder
    state = load_file(str(folder / WEIGHTS))
    hub_state = {f"text_model.{k}": v for k, v in state.items()}
    hub_state["text_model.embeddings.position_ids"] = torch.arange(16)[None]
    save_file(hub_state, str(tmp_path / WEIGHTS))
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    loaded = nnx_state_to_torch(CLIPTextModel.from_pretrained(tmp_path))
    assert sorted(loaded) == sorted(k for k in hub_state if not k.endswith("position_ids"))
    for key, value in loaded.items():
        np.testing.assert_array_equal(value, hub_state[key].numpy(), err_msg=key)


def test_save_pretrained_writes_a_folder_transformers_loads(projection_folder, tmp_path):
    folder, torch_model, _ = projection_folder
    CLIPTextModelWithProjection.from_pretrained(folder).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "clip_text_model" and config["hidden_act"] == "gelu"
    reloaded = transformers.CLIPTextModelWithProjection.from_pretrained(tmp_path)
    assert reloaded.config.eos_token_id == 5
    expected = torch_model.state_dict()
    for key, value in reloaded.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)


def test_config_accepts_a_full_clip_config_with_nested_text_config():
    config = CLIPTextConfig.from_dict({"model_type": "clip", "text_config": LEGACY,
                                       "vision_config": {"hidden_size": 8}})
    assert config.hidden_size == 32 and config.eos_token_id == 2


def test_unsupported_activation_is_a_config_error():
    with pytest.raises(ConfigError, match="hidden_act"):
        CLIPTextConfig.from_dict(dict(TINY, hidden_act="swiglu"))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("text_model.encoder.layers.1.mlp.fc2.weight"),
         r"missing: text_model\.encoder\.layers\.1\.mlp\.fc2\.weight"),
        (lambda s: s.update({"text_projection.weight": torch.zeros(8, 32)}),
         r"mis-shaped: text_projection\.weight \(8, 32\) \(expected \(16, 32\)\)"),
    ],
)
def test_a_checkpoint_that_does_not_fit_names_the_tensor(projection_folder, tmp_path, edit,
                                                         message):
    folder = projection_folder[0]
    state = load_file(str(folder / WEIGHTS))
    edit(state)
    save_file(state, str(tmp_path / WEIGHTS))
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(WeightsError, match=message):
        CLIPTextModelWithProjection.from_pretrained(tmp_path)


def test_too_many_tokens_is_an_input_error(legacy_folder):
    model = CLIPTextModel.from_pretrained(legacy_folder[0])
    with pytest.raises(InputError, match="at most 16 tokens"):
        model(np.zeros((1, 17), np.int32))
