"""Scheduler configs: diffusers' class defaults, `_class_name` and name overrides,
switching kinds, refused values, and folders diffusers reads back."""

import json

import diffusers
import numpy as np
import pytest
from diffusers_schedulers import DIFFUSERS, SD

from dreamlayer_jax.errors import ConfigError
from dreamlayer_jax.schedulers.ddim import DDIMScheduler
from dreamlayer_jax.schedulers.dpm_solver import DPMSolverMultistepScheduler
from dreamlayer_jax.schedulers.euler import EulerAncestralDiscreteScheduler
from dreamlayer_jax.schedulers.factory import load_scheduler, save_scheduler, scheduler_from_config


@pytest.mark.parametrize("kind", list(DIFFUSERS))
def test_defaults_equal_diffusers_class_defaults(kind):
    ours = scheduler_from_config({}, kind).config.to_dict()
    theirs = dict(DIFFUSERS[kind]().config)
    assert ours.pop("_class_name") == DIFFUSERS[kind].__name__
    for key, value in ours.items():
        assert theirs[key] == value, key


def test_scheduler_from_config_reads_class_name_and_name_overrides_it():
    stable_diffusion = {  # Stable Diffusion 1.x's scheduler_config.json
        "_class_name": "PNDMScheduler",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "num_train_timesteps": 1000,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "trained_betas": None,
    }
    with pytest.raises(ConfigError, match="PNDMScheduler"):
        scheduler_from_config(stable_diffusion)
    ddim = scheduler_from_config(stable_diffusion, "ddim")
    assert isinstance(ddim, DDIMScheduler)
    assert (ddim.config.steps_offset, ddim.config.set_alpha_to_one) == (1, False)
    assert isinstance(
        scheduler_from_config(stable_diffusion, "DPMSolverMultistepScheduler"),
        DPMSolverMultistepScheduler,
    )
    assert isinstance(
        scheduler_from_config({"_class_name": "EulerAncestralDiscreteScheduler"}),
        EulerAncestralDiscreteScheduler,
    )
    assert scheduler_from_config(stable_diffusion, "euler_a") == scheduler_from_config(
        {**stable_diffusion, "_class_name": "EulerAncestralDiscreteScheduler"}
    )
    with pytest.raises(ConfigError, match="heun_2s"):
        scheduler_from_config(stable_diffusion, "heun_2s")


def test_a_switched_scheduler_keeps_the_options_only_its_kind_reads(tmp_path):
    """An Euler-ancestral config saved with `clip_sample=False` (the built-in model's) gives
    a DDIM that does not clip, as diffusers' `from_config` does, not DDIM's default."""
    raw = {**SD, "_class_name": "EulerAncestralDiscreteScheduler", "clip_sample": False,
           "set_alpha_to_one": False, "variance_type": "fixed_large",
           "prediction_type": "v_prediction"}
    euler = scheduler_from_config(raw)
    ddim = scheduler_from_config(euler.config, "ddim")
    theirs = diffusers.DDIMScheduler.from_config(
        diffusers.EulerAncestralDiscreteScheduler.from_config(raw).config).config
    assert (ddim.config.clip_sample, ddim.config.set_alpha_to_one) == (False, False)
    assert (theirs.clip_sample, theirs.set_alpha_to_one) == (False, False)
    assert scheduler_from_config(euler.config, "ddpm").config.variance_type == "fixed_large"
    # DPM-Solver reads variance_type too and, like diffusers', ignores the fixed ones
    assert scheduler_from_config(euler.config, "dpm++2m").config.variance_type == "fixed_large"
    saved = save_scheduler(euler, tmp_path)
    assert json.loads(saved.read_text())["clip_sample"] is False
    assert load_scheduler(tmp_path) == euler


@pytest.mark.parametrize(
    ("kind", "key", "value"),
    [
        ("ddim", "beta_schedule", "sigmoid"),
        ("ddim", "thresholding", True),
        ("ddim", "timestep_spacing", "karras"),
        ("ddpm", "variance_type", "learned_range"),
        ("euler", "interpolation_type", "log_linear"),
        ("euler_a", "prediction_type", "sample"),
        ("dpm++2m", "algorithm_type", "sde-dpmsolver++"),
        ("dpm++2m", "solver_order", 3),
        ("dpm++2m", "use_lu_lambdas", True),
    ],
)
def test_unsupported_values_raise_config_error_naming_them(kind, key, value):
    with pytest.raises(ConfigError, match=key):
        scheduler_from_config({key: value}, kind)


@pytest.mark.parametrize("steps", [0, 1001])
def test_step_counts_outside_the_training_range_raise(steps):
    ddim = DDIMScheduler.from_config({**SD, "steps_offset": 1, "clip_sample": False})
    with pytest.raises(ConfigError, match="num_inference_steps"):
        ddim.set_timesteps(steps)


def test_schedulers_load_from_folders_and_save_configs_diffusers_reads(tmp_path):
    diffusers.DDIMScheduler(**SD, steps_offset=1, prediction_type="v_prediction").save_config(
        tmp_path / "model" / "scheduler"
    )
    loaded = load_scheduler(tmp_path / "model")  # finds the scheduler/ sub-folder
    assert isinstance(loaded, DDIMScheduler) and loaded.config.prediction_type == "v_prediction"
    assert load_scheduler(tmp_path / "model", "euler", subfolder="scheduler").kind == "euler"

    saved = save_scheduler(loaded, tmp_path / "copy")
    assert load_scheduler(tmp_path / "copy") == loaded
    theirs = diffusers.DDIMScheduler.from_config(json.loads(saved.read_text()))
    for key, value in loaded.config.to_dict().items():
        if key != "_class_name":
            assert theirs.config[key] == value, key


def test_trained_betas_define_the_schedule():
    betas = np.linspace(1e-4, 0.03, 50) ** 1.5
    ref = diffusers.DDPMScheduler(num_train_timesteps=50, trained_betas=betas.tolist())
    sched = scheduler_from_config(dict(ref.config), "ddpm")
    np.testing.assert_allclose(sched.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=1e-6)
    with pytest.raises(ConfigError, match="trained_betas"):
        scheduler_from_config({"trained_betas": betas.tolist()}, "ddim")  # 50 != 1000 steps
