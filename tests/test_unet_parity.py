"""The nnx UNet computes what diffusers' UNet2DConditionModel computes (SD 1.x, 2.x, SDXL).

Each tiny config is built in PyTorch with random values in *every* parameter (norm scales
and biases included), saved as a diffusers folder, loaded with `from_pretrained` and run
on the same inputs (NCHW in torch, NHWC here).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dreamlayer_jax.errors import ConfigError, InputError, WeightsError
from dreamlayer_jax.io import load_config, load_state_dict, save_state_dict
from dreamlayer_jax.models.transformer import Transformer2DModel
from dreamlayer_jax.models.unet import UNet2DConditionModel, UNetConfig

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

SD15 = dict(
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=1,
    attention_head_dim=4,
    cross_attention_dim=24,
    norm_num_groups=8,
    in_channels=4,
    out_channels=4,
)
SD2 = dict(
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=1,
    attention_head_dim=(2, 4),
    use_linear_projection=True,
    upcast_attention=True,
    cross_attention_dim=16,
    norm_num_groups=16,
    flip_sin_to_cos=False,
    freq_shift=1,
    in_channels=4,
    out_channels=3,
)
SDXL = dict(
    block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    layers_per_block=1,
    attention_head_dim=(2, 4),
    transformer_layers_per_block=(1, 2),
    use_linear_projection=True,
    cross_attention_dim=32,
    norm_num_groups=8,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=12 + 6 * 8,
    in_channels=4,
    out_channels=4,
)
MINI = dict(  # one block: fast to load

    block_out_channels=(8,),
    down_block_types=("DownBlock2D",),
    up_block_types=("UpBlock2D",),
    layers_per_block=1,
    attention_head_dim=2,
    cross_attention_dim=8,
    norm_num_groups=4,
    upcast_attention=True,
)
# SDXL-like folder: the config.json is rewritten to name the heads `num_attention_heads`
# (which diffusers' constructor refuses) and to give `attention_head_dim` head *sizes*.
SDXL_JSON = dict(num_attention_heads=[2, 4], attention_head_dim=[16, 16])
CASES = {  # name: (diffusers kwargs, sample size (H, W), seed, config.json rewrite)
    "sd15": (SD15, (16, 12), 0, {}),
    "sd2": (SD2, (15, 10), 1, {}),  # odd sizes: the up path restores exact sizes
    "sdxl": (SDXL, (8, 8), 2, SDXL_JSON),
}


@dataclass
class Case:
    """A saved diffusers UNet folder, inputs (torch layout) and diffusers' output."""

    folder: Path
    sample: np.ndarray  # [N, C, H, W]
    timesteps: np.ndarray  # [N]
    text: np.ndarray  # [N, T, D]
    added: dict[str, np.ndarray] | None
    expected: np.ndarray  # [N, C_out, H, W]

    def jax_inputs(self) -> tuple:
        added = None if self.added is None else {k: jnp.asarray(v) for k, v in self.added.items()}
        return (jnp.asarray(self.sample.transpose(0, 2, 3, 1)), jnp.asarray(self.timesteps),
                jnp.asarray(self.text), added)


def _randomise(model) -> None:
    """Noise on every parameter; norms get scales near 1 and non-zero biases."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.add_(0.1 * torch.randn_like(p))


def _build_case(folder: Path, name: str) -> Case:
    config, size, seed, rewrite = CASES[name]
    torch.manual_seed(seed)
    model = diffusers.UNet2DConditionModel(**config).eval()
    _randomise(model)
    model.save_pretrained(folder, safe_serialization=True)
    if rewrite:
        raw = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**raw, **rewrite}))
    n, tokens = 2, 5
    sample = torch.randn(n, config["in_channels"], *size)
    timesteps = torch.tensor([3.0, 711.0])
    text = torch.randn(n, tokens, config["cross_attention_dim"])
    added = None
    if config.get("addition_embed_type") == "text_time":
        added = {"text_embeds": torch.randn(n, 12),
                 "time_ids": torch.tensor([[64.0, 48, 0, 8, 64, 48], [32, 32, 4, 0, 32, 32]])}
    with torch.no_grad():
        expected = model(sample, timesteps, text, added_cond_kwargs=added).sample
    numpy_added = None if added is None else {k: v.numpy() for k, v in added.items()}
    return Case(folder, sample.numpy(), timesteps.numpy(), text.numpy(), numpy_added,
                expected.numpy())


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[str, Case]:
    root = tmp_path_factory.mktemp("unets")
    return {name: _build_case(root / name, name) for name in CASES}


@pytest.fixture(scope="module")
def loaded(cases):
    """`loaded(name)`: the case's folder through `from_pretrained`, loaded once per module."""
    models: dict[str, UNet2DConditionModel] = {}

    def load(name: str) -> UNet2DConditionModel:
        if name not in models:
            models[name] = UNet2DConditionModel.from_pretrained(cases[name].folder)
        return models[name]

    return load


@nnx.jit
def _forward(model, sample, timesteps, text, added):
    return model(sample, timesteps, text, added)


def _assert_matches(actual_nhwc: np.ndarray, expected_nchw: np.ndarray) -> None:
    expected = expected_nchw.transpose(0, 2, 3, 1)
    assert actual_nhwc.shape == expected.shape
    tolerance = 1e-4 * max(1.0, float(np.abs(expected).max()))
    assert float(np.abs(actual_nhwc - expected).max()) <= tolerance


@pytest.mark.parametrize("name", list(CASES))
def test_output_matches_diffusers(cases, loaded, name):
    out = np.asarray(_forward(loaded(name), *cases[name].jax_inputs()))
    _assert_matches(out, cases[name].expected)


def test_num_attention_heads_takes_precedence_over_attention_head_dim(cases):
    config = UNetConfig.from_dict(load_config(cases["sdxl"].folder))
    assert config.num_attention_heads == (2, 4) and config.block_heads == (2, 4)
    assert UNetConfig.from_dict(SD2).block_heads == (2, 4)  # the diffusers quirk


class RecordingContext:
    """A layer context whose attention functions are plain attention, recording their use."""

    def __init__(self):
        self.sizes: list[tuple[int, int]] = []
        self.key_lengths: list[tuple[str, int]] = []

    num_layers = 1  # rows are not grouped by layer (no foreground K/V pair)

    def mix_hidden(self, x):
        return x

    def attention_fns(self, h: int, w: int):
        self.sizes.append((h, w))

        def attend(kind):
            def fn(q, k, v):
                self.key_lengths.append((kind, k.shape[1]))
                return jax.nn.dot_product_attention(q, k, v)

            return fn

        return attend("self"), attend("cross")


@pytest.fixture(scope="module")
def hooked(cases, loaded) -> tuple[RecordingContext, dict[str, np.ndarray]]:
    """SD15 outputs with both hooks in use (one compile): plain-attention `layer_ctx`, and
    `extra_emb` zero or random."""
    case, unet = cases["sd15"], loaded("sd15")
    ctx = RecordingContext()

    @nnx.jit
    def forward(model, sample, timesteps, text, extra_emb):
        return model(sample, timesteps, text, extra_emb=extra_emb, layer_ctx=ctx)

    inputs = case.jax_inputs()[:3]
    shape = (case.sample.shape[0], unet.config.time_embed_dim)
    outputs = {
        "zero": np.asarray(forward(unet, *inputs, jnp.zeros(shape))),
        "random": np.asarray(forward(unet, *inputs, jax.random.normal(jax.random.key(0), shape))),
    }
    return ctx, outputs


def test_a_zero_extra_embedding_changes_nothing_and_a_random_one_does(cases, hooked):
    _, outputs = hooked
    _assert_matches(outputs["zero"], cases["sd15"].expected)
    assert np.abs(outputs["random"] - outputs["zero"]).max() > 1e-2


def test_a_layer_context_of_plain_attention_gives_the_plain_output(cases, hooked):
    case = cases["sd15"]
    ctx, outputs = hooked
    _assert_matches(outputs["zero"], case.expected)
    # Transformers of the tiny SD15: down block 0 (16x12), mid (8x6), up block 1 (two).
    assert ctx.sizes == [(16, 12), (8, 6), (16, 12), (16, 12)]
    tokens = case.text.shape[1]
    assert ctx.key_lengths == [("self", 16 * 12), ("cross", tokens), ("self", 8 * 6),
                               ("cross", tokens)] + [("self", 16 * 12), ("cross", tokens)] * 2


def test_missing_sdxl_conditioning_or_a_wrong_sample_shape_is_an_input_error(cases, loaded):
    sample, timesteps, text, added = cases["sdxl"].jax_inputs()
    unet = loaded("sdxl")
    with pytest.raises(InputError, match="text_embeds"):
        unet(sample, timesteps, text)
    with pytest.raises(InputError, match="sample must be"):
        unet(sample[..., :3], timesteps, text, added)


@pytest.fixture(scope="module")
def mini_folder(tmp_path_factory) -> Path:
    """A one-block diffusers UNet (fast to load, attention upcast) with random weights."""
    folder = tmp_path_factory.mktemp("mini")
    diffusers.UNet2DConditionModel(**MINI).save_pretrained(folder, safe_serialization=True)
    return folder


def _primitive_input_dtypes(jaxpr, names: set[str]) -> list[tuple[str, tuple]]:
    """(primitive, operand dtypes) of every `names` equation, nested jaxprs included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in names:
            found.append((eqn.primitive.name, tuple(str(v.aval.dtype) for v in eqn.invars)))
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple | list) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found.extend(_primitive_input_dtypes(inner, names))
    return found


def test_bfloat16_compute_runs_every_conv_and_matmul_in_bfloat16_but_upcast_attention(
    mini_folder,
):
    unet = UNet2DConditionModel.from_pretrained(mini_folder, dtype=jnp.bfloat16)
    assert unet.config.upcast_attention
    assert {str(p.dtype) for p in jax.tree.leaves(nnx.state(unet, nnx.Param))} == {"float32"}
    graphdef, state = nnx.split(unet)
    inputs = (jnp.zeros((1, 8, 8, 4)), jnp.ones(()), jnp.zeros((1, 3, MINI["cross_attention_dim"])))
    closed = jax.make_jaxpr(lambda s, *a: nnx.merge(graphdef, s)(*a))(state, *inputs)
    assert closed.out_avals[0].dtype == jnp.bfloat16
    ops = _primitive_input_dtypes(closed.jaxpr, {"conv_general_dilated", "dot_general"})
    in_float32 = [op for op in ops if "float32" in op[1]]
    # Only q k^T and softmax(.) v of each attention (two per transformer block) are float32.
    blocks = sum(len(m.transformer_blocks) for _, m in unet.iter_modules()
                 if isinstance(m, Transformer2DModel))
    assert in_float32 == [("dot_general", ("float32", "float32"))] * (2 * 2 * blocks)
    assert len(ops) > 4 * 2 * blocks


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"),
         "missing: mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"),
        (lambda s: s.update({"mid_block.resnets.2.conv1.weight": np.zeros((1,), np.float32)}),
         "unexpected: mid_block.resnets.2.conv1.weight"),
        (lambda s: s.update({"up_blocks.0.resnets.1.norm1.weight": np.ones(8, np.float32)}),
         r"mis-shaped: up_blocks.0.resnets.1.norm1.weight \(8,\)"),
    ],
    ids=["missing", "unexpected", "mis-shaped"],
)
def test_a_checkpoint_that_does_not_fit_names_the_tensor(mini_folder, tmp_path, edit, message):
    state = load_state_dict(mini_folder)
    edit(state)
    save_state_dict(state, tmp_path)
    shutil.copy(mini_folder / "config.json", tmp_path)
    with pytest.raises(WeightsError, match=message):
        UNet2DConditionModel.from_pretrained(tmp_path)


def test_per_resnet_transformer_depths_resolve_like_diffusers():
    config = dict(
        MINI, block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D",) * 2,
        up_block_types=("CrossAttnUpBlock2D",) * 2, layers_per_block=2,
        transformer_layers_per_block=[[1, 2], [2, 1]],
        reverse_transformer_layers_per_block=[[1, 2, 1], [2, 1, 1]],
    )
    with torch.device("meta"):
        reference = diffusers.UNet2DConditionModel(**config)
    ours = UNetConfig.from_dict(config)

    def depths(block):
        return tuple(len(t.transformer_blocks) for t in block.attentions)

    assert [depths(b) for b in reference.down_blocks] == [ours.down_transformer_layers(i)
                                                          for i in range(2)]
    assert [depths(b) for b in reference.up_blocks] == [ours.up_transformer_layers(i)
                                                        for i in range(2)]
    assert depths(reference.mid_block) == (ours.mid_transformer_layers,)


SDXL_BASE_JSON = {  # stabilityai/stable-diffusion-xl-base-1.0 unet/config.json, abridged
    "_class_name": "UNet2DConditionModel", "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64, "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280],
    "class_embed_type": None, "cross_attention_dim": 2048, "dual_cross_attention": False,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "layers_per_block": 2, "mid_block_type": "UNetMidBlock2DCrossAttn",
    "num_attention_heads": None, "projection_class_embeddings_input_dim": 2816,
    "resnet_skip_time_act": False, "time_cond_proj_dim": None,
    "transformer_layers_per_block": [1, 2, 10], "upcast_attention": None,
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}


def test_the_sdxl_base_config_resolves_per_block_values_like_diffusers():
    config = UNetConfig.from_dict(SDXL_BASE_JSON)
    assert config.block_heads == (5, 10, 20)
    assert config.time_embed_dim == 1280
    assert [config.down_transformer_layers(i) for i in range(3)] == [(1, 1), (2, 2), (10, 10)]
    assert [config.up_transformer_layers(i) for i in range(3)] == [(10,) * 3, (2,) * 3, (1,) * 3]
    assert config.mid_transformer_layers == 10


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"class_embed_type": "timestep"}, "class_embed_type"),
        ({"dual_cross_attention": True}, "dual_cross_attention"),
        ({"time_embedding_type": "fourier"}, "time_embedding_type"),
        ({"mid_block_type": "UNetMidBlock2DSimpleCrossAttn"}, "mid_block_type"),
        ({"resnet_time_scale_shift": "scale_shift"}, "resnet_time_scale_shift"),
        ({"only_cross_attention": True}, "only_cross_attention"),
        ({"encoder_hid_dim": 8}, "encoder_hid_dim"),
        ({"down_block_types": ["AttnDownBlock2D", "DownBlock2D"]}, "down_block_types"),
        ({"attention_head_dim": [2, 4, 8]}, "attention_head_dim"),
        ({"attention_head_dim": 3}, "attention_head_dim"),
        ({"transformer_layers_per_block": [[1, 2], 1]}, "transformer_layers_per_block"),
        ({"addition_embed_type": "text_time"}, "addition_time_embed_dim"),
    ],
)
def test_an_unsupported_config_is_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        UNetConfig.from_dict({**SD15, **override})


def test_from_pretrained_refuses_an_unsupported_config_file(mini_folder, tmp_path):
    raw = json.loads((mini_folder / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, "class_embed_type": "timestep"}))
    with pytest.raises(ConfigError, match="class_embed_type"):
        UNet2DConditionModel.from_pretrained(tmp_path)
