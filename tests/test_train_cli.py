"""train.py's command line: --set pairs, --show-config, meshes that fit, a used workdir
refused, --resume from the saved config (and what it says), TensorBoard's first and
last steps, init_model for every config, build_dataset + data_dir."""

from __future__ import annotations

import dataclasses
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from child_env import one_device_env
from tiny_model import small_train_fields, write_small_train_model

from dreamlayer_jax.errors import ConfigError
from dreamlayer_jax.training.config import (
    FIELD_HELP,
    TrainConfig,
    fit_mesh,
    load_run_config,
    parse_overrides,
)

ROOT = Path(__file__).resolve().parent.parent


def run(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = one_device_env()
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), \
        proc.stderr[-2000:]
    return lines[0]


def test_set_takes_several_pairs_per_flag_and_repeats():
    from dreamlayer_jax.cli.train import build_parser

    args = build_parser().parse_args(["--config", "c.py", "--workdir", "w", "--set",
                                      "model=/m", "num_steps=5", "--set", "mesh=-1,2,1"])
    assert parse_overrides(args.overrides) == {"model": "/m", "num_steps": 5,
                                               "mesh": (-1, 2, 1)}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides([["model=/m", "oops"]])


def test_show_config_lists_every_key_with_value_and_meaning(capsys):
    from dreamlayer_jax.cli.train import main

    assert set(FIELD_HELP) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert main(["--show-config", str(ROOT / "configs/sdxl.py"), "--set", "num_steps=7"]) == 0
    out = capsys.readouterr().out
    for f in dataclasses.fields(TrainConfig):
        assert f"\n{f.name} " in f"\n{out}", f.name
    assert re.search(r"^num_steps +7  \(default 1000\)$", out, re.M)
    assert FIELD_HELP["mesh"] in out


@pytest.mark.parametrize(("mesh", "devices", "want", "noted"), [
    ((-1, 1, 1), 1, (1, 1, 1), False),
    ((-1, 4, 1), 1, (1, 1, 1), True),   # configs/sdxl.py on one device
    ((-1, 4, 1), 8, (2, 4, 1), False),
    ((-1, 4, 1), 6, (3, 2, 1), True),
    ((1, -1, 2), 8, (1, 4, 2), False),
    ((2, 2, 1), 4, (2, 2, 1), False),
])
def test_a_mesh_with_minus_one_fits_any_device_count(mesh, devices, want, noted):
    sizes, note = fit_mesh(mesh, devices)
    assert sizes == want and bool(note) == noted
    if noted:
        assert "--set mesh=" in note


def test_a_mesh_that_cannot_fit_says_what_to_pass():
    with pytest.raises(ConfigError, match="needs 4 devices.*--set mesh=-1,1,1"):
        fit_mesh((2, 2, 1), 1)


def test_a_used_workdir_is_refused_unless_resumed_or_overwritten(tmp_path):
    from dreamlayer_jax.training.loop import check_workdir

    work = tmp_path / "run"
    (work / "checkpoints" / "5").mkdir(parents=True)
    (work / "export").mkdir()
    (work / "train.log").write_text("kept\n")
    with pytest.raises(ConfigError, match="step 5.*--resume.*--overwrite"):
        check_workdir(work, resume=False, overwrite=False)
    check_workdir(work, resume=True, overwrite=False)
    check_workdir(work, resume=False, overwrite=True)
    assert sorted(p.name for p in work.iterdir()) == ["train.log"]


def test_train_cli_refuses_a_used_workdir_in_one_line(tmp_path):
    config = tmp_path / "config.py"
    config.write_text("def get_config():\n    return {'model': 'unused'}\n")
    (tmp_path / "run" / "checkpoints" / "3").mkdir(parents=True)
    line = one_error_line(run(ROOT / "train.py", "--config", config, "--workdir",
                              tmp_path / "run"))
    assert "checkpoints up to step 3" in line and "--resume" in line
    line = one_error_line(run(ROOT / "train.py", "--workdir", tmp_path / "empty", "--resume"))
    assert "--config is required" in line


def _events(workdir: Path) -> dict[str, list[int]]:
    """TensorBoard scalar tags -> steps, read from the event files (TFRecord framing)."""
    from tensorboardX.proto import event_pb2

    steps: dict[str, list[int]] = {}
    for path in sorted((workdir / "tensorboard").glob("events.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                steps.setdefault(value.tag, []).append(event.step)
    return steps


def test_resume_from_the_saved_config_says_from_which_step(tmp_path):
    model = write_small_train_model(tmp_path / "model")
    fields = small_train_fields(model, num_steps=2, checkpoint_every=1, log_every=10)
    del fields["model"]
    config = tmp_path / "config.py"
    config.write_text(f"def get_config():\n    return {fields!r}\n")
    work = tmp_path / "run"
    # --resume on an empty workdir: says so, starts at 0; --set given once
    first = run(ROOT / "train.py", "--config", config, "--workdir", work, "--resume",
                "--set", f"model={model}", "seed=3")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "no checkpoint" in first.stdout and "starting from step 0" in first.stdout
    saved = load_run_config(work)
    assert saved is not None and saved.model == str(model) and saved.seed == 3
    # log_every=10 > num_steps: the first and last steps are logged anyway
    assert _events(work)["train/loss"] == [1, 2]
    # each logged step says its throughput; the compiled step's FLOPs are known on the CPU
    logged = re.findall(r"^step (\d) loss \S+ \| \S+ s/step \S+ ex/s (\S+) TFLOP/s/device "
                        r"MFU (\S+)%$", first.stdout, re.M)
    assert [int(s) for s, *_ in logged] == [1, 2], first.stdout
    assert all(float(tflops) > 0 and float(mfu) > 0 for _, tflops, mfu in logged)
    assert _events(work)["train/mfu"] == [1, 2]
    assert _events(work)["train/t_mean"] == [1, 2]  # the batch's mean timestep
    # no --config, no repeated --set: the saved config, one more step
    second = run(ROOT / "train.py", "--workdir", work, "--resume", "--set", "num_steps=3")
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resumed from step 2" in second.stdout and "trained to step 3" in second.stdout
    saved = load_run_config(work)
    assert saved.num_steps == 3 and saved.seed == 3 and saved.model == str(model)
    assert _events(work)["train/loss"] == [1, 2, 3]


def test_init_model_for_every_config(tmp_path):
    tiny = run("-m", "dreamlayer_jax.cli.init_model", ROOT / "configs/tiny.py", tmp_path / "t")
    assert tiny.returncode == 0, tiny.stderr[-2000:]
    assert (tmp_path / "t" / "model_index.json").is_file()
    for name in ("sd15.py", "sdxl.py", "paper_sd15.py"):
        line = one_error_line(run("-m", "dreamlayer_jax.cli.init_model", ROOT / "configs" / name,
                                  tmp_path / name))
        assert "--base" in line
    from dreamlayer_jax.pipeline.components import load_dreamlayer_unet

    based = run("-m", "dreamlayer_jax.cli.init_model", ROOT / "configs/sd15.py",
                tmp_path / "based", "--base", tmp_path / "t")
    assert based.returncode == 0, based.stderr[-2000:]
    assert load_dreamlayer_unet(tmp_path / "based").config.lora_rank == 32


def test_build_dataset_and_data_dir_accepts_the_root_or_the_versioned_folder(tmp_path):
    from dreamlayer_jax.training.config import TrainConfig
    from dreamlayer_jax.training.sources import dataset_folder, load_train_source

    proc = run("-m", "dreamlayer_jax.cli.build_dataset", "--synthetic", "3", "--resolution",
               "16", "--out", tmp_path / "data")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == "" and "train 3 scenes" in proc.stdout
    versioned = tmp_path / "data" / "dreamlayer_scenes" / "synthetic" / "1.0.0"
    assert dataset_folder(tmp_path / "data") == versioned == dataset_folder(versioned)
    for data_dir in (tmp_path / "data", versioned):
        source = load_train_source(TrainConfig(model="m", data_dir=str(data_dir)), 5)
        assert len(source) == 3
    again = run("-m", "dreamlayer_jax.cli.build_dataset", "--synthetic", "3", "--out",
                tmp_path / "data")
    assert "--overwrite" in one_error_line(again)


def test_sample_grid_has_a_header_naming_its_columns():
    from types import SimpleNamespace

    import numpy as np

    from dreamlayer_jax.training.logging import LABEL_HEIGHT, MIN_TILE, labelled_grid

    tile = np.zeros((16, 16, 3), np.uint8)
    result = SimpleNamespace(background=tile, composite=tile,
                             layers=[np.zeros((16, 16, 4), np.uint8)] * 2)
    grid = labelled_grid([result, result])
    assert grid.shape == (LABEL_HEIGHT + 2 * MIN_TILE, 4 * MIN_TILE, 3)
    header = grid[:LABEL_HEIGHT]
    for col in range(4):  # each column's label is drawn (light text on the dark strip)
        assert header[:, col * MIN_TILE:(col + 1) * MIN_TILE].max() > 150
