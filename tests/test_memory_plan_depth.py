"""The memory planner's extrapolation in transformer depth (`memory_plan.residual_split_by_depth`):
traced UNets with 1- and 2-deep transformers give what the whole UNet's trace gives."""

from dreamlayer_jax.training import memory_plan as mp

# two levels with transformers 1 and 3 deep (SDXL's pattern: deeper at the low resolution)
UNET = {"sample_size": 8, "in_channels": 4, "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "block_out_channels": [16, 32], "layers_per_block": 1, "attention_head_dim": 8,
        "norm_num_groups": 8, "cross_attention_dim": 16, "transformer_layers_per_block": [1, 3]}
TEXT = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "max_position_embeddings": 8, "vocab_size": 64}
SDXL_DEPTHS = {"down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D",
                                    "CrossAttnDownBlock2D"],
               "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
               "block_out_channels": [320, 640, 1280], "layers_per_block": 2,
               "transformer_layers_per_block": [1, 2, 10], "attention_head_dim": [5, 10, 20]}


def test_transformer_counts_and_variants():
    # SDXL: level 1: 2 down + 3 up transformers of 2 layers; level 2: 2 + 3 of 10, mid 10
    assert mp.transformer_counts(SDXL_DEPTHS) == (0, 10, 60)
    variants = mp.depth_variants(SDXL_DEPTHS)
    assert [(v["transformer_layers_per_block"], w) for v, w in variants] == [
        (1, 1.0), ([1, 2, 1], 1.0), ([1, 1, 2], 9.0)]
    assert len(mp.depth_variants({**SDXL_DEPTHS, "transformer_layers_per_block": 1})) == 1


def test_depth_extrapolation_matches_the_exact_trace():
    """Every transformer layer of a level keeps the same residuals, so the line through
    depths 1 and 2 gives depth 3 to the byte (tolerance stated in docs/PERFORMANCE.md:
    0.5%, for XLA-independent tracing noise; measured 0 here and on SDXL)."""
    spec = mp.ModelSpec(UNET, {}, (TEXT,), tokens=8)
    exact = mp.residual_split(spec, "all", 1, 3, 8)
    calls = []

    def trace(*args):
        calls.append(args[0].unet["transformer_layers_per_block"])
        return mp.residual_split(*args)

    extrapolated = mp.residual_split_by_depth(spec, "all", 1, 3, 8, trace=trace)
    assert calls == [1, [1, 2]]  # never the 3-deep UNet itself
    assert exact["scores"] > 0
    for k in ("total", "scores"):
        assert abs(extrapolated[k] - exact[k]) <= 0.005 * exact[k], (k, extrapolated, exact)
