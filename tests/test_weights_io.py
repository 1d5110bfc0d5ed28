"""Loading PyTorch-layout state dicts into nnx modules, and the errors when they don't fit."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dreamlayer_jax.errors import WeightsError
from dreamlayer_jax.io import (
    load_state_dict,
    load_torch_state_into,
    nnx_state_to_torch,
    resolve_model_folder,
    save_state_dict,
)


class Tiny(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.to_out = nnx.List([nnx.Linear(2, 3, rngs=rngs)])
        self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
        self.norm = nnx.GroupNorm(4, num_groups=2, rngs=rngs)

    def __call__(self, x):
        return self.norm(self.conv(self.to_out[0](x)))


def test_round_trip_through_torch_layout_gives_the_same_function():
    model = Tiny(nnx.Rngs(0))
    state = nnx_state_to_torch(model)
    assert state["conv.weight"].shape == (4, 3, 3, 3)
    assert state["to_out.0.weight"].shape == (3, 2)
    loaded = load_torch_state_into(Tiny, state, what="Tiny")
    x = jnp.linspace(-1, 1, 50).reshape(1, 5, 5, 2)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("conv.weight"), "missing: conv.weight"),
        (lambda s: s.update(extra=np.zeros(1, np.float32)), "unexpected: extra"),
        (lambda s: s.update({"norm.weight": np.zeros(5, np.float32)}), "mis-shaped: norm.weight"),
    ],
)
def test_a_state_dict_that_does_not_fit_names_the_tensor(edit, message):
    state = nnx_state_to_torch(Tiny(nnx.Rngs(0)))
    edit(state)
    with pytest.raises(WeightsError, match=message):
        load_torch_state_into(Tiny, state, what="Tiny")


def test_sharded_checkpoints_are_read_through_their_index(tmp_path):
    import json

    state = nnx_state_to_torch(Tiny(nnx.Rngs(0)))
    keys = sorted(state)
    save_state_dict({k: state[k] for k in keys[:3]}, tmp_path, "part-1.safetensors")
    save_state_dict({k: state[k] for k in keys[3:]}, tmp_path, "part-2.safetensors")
    weight_map = {k: ("part-1.safetensors" if i < 3 else "part-2.safetensors")
                  for i, k in enumerate(keys)}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    loaded = load_state_dict(tmp_path)
    assert sorted(loaded) == keys


def test_a_truncated_safetensors_file_is_a_weights_error(tmp_path):
    path = save_state_dict(nnx_state_to_torch(Tiny(nnx.Rngs(0))), tmp_path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(WeightsError, match="cannot read weights file"):
        load_state_dict(tmp_path)


def test_a_missing_folder_is_a_weights_error(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        resolve_model_folder(tmp_path / "nope")
    with pytest.raises(WeightsError, match="no 'unet' sub-folder"):
        resolve_model_folder(tmp_path, "unet")


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_saved_weights_follow_the_umask_not_safetensors_0600(tmp_path, mask):
    import os
    import stat

    saved = os.umask(mask)
    try:
        path = save_state_dict({"w": np.zeros(3, np.float32)}, tmp_path / "m")
    finally:
        os.umask(saved)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    np.testing.assert_array_equal(load_state_dict(tmp_path / "m")["w"], np.zeros(3))
