"""XLA CPU compiler flags this project sets before JAX starts its backends.

jaxlib 0.10's CPU backend hands every convolution to YNNPACK by default. On the
project's reference CPU (2-core AMD EPYC, AVX2, no AVX-512) those kernels ran SD1.5's
3x3 convolutions 2-4x slower than XLA's own (Eigen) convolution, and convolutions are
most of a UNet step: with YNNPACK's convolutions switched off the SD1.5 UNet went from
1.18x slower than diffusers' PyTorch to 0.7x (docs/PERFORMANCE.md). Matmuls and the
fused attention stay on YNNPACK.

`apply_default_xla_flags()` runs when `dreamlayer_jax` is imported. It appends
`CPU_FLAGS` to `XLA_FLAGS` unless

- `DREAMLAYER_XLA_FLAGS=0` is set (opt out),
- `XLA_FLAGS` already sets the same flag (the user's value wins),
- the installed jaxlib is not one this flag was checked on (`TESTED_JAXLIB`: XLA aborts
  the process on a flag it does not know), or
- JAX has already started its backends (flags are read once, at that moment; set
  `XLA_FLAGS` yourself then, or import `dreamlayer_jax` first).
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from importlib import metadata

CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)
TESTED_JAXLIB = ("0.10.",)
OPT_OUT = "DREAMLAYER_XLA_FLAGS"

__all__ = ["CPU_FLAGS", "apply_default_xla_flags"]


def _jaxlib_known() -> bool:
    try:
        version = metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        return False
    return version.startswith(TESTED_JAXLIB)


def _backends_started() -> bool:
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge
    except ImportError:
        return True  # cannot tell: leave the flags alone
    started = getattr(xla_bridge, "backends_are_initialized", None)
    return True if started is None else bool(started())


def apply_default_xla_flags(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Append the `CPU_FLAGS` that apply (module docstring) to `XLA_FLAGS`; returns them."""
    environ = os.environ if environ is None else environ
    if environ.get(OPT_OUT, "1") == "0" or not _jaxlib_known() or _backends_started():
        return []
    current = environ.get("XLA_FLAGS", "")
    added = [flag for flag in CPU_FLAGS if flag.split("=")[0] not in current]
    if added:
        environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added
