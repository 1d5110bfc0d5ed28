"""Scheduler configuration: one frozen dataclass read from a diffusers `scheduler_config.json`.

A diffusers scheduler config names its class (`_class_name`) and lists the constructor's
arguments. `SchedulerConfig.from_dict(raw, kind)` keeps the keys this project knows, fills
the missing ones with the defaults of the *diffusers class of that kind* (DDIM and DDPM
default to `timestep_spacing="leading"` and `clip_sample=True`, Euler and DPM-Solver to
`"linspace"`), carries the options only other kinds read, unread, in `extra` (diffusers'
configs keep them too: a DDIM built from an Euler config saved with `clip_sample=False`
does not clip), ignores keys no supported scheduler reads, and refuses with a
`ConfigError` naming the key any value that would change the result but is not
implemented here.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from dreamlayer_jax.errors import ConfigError

# Canonical kind -> diffusers class name.
CLASS_NAMES: dict[str, str] = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpm++2m": "DPMSolverMultistepScheduler",
}

_ALIASES: dict[str, str] = {
    **{kind: kind for kind in CLASS_NAMES},
    **{cls.lower(): kind for kind, cls in CLASS_NAMES.items()},
    "euler_ancestral": "euler_a",
    "dpmsolver++": "dpm++2m",
    "dpm++": "dpm++2m",
    "dpm_solver_multistep": "dpm++2m",
}

_COMMON = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "prediction_type",
    "timestep_spacing",
    "steps_offset",
    "rescale_betas_zero_snr",
)

# Fields of SchedulerConfig each kind reads (the others keep their defaults).
_FIELDS: dict[str, tuple[str, ...]] = {
    "ddim": (*_COMMON, "clip_sample", "clip_sample_range", "set_alpha_to_one"),
    "ddpm": (*_COMMON, "clip_sample", "clip_sample_range", "variance_type"),
    "euler": (*_COMMON, "final_sigmas_type", "use_karras_sigmas"),
    "euler_a": _COMMON,
    "dpm++2m": (
        *_COMMON,
        "solver_order",
        "algorithm_type",
        "solver_type",
        "lower_order_final",
        "euler_at_final",
        "final_sigmas_type",
        "lambda_min_clipped",
        "use_karras_sigmas",
        "variance_type",
    ),
}

# Per-kind defaults that differ from the dataclass defaults (diffusers' class defaults).
_KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "ddim": {"timestep_spacing": "leading", "clip_sample": True},
    "ddpm": {"timestep_spacing": "leading", "clip_sample": True, "variance_type": "fixed_small"},
    "euler": {},
    "euler_a": {},
    "dpm++2m": {},
}

# diffusers options that are accepted only at the value that leaves the result unchanged.
_FIXED: dict[str, dict[str, tuple[Any, ...]]] = {
    "ddim": {"thresholding": (False,)},
    "ddpm": {"thresholding": (False,)},
    "euler": {
        "interpolation_type": ("linear",),
        "timestep_type": ("discrete",),
        "use_exponential_sigmas": (False,),
        "use_beta_sigmas": (False,),
        "sigma_min": (None,),
        "sigma_max": (None,),
    },
    "euler_a": {},
    "dpm++2m": {
        "thresholding": (False,),
        "use_exponential_sigmas": (False,),
        "use_beta_sigmas": (False,),
        "use_lu_lambdas": (False,),
        "use_flow_sigmas": (False,),
        "use_dynamic_shifting": (False,),
    },
}

_CHOICES: dict[str, tuple[Any, ...]] = {
    "beta_schedule": ("linear", "scaled_linear", "squaredcos_cap_v2"),
    "prediction_type": ("epsilon", "v_prediction", "sample"),
    "timestep_spacing": ("leading", "trailing", "linspace"),
    "final_sigmas_type": ("zero", "sigma_min"),
    "solver_order": (1, 2),
    "algorithm_type": ("dpmsolver++",),
    "solver_type": ("midpoint", "heun"),
}


_OPTIONS = tuple(sorted({key for fields in _FIELDS.values() for key in fields}))


def _frozen(value: Any) -> Any:
    """A config value made hashable (lists become tuples)."""
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value


def resolve_kind(name: str) -> str:
    """Map a scheduler name (`"ddim"`, `"euler_a"`, `"DDIMScheduler"`, ...) to its kind."""
    kind = _ALIASES.get(str(name).strip().lower())
    if kind is None:
        known = ", ".join([*CLASS_NAMES, *CLASS_NAMES.values()])
        raise ConfigError(f"unknown scheduler {name!r} (supported: {known})")
    return kind


@dataclass(frozen=True)
class SchedulerConfig:
    """Every option of the supported schedulers; `kind` says which of them are read.

    Hashable (lists become tuples) so a scheduler holding it can be a static jit argument.
    """

    kind: str
    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None
    prediction_type: str = "epsilon"
    timestep_spacing: str = "linspace"
    steps_offset: int = 0
    rescale_betas_zero_snr: bool = False
    # DDIM / DDPM
    clip_sample: bool = False
    clip_sample_range: float = 1.0
    set_alpha_to_one: bool = True
    # DDPM: "fixed_small" | "fixed_small_log" | "fixed_large"; DPM: None only.
    variance_type: str | None = None
    # Euler / DPM-Solver
    final_sigmas_type: str = "zero"
    use_karras_sigmas: bool = False
    # DPM-Solver
    solver_order: int = 2
    algorithm_type: str = "dpmsolver++"
    solver_type: str = "midpoint"
    lower_order_final: bool = True
    euler_at_final: bool = False
    lambda_min_clipped: float = -math.inf
    # the raw config's values of options this kind does not read but another kind does,
    # `((key, value), ...)` sorted: kept so that a scheduler built from this one's config
    # (`scheduler_from_config(sched.config, "ddim")`) reads them, as diffusers keeps them
    extra: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def from_dict(cls, raw: dict[str, Any], kind: str) -> SchedulerConfig:
        """Build the config of scheduler `kind` from a diffusers config dict."""
        kind = resolve_kind(kind)
        values: dict[str, Any] = {**_KIND_DEFAULTS[kind]}
        for key in _FIELDS[kind]:
            if key in raw:
                values[key] = raw[key]
        for key, allowed in _FIXED[kind].items():
            if key in raw and raw[key] not in allowed:
                raise ConfigError(
                    f"{CLASS_NAMES[kind]}: {key}={raw[key]!r} is not supported "
                    f"(allowed: {', '.join(map(repr, allowed))})"
                )
        read = set(_FIELDS[kind])
        values["extra"] = tuple(sorted((key, _frozen(raw[key])) for key in _OPTIONS
                                       if key in raw and key not in read))
        if values.get("trained_betas") is not None:
            values["trained_betas"] = tuple(float(b) for b in values["trained_betas"])
        if values.get("lambda_min_clipped") is None:
            values.pop("lambda_min_clipped", None)
        try:
            config = cls(kind=kind, **values)
        except TypeError as exc:
            raise ConfigError(f"{CLASS_NAMES[kind]}: {exc}") from exc
        config.validate()
        return config

    def validate(self) -> None:
        """Raise `ConfigError` naming the first unsupported or invalid value."""
        owner = CLASS_NAMES[self.kind]
        read = set(_FIELDS[self.kind])
        for key, allowed in _CHOICES.items():
            value = getattr(self, key)
            if key in read and value not in allowed:
                raise ConfigError(
                    f"{owner}: {key}={value!r} is not supported "
                    f"(allowed: {', '.join(map(repr, allowed))})"
                )
        if not isinstance(self.num_train_timesteps, int) or self.num_train_timesteps < 2:
            raise ConfigError(f"{owner}: num_train_timesteps must be an integer >= 2")
        if self.trained_betas is not None and len(self.trained_betas) != self.num_train_timesteps:
            raise ConfigError(
                f"{owner}: trained_betas has {len(self.trained_betas)} values, "
                f"num_train_timesteps is {self.num_train_timesteps}"
            )
        if self.kind == "euler_a" and self.prediction_type == "sample":
            raise ConfigError(f"{owner}: prediction_type='sample' is not supported")
        if self.kind == "ddpm" and self.variance_type not in (
            "fixed_small",
            "fixed_small_log",
            "fixed_large",
        ):
            raise ConfigError(f"{owner}: variance_type={self.variance_type!r} is not supported")
        if self.kind == "dpm++2m" and self.variance_type in ("learned", "learned_range"):
            raise ConfigError(f"{owner}: variance_type={self.variance_type!r} is not supported")

    def to_dict(self) -> dict[str, Any]:
        """The diffusers-style config dict (`_class_name` plus the keys this kind reads)."""
        out: dict[str, Any] = {"_class_name": CLASS_NAMES[self.kind]}
        for f in dataclasses.fields(self):
            if f.name in _FIELDS[self.kind]:
                value = getattr(self, f.name)
                out[f.name] = list(value) if isinstance(value, tuple) else value
        for key, value in self.extra:
            out[key] = list(value) if isinstance(value, tuple) else value
        if out.get("lambda_min_clipped") == -math.inf:
            out.pop("lambda_min_clipped")  # JSON has no -inf; absent means the default
        return out
