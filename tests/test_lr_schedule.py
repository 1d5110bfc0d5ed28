"""The learning-rate schedule: warm-up and cosine decay, or warm-up, a plateau and a
cooldown over the last steps (warmup-stable-decay)."""

import numpy as np
import optax
import pytest

from dreamlayer_jax.errors import ConfigError
from dreamlayer_jax.training.config import TrainConfig
from dreamlayer_jax.training.optimizer import learning_rate_schedule


def _rates(**fields) -> np.ndarray:
    cfg = TrainConfig(model="unused", learning_rate=1e-3, warmup_steps=10, **fields)
    schedule = learning_rate_schedule(cfg)
    return np.array([float(schedule(step)) for step in range(cfg.num_steps + 1)])


def test_without_a_cooldown_the_cosine_spans_the_run_after_warm_up():
    expected = optax.warmup_cosine_decay_schedule(0.0, 1e-3, 10, 100, 1e-4)
    np.testing.assert_allclose(_rates(num_steps=100, end_lr_ratio=0.1),
                               [float(expected(s)) for s in range(101)], rtol=1e-6)


def test_a_cooldown_holds_the_peak_then_decays_over_the_last_steps_only():
    rates = _rates(num_steps=100, end_lr_ratio=0.1, cooldown_steps=30)
    np.testing.assert_allclose(rates[:11], np.linspace(0.0, 1e-3, 11), rtol=1e-6)
    np.testing.assert_allclose(rates[10:71], 1e-3, rtol=1e-6)
    assert (np.diff(rates[70:]) < 0).all()
    assert rates[100] == pytest.approx(1e-4, rel=1e-5)


def test_extending_a_constant_run_with_a_cooldown_keeps_its_rates_up_to_the_cooldown():
    constant = _rates(num_steps=100, end_lr_ratio=1.0)
    extended = _rates(num_steps=160, end_lr_ratio=0.1, cooldown_steps=40)
    np.testing.assert_allclose(extended[:121], np.concatenate([constant, [1e-3] * 20]),
                               rtol=1e-6)


@pytest.mark.parametrize("fields", [{"cooldown_steps": -1},
                                    {"cooldown_steps": 95, "num_steps": 100}])
def test_a_cooldown_that_does_not_fit_the_run_is_refused(fields):
    with pytest.raises(ConfigError, match="cooldown_steps"):
        TrainConfig(model="unused", warmup_steps=10, **{"num_steps": 100, **fields})
