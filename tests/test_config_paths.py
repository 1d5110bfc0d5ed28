"""The configs in configs/ work from any working directory: a path they name is resolved
against the repository (the config file's place), never against the cwd."""

import subprocess
import sys
from pathlib import Path

import pytest

from dreamlayer_jax.training.config import config_file_values

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.py"))


@pytest.mark.parametrize("config", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_path_a_config_names_is_absolute_from_another_cwd(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    values = config_file_values(config)
    for key, value in values.items():
        if isinstance(value, str) and "/" in value:
            assert Path(value).is_absolute(), (key, value)


@pytest.mark.parametrize("name", ["builtin", "builtin_v2"])
def test_builtin_configs_name_their_init_folder_in_the_repository(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config_file_values(ROOT / "configs" / f"{name}.py")["model"] == str(
        ROOT / "runs" / name / "init")


def test_train_reads_the_builtin_config_by_absolute_path_from_another_cwd(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--show-config",
                           str(ROOT / "configs" / "builtin.py")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    model_line = next(line for line in proc.stdout.splitlines() if line.startswith("model "))
    assert repr(str(ROOT / "runs" / "builtin" / "init")) in model_line
