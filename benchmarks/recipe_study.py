"""Recipe study for the built-in model (issue #15): equal short budgets, held-out measures.

For each named recipe: a random model folder (`configs/builtin_v2.py`'s architecture with
the recipe's changes), `--steps` optimiser steps of `--batch` scenes with the project's
trainer (`python train.py`, resumable), then the held-out measures on the same `--scenes`
scenes with 95% intervals, and a markdown table of all recipes done so far.

    python benchmarks/recipe_study.py --phase train --recipes baseline wide linear ...
    python benchmarks/recipe_study.py --phase eval  --recipes baseline wide linear ...
    python benchmarks/recipe_study.py --phase table
    python benchmarks/recipe_study.py --token-lengths       # prompt lengths in tokens

Everything lives in `--root` (default runs/study): `<recipe>/init` (random init),
`<recipe>/` (the trainer's workdir: checkpoints, export), `<recipe>/train.json` (steps,
wall seconds), `<recipe>/eval.json` (measures), `table.md`. A phase skips what is done
(a finished training, an evaluation of the same export and settings) and a killed
training resumes from its last checkpoint, so re-running the same command continues.
Run it under `nice -n 19` in the background on a shared machine.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import latent_recipe  # noqa: E402  (benchmarks/latent_recipe.py)

CONFIG = REPO / "configs" / "builtin_v2.py"

# name -> description, architecture changes (deep-merged), TrainConfig changes, eval kind
RECIPES: dict[str, dict[str, Any]] = {
    "baseline": {"about": "v1 recipe: 48/96 UNet, v-pred, scaled_linear, uniform, lr 1e-3",
                 "arch": {}, "train": {}},
    "wide": {"about": "UNet 64/128 channels, 2 resnets per level (3.4x params)",
             "arch": {"unet": {"block_out_channels": [64, 128], "layers_per_block": 2}},
             "train": {}},
    "linear": {"about": "linear betas 1e-4..0.02 (DDPM's 32 px schedule)",
               "arch": {"scheduler": {"beta_schedule": "linear", "beta_start": 0.0001,
                                      "beta_end": 0.02}},
               "train": {}},
    "zsnr": {"about": "scaled_linear rescaled to zero terminal SNR",
             "arch": {"scheduler": {"rescale_betas_zero_snr": True}}, "train": {}},
    "epsilon": {"about": "epsilon-prediction (uniform weight)",
                "arch": {"scheduler": {"prediction_type": "epsilon"}}, "train": {}},
    "minsnr5": {"about": "v-pred with min-SNR-5 loss weighting",
                "arch": {}, "train": {"min_snr_gamma": 5.0}},
    "lr3e-4": {"about": "learning rate 3e-4 (v1: 1e-3)", "arch": {},
               "train": {"learning_rate": 3e-4}},
    "lr3e-3": {"about": "learning rate 3e-3 (v1: 1e-3)", "arch": {},
               "train": {"learning_rate": 3e-3}},
    "baseline-seed1": {"about": "the baseline with training seed 1 (data order, noise): how "
                                "far one run of the same recipe moves",
                       "arch": {}, "train": {"seed": 1}},
    "zsnr+lr3e-3": {"about": "zsnr and lr3e-3 together (the two best at the baseline's "
                             "compute)",
                    "arch": {"scheduler": {"rescale_betas_zero_snr": True}},
                    "train": {"learning_rate": 3e-3}},
    "textenc": {"about": "the text encoder trained with the UNet (v1: random, frozen)",
                "arch": {}, "train": {"train_text_encoder": True}},
    "buckets": {"about": "slot buckets: batches padded to their own foreground count, "
                         "not to 5 slots (less compute per step)",
                "arch": {}, "train": {"slot_buckets": True}},
    "control": {"about": "single-image control: only the global layer's loss, no CACA/LSSA "
                         "(a plain text-to-image denoiser on the composite)",
                "arch": {}, "train": {"role_loss_weights": (0.0, 0.0, 1.0), "caca": False,
                                      "lssa": False},
                "eval": "composite"},
    # benchmarks/latent_recipe.py: its own VAE and transparent decoder trained first
    "latent": {"about": "latent model like the real system: small VAE (64 px -> 8x8x4, "
                        "layers on grey) + LayerDiffuse-shaped transparent decoder; "
                        "the baseline UNet on its latents",
               "arch": latent_recipe.ARCH, "train": latent_recipe.TRAIN, "kind": "latent"},
}


def load_architecture() -> dict[str, Any]:
    spec = importlib.util.spec_from_file_location("_builtin_v2", CONFIG)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return copy.deepcopy(module.ARCHITECTURE)


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` with `changes` deep-merged in (dicts merge, other values replace)."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def recipe_architecture(name: str) -> dict[str, Any]:
    return merge(load_architecture(), RECIPES[name]["arch"])


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def init_model(folder: Path, arch: dict[str, Any], seed: int = 0, **codec: Any) -> None:
    """A random model folder from `arch` (as `python -m dreamlayer_jax.cli.init_model`);
    `codec`: `vae=` and `transparency=` of a latent-codec model."""
    if (folder / "model_index.json").is_file():
        return
    from dreamlayer_jax.cli.init_model import synthetic_words
    from dreamlayer_jax.pipeline.create import create_model_folder

    create_model_folder(folder, unet=arch["unet"], text_encoder=arch["text_encoder"],
                        words=synthetic_words(), dreamlayer=arch["dreamlayer"],
                        scheduler=arch["scheduler"], seed=seed, **codec)


def train_overrides(name: str, args: argparse.Namespace, workdir: Path) -> list[str]:
    values: dict[str, Any] = {
        "model": str(workdir / "init"), "num_steps": args.steps, "batch_size": args.batch,
        "synthetic_scenes": args.train_scenes, "warmup_steps": min(100, args.steps // 10),
        "ema_decay": args.ema_decay,
        # the v1 recipe's schedule (configs/builtin.py); builtin_v2.py's own (a constant
        # rate, for continuing v1's weights) is not what the recipes compare
        "learning_rate": 1e-3, "end_lr_ratio": 0.05,
        "checkpoint_every": args.checkpoint_every, "log_every": 25, "progress": False,
        **RECIPES[name]["train"]}
    return [f"{key}={value!r}" if not isinstance(value, str) else f"{key}={value}"
            for key, value in values.items()]


def trainer_command(workdir: Path, overrides: list[str]) -> list[str]:
    """`python train.py` in `workdir` with `overrides`, resuming a started run."""
    command = [sys.executable, str(REPO / "train.py"), "--config", str(CONFIG),
               "--workdir", str(workdir)]
    for pair in overrides:
        command += ["--set", pair]
    if (workdir / "checkpoints").is_dir() and any((workdir / "checkpoints").iterdir()):
        command.append("--resume")
    return command


def train(name: str, args: argparse.Namespace) -> None:
    workdir = Path(args.root) / name
    record = _read(workdir / "train.json")
    if record.get("done") and record.get("steps") == args.steps:
        print(f"[{name}] trained ({args.steps} steps, {record['seconds']:.0f} s)", flush=True)
        return
    workdir.mkdir(parents=True, exist_ok=True)
    if RECIPES[name].get("kind") == "latent":
        train_latent(name, args, workdir, record)
        return
    init_model(workdir / "init", recipe_architecture(name))
    command = trainer_command(workdir, train_overrides(name, args, workdir))
    print(f"[{name}] {' '.join(command)}", flush=True)
    start = time.perf_counter()
    with open(workdir / "train.log", "a") as log:
        rc = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    earlier = record.get("seconds", 0.0) if record.get("steps") == args.steps else 0.0
    seconds = earlier + time.perf_counter() - start
    done = rc == 0 and (workdir / "export" / "model_index.json").is_file()
    _write(workdir / "train.json", {"steps": args.steps, "batch": args.batch, "done": done,
                                    "seconds": seconds, "rc": rc,
                                    "about": RECIPES[name]["about"]})
    print(f"[{name}] training rc={rc}, {seconds:.0f} s so far", flush=True)


def train_latent(name: str, args: argparse.Namespace, workdir: Path,
                 record: dict[str, Any]) -> None:
    """The latent recipe's three parts (`benchmarks/latent_recipe.py`); "seconds" is the
    UNet's (the study's budget), "parts" each part's."""
    parts = dict(record.get("parts") or {})
    parts["vae"] = latent_recipe.train_vae_part(workdir, args, REPO)
    init_model(workdir / "init", recipe_architecture(name), vae=workdir / "vae",
               transparency=latent_recipe.TRANSPARENCY)
    decoder = [f"model={workdir / 'init'}", "mode=transparency",
               f"num_steps={args.transparency_steps}", "batch_size=4",
               f"synthetic_resolution={latent_recipe.RESOLUTION}", "synthetic_scenes=512",
               "learning_rate=0.001", "warmup_steps=20", "end_lr_ratio=0.1",
               "ema_decay=0.98", f"checkpoint_every={args.checkpoint_every}",
               "log_every=25", "progress=False"]
    run = latent_recipe.train_latent(
        workdir, args, REPO, trainer_command(workdir, train_overrides(name, args, workdir)),
        trainer_command(workdir / "transparency", decoder))
    for part, seconds in run["seconds"].items():
        parts[part] = parts.get(part, 0.0) + seconds
    done = run["rc"] == 0 and (workdir / "export" / "transparency_decoder").is_dir()
    _write(workdir / "train.json", {"steps": args.steps, "batch": args.batch, "done": done,
                                    "seconds": parts.get("unet", 0.0), "parts": parts,
                                    "rc": run["rc"], "about": RECIPES[name]["about"]})
    print(f"[{name}] training rc={run['rc']}, parts (s): {parts}", flush=True)


def evaluate_recipe(name: str, args: argparse.Namespace, model: Path | None = None) -> None:
    """Held-out measures of `<root>/<name>/export` (or `model`) into `<name>/eval.json`."""
    from dreamlayer_jax.eval.evaluate import study_measures

    workdir = Path(args.root) / name
    model = model or workdir / "export"
    if not (model / "model_index.json").is_file():
        print(f"[{name}] no model at {model}: train first", flush=True)
        return
    settings = {"scenes": args.scenes, "steps": args.sample_steps, "guidance": args.guidance,
                "model_mtime": (model / "model_index.json").stat().st_mtime}
    if _read(workdir / "eval.json").get("settings") == settings:
        print(f"[{name}] evaluated", flush=True)
        return
    from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline

    start = time.perf_counter()
    pipe = DreamLayerPipeline.from_pretrained(model)
    latent = RECIPES.get(name, {}).get("kind") == "latent"
    classifier = None
    if latent:  # one classifier for the model and its codec's round trip (deterministic)
        from dreamlayer_jax.eval.classifier import train_classifier

        classifier = train_classifier(pipe.config.resolution)
    measures = study_measures(pipe, args.scenes, steps=args.sample_steps,
                              guidance=args.guidance, classifier=classifier,
                              composite_only=RECIPES.get(name, {}).get("eval") == "composite")
    workdir.mkdir(parents=True, exist_ok=True)
    _write(workdir / "eval.json", {"settings": settings, "measures": measures,
                                   "seconds": time.perf_counter() - start})
    print(f"[{name}] evaluated in {time.perf_counter() - start:.0f} s", flush=True)
    if latent:  # what the codec alone costs
        start = time.perf_counter()
        ceiling = Path(args.root) / f"{name} codec round trip"
        ceiling.mkdir(parents=True, exist_ok=True)
        measures = latent_recipe.codec_ceiling(model, args.scenes, classifier=classifier)
        _write(ceiling / "eval.json", {"settings": settings, "measures": measures,
                                       "seconds": time.perf_counter() - start})
        print(f"[{name}] codec round trip measured", flush=True)


def table(root: Path, names: Sequence[str] | None = None) -> str:
    """The markdown table of every recipe with an eval.json (in `RECIPES` order), then
    the models evaluated under other names (`--model`), sorted."""
    from dreamlayer_jax.eval.evaluate import STUDY_MEASURES, cell

    rows = []
    others = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in RECIPES) \
        if root.is_dir() else []
    names = list(names or [n for n in [*RECIPES, *others] if (root / n / "eval.json").is_file()])
    header = ["recipe", "steps x batch", "train min", *(t for t, _ in STUDY_MEASURES.values())]
    rows.append("| " + " | ".join(header) + " |")
    rows.append("|" + "---|" * len(header))
    for name in names:
        result = _read(root / name / "eval.json")
        if not result:
            continue
        trained = _read(root / name / "train.json")
        budget = (f"{trained['steps']} x {trained['batch']}" if trained else "")
        minutes = f"{trained['seconds'] / 60:.0f}" if trained else ""
        cells = [name, budget, minutes]
        for measure, (_, digits) in STUDY_MEASURES.items():
            value = result["measures"].get(measure)
            cells.append(cell(tuple(value), digits) if value else "")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def read_scalars(workdir: Path, tag: str = "train/loss") -> list[tuple[int, float, float]]:
    """`(step, value, wall_time)` of one scalar from the trainer's tensorboard events
    (the TFRecord framing read directly: no TensorFlow import)."""
    import struct

    from tensorboardX.proto import event_pb2

    out = []
    for path in sorted((workdir / "tensorboard").glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            if offset + 16 + length > len(data):
                break  # a record still being written
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 16 + length
            for value in event.summary.value:
                if value.tag == tag:
                    out.append((int(event.step), float(value.simple_value),
                                float(event.wall_time)))
    return out


def token_lengths(n: int = 3000) -> None:
    """Token counts of 3-foreground prompts with the built-in tokenizer."""
    import numpy as np

    from dreamlayer_jax.data.synthetic import SyntheticSceneGenerator
    from dreamlayer_jax.models.tokenizer import load_tokenizer
    from dreamlayer_jax.pipeline.builtin import builtin_model_path

    tokenizer = load_tokenizer(builtin_model_path())
    generator = SyntheticSceneGenerator(resolution=32, max_foregrounds=3, min_foregrounds=3)
    full, concat = [], []
    for i in range(n):
        scene = generator.sample((0, i))

        def count(text: str) -> int:
            return len(tokenizer(text)["input_ids"])

        full.append(count(scene.prompt))
        concat.append(2 + sum(count(p) - 2 for p in
                              [scene.background_prompt, *scene.layer_prompts]))
    full_a = np.asarray(full)
    print(f"global prompt tokens ([SOS], [EOS] included): max {full_a.max()}, median "
          f"{np.median(full_a):.0f}, share over 32: {np.mean(full_a > 32):.3f}")
    print(f"paper global slot (background + foregrounds): max {max(concat)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--phase", choices=("train", "eval", "all", "table"), default="all")
    p.add_argument("--recipes", nargs="*", default=None, help=f"of {list(RECIPES)}")
    p.add_argument("--root", default=str(REPO / "runs" / "study"))
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--train-scenes", type=int, default=1024,
                   help="in-memory training scenes (generated at each start)")
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--ema-decay", type=float, default=0.98,
                   help="short runs: 0.98 (half-life 34 steps); v1's 0.995 lags a 150-step run")
    p.add_argument("--scenes", type=int, default=32, help="held-out scenes evaluated")
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--model", default=None,
                   help="with --phase eval and one recipe name: evaluate this folder as it")
    p.add_argument("--token-lengths", action="store_true")
    p.add_argument("--vae-steps", type=int, default=400, help="latent recipe: VAE steps of 8")
    p.add_argument("--transparency-steps", type=int, default=200,
                   help="latent recipe: transparent decoder steps of 4 scenes")
    args = p.parse_args(argv)
    if args.token_lengths:
        token_lengths()
        return 0
    names = args.recipes or list(RECIPES)
    unknown = [n for n in names if n not in RECIPES and not args.model]
    if unknown:
        p.error(f"unknown recipes {unknown}; known: {list(RECIPES)}")
    root = Path(args.root)
    if args.phase in ("train", "all"):
        for name in names:
            train(name, args)
    if args.phase in ("eval", "all"):
        for name in names:
            evaluate_recipe(name, args, Path(args.model) if args.model else None)
    text = table(root)
    (root / "table.md").parent.mkdir(parents=True, exist_ok=True)
    (root / "table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
