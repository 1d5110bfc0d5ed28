"""Per-step throughput of training: seconds per step, examples/s, TFLOP/s per device, MFU.

The FLOPs of one train step come once from XLA's cost analysis of the compiled step
(`compiled_flops`: for a program partitioned over a mesh, the count is per device). The
peak is a table of the accelerators' dense bf16 peaks per chip, or, on a CPU, a matmul
measured on the spot (`measured_cpu_peak`), since CPU peaks differ by machine.
MFU = achieved FLOP/s per device / peak FLOP/s per device.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PEAK_BF16_TFLOPS = {  # dense bf16 per chip, vendor figures
    "tpu v4": 275.0,
    "tpu v5 lite": 197.0,  # v5e
    "tpu v5e": 197.0,
    "tpu v5p": 459.0,
    "tpu v5": 459.0,
    "tpu v6 lite": 918.0,  # v6e (Trillium)
    "tpu v6e": 918.0,
    "h200": 989.0,
    "h100": 989.0,  # SXM
    "a100": 312.0,
    "l4": 121.0,
}


def compiled_flops(compiled: Any) -> float | None:
    """FLOPs of one call of a compiled program (per device when partitioned); None when
    the backend gives no cost analysis."""
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if isinstance(analysis, list | tuple):
        analysis = analysis[0] if analysis else {}
    flops = (analysis or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


@functools.cache
def measured_cpu_peak(size: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of a float32 `size^3` matmul on this CPU (best of `repeats`): the CPU's
    practical peak, measured once per process."""
    a = jnp.ones((size, size), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    jax.block_until_ready(matmul(a))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(matmul(a))
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def peak_flops(device: Any | None = None) -> tuple[float | None, str]:
    """`(peak FLOP/s per device, where it comes from)` for `device` (default: the first)."""
    device = device or jax.devices()[0]
    kind = str(getattr(device, "device_kind", "")).lower()
    if device.platform == "cpu":
        return measured_cpu_peak(), "measured f32 matmul"
    for name, tflops in sorted(PEAK_BF16_TFLOPS.items(), key=lambda kv: -len(kv[0])):
        if name in kind:
            return tflops * 1e12, f"{name} bf16 peak"
    return None, f"unknown device kind {kind!r}"


@dataclass(frozen=True)
class Throughput:
    """Turns step counts and wall time into the logged throughput numbers.

    `flops_per_step`: per device (`compiled_flops`); `examples_per_step`: the global
    batch; `peak_per_device`: FLOP/s (`peak_flops`), None when unknown.
    """

    flops_per_step: float | None
    examples_per_step: int
    num_devices: int
    peak_per_device: float | None

    def report(self, steps: int, seconds: float) -> dict[str, float]:
        """`seconds_per_step`, `examples_per_second` and, where FLOPs are known,
        `tflops_per_device` and `mfu` over `steps` steps that took `seconds`."""
        seconds = max(seconds, 1e-9)
        out = {"seconds_per_step": seconds / steps,
               "examples_per_second": steps * self.examples_per_step / seconds}
        if self.flops_per_step is not None:
            achieved = steps * self.flops_per_step / seconds
            out["tflops_per_device"] = achieved / 1e12
            if self.peak_per_device:
                out["mfu"] = achieved / self.peak_per_device
        return out


def step_flops(jitted: Any, *args: Any) -> float | None:
    """FLOPs per device of one call of `jitted(*args)`, from XLA's cost analysis of the
    compiled program (`compiled_flops`). JAX keeps the executable with its lowering, and
    the call `jitted(*args)` then finds both: counting costs no second compilation, only
    compiling before the first step instead of at it."""
    try:
        compiled = jitted.lower(*args).compile()
    except Exception:  # noqa: BLE001 - an estimate; never stop a run for it
        return None
    return compiled_flops(compiled)


class StepMeter:
    """The train loop's throughput: each step program's FLOPs counted once, steps timed
    between logs.

    The first step's program is compiled here (`step_flops`), so no lap includes its
    compilation (a recompilation for a changed input layout, as after the first step's
    donated state, falls in the first lap). `add(args)` before each step counts that
    step's FLOPs; a batch of a shape not seen yet (slot buckets: another layer count) is
    compiled and counted on the spot. `lap(step)` returns `Throughput.report` over the
    steps since the previous lap (their mean FLOPs), plus `steps_per_second`.
    """

    def __init__(self, jitted: Any, args: tuple[Any, ...], examples_per_step: int,
                 devices: Any, start_step: int):
        devices = list(devices)
        self.jitted = jitted
        self._flops: dict[Any, float | None] = {}
        per_device = self._count(args)
        peak, self.peak_source = peak_flops(devices[0])
        self.throughput = Throughput(per_device, examples_per_step, len(devices), peak)
        self._lap_flops: list[float | None] = []
        self.tick, self.last = time.perf_counter(), start_step

    def _count(self, args: tuple[Any, ...]) -> float | None:
        key = tuple((tuple(np.shape(x)), str(getattr(x, "dtype", "")))
                    for x in jax.tree.leaves(args[-1]))  # the batch's shapes
        if key not in self._flops:
            self._flops[key] = step_flops(self.jitted, *args)
        return self._flops[key]

    def add(self, args: tuple[Any, ...]) -> None:
        """One step of `args` (the jitted step's arguments, the batch last) is run next."""
        self._lap_flops.append(self._count(args))

    def lap(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        steps, seconds = max(step - self.last, 1), now - self.tick
        self.tick, self.last = now, step
        throughput = self.throughput
        if self._lap_flops:
            known = [f for f in self._lap_flops if f is not None]
            per_step = sum(known) / len(known) if len(known) == len(self._lap_flops) else None
            throughput = dataclasses.replace(throughput, flops_per_step=per_step)
            self._lap_flops = []
        numbers = throughput.report(steps, seconds)
        numbers["steps_per_second"] = 1.0 / numbers["seconds_per_step"]
        return numbers


def format_throughput(step: int, loss: float, numbers: dict[str, float]) -> str:
    """One log line: `step 100 loss 0.1234 | 0.52 s/step 15.4 ex/s 0.012 TFLOP/s/dev MFU 3.1%`."""
    parts = [f"step {step} loss {loss:.4f} |", f"{numbers['seconds_per_step']:.3g} s/step",
             f"{numbers['examples_per_second']:.3g} ex/s"]
    if "tflops_per_device" in numbers:
        parts.append(f"{numbers['tflops_per_device']:.3g} TFLOP/s/device")
    if "mfu" in numbers:
        parts.append(f"MFU {100 * numbers['mfu']:.1f}%")
    return " ".join(parts)
