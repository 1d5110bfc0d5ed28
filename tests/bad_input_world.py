"""The world of a bad-input case (tests/test_bad_inputs.py): its folder, the shared tiny
model, and the ways the catalogue (tests/bad_input_catalogue.py) breaks things."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Ctx:
    """One case's folder `tmp` (also the working directory) and the shared tiny model."""

    tmp: Path
    model: Path

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    @property
    def work(self) -> Path:
        return self.tmp / "work"

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return path

    def broken_model(self, damage: Callable[[Path], None]) -> Path:
        """A copy of the tiny model folder, damaged by `damage(folder)`."""
        copy = self.tmp / "model"
        shutil.copytree(self.model, copy)
        damage(copy)
        return copy

    def saved_result(self, num_layers: int = 2) -> Path:
        """A folder as `sample.py` writes it (random pictures and latents, no sampling)."""
        from dreamlayer_jax.pipeline.result import LayeredResult
        from dreamlayer_jax.pipeline.scene import Layer, Scene

        rng = np.random.default_rng(0)
        scene = Scene("a red star and a green ring in front of a blue wall", "a blue wall",
                      tuple(Layer(p, (0.1, 0.1, 0.5, 0.5))
                            for p in ("a red star", "a green ring")[:num_layers]))
        result = LayeredResult(
            scene=scene, background=rng.integers(0, 256, (8, 8, 3), np.uint8),
            layers=[rng.integers(0, 256, (8, 8, 4), np.uint8) for _ in range(num_layers)],
            composite=rng.integers(0, 256, (8, 8, 3), np.uint8),
            latents=rng.normal(size=(num_layers + 2, 8, 8, 4)).astype(np.float32))
        return result.save(self.tmp / "saved")

    def unwritable_folder(self) -> Path:
        """A folder nobody may write into: chmod 0o500, or (as root, whom chmod does not
        stop) a path under /proc, where no process can create files."""
        folder = self.tmp / "locked"
        folder.mkdir()
        folder.chmod(0o500)
        probe = folder / "probe"
        try:
            probe.mkdir()
        except OSError:
            return folder / "out"
        probe.rmdir()
        folder.chmod(0o700)
        if not Path("/proc/self").is_dir():
            pytest.skip("running as root (chmod does not stop writes) and no /proc")
        return Path("/proc/dreamlayer-no-such-folder/out")


def remove(relative: str) -> Callable[[Path], None]:
    return lambda folder: (shutil.rmtree if (folder / relative).is_dir() else os.remove)(
        folder / relative)


def truncate(relative: str) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        path = folder / relative
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return damage


def drop_tensor(folder: Path) -> None:
    from safetensors.numpy import load_file, save_file

    path = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    del state["conv_in.weight"]
    save_file(state, str(path))


def edit_json(relative: str, **changes) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        path = folder / relative
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return damage


def png(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def layered_file(ctx: Ctx, name: str, corrupt: bool = False) -> Path:
    """A small OpenRaster file; `corrupt` garbles its foreground's PNG inside the zip."""
    import zipfile

    from dreamlayer_jax.io.layered_files import write_ora

    rng = np.random.default_rng(1)
    background = rng.integers(0, 256, (16, 16, 3), np.uint8)
    layer = np.zeros((16, 16, 4), np.uint8)
    layer[4:10, 3:12] = (200, 30, 30, 255)
    path = write_ora(ctx.tmp / "data" / name, background, [layer], ["a blue wall", "a red star"])
    if corrupt:
        with zipfile.ZipFile(path) as zin:
            items = {n: zin.read(n) for n in zin.namelist()}
        items["data/layer001.png"] = items["data/layer001.png"][:40] + b"\0garbage" * 8
        with zipfile.ZipFile(path, "w") as zout:
            for n, data in items.items():
                zout.writestr(n, data)
    return path


def checkpoint_of_another_model(ctx: Ctx) -> Path:
    """`work/checkpoints/1`: the train state of a UNet with one level fewer than the tiny
    model's (a checkpoint of the same tree with other shapes is refused the same way)."""
    import jax
    from flax import nnx
    from tiny_model import TINY_UNET

    from dreamlayer_jax.models.layer_unet import DreamLayerConfig, DreamLayerUNet
    from dreamlayer_jax.models.unet import UNet2DConditionModel
    from dreamlayer_jax.models.unet_config import UNetConfig
    from dreamlayer_jax.training.checkpoint import Checkpointer
    from dreamlayer_jax.training.config import TrainConfig
    from dreamlayer_jax.training.optimizer import make_optimizer
    from dreamlayer_jax.training.state import init_train_state

    config = UNetConfig.from_dict({**TINY_UNET, "block_out_channels": [16],
                                   "down_block_types": ["CrossAttnDownBlock2D"],
                                   "up_block_types": ["CrossAttnUpBlock2D"]})
    abstract = nnx.eval_shape(lambda: DreamLayerUNet(
        UNet2DConditionModel(config, rngs=nnx.Rngs(0)),
        DreamLayerConfig(max_layers=5, codec="pixel", resolution=8), rngs=nnx.Rngs(0)))
    params = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype),
                          nnx.to_pure_dict(nnx.state(abstract)))
    tx = make_optimizer(TrainConfig(model="other"), params)
    ckpt = Checkpointer(ctx.work, async_save=False)
    ckpt.save(1, init_train_state(params, tx, 0), {}, {})
    ckpt.close()
    return ctx.work

