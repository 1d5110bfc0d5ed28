"""Per-step throughput numbers: FLOPs from XLA's cost analysis against a hand count, the
peak table, and the logged numbers consistent with each other."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dreamlayer_jax.training.throughput import (
    Throughput,
    compiled_flops,
    format_throughput,
    peak_flops,
)


def test_compiled_flops_equal_a_hand_count_of_a_matmul_and_a_dense_layer():
    m, k, n = 64, 96, 32
    matmul = jax.jit(lambda a, b: a @ b).lower(jnp.ones((m, k)), jnp.ones((k, n))).compile()
    assert compiled_flops(matmul) == 2 * m * k * n

    def dense_loss(w, x):  # forward 2mkn, backward for w 2mkn (x needs no gradient)
        return jnp.sum(x @ w)

    grad = jax.jit(jax.grad(dense_loss)).lower(jnp.ones((k, n)), jnp.ones((m, k))).compile()
    assert compiled_flops(grad) == pytest.approx(2 * m * k * n, rel=0.05)


def test_compiled_flops_are_per_device_when_partitioned():
    if jax.device_count() < 8:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    a = jax.device_put(jnp.ones((256, 128)), NamedSharding(mesh, P("data")))
    compiled = jax.jit(lambda a, b: a @ b).lower(a, jnp.ones((128, 64))).compile()
    assert compiled_flops(compiled) == 2 * 256 * 128 * 64 / 8


def test_peaks_come_from_the_table_or_a_measured_cpu_matmul():
    class Device:
        platform, device_kind = "gpu", "NVIDIA H200"

    assert peak_flops(Device()) == (989e12, "h200 bf16 peak")
    Device.device_kind = "TPU v5 lite"
    assert peak_flops(Device())[0] == 197e12
    Device.device_kind = "Mystery 9000"
    assert peak_flops(Device())[0] is None
    cpu_peak, source = peak_flops(jax.devices("cpu")[0])
    assert cpu_peak > 1e8 and source == "measured f32 matmul"


def test_report_numbers_are_consistent():
    numbers = Throughput(flops_per_step=4e12, examples_per_step=8, num_devices=4,
                         peak_per_device=1e14).report(steps=10, seconds=5.0)
    assert numbers["seconds_per_step"] == 0.5 and numbers["examples_per_second"] == 16.0
    assert numbers["tflops_per_device"] == pytest.approx(8.0)
    assert numbers["mfu"] == pytest.approx(0.08)
    line = format_throughput(10, 0.25, numbers)
    assert line == ("step 10 loss 0.2500 | 0.5 s/step 16 ex/s 8 TFLOP/s/device MFU 8.0%")
    unknown = Throughput(None, 8, 1, None).report(steps=2, seconds=1.0)
    assert set(unknown) == {"seconds_per_step", "examples_per_second"}


def test_step_meter_averages_the_flops_of_batches_of_different_shapes():
    """Slot buckets give steps of different layer counts: each shape's program is counted
    once, and a lap reports the mean FLOPs of the steps it covers."""
    from dreamlayer_jax.training.throughput import StepMeter

    k, n = 32, 16
    step = jax.jit(lambda w, x: x @ w)
    w = jnp.ones((k, n))
    small, large = (w, jnp.ones((4, k))), (w, jnp.ones((12, k)))
    meter = StepMeter(step, small, examples_per_step=4, devices=jax.devices()[:1],
                      start_step=0)
    for args in (small, large, large):
        meter.add(args)
        step(*args)
    numbers = meter.lap(3)
    mean = (2 * 4 * k * n + 2 * 2 * 12 * k * n) / 3
    assert numbers["tflops_per_device"] * 1e12 * numbers["seconds_per_step"] == pytest.approx(
        mean, rel=1e-6)
    assert len(meter._flops) == 2  # two shapes, two counts
