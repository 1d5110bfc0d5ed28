"""The environment of the tools the tests start as subprocesses."""

import os
import re


def one_device_env(**extra: str) -> dict[str, str]:
    """This process's environment on one CPU device: `XLA_FLAGS` without the Makefile's
    8 host devices (a config's mesh `(-1, 1, 1)` is then 1 x 1 x 1) but with the other
    flags (tests/conftest.py's compiler setting), plus `extra`."""
    flags = re.sub(r"--xla_force_host_platform_device_count=\S*", "",
                   os.environ.get("XLA_FLAGS", ""))
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": " ".join(flags.split()),
            **extra}
