"""Training faults in real processes: SIGKILL at random moments, a disk that fills up.

Every run is a `python -c` child training the small model with a checkpoint after every
step (async saves, so a kill often lands while a save is in flight). The children share
a persistent compilation cache, so only the first one compiles the step.
"""

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from child_env import one_device_env
from tiny_model import small_train_fields, write_small_train_model

from dreamlayer_jax.training.checkpoint import Checkpointer

STEPS = 6
KILLS = 2  # runs killed at random moments before one is let finish

# The real train CLI; the test's hook (after each complete checkpoint: print the losses
# so far, and from `fill_disk_after` on let no file grow past 1 KiB, i.e. a full disk)
# is passed to the Trainer the CLI builds.
CHILD = textwrap.dedent("""
    import json, resource, signal, sys
    import jax
    jax.config.update("jax_default_matmul_precision", "highest")
    from dreamlayer_jax.cli import train
    from dreamlayer_jax.training import loop

    config, workdir, fill_disk_after = sys.argv[1], sys.argv[2], int(sys.argv[3])

    class Trainer(loop.Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, on_checkpoint=self.saved, **kwargs)

        def saved(self, step):
            print("losses", json.dumps(self.history), flush=True)
            if step == fill_disk_after:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

    loop.Trainer = Trainer
    code = train.main(["--config", config, "--workdir", workdir, "--resume"])
    sys.stdout.flush()
    sys.exit(code)
""")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    return write_small_train_model(root / "model"), root


def _env(root):
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(root / "jax_cache")
    # one CPU device: the config's mesh (-1, 1, 1) is 1 x 1 x 1
    return one_device_env(JAX_COMPILATION_CACHE_DIR=cache,
                          JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")


def _start(model, workdir, root, fill_disk_after=-1, **overrides):
    fields = small_train_fields(model, num_steps=STEPS, checkpoint_every=1, keep_checkpoints=2,
                                **overrides)
    config = root / f"config_{len(list(root.glob('config_*.py')))}.py"
    config.write_text(f"def get_config():\n    return {fields!r}\n")
    return subprocess.Popen(
        [sys.executable, "-u", "-c", CHILD, str(config), str(workdir), str(fill_disk_after)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(root))


def _losses(stdout: str) -> dict[int, float]:
    out = {}
    for line in stdout.splitlines():
        if line.startswith("losses "):
            out.update({int(s): loss for s, loss in json.loads(line[7:])})
    return out


def test_random_sigkills_always_resume_from_a_complete_checkpoint(model):
    model, root = model
    reference = _start(model, root / "reference", root, export=False)
    out, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err[-2000:]
    want = _losses(out)
    assert sorted(want) == list(range(1, STEPS + 1))

    rng = np.random.default_rng(0)
    workdir, seen, kills = root / "killed", {}, 0
    for _ in range(2 * KILLS):  # kill up to KILLS runs at random moments, then let one finish
        child = _start(model, workdir, root, export=False)
        if kills < KILLS:
            # wait for the first checkpoint of this run (compiling is over), then a
            # random delay inside the remaining steps: often mid-save (one per step)
            line = child.stdout.readline()  # past the trainer's own lines (resumed, logs)
            while line and not line.startswith("losses"):
                line = child.stdout.readline()
            assert line.startswith("losses"), child.stderr.read()[-2000:]
            seen.update(_losses(line))
            time.sleep(rng.uniform(0.0, 0.5))
            child.kill()
            out, _ = child.communicate(timeout=60)
            seen.update(_losses(out))
            kills += child.returncode == -9
            latest = Checkpointer(workdir).latest_step()
            assert latest is not None and latest >= 1
            assert (workdir / "checkpoints" / str(latest) / "state").is_dir()
            continue
        out, err = child.communicate(timeout=600)
        assert child.returncode == 0, err[-2000:]
        seen.update(_losses(out))
        break
    assert kills >= 1, "no run was killed before it finished"
    assert Checkpointer(workdir).latest_step() == STEPS
    # every step any run computed, before or after a kill, equals the uninterrupted run
    assert sorted(seen) == list(range(1, STEPS + 1))
    for step, loss in seen.items():
        assert loss == want[step], (step, loss, want[step])


def test_disk_full_during_a_save_exits_2_and_keeps_the_previous_checkpoint(model):
    model, root = model
    workdir = root / "full_disk"
    child = _start(model, workdir, root, fill_disk_after=2, export=False)
    out, err = child.communicate(timeout=600)
    lines = err.strip().splitlines()
    assert child.returncode == 2, err[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error:") and "checkpoint" in lines[0], lines
    # the libraries' own messages went to the log (cut at the 1 KiB the "disk" allows)
    assert (workdir / "train.log").stat().st_size > 0
    assert Checkpointer(workdir).latest_step() == 2
    assert sorted(_losses(out)) == [1, 2]
    # the kept checkpoint still restores: a resumed run finishes from it
    resumed = _start(model, workdir, root, export=False)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-2000:]
    assert sorted(_losses(out)) == list(range(3, STEPS + 1))
