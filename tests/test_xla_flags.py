"""`dreamlayer_jax.xla_flags`: the CPU flags are appended once, never over the user's."""

import pytest

from dreamlayer_jax import xla_flags


@pytest.fixture
def fresh(monkeypatch):
    """As if JAX had not started its backends, on the tested jaxlib."""
    monkeypatch.setattr(xla_flags, "_backends_started", lambda: False)
    monkeypatch.setattr(xla_flags, "_jaxlib_known", lambda: True)


def test_flags_are_appended_to_the_users_flags_once(fresh):
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert xla_flags.apply_default_xla_flags(env) == list(xla_flags.CPU_FLAGS)
    assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=8",
                                        *xla_flags.CPU_FLAGS]
    assert xla_flags.apply_default_xla_flags(env) == []  # idempotent


def test_a_flag_the_user_set_and_the_opt_out_are_respected(fresh):
    own = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot"}
    assert xla_flags.apply_default_xla_flags(own) == []
    assert own["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=dot"
    opted_out = {xla_flags.OPT_OUT: "0"}
    assert xla_flags.apply_default_xla_flags(opted_out) == []
    assert "XLA_FLAGS" not in opted_out


def test_nothing_is_set_after_the_backends_started_or_on_an_untested_jaxlib(monkeypatch):
    monkeypatch.setattr(xla_flags, "_jaxlib_known", lambda: True)
    monkeypatch.setattr(xla_flags, "_backends_started", lambda: True)
    assert xla_flags.apply_default_xla_flags({}) == []
    monkeypatch.setattr(xla_flags, "_backends_started", lambda: False)
    monkeypatch.setattr(xla_flags, "_jaxlib_known", lambda: False)
    assert xla_flags.apply_default_xla_flags({}) == []


def test_this_test_process_runs_with_the_flags():
    import os

    import jax

    jax.devices()
    assert xla_flags._backends_started()
    if xla_flags._jaxlib_known() and os.environ.get(xla_flags.OPT_OUT) != "0":
        assert all(flag in os.environ.get("XLA_FLAGS", "") for flag in xla_flags.CPU_FLAGS)
