"""Multi-host training for real: two processes joined by `jax.distributed` (gloo on the
CPU), one device each, mesh (data 2): the train CLI's --coordinator flags, per-host data
shards, gradients all-reduced across processes, one checkpoint written together."""

import socket
import subprocess
import sys
from pathlib import Path

from child_env import one_device_env
from tiny_model import small_train_fields, write_small_train_model

from dreamlayer_jax.training.checkpoint import Checkpointer

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_train_one_model_in_lockstep(tmp_path):
    model = write_small_train_model(tmp_path / "model")
    fields = small_train_fields(model, num_steps=4, checkpoint_every=2, mesh=(2, 1, 1),
                                progress=False)
    config = tmp_path / "config.py"
    config.write_text(f"def get_config():\n    return {fields!r}\n")
    env = one_device_env()  # 1 device each
    port = _free_port()
    procs = [subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), "--config", str(config),
         "--workdir", str(tmp_path / "work"), "--coordinator", f"localhost:{port}",
         "--num-processes", "2", "--process-id", str(i)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for i in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    lines = [out.strip().splitlines()[-1] for out, _ in outs]
    # the loss is a global mean over both hosts' rows: the same number on both
    assert lines[0] == lines[1] and lines[0].startswith("trained to step 4"), lines
    assert Checkpointer(tmp_path / "work").latest_step() == 4
    assert (tmp_path / "work" / "export" / "unet" / "config.json").is_file()
