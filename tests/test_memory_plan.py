"""The memory planner (`training.memory_plan`): the state exact from shapes, the
temporaries' line from compiled sizes, and the whole plan against what XLA allocates."""

import jax
import numpy as np
from flax import nnx

from dreamlayer_jax.models.layer_unet import DreamLayerConfig, DreamLayerUNet
from dreamlayer_jax.models.unet import UNet2DConditionModel
from dreamlayer_jax.models.unet_config import UNetConfig
from dreamlayer_jax.parallel.mesh import make_mesh
from dreamlayer_jax.training import memory_plan as mp
from dreamlayer_jax.training.config import TrainConfig
from dreamlayer_jax.training.optimizer import make_optimizer, trained_mask
from dreamlayer_jax.training.state import init_train_state

UNET = {"sample_size": 16, "in_channels": 4, "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D"], "up_block_types": ["CrossAttnUpBlock2D"],
        "block_out_channels": [32], "layers_per_block": 1, "attention_head_dim": 8,
        "norm_num_groups": 8, "cross_attention_dim": 16}
TEXT = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "max_position_embeddings": 8, "vocab_size": 64}
SPEC = mp.ModelSpec(UNET, {"variant": "paper", "context_width": 8, "context_heads": 2,
                           "context_layers": 1}, (TEXT,), tokens=8)


def _real_state(train_params):
    rngs = nnx.Rngs(0)
    model = DreamLayerUNet(UNet2DConditionModel(UNetConfig.from_dict(UNET), rngs=rngs),
                           DreamLayerConfig.from_dict(dict(SPEC.dreamlayer)), rngs=rngs)
    params = nnx.to_pure_dict(nnx.split(model)[1])
    tx = make_optimizer(TrainConfig(model="x", train_params=train_params), params)
    return init_train_state(params, tx, 0, trained_mask(params, train_params))


def _nbytes(tree):
    return sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree))


def test_state_bytes_are_exact_and_honour_the_mask():
    full = mp.state_bytes(SPEC, "all")
    kv = mp.state_bytes(SPEC, "kv")
    for planned, train_params in ((full, "all"), (kv, "kv")):
        real = _real_state(train_params)
        assert planned.params == _nbytes(real.params)
        assert planned.adam == _nbytes(real.opt_state)
        assert planned.ema == _nbytes(real.ema)
    assert full.grads == full.params and full.trained_count == full.param_count
    assert kv.trained_count < full.trained_count
    assert kv.ema == kv.grads == 4 * kv.trained_count  # frozen leaves: no EMA, no grads
    assert kv.adam < full.adam / 2  # ... and no Adam moments
    half = mp.state_bytes(SPEC, "all", fsdp=2)
    assert full.params / 2 <= half.params < full.params  # small leaves stay replicated


def test_plan_against_what_xla_allocates():
    """The planned total (exact state + batch + traced residuals: the bf16 weight copy
    fit from batches 1 and 2 at 8x8, activations at the size itself) against
    `memory_analysis()` of the compiled step, within 10%; per-device arguments on an
    fsdp mesh of 2 devices against the sharded state."""
    fixed = 2 * mp.residual_bytes(SPEC, "all", 1, 3, 8) - mp.residual_bytes(SPEC, "all", 2, 3, 8)
    per_scene = mp.residual_bytes(SPEC, "all", 1, 3, 16) - fixed
    line = mp.TempFit(float(fixed), per_scene / mp.units(1, 3, 16), ())
    state = mp.state_bytes(SPEC, "all")
    planned = mp.plan(SPEC, line, state, 2, 3, 16)
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    measured = mp.compiled_bytes(mp.compile_step(SPEC, "all", 2, 3, 16, mesh))
    # arguments: the state (grads are temporaries) + text encoders + batch
    args = state.total - state.grads + planned.batch_bytes
    assert abs(args - measured["arguments"]) <= 0.01 * measured["arguments"]
    assert abs(planned.total - measured["total"]) <= 0.10 * measured["total"], (
        planned.total, measured)
    if jax.device_count() >= 2:
        mesh2 = make_mesh(1, 2, 1, devices=jax.devices()[:2])
        m2 = mp.compiled_bytes(mp.compile_step(SPEC, "all", 2, 3, 16, mesh2))
        s2 = mp.state_bytes(SPEC, "all", fsdp=2)
        args2 = s2.total - s2.grads + mp.plan(SPEC, line, s2, 1, 3, 16).batch_bytes
        assert abs(args2 - m2["arguments"]) <= 0.02 * m2["arguments"], (args2, m2)


def test_temporaries_line():
    fit = mp.fit_temporaries([(100.0, 1100), (200.0, 2100)])
    assert abs(fit(300.0) - 3100) < 1e-6 and abs(fit.check(300.0, 3100)) < 1e-9


def test_largest_batch():
    fit = mp.TempFit(1e6, 100.0, ())
    state = mp.state_bytes(SPEC, "all")
    cap = 64 * 2**20
    best = mp.largest_batch(SPEC, fit, state, 4, 64, cap)
    assert best >= 1
    assert mp.plan(SPEC, fit, state, best, 4, 64).total <= 0.9 * cap
    assert mp.plan(SPEC, fit, state, best + 1, 4, 64).total > 0.9 * cap


def test_score_residuals_are_recognised():
    """The xla attention keeps its scores (f32 exp, bf16 probabilities) for the backward
    pass; `_is_score` names exactly those, so `--attention flash` can leave them out."""
    import jax.numpy as jnp
    from jax._src.ad_checkpoint import saved_residuals

    from dreamlayer_jax.attention.backends import attend

    def scores(shape):
        q = jax.ShapeDtypeStruct(shape, jnp.bfloat16)
        found = saved_residuals(lambda q, k, v: attend(q, k, v, backend="xla").astype(
            jnp.float32).sum(), q, q, q)
        return [a.shape for a, why in found if mp._is_score(why, a.shape)]

    assert scores((2, 64, 4, 8)) == [(2, 4, 64, 64)] * 2
    chunked = scores((16, 4096, 4, 8))  # large scores: queries in chunks (lax.map)
    assert len(chunked) == 2 and all(s[-1] == 4096 for s in chunked)
