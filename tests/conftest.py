"""Shared test set-up: float32 everywhere, a persistent compilation cache, quick compiles.

XLA:CPU's compile time is most of this suite's time (hundreds of small programs, each run
a few times), and most of that is LLVM optimising the generated loops. The tests (and
the tools they start as subprocesses, which inherit `XLA_FLAGS`) compile at LLVM's
level 0: 2-3x faster compiles, the same HLO programs, the same library kernels (Eigen,
YNNPACK) and the same IEEE arithmetic (no fast-math at any level). A
`--xla_backend_optimization_level` already in `XLA_FLAGS` wins.

Subprocesses also cache every program they compile (min compile time 0), so a tool run
twice with the same model compiles once.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join(
        [*os.environ.get("XLA_FLAGS", "").split(), "--xla_backend_optimization_level=0"])
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # subprocesses

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
_cache = os.environ.get("JAX_COMPILATION_CACHE_DIR")
if _cache:
    jax.config.update("jax_compilation_cache_dir", _cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random DreamLayer model folder (pixel codec, 8x8, 3 foregrounds max)."""
    from tiny_model import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_paper_model_dir(tmp_path_factory):
    """`tiny_model_dir`'s model in the paper variant (no boxes needed)."""
    from tiny_model import write_tiny_paper_model

    return write_tiny_paper_model(tmp_path_factory.mktemp("tiny_paper") / "model")


@pytest.fixture(scope="session")
def tiny_pipe(tiny_model_dir):
    from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline

    return DreamLayerPipeline.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def app_server(tmp_path_factory):
    """The browser app (built-in model) served on a free port for the whole session."""
    pytest.importorskip("fastapi", reason="the app extra (fastapi, uvicorn) is not installed")
    from app_server import running_app

    with running_app(tmp_path_factory.mktemp("app")) as server:
        yield server


# The slowest modules, slowest first (module totals of the last full run's durations).
# They run first, each whole on one worker (`make test`: `--dist loadfile
# --no-loadscope-reorder`), so that no long module starts last while the other worker
# has nothing left to do; the rest follow in collection order.
SLOW_MODULES = ("test_readme.py", "test_bad_inputs.py", "test_training_faults.py",
                "test_paper_training.py", "test_layerdiffuse.py", "test_latent_cache.py",
                "test_eval.py", "test_training.py", "test_sdxl_layers.py", "test_train_cli.py",
                "test_device_suite.py", "test_paper_model.py", "test_memory_plan.py",
                "test_paper_sampling.py", "test_multiprocess.py", "test_layer_unet.py",
                "test_transparency_training.py", "test_decompose_edit.py", "test_app_api.py",
                "test_sample_cli.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOW_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: in-module order kept
