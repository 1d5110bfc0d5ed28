"""The recipe study's `latent` recipe (issue #15): a latent model like the real system.

Three parts, each with its own budget, in `<root>/latent/`:

1. `vae/`: a small AutoencoderKL (`training.vae.SMALL_VAE`, 64 px -> 8 x 8 x 4) trained
   on synthetic layers flattened on 50% grey (`python -m dreamlayer_jax.cli.train_vae`);
2. `init/`: the study's DreamLayer UNet (the baseline's, on 8 x 8 x 4 latents) with that
   VAE and a fresh LayerDiffuse-shaped transparent decoder (`TRANSPARENCY`), codec
   "latent" (layers encode as LayerDiffuse's: straight RGBA over grey);
3. two trainings from `init/`, run side by side (neither needs the other): the UNet on
   the study's budget (`.` as for every recipe: `export/`) and the transparent decoder
   (`train.py mode=transparency`, `transparency/`); the trained decoder then replaces
   the fresh one in `export/`.

The model's output is 64 x 64 px, so `study_measures` measures it at 64 px: held-out
scenes, classifiers and FID references are drawn at the model's resolution, and the
noise ratios compare its layers with the same scenes' 64 px ground truth (a ratio, so
comparable with the 32 px recipes' ratios; FIDs are in the 64 px classifier's feature
space, with its own ground-truth floor). `codec_ceiling` scores the ground truth passed
through the codec (encode, decode): what the codec alone costs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESOLUTION = 64
TRANSPARENCY: dict[str, Any] = {  # LayerDiffuse's UNet1024 shape, small widths
    "block_out_channels": [16, 32, 64, 64], "layers_per_block": 1,
    "down_block_types": ["DownBlock2D"] * 3 + ["AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D"] + ["UpBlock2D"] * 3,
    "attention_head_dim": 8, "norm_num_groups": 4,
}
ARCH = {"unet": {"sample_size": RESOLUTION // 8, "in_channels": 4, "out_channels": 4},
        "dreamlayer": {"codec": "latent", "pixel_unshuffle": 1, "resolution": RESOLUTION}}
TRAIN = {"synthetic_resolution": RESOLUTION}


def _run(command: list[str], log: Path, cwd: Path) -> subprocess.Popen:
    handle = open(log, "a")  # noqa: SIM115 (closed with the process, by `_wait`)
    process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=cwd)
    process.log_handle = handle  # type: ignore[attr-defined]
    return process


def _wait(process: subprocess.Popen) -> int:
    rc = process.wait()
    process.log_handle.close()  # type: ignore[attr-defined]
    return rc


def train_vae_part(workdir: Path, args: Any, repo: Path) -> float:
    """Train `<workdir>/vae` unless it exists; its training seconds."""
    import json

    record = workdir / "vae" / "train_vae.json"
    if not record.is_file():
        command = [sys.executable, "-m", "dreamlayer_jax.cli.train_vae", str(workdir / "vae"),
                   "--resolution", str(RESOLUTION), "--steps", str(args.vae_steps),
                   "--batch", "8", "--lr", "2e-3", "--scenes", "512", "--log-every", "25"]
        print(f"[latent] {' '.join(command)}", flush=True)
        if _wait(_run(command, workdir / "vae.log", repo)):
            raise RuntimeError(f"VAE training failed: see {workdir / 'vae.log'}")
    data = json.loads(record.read_text())
    return float(data.get("total_seconds", data["seconds"]))


def train_latent(workdir: Path, args: Any, repo: Path, unet_command: list[str],
                 transparency_command: list[str]) -> dict[str, Any]:
    """Parts 2-3 (after `train_vae_part` and `init/`): both trainings side by side, then
    the trained decoder into `export/`. Returns `{"rc", "seconds": {part: s}}`."""
    start = time.perf_counter()
    jobs = {}
    if not (workdir / "transparency" / "export" / "transparency_decoder").is_dir():
        (workdir / "transparency").mkdir(exist_ok=True)
        print(f"[latent] {' '.join(transparency_command)}", flush=True)
        jobs["transparency"] = _run(transparency_command,
                                    workdir / "transparency" / "train.log", repo)
    if not (workdir / "export" / "model_index.json").is_file():
        print(f"[latent] {' '.join(unet_command)}", flush=True)
        jobs["unet"] = _run(unet_command, workdir / "train.log", repo)
    seconds, rc = {}, 0
    while len(seconds) < len(jobs):  # each part's own wall time
        for part, process in jobs.items():
            if part not in seconds and process.poll() is not None:
                rc = rc or _wait(process)
                seconds[part] = time.perf_counter() - start
        time.sleep(2.0)
    trained = workdir / "transparency" / "export" / "transparency_decoder"
    if rc == 0 and trained.is_dir() and (workdir / "export").is_dir():
        target = workdir / "export" / "transparency_decoder"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(trained, target)
        (workdir / "export" / "model_index.json").touch()  # a new model for the eval cache
    return {"rc": rc, "seconds": seconds}


def codec_ceiling(model: Path, scenes: int, seed: int = 0,
                  classifier: Any = None) -> dict[str, list[float]]:
    """The study's measures of the held-out ground truth passed through the model's codec
    (each layer encoded, then decoded; the global layer = the decoded composite): what a
    perfect denoiser would score with this codec. Same scenes as `study_measures`."""
    import jax.numpy as jnp
    import numpy as np

    from dreamlayer_jax.eval import evaluate as ev
    from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline

    pipe = DreamLayerPipeline.from_pretrained(model)
    resolution = pipe.config.resolution
    codec = pipe.codec
    classifier = classifier or ev.train_classifier(resolution)
    pairs = ev.held_out_scenes(scenes, seed, resolution, max_foregrounds=3)
    reference = ev.fid_reference(classifier, resolution, seed=seed, max_foregrounds=3)

    def round_trip(images: list[np.ndarray]) -> list[np.ndarray]:
        rgba = [im if im.shape[-1] == 4 else np.concatenate(
            [im, np.full(im.shape[:2] + (1,), 255, np.uint8)], -1) for im in images]
        x = jnp.asarray(np.stack(rgba), jnp.float32) / 255.0
        out = np.asarray(codec.decode(codec.encode(x)))
        out = np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)
        return [o if i.shape[-1] == 4 else o[..., :3] for o, i in zip(out, images, strict=True)]

    results = []
    for pair in pairs:
        truth = ev.truth_as_result(pair)
        background, composite, *layers = round_trip(
            [truth.background, truth.composite, *truth.layers])
        results.append(type(truth)(scene=truth.scene, background=background, layers=layers,
                                   composite=composite, info={"mode": "codec round trip"}))
    values = ev.score(pairs, results, classifier)
    out = {m: ev.mean_ci95(values[m]) for m in ev.STUDY_MEASURES if m not in ev.SET_MEASURES}
    out.update(ev.set_measures(pairs, results, classifier, reference))
    return {m: [float(v[0]), float(v[1])] for m, v in out.items()}
