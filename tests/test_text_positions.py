"""Lengthening a model's text (io/text_positions.py, `init_model --base` with a longer
config): prompts that fit the old length are read exactly as before."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dreamlayer_jax.errors import ConfigError
from dreamlayer_jax.io.text_positions import extend_text_positions, text_length
from dreamlayer_jax.models.clip import CLIPTextModel
from dreamlayer_jax.models.tokenizer import load_tokenizer
from dreamlayer_jax.pipeline.builtin import builtin_model_path

ROOT = Path(__file__).resolve().parents[1]


def _hidden(folder: Path, ids: np.ndarray) -> np.ndarray:
    return np.asarray(CLIPTextModel.from_pretrained(folder / "text_encoder")(ids)[0])


def test_extended_text_encoder_reads_short_prompts_as_before_and_long_ones_whole(tmp_path):
    old = builtin_model_path()
    new = tmp_path / "m"
    for part in ("text_encoder", "tokenizer"):
        shutil.copytree(old / part, new / part)
    extend_text_positions(new, 64, seed=3)
    assert text_length(new) == 64 and load_tokenizer(new).model_max_length == 64
    tok = load_tokenizer(new)
    ids = np.asarray(tok("a large green ring in front of a striped blue wall",
                         padding="max_length", max_length=64)["input_ids"])[None]
    before, after = _hidden(old, ids[:, :32]), _hidden(new, ids)
    np.testing.assert_allclose(after[:, :32], before, rtol=1e-5, atol=1e-5)  # causal
    assert np.abs(after[:, 32:]).sum() > 0
    with pytest.raises(ConfigError, match="cutting it"):
        extend_text_positions(new, 16)


def test_init_model_from_the_builtin_model_with_the_v2_config_gets_64_positions(tmp_path):
    out = tmp_path / "v2"
    proc = subprocess.run([sys.executable, "-m", "dreamlayer_jax.cli.init_model",
                           str(ROOT / "configs/builtin_v2.py"), str(out),
                           "--base", str(builtin_model_path())],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert text_length(out) == 64
    assert (out / "unet").is_dir() and (out / "dreamlayer").is_dir()
