"""LayerDiffuse's SDXL UNet patches (`layer_xl_transparent_attn` LoRA, `_conv` diffs):
LDM keys renamed as diffusers' own single-file converter does, and merged into our UNet
exactly as a PyTorch merge of the same deltas into diffusers' UNet2DConditionModel.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx, traverse_util

from dreamlayer_jax.errors import WeightsError
from dreamlayer_jax.io.layerdiffuse import ldm_to_diffusers_key, merge_layerdiffuse_attention

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
from layerdiffuse_reference import assert_relative, nhwc, randomise_, save  # noqa: E402

SDXL_SMALL = dict(  # SDXL's block layout (LDM indices as SDXL's), narrow
    block_out_channels=(16, 32, 32),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    layers_per_block=2, attention_head_dim=(2, 4, 4), transformer_layers_per_block=(1, 1, 2),
    use_linear_projection=True, cross_attention_dim=16, norm_num_groups=8,
    addition_embed_type="text_time", addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=12 + 6 * 8, in_channels=4, out_channels=4,
    sample_size=8)
ATTENTION_SITES = ([(f"input_blocks.{i}.1", d) for i, d in ((4, 1), (5, 1), (7, 2), (8, 2))]
                   + [("middle_block.1", 2)] + [(f"output_blocks.{i}.1", 2) for i in (0, 1, 2)]
                   + [(f"output_blocks.{i}.1", 1) for i in (3, 4, 5)])
LORA_MODULES = [f"diffusion_model.{site}.transformer_blocks.{t}.{attn}.{proj}"
                for site, depth in ATTENTION_SITES for t in range(depth)
                for attn in ("attn1", "attn2") for proj in ("to_q", "to_k", "to_v", "to_out.0")]
DIFF_KEYS = [f"diffusion_model.{k}" for k in (
    "input_blocks.0.0.weight", "input_blocks.1.0.in_layers.2.weight", "input_blocks.3.0.op.weight",
    "input_blocks.4.0.skip_connection.weight", "input_blocks.4.0.emb_layers.1.bias",
    "middle_block.0.out_layers.3.weight", "middle_block.1.proj_in.weight",
    "output_blocks.2.2.conv.weight", "output_blocks.5.2.conv.bias",
    "output_blocks.8.0.out_layers.0.weight", "output_blocks.6.0.skip_connection.weight",
    "time_embed.0.weight", "label_emb.0.2.bias", "out.2.weight", "out.0.bias",
    "input_blocks.7.1.transformer_blocks.1.ff.net.0.proj.weight",
    "output_blocks.0.1.norm.weight")]
SD15_KEYS = [f"model.diffusion_model.{k}" for k in (
    "input_blocks.1.1.proj_in.weight", "input_blocks.2.0.in_layers.0.bias",
    "input_blocks.3.0.op.bias", "input_blocks.9.0.op.weight",
    "input_blocks.11.0.skip_connection.bias",
    "middle_block.2.emb_layers.1.weight", "output_blocks.0.0.in_layers.2.weight",
    "output_blocks.2.1.conv.weight", "output_blocks.5.2.conv.weight",
    "output_blocks.5.1.transformer_blocks.0.attn2.to_k.weight", "output_blocks.11.1.proj_out.bias",
    "output_blocks.8.2.conv.bias", "output_blocks.9.1.norm.weight")]


def diffusers_names(ldm_keys: list[str], layers: int, blocks: int) -> dict[str, str]:
    """diffusers' own single-file converter as the oracle: `{ldm key: diffusers key}`."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    prefix = "model.diffusion_model."
    slots = blocks * (layers + 1)
    checkpoint = {f"{prefix}{part}.{i}.0.filler": None for part, count in (
        ("input_blocks", slots), ("output_blocks", slots), ("middle_block", 3))
        for i in range(count)}
    checkpoint.update({f"{prefix}label_emb.0.{i}.{leaf}": None
                       for i in (0, 2) for leaf in ("weight", "bias")})
    bare = [k.removeprefix("model.").removeprefix("diffusion_model.") for k in ldm_keys]
    for key in bare:  # the converter moves resamplers' weight and bias together
        stem, _, leaf = key.rpartition(".")
        checkpoint[f"{prefix}{stem}.{'bias' if leaf == 'weight' else 'weight'}"] = None
    checkpoint.update({prefix + k: ("tag", i) for i, k in enumerate(bare)})
    config = {"layers_per_block": layers, "addition_embed_type": "text_time"}
    converted = convert_ldm_unet_checkpoint(checkpoint, config)
    found = {v[1]: k for k, v in converted.items() if isinstance(v, tuple)}
    return {key: found[i] for i, key in enumerate(ldm_keys)}


@pytest.mark.parametrize(("keys", "block_layers"), [(LORA_MODULES, (2, 2, 2)),
                                                    (DIFF_KEYS, (2, 2, 2)),
                                                    (SD15_KEYS, (2, 2, 2, 2))])
def test_ldm_keys_are_renamed_as_diffusers_single_file_converter_does(keys, block_layers):
    keys = [k if k.endswith((".weight", ".bias")) else k + ".weight" for k in keys]
    expected = diffusers_names(keys, block_layers[0], len(block_layers))
    assert {k: ldm_to_diffusers_key(k, block_layers) for k in keys} == expected


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    """A small SDXL-shaped diffusers UNet folder, LoRA and diff patch files for it, and
    PyTorch's output after merging the same deltas by diffusers' key names."""
    from diffusers import UNet2DConditionModel as TorchUNet

    root = tmp_path_factory.mktemp("sdxl")
    torch.manual_seed(8)
    model = randomise_(TorchUNet(**SDXL_SMALL), seed=8)
    model.save_pretrained(root / "unet")
    state = model.state_dict()
    weights = [m + ".weight" for m in LORA_MODULES]
    names = diffusers_names(weights + DIFF_KEYS, 2, 3)
    lora, diff, merged = {}, {}, {k: v.clone() for k, v in state.items()}
    for module, key in zip(LORA_MODULES, weights):
        out_dim, in_dim = state[names[key]].shape
        up, down = 0.1 * torch.randn(out_dim, 4), 0.1 * torch.randn(4, in_dim)
        lora[f"{module}::lora::0"], lora[f"{module}::lora::1"] = up, down
        merged[names[key]] += up @ down
    for key in DIFF_KEYS:
        delta = 0.05 * torch.randn_like(state[names[key]])
        diff[f"{key}::diff::0"] = delta
        merged[names[key]] += delta
    model.load_state_dict(merged)
    inputs = (torch.randn(2, 4, 8, 8), torch.tensor([3.0, 500.0]), torch.randn(2, 5, 16),
              {"text_embeds": torch.randn(2, 12),
               "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64], [32, 48, 4, 0, 32, 48]])})
    with torch.no_grad():
        expected = nhwc(model(*inputs[:3], added_cond_kwargs=inputs[3]).sample)
    return {"folder": root / "unet", "expected": expected, "inputs": inputs,
            "lora": save(lora, root / "layer_xl_transparent_attn.safetensors", torch.float16),
            "diff": save(diff, root / "layer_xl_transparent_conv.safetensors", torch.float16),
            "lora32": save(lora, root / "attn_fp32.safetensors"),
            "diff32": save(diff, root / "conv_fp32.safetensors")}


def jax_inputs(inputs):
    sample, t, text, added = inputs
    return (nhwc(sample), t.numpy(), text.numpy(), {k: v.numpy() for k, v in added.items()})


@pytest.fixture(scope="module")
def sdxl_unet(sdxl):
    """Our UNet of the SDXL-shaped folder, loaded once: tests merge into `nnx.clone`s."""
    from dreamlayer_jax.models.unet import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(sdxl["folder"])


def test_merged_lora_and_diff_patches_match_a_pytorch_merge(sdxl, sdxl_unet):
    unet = nnx.clone(sdxl_unet)
    assert merge_layerdiffuse_attention(unet, sdxl["lora32"]) == len(LORA_MODULES)
    assert merge_layerdiffuse_attention(unet, sdxl["diff32"]) == len(DIFF_KEYS)
    out = nnx.jit(lambda m, *a: m(*a))(unet, *jax_inputs(sdxl["inputs"]))
    assert_relative(out, sdxl["expected"], "merged SDXL-shaped UNet")


def test_fp16_patches_merge_into_a_dreamlayer_unet_with_lora_adapters(sdxl, sdxl_unet):
    from dreamlayer_jax.models.layer_unet import DreamLayerConfig, DreamLayerUNet
    from dreamlayer_jax.models.lora import LoRALinear

    plain = nnx.clone(sdxl_unet)
    merge_layerdiffuse_attention(plain, sdxl["lora32"])
    wrapped = DreamLayerUNet(nnx.clone(sdxl_unet), DreamLayerConfig(lora_rank=2),
                             rngs=nnx.Rngs(0))
    merge_layerdiffuse_attention(wrapped, sdxl["lora"])
    ours, theirs = (nnx.to_pure_dict(nnx.state(m, nnx.Param)) for m in (wrapped.unet, plain))
    attn = ("down_blocks", 1, "attentions", 0, "transformer_blocks", 0, "attn1")
    for proj in ("to_q", "to_k", "to_v"):
        path = (*attn, proj)
        np.testing.assert_allclose(traverse_util.flatten_dict(ours)[(*path, "kernel")],
                                   traverse_util.flatten_dict(theirs)[(*path, "kernel")],
                                   atol=2e-3)  # the fp16 file's deltas, rounded
    adapter = wrapped.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q
    assert isinstance(adapter, LoRALinear)
    assert not np.asarray(adapter.lora_up.kernel[...]).any()  # adapters left alone


@pytest.mark.parametrize(("edit", "message"), [
    (lambda s: s.update({"diffusion_model.input_blocks.4.1.transformer_blocks.7.attn1.to_q"
                         "::lora::0": torch.zeros(16, 4),
                         "diffusion_model.input_blocks.4.1.transformer_blocks.7.attn1.to_q"
                         "::lora::1": torch.zeros(4, 16)}),
     "naming no parameter"),
    (lambda s: s.update({"diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q"
                         "::lora::1": torch.zeros(4, 7)}), "mis-shaped"),
    (lambda s: s.update({"diffusion_model.output_blocks.99.0.in_layers.0::lora::0":
                         torch.zeros(2, 4), "diffusion_model.output_blocks.99.0.in_layers.0"
                         "::lora::1": torch.zeros(4, 2)}), "no diffusers UNet name"),
    (lambda s: s.pop("diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_v"
                     "::lora::1"), "malformed lora"),
])
def test_a_patch_that_does_not_fit_leaves_the_unet_unchanged(sdxl, sdxl_unet, tmp_path, edit,
                                                              message):
    from safetensors.torch import load_file

    state = load_file(str(sdxl["lora32"]))
    edit(state)
    unet = sdxl_unet  # unchanged by every case, or the test fails
    before = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(unet, nnx.Param)))
    with pytest.raises(WeightsError, match=message):
        merge_layerdiffuse_attention(unet, save(state, tmp_path / "bad.safetensors"))
    after = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(unet, nnx.Param)))
    jax.tree.map(np.testing.assert_array_equal, before, after)


def test_a_converted_folder_merges_all_its_patches(sdxl, sdxl_unet, tmp_path):
    from dreamlayer_jax.cli.convert_layerdiffuse import main

    out = tmp_path / "layerdiffuse"
    assert main([str(sdxl["lora"]), str(sdxl["diff"]), "--out", str(out)]) == 0
    merged = nnx.clone(sdxl_unet)
    assert merge_layerdiffuse_attention(merged, out) == len(LORA_MODULES) + len(DIFF_KEYS)
    assert merge_layerdiffuse_attention(nnx.clone(sdxl_unet), out / "unet_lora") == len(
        LORA_MODULES)
    with pytest.raises(WeightsError, match="no LayerDiffuse UNet patch"):
        merge_layerdiffuse_attention(merged, tmp_path)
