"""What every scheduler shares: the sampling plan and state pytrees, and the scheduler base.

A scheduler is static (its config and the host-side `alphas_cumprod` table); it can be
closed over or passed to `jax.jit` as an argument (it is a pytree with no leaves).
`set_timesteps` runs on the host and returns a `SamplingPlan`: fixed-size arrays with
everything a step needs, indexed by the step number `i`, so one step is a handful of
gathers and elementwise ops and a whole sampler is one `lax.scan` over `i`.

    plan = sched.set_timesteps(30)
    state = sched.init_state(x.shape)
    x = noise * sched.init_noise_sigma(plan)
    for i in range(plan.num_steps):            # or lax.scan over i
        out = model(sched.scale_model_input(plan, i, x), plan.timesteps[i])
        x, state = sched.step(plan, state, i, out, x, key=jax.random.fold_in(key, i))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self

import jax
import jax.numpy as jnp
import numpy as np

from dreamlayer_jax.schedulers.config import SchedulerConfig, resolve_kind
from dreamlayer_jax.schedulers.noise_schedule import make_alphas_cumprod

ArrayLike = jax.Array | np.ndarray | float | int


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SamplingPlan:
    """The per-step tables of one sampling run of `S` steps (a pytree; `stochastic` is static).

    timesteps:        [S] the timestep to give the model at step i (int32, or float32 for
                      the Euler family).
    sigmas:           [S + 1] noise level sqrt((1 - a) / a) before step i (and after the
                      last step at index S).
    input_scale:      [S] `scale_model_input` multiplies the sample by this.
    signal_scale:     [S] } the sample at the start of step i is
    noise_scale:      [S] } signal_scale[i] * x0 + noise_scale[i] * noise.
    init_noise_sigma: [] the std of the starting sample.
    coefs:            the scheduler's own per-step coefficients, each [S].
    stochastic:       whether `step` needs a PRNG key (or explicit noise).
    """

    timesteps: jax.Array
    sigmas: jax.Array
    input_scale: jax.Array
    signal_scale: jax.Array
    noise_scale: jax.Array
    init_noise_sigma: jax.Array
    coefs: Mapping[str, jax.Array]
    stochastic: bool = dataclasses.field(default=False, metadata={"static": True})

    @property
    def num_steps(self) -> int:
        """S, the number of denoising steps (static)."""
        return int(self.timesteps.shape[0])

    @classmethod
    def build(
        cls,
        *,
        timesteps: np.ndarray,
        sigmas: np.ndarray,
        input_scale: np.ndarray,
        signal_scale: np.ndarray,
        noise_scale: np.ndarray,
        init_noise_sigma: float,
        coefs: Mapping[str, np.ndarray],
        stochastic: bool,
    ) -> SamplingPlan:
        """Make a plan from host arrays: timesteps keep int/float kind, the rest become f32."""

        def f32(a: Any) -> jax.Array:
            return jnp.asarray(np.asarray(a, dtype=np.float64).astype(np.float32))

        ts = np.asarray(timesteps)
        ts = ts.astype(np.int32 if np.issubdtype(ts.dtype, np.integer) else np.float32)
        return cls(
            timesteps=jnp.asarray(ts),
            sigmas=f32(sigmas),
            input_scale=f32(input_scale),
            signal_scale=f32(signal_scale),
            noise_scale=f32(noise_scale),
            init_noise_sigma=f32(init_noise_sigma),
            coefs={k: f32(v) for k, v in coefs.items()},
            stochastic=bool(stochastic),
        )


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SamplerState:
    """What a multistep scheduler carries between steps (empty for single-step ones).

    prev_x0:  [*sample_shape] float32, the previous step's data prediction (DPM-Solver).
    has_prev: [] float32, 1.0 once `prev_x0` holds a real prediction, else 0.0.
    """

    prev_x0: jax.Array | None = None
    has_prev: jax.Array | None = None


def compute_dtype(x: jax.Array) -> jnp.dtype:
    """Scheduler arithmetic runs in at least float32 whatever the sample's dtype."""
    return jnp.promote_types(x.dtype, jnp.float32)


def step_noise(
    plan: SamplingPlan, x: jax.Array, key: jax.Array | None, noise: jax.Array | None
) -> jax.Array | None:
    """The standard-normal noise of a stochastic step: `noise` if given, else drawn from `key`."""
    if not plan.stochastic:
        return None
    if noise is not None:
        return jnp.asarray(noise, compute_dtype(x))
    if key is None:
        raise ValueError("this scheduler's step is stochastic: pass key= (or noise=)")
    return jax.random.normal(key, x.shape, compute_dtype(x))


@dataclasses.dataclass(frozen=True, eq=False)
class Scheduler:
    """Base of the schedulers: a config plus host-side tables; every method is pure.

    Equality and hash go by type and config (the tables are functions of the config), so a
    scheduler is a valid static argument and `jax.jit` does not retrace for an equal one.
    """

    config: SchedulerConfig
    alphas_cumprod: np.ndarray = dataclasses.field(init=False, repr=False)

    kind: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if self.config.kind != self.kind:
            raise ValueError(f"{type(self).__name__} needs a {self.kind!r} config")
        table = make_alphas_cumprod(self.config)
        table.setflags(write=False)
        object.__setattr__(self, "alphas_cumprod", table)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.config == self.config  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.config))

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | SchedulerConfig, **overrides: Any) -> Self:
        """Build from a diffusers config dict (or a `SchedulerConfig`), with keyword overrides."""
        if isinstance(config, SchedulerConfig):
            raw = {**config.to_dict(), **overrides}
        else:
            raw = {**dict(config), **overrides}
        return cls(SchedulerConfig.from_dict(raw, resolve_kind(cls.kind)))

    @property
    def num_train_timesteps(self) -> int:
        return self.config.num_train_timesteps

    @property
    def prediction_type(self) -> str:
        return self.config.prediction_type

    def set_timesteps(self, num_inference_steps: int) -> SamplingPlan:
        """The plan of a run of `num_inference_steps` steps (host-side, not jittable)."""
        raise NotImplementedError

    def init_state(
        self, sample_shape: Sequence[int], dtype: jnp.dtype = jnp.float32
    ) -> SamplerState:
        """The state before the first step (empty for single-step schedulers)."""
        del sample_shape, dtype
        return SamplerState()

    def step(
        self,
        plan: SamplingPlan,
        state: SamplerState,
        i: ArrayLike,
        model_output: jax.Array,
        x: jax.Array,
        *,
        key: jax.Array | None = None,
        noise: jax.Array | None = None,
    ) -> tuple[jax.Array, SamplerState]:
        """One denoising step from the sample `x` at step `i` to the next; `i` may be traced.

        `model_output` has the shape of `x` (any shape, e.g. `[B, L, h, w, c]`). Stochastic
        schedulers draw their noise from `key`, or use `noise` (standard normal, `x`'s shape).
        Returns the new sample (in `x`'s dtype) and state.
        """
        raise NotImplementedError

    def scale_model_input(self, plan: SamplingPlan, i: ArrayLike, x: jax.Array) -> jax.Array:
        """The model's input at step `i` (Euler divides by sqrt(sigma^2 + 1), others keep x)."""
        return (x * plan.input_scale[i]).astype(x.dtype)

    def init_noise_sigma(self, plan: SamplingPlan) -> jax.Array:
        """The standard deviation to scale unit noise by to get the starting sample."""
        return plan.init_noise_sigma

    def add_noise_at_step(
        self, plan: SamplingPlan, i: ArrayLike, x0: jax.Array, noise: jax.Array
    ) -> jax.Array:
        """The sample the scheduler expects at the start of step `i` for clean data `x0`."""
        dt = compute_dtype(x0)
        out = plan.signal_scale[i] * x0.astype(dt) + plan.noise_scale[i] * noise.astype(dt)
        return out.astype(x0.dtype)
