"""Schedulers: parity with diffusers, one-compilation scan loops, DDIM inversion (configs:
test_scheduler_configs.py).

Parity runs the same deterministic stand-in "model" (a fixed function of the model input
and the timestep, written identically in torch and jax) through diffusers' loop and
through ours (jitted, inside `lax.scan`) and compares every intermediate sample. For the
stochastic samplers the *same* standard-normal arrays are injected into both: diffusers
gets them through `variance_noise` (DDIM) or a patched `randn_tensor` (DDPM,
Euler-ancestral), ours through `step(..., noise=...)`. That `key=` draws exactly
`jax.random.normal(key, x.shape)` is tested on its own.
"""

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers.schedulers import scheduling_ddpm, scheduling_euler_ancestral_discrete
from diffusers_schedulers import DIFFUSERS, SD
from jax import lax

from dreamlayer_jax.schedulers.ddim import DDIMScheduler, ddim_invert_step
from dreamlayer_jax.schedulers.dpm_solver import DPMSolverMultistepScheduler
from dreamlayer_jax.schedulers.euler import EulerAncestralDiscreteScheduler
from dreamlayer_jax.schedulers.factory import scheduler_from_config
from dreamlayer_jax.schedulers.forward_process import add_noise, get_target, snr, velocity
from dreamlayer_jax.schedulers.loop import ddim_invert_loop, sample_loop

LINEAR = {"beta_schedule": "linear"}
COSINE = {"beta_schedule": "squaredcos_cap_v2"}
SHAPE = (1, 2, 4, 4, 3)  # [B, L, h, w, c]
RTOL = 1e-5


def torch_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    phase = 0.1 * torch.arange(x.numel(), dtype=torch.float32).reshape(x.shape)
    return 0.8 * torch.tanh(x) + 0.3 * torch.cos(t.float() / 150.0 + phase)


def jax_model(x: jax.Array, t: jax.Array, i=None) -> jax.Array:
    phase = 0.1 * jnp.arange(x.size, dtype=jnp.float32).reshape(x.shape)
    return 0.8 * jnp.tanh(x) + 0.3 * jnp.cos(t.astype(jnp.float32) / 150.0 + phase)


def diffusers_trajectory(ref, x, noises, eta, monkeypatch, begin=0):
    """Samples after each step of diffusers' loop from `begin`, with injected noise."""
    current = {"i": 0}

    def injected_randn(shape, **kwargs):
        return torch.from_numpy(noises[current["i"]])

    monkeypatch.setattr(scheduling_ddpm, "randn_tensor", injected_randn)
    monkeypatch.setattr(scheduling_euler_ancestral_discrete, "randn_tensor", injected_randn)
    if begin:
        ref.set_begin_index(begin)
    sample, out = torch.from_numpy(x), []
    for i, t in enumerate(ref.timesteps[begin:], start=begin):
        current["i"] = i
        m = torch_model(ref.scale_model_input(sample, t), t)
        if isinstance(ref, diffusers.DDIMScheduler):
            kwargs = {"eta": eta, "variance_noise": torch.from_numpy(noises[i]) if eta else None}
            sample = ref.step(m, t, sample, **kwargs).prev_sample
        else:
            sample = ref.step(m, t, sample).prev_sample
        out.append(sample.numpy())
    return np.stack(out)


def jax_trajectory(sched, plan, x, noises, begin=0):
    """Our loop as one jitted lax.scan, with the noise fed per step."""

    @jax.jit
    def run(plan, x, noises):
        def body(carry, inputs):
            x, state = carry
            i, noise = inputs
            m = jax_model(sched.scale_model_input(plan, i, x), plan.timesteps[i])
            x, state = sched.step(plan, state, i, m, x, noise=noise)
            return (x, state), x

        steps = jnp.arange(begin, plan.num_steps)
        _, xs = lax.scan(body, (x, sched.init_state(x.shape)), (steps, noises[begin:]))
        return xs

    return np.asarray(run(plan, jnp.asarray(x), jnp.asarray(noises)))


def assert_trajectories_close(ours, ref, start):
    """Each step within RTOL of the scale of the samples seen so far (start included)."""
    scale = max(1.0, float(np.abs(start).max()))
    for k, (a, b) in enumerate(zip(ours, ref, strict=True)):
        scale = max(scale, float(np.abs(b).max()))
        err = float(np.abs(a - b).max())
        assert err <= RTOL * scale, f"step {k}: max error {err:.3g} at scale {scale:.3g}"


BASE_CASES = [
    ("ddim", {**SD, "steps_offset": 1, "set_alpha_to_one": False, "clip_sample": False}),
    ("ddim", {**COSINE, "timestep_spacing": "trailing", "clip_sample": True}),
    ("ddpm", {**SD, "steps_offset": 1, "clip_sample": False}),
    ("ddpm", {**LINEAR, "timestep_spacing": "linspace", "variance_type": "fixed_large"}),
    ("euler", {**SD, "timestep_spacing": "leading", "steps_offset": 1}),
    ("euler", {**LINEAR, "timestep_spacing": "trailing", "use_karras_sigmas": True}),
    ("euler_a", {**SD}),
    ("euler_a", {**LINEAR, "timestep_spacing": "trailing"}),
    ("dpm++2m", {**SD}),
    ("dpm++2m", {**COSINE, "timestep_spacing": "leading", "steps_offset": 1}),
]
V_NOCLIP = {"prediction_type": "v_prediction", "clip_sample": False}
SIGMA_MIN = {"final_sigmas_type": "sigma_min"}
# (kind, config, steps, eta): the base cases for both prediction types, then variants.
PARITY = [
    (kind, {**cfg, "prediction_type": pt}, 10, 0.0)
    for pt in ("epsilon", "v_prediction")
    for kind, cfg in BASE_CASES
] + [
    ("ddim", {**SD, "steps_offset": 1, "clip_sample": False}, 10, 0.6),
    ("ddim", {**LINEAR, "timestep_spacing": "linspace", "clip_sample": False}, 10, 1.0),
    ("ddim", dict(rescale_betas_zero_snr=True, timestep_spacing="trailing", **V_NOCLIP), 10, 0.0),
    ("dpm++2m", {**SD, "use_karras_sigmas": True}, 20, 0.0),
    ("dpm++2m", {**SD, "timestep_spacing": "trailing", "prediction_type": "v_prediction"}, 8, 0.0),
    ("dpm++2m", dict(LINEAR, solver_type="heun", lower_order_final=False, **SIGMA_MIN), 16, 0.0),
    ("euler", {**SD, "final_sigmas_type": "sigma_min", "prediction_type": "sample"}, 10, 0.0),
]


def _case_id(case):
    kind, cfg, steps, eta = case
    keys = [cfg.get("prediction_type", "epsilon"), cfg.get("beta_schedule", "linear")]
    keys += [
        f"{k}={v}"
        for k, v in cfg.items()
        if k not in ("prediction_type", "beta_schedule", "beta_start", "beta_end")
    ]
    return "-".join([kind, *map(str, keys), f"S{steps}", f"eta{eta}"])


def _pair(kind, cfg):
    ref = DIFFUSERS[kind](**cfg)
    return ref, scheduler_from_config({**ref.config, "_class_name": type(ref).__name__})


@pytest.mark.parametrize("case", PARITY, ids=[_case_id(c) for c in PARITY])
def test_sampling_loop_matches_diffusers(case, monkeypatch):
    kind, cfg, steps, eta = case
    ref, sched = _pair(kind, cfg)
    ref.set_timesteps(steps)
    plan = sched.set_timesteps(steps, eta=eta) if kind == "ddim" else sched.set_timesteps(steps)

    ts = np.asarray(plan.timesteps)
    if np.issubdtype(ts.dtype, np.integer):
        np.testing.assert_array_equal(ts, ref.timesteps.numpy())
    else:
        np.testing.assert_allclose(ts, ref.timesteps.numpy(), rtol=1e-6)
    if kind in ("euler", "euler_a", "dpm++2m"):
        np.testing.assert_allclose(np.asarray(plan.sigmas), ref.sigmas.numpy(), rtol=1e-6)
    np.testing.assert_allclose(
        float(sched.init_noise_sigma(plan)), float(ref.init_noise_sigma), rtol=1e-6
    )

    rng = np.random.default_rng(0)
    noise0 = rng.standard_normal(SHAPE).astype(np.float32)
    noises = rng.standard_normal((steps, *SHAPE)).astype(np.float32)
    start = noise0 * float(ref.init_noise_sigma)
    expected = diffusers_trajectory(ref, start, noises, eta, monkeypatch)
    ours = jax_trajectory(sched, plan, start, noises)
    assert_trajectories_close(ours, expected, start)


def test_dpm_solver_partial_run_starts_first_order_like_diffusers(monkeypatch):
    """img2img-style: starting at step k, the first step made is first order."""
    ref, sched = _pair("dpm++2m", SD)
    ref.set_timesteps(12)
    plan = sched.set_timesteps(12)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(SHAPE).astype(np.float32)
    noises = np.zeros((12, *SHAPE), np.float32)
    expected = diffusers_trajectory(ref, x, noises, 0.0, monkeypatch, begin=5)
    assert_trajectories_close(jax_trajectory(sched, plan, x, noises, begin=5), expected, x)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_invert_step_matches_diffusers_inverse_scheduler(spacing):
    cfg = {
        **SD,
        "steps_offset": 1,
        "set_alpha_to_one": False,
        "clip_sample": False,
        "timestep_spacing": spacing,
        "prediction_type": "v_prediction",
    }
    ref = diffusers.DDIMInverseScheduler(**cfg)
    ref.set_timesteps(10)
    sched = DDIMScheduler.from_config(cfg)
    plan = sched.set_timesteps(10)
    np.testing.assert_array_equal(np.asarray(plan.timesteps)[::-1], ref.timesteps.numpy())

    x0 = np.random.default_rng(2).standard_normal(SHAPE).astype(np.float32)
    sample, x = torch.from_numpy(x0), jnp.asarray(x0)
    for i, t in zip(range(9, -1, -1), ref.timesteps, strict=True):
        sample = ref.step(torch_model(sample, t), t, sample).prev_sample
        x = ddim_invert_step(sched, plan, i, jax_model(x, plan.timesteps[i]), x)
        np.testing.assert_allclose(np.asarray(x), sample.numpy(), rtol=0, atol=RTOL * 4)


@pytest.fixture(scope="module")
def sd_ddim():
    return DDIMScheduler.from_config(
        {**SD, "steps_offset": 1, "set_alpha_to_one": False, "clip_sample": False}
    )


def test_ddim_inversion_is_exact_when_the_model_ignores_the_sample(sd_ddim):
    """A DDIM step is affine in x for a fixed model output, and inversion is its inverse."""
    x0 = jax.random.normal(jax.random.key(0), SHAPE)

    def model(x, t, i):
        return jnp.full_like(x, 0.5) * jnp.cos(t.astype(jnp.float32) / 200.0)

    plan = sd_ddim.set_timesteps(25)
    x_t, levels = jax.jit(lambda p, x: ddim_invert_loop(sd_ddim, p, model, x))(plan, x0)
    assert levels.shape == (25, *SHAPE)
    np.testing.assert_array_equal(np.asarray(levels[0]), np.asarray(x_t))
    back = jax.jit(lambda p, x: sample_loop(sd_ddim, p, model, x))(plan, x_t)
    np.testing.assert_allclose(np.asarray(back), np.asarray(x0), atol=2e-5)


def test_ddim_inversion_reconstructs_with_a_linear_model_to_first_order(sd_ddim):
    """eps = 0.1 x + 0.05: inversion evaluates the model one level off, an O(1/S) error."""
    x0 = jax.random.normal(jax.random.key(1), SHAPE)

    def model(x, t, i):
        return 0.1 * x + 0.05

    @jax.jit
    def round_trip(plan, x0):
        x_t, _ = ddim_invert_loop(sd_ddim, plan, model, x0)
        return sample_loop(sd_ddim, plan, model, x_t)

    errors = [
        float(jnp.abs(round_trip(sd_ddim.set_timesteps(s), x0) - x0).max()) for s in (50, 100)
    ]
    assert errors[0] < 0.1  # measured 0.071 at 50 steps (x0 ~ N(0, 1))
    assert errors[1] < 0.6 * errors[0]  # halves with twice the steps (measured 0.036)


def test_whole_loop_compiles_once_and_keys_drive_the_noise():
    sched = EulerAncestralDiscreteScheduler.from_config(SD)
    traces = []

    def model(x, t, i):
        traces.append(1)
        return jax_model(x, t)

    run = jax.jit(lambda sched, plan, x, key: sample_loop(sched, plan, model, x, key=key))
    x = jnp.ones(SHAPE)
    a = run(sched, sched.set_timesteps(10), x, jax.random.key(0))
    b = run(sched, sched.set_timesteps(10), x, jax.random.key(0))
    c = run(
        EulerAncestralDiscreteScheduler.from_config(SD),
        sched.set_timesteps(10),
        2 * x,
        jax.random.key(1),
    )
    assert len(traces) == 1 and run._cache_size() == 1
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(c))
    with pytest.raises(ValueError, match="key"):
        sample_loop(sched, sched.set_timesteps(10), model, x)


def test_noise_fn_rewrites_each_steps_draw_and_sees_the_sample_it_starts_from():
    sched = EulerAncestralDiscreteScheduler.from_config(SD)
    plan, x, key = sched.set_timesteps(4), jnp.ones(SHAPE), jax.random.key(2)

    def run(noise_fn):
        return sample_loop(sched, plan, lambda x, t, i: jax_model(x, t), x, key=key,
                           noise_fn=noise_fn)

    plain = run(None)
    np.testing.assert_array_equal(np.asarray(run(lambda n, x, i: n)), np.asarray(plain))
    # the draw replaced by the starting sample's first layer: the same as stepping by hand
    by_hand, state = x, sched.init_state(SHAPE)
    for i in range(4):
        out = jax_model(sched.scale_model_input(plan, i, by_hand), plan.timesteps[i])
        noise = jnp.broadcast_to(by_hand[:, :1], SHAPE)
        by_hand, state = sched.step(plan, state, i, out, by_hand, noise=noise)
    rewritten = run(lambda n, x, i: jnp.broadcast_to(x[:, :1], n.shape))
    np.testing.assert_allclose(np.asarray(rewritten), np.asarray(by_hand), atol=1e-5)
    assert not np.allclose(np.asarray(rewritten), np.asarray(plain))


def test_step_with_key_draws_standard_normal_noise_of_the_sample_shape():
    sched = EulerAncestralDiscreteScheduler.from_config(SD)
    plan = sched.set_timesteps(10)
    x = jnp.linspace(-2, 2, np.prod(SHAPE)).reshape(SHAPE)
    key = jax.random.key(3)
    by_key, _ = sched.step(
        plan, sched.init_state(SHAPE), 4, jax_model(x, plan.timesteps[4]), x, key=key
    )
    by_noise, _ = sched.step(
        plan,
        sched.init_state(SHAPE),
        4,
        jax_model(x, plan.timesteps[4]),
        x,
        noise=jax.random.normal(key, SHAPE),
    )
    np.testing.assert_array_equal(np.asarray(by_key), np.asarray(by_noise))


def test_step_keeps_the_sample_dtype_and_any_shape():
    sched = DPMSolverMultistepScheduler.from_config(SD)
    plan = sched.set_timesteps(5)
    x = jnp.ones((3, 5, 7), jnp.bfloat16)
    state = sched.init_state(x.shape)
    for i in range(2):
        x, state = sched.step(plan, state, i, 0.5 * x, x)
    assert x.dtype == jnp.bfloat16 and x.shape == (3, 5, 7)
    assert state.prev_x0.dtype == jnp.float32 and float(state.has_prev) == 1.0


@pytest.mark.parametrize("schedule", [SD, COSINE], ids=["scaled_linear", "cosine"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_forward_process_matches_diffusers(schedule, prediction_type):
    ref = diffusers.DDPMScheduler(**schedule, prediction_type=prediction_type)
    sched = scheduler_from_config(dict(ref.config), "ddpm")
    np.testing.assert_allclose(sched.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=1e-6)

    rng = np.random.default_rng(4)
    x0 = rng.standard_normal((3, 2, 4, 4, 3)).astype(np.float32)
    noise = rng.standard_normal(x0.shape).astype(np.float32)
    t = np.array([0, 417, 999])
    tx0, tn, tt = torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t)
    noisy = add_noise(sched, jnp.asarray(x0), jnp.asarray(noise), jnp.asarray(t))
    np.testing.assert_allclose(noisy, ref.add_noise(tx0, tn, tt).numpy(), atol=1e-6)
    v = velocity(sched, jnp.asarray(x0), jnp.asarray(noise), jnp.asarray(t))
    np.testing.assert_allclose(v, ref.get_velocity(tx0, tn, tt).numpy(), atol=1e-6)
    target = get_target(sched, jnp.asarray(x0), jnp.asarray(noise), jnp.asarray(t))
    expected = {"epsilon": noise, "sample": x0, "v_prediction": np.asarray(v)}[prediction_type]
    np.testing.assert_allclose(target, expected, atol=1e-6)
    a = ref.alphas_cumprod.numpy()[t]
    np.testing.assert_allclose(snr(sched, jnp.asarray(t)), a / (1 - a), rtol=1e-5)


def test_add_noise_broadcasts_per_layer_timesteps(sd_ddim):
    x0 = jnp.ones((2, 3, 4, 4, 1))
    noise = jnp.zeros_like(x0)
    t = jnp.array([[0, 500, 999], [999, 500, 0]])
    noisy = add_noise(sd_ddim, x0, noise, t)
    expected = np.sqrt(sd_ddim.alphas_cumprod[np.asarray(t)])[..., None, None, None]
    np.testing.assert_allclose(noisy, np.broadcast_to(expected, x0.shape), rtol=1e-6)


def test_add_noise_at_step_is_the_start_of_that_step(sd_ddim):
    """Each plan's `add_noise_at_step` matches diffusers' add_noise at that timestep."""
    for kind in ("ddim", "euler", "dpm++2m"):
        ref, sched = _pair(kind, SD)
        ref.set_timesteps(10)
        plan = sched.set_timesteps(10)
        x0, noise = np.full(SHAPE, 0.3, np.float32), np.full(SHAPE, -1.2, np.float32)
        t = ref.timesteps[3:4]
        expected = ref.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), t).numpy()
        ours = sched.add_noise_at_step(plan, 3, jnp.asarray(x0), jnp.asarray(noise))
        np.testing.assert_allclose(np.asarray(ours), expected, rtol=1e-6, err_msg=kind)
