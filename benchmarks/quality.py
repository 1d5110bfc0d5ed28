"""The quality ablation on held-out synthetic scenes (DESIGN.md section 7).

Runs `dreamlayer_jax.eval.evaluate.ablation` -- independent layers, +CACA, +LSSA, +IRH,
+LSSA+CACA, all three, then all three with exactly 1, 2 and 3 foregrounds -- for each
`--model`, prints the tables and writes them, with the targets each model meets
(`dreamlayer_jax.eval.targets`), the classifier's own accuracy and sample pictures, to
one markdown file. Besides layout, fidelity, coherence and decomposition, each row has
the noise ratios and closed-world FIDs of the global layer, background and foregrounds.

    python benchmarks/quality.py [--model PATH ...] [--scenes 200] [--steps 20] \
        [--out docs/RESULTS.md]
    python benchmarks/quality.py --model builtin:box --model builtin:paper --steps 10
    python benchmarks/quality.py ... --resume   # continue an interrupted run's rows
    python benchmarks/quality.py ... --notes docs/results_reading.md   # + hand-written reading

Without `--model` the built-in model is used; a model that does not load is reported
with status 2 before anything runs. Sample pictures (layers over a checkerboard and the
composite, ground truth first) go to `img/` beside the output file. The measured rows go
to OUT.rows.json as each finishes; `docs/RESULTS.rows.json` is committed with the report,
so that `--resume --remeasure MODEL` on any clone measures one model again and keeps the
others' rows.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from dreamlayer_jax.data.compositing import preview_strip  # noqa: E402
from dreamlayer_jax.errors import DreamLayerError  # noqa: E402

MIN_SCENES = 200
SAMPLE_SETTINGS = (("independent", {"caca": False, "lssa": False, "irh": False}),
                   ("all", {"caca": True, "lssa": True, "irh": True}))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=None,
                        help="DreamLayer model folder or builtin[:box|:paper], repeatable "
                             "(default: the built-in model)")
    parser.add_argument("--scenes", type=int, default=MIN_SCENES,
                        help=f"held-out scenes per row (>= {MIN_SCENES} for reportable numbers)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="held-out scene / sampling stream")
    parser.add_argument("--samples", type=int, default=3, help="sample pictures to save")
    parser.add_argument("--count-scenes", type=int, default=None,
                        help="scenes per foreground-count row (default: --scenes)")
    parser.add_argument("--decomposition-scenes", type=int, default=None,
                        help="scenes decomposed (default: --scenes)")
    parser.add_argument("--fid-scenes", type=int, default=500,
                        help="ground-truth scenes of the FID reference (per foreground count)")
    parser.add_argument("--no-decomposition", action="store_true",
                        help="skip the decomposition measures (halves the run time)")
    parser.add_argument("--out", default="docs/RESULTS.md")
    parser.add_argument("--notes", default=None,
                        help="a markdown file of hand-written reading (what limits each "
                             "missed target, and where that was measured), put in the "
                             "report after its header")
    parser.add_argument("--resume", action="store_true",
                        help="keep the rows an interrupted run with the same arguments "
                             "and models "
                             "measured (kept in OUT.rows.json as each row finishes)")
    parser.add_argument("--remeasure", action="append", default=[], metavar="MODEL",
                        help="with --resume, measure this model's rows again although "
                             "its weights and settings are unchanged (after a change of "
                             "the sampling or measuring code), repeatable")
    args = parser.parse_args(argv)
    if args.scenes < 1 or args.steps < 1 or args.batch_size < 1 or args.samples < 0:
        parser.error("--scenes, --steps and --batch-size must be positive, --samples >= 0")
    unknown = [m for m in args.remeasure if m not in (args.model or ["builtin"])]
    if unknown:
        parser.error(f"--remeasure {unknown[0]}: not one of the --model names")
    return args


def _upscale(image: np.ndarray, target: int = 96) -> np.ndarray:
    """Nearest-neighbour enlargement so that small pictures stay visible."""
    factor = max(1, target // image.shape[0])
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def save_samples(pipe: Any, pairs: list[tuple[Any, Any]], img_dir: Path, rel: str,
                 args: argparse.Namespace, slug: str) -> list[str]:
    """Ground truth and generated strips for the first scenes; returns markdown lines."""
    from dreamlayer_jax.eval.evaluate import generate

    if not pairs:
        return []
    img_dir.mkdir(parents=True, exist_ok=True)
    requests = [request for request, _ in pairs]
    generated = {
        name: generate(pipe, requests, steps=args.steps, guidance=args.guidance,
                       batch_size=args.batch_size, seed=args.seed, **switches)
        for name, switches in SAMPLE_SETTINGS}
    lines = ["Each strip: background, each foreground over a checkerboard, then the "
             "global layer (ground truth: its composite).", ""]
    # the ground truth depends only on the scene stream (resolution, most foregrounds,
    # seed): one file for all the models that share it
    stream = f"{pipe.config.resolution}px_{min(3, pipe.max_foregrounds)}fg_seed{args.seed}"
    for i, (request, truth) in enumerate(pairs):
        lines.append(f"**Scene {i}**: \"{request.prompt}\"")
        lines.append("")
        strips = [("ground truth", preview_strip(truth.background, truth.layers,
                                                 truth.composite))]
        strips += [(name, preview_strip(out[i].background, out[i].layers, out[i].composite))
                   for name, out in generated.items()]
        for name, strip in strips:
            owner = stream if name == "ground truth" else slug
            file = f"quality_{owner}_{i:02d}_{name.replace(' ', '_')}.png"
            Image.fromarray(_upscale(strip)).save(img_dir / file)
            lines.append(f"{name}:  ")
            lines.append(f"![{name}]({rel}/{file})")
            lines.append("")
    return lines


DEFINITIONS = {
    "layout": "share of each foreground's alpha mass inside its box (the pipeline "
              "clears alpha outside the box plus the model's clear_margin, so only mass "
              "in that margin can lower it: 1 by construction at clear_margin 0)",
    "box_iou": "IoU of each foreground's visible extent (alpha > 0.05) with its box",
    "colour": "share of foregrounds whose colour the ground-truth classifier reads as asked",
    "shape": "share of foregrounds whose shape the ground-truth classifier reads as asked",
    "coherence_psnr": "PSNR of the global layer vs. the alpha-composite of the "
                      "generated background and foregrounds (per scene)",
    "background_psnr": "decomposition of the true composite: PSNR of the recovered "
                       "background vs. the true one (per scene)",
    "alpha_iou": "decomposition: IoU of recovered vs. true alpha at 0.5 (per foreground)",
    "noise_global": "high-frequency energy (mean squared Laplacian) of the generated "
                    "global layers over that of the true composites of the same scenes "
                    "(1 = as smooth as the truth; 95% bootstrap interval over scenes)",
    "noise_background": "the same for the backgrounds",
    "noise_foreground": "the same for the foregrounds (premultiplied colour and alpha, "
                        "so colour under transparent pixels does not count)",
    "fid_composite": "closed-world FID: Frechet distance between the generated global "
                     "layers and true composites of other held-out scenes (stream "
                     "30000+seed), in the hidden-layer features of the ground-truth-trained "
                     "picture classifier (background kind, colour, light); 95% bootstrap "
                     "interval over the generated set. The ground-truth row is the floor "
                     "that finite sets give",
    "fid_background": "the same for the backgrounds",
    "fid_foreground": "the same for the foregrounds, in the hidden-layer features of the "
                      "ground-truth-trained layer classifier (colour, shape); layers with "
                      "nothing opaque are left out (the colour/shape columns count them)",
}


ROW_ARGS = ("scenes", "steps", "guidance", "batch_size", "seed", "count_scenes",
            "decomposition_scenes", "fid_scenes", "no_decomposition")


def pipeline_fingerprint(pipe: Any) -> str:
    """A hash of what a model computes: every parameter of its UNet, text encoders and
    codec, its DreamLayer config (the guidance floor included) and its scheduler's."""
    import hashlib

    import jax
    from flax import nnx

    digest = hashlib.sha256()
    modules = [pipe.unet, *pipe.conditioner.encoders()]
    if isinstance(pipe.codec, nnx.Module):
        modules.append(pipe.codec)
    for module in modules:
        for leaf in jax.tree.leaves(nnx.state(module, nnx.Param)):
            digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    configs = {"dreamlayer": repr(pipe.config), "scheduler": pipe.scheduler.config.to_dict()}
    digest.update(json.dumps(configs, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def stored_row(record: dict[str, Any]) -> Any:
    """The `AblationRow` of one row as `RowStore` writes it to OUT.rows.json."""
    from dreamlayer_jax.eval.evaluate import AblationRow

    return AblationRow(record["name"], record["scenes"], record["foregrounds"],
                       {m: tuple(v) for m, v in record["measures"].items()},
                       record["settings"])


class RowStore:
    """Measured rows per model in a JSON file beside the report, rewritten as each row
    finishes, so that `--resume` carries a long run over an interruption.

    `fingerprints` (model name -> `pipeline_fingerprint`): a model whose weights or
    settings changed since its rows were stored, or that `args.remeasure` names (the
    fingerprint does not see code), has them measured again (`stale`)."""

    def __init__(self, path: Path, args: argparse.Namespace,
                 fingerprints: dict[str, str] | None = None):
        self.path = path
        self.args = {k: getattr(args, k) for k in ROW_ARGS}
        self.fingerprints = dict(fingerprints or {})
        self.models: dict[str, dict[str, Any]] = {}
        self.stale: list[str] = []
        if args.resume and path.is_file():
            data = json.loads(path.read_text())
            if data.get("args") != self.args:
                raise DreamLayerError(
                    f"--resume: {path} was measured with {data.get('args')}, not "
                    f"{self.args}; run without --resume to start over")
            stored = data.get("fingerprints", {})
            for model, rows in data.get("models", {}).items():
                current, then = self.fingerprints.get(model), stored.get(model)
                redo = model in args.remeasure
                if redo or (current is not None and current != then):  # or no fingerprint
                    self.stale.append(model)
                elif then is not None:  # unchanged, or not measured in this run: kept
                    self.models[model] = rows
                    self.fingerprints.setdefault(model, then)

    def done(self, model: str) -> dict[str, Any]:
        return {name: stored_row(r) for name, r in self.models.get(model, {}).items()}

    def add(self, model: str, row: Any) -> None:
        self.models.setdefault(model, {})[row.name] = {
            "name": row.name, "scenes": row.scenes, "foregrounds": row.foregrounds,
            "measures": {m: [float(a), float(b)] for m, (a, b) in row.measures.items()},
            "settings": row.settings}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"args": self.args, "fingerprints": self.fingerprints,
                                   "models": self.models}, indent=1))
        tmp.replace(self.path)


def model_section(name: str, pipe: Any, rows: list[Any], classifier: Any,
                  samples: list[str], args: argparse.Namespace) -> list[str]:
    """One model's part of the report: its settings, targets, table and samples."""
    from dreamlayer_jax.eval.evaluate import format_table
    from dreamlayer_jax.eval.targets import check_targets, format_targets, mechanism_gains

    boxes = pipe.config.variant == "box"
    floor = getattr(pipe.config, "guidance_min_timestep", 0)
    return [
        f"## `{name}`", "",
        f"- model: `{pipe.name}` ({pipe.config.variant} variant, "
        f"{pipe.config.resolution}x{pipe.config.resolution} px, up to "
        f"{pipe.max_foregrounds} foregrounds; guidance only at t >= {floor:g})",
        f"- layer-fidelity classifier trained on ground-truth layers of other seeds; its own "
        f"accuracy on held-out ground truth: colour {classifier.accuracy['colour']:.3f}, "
        f"shape {classifier.accuracy['shape']:.3f}" + (
            "; picture classifier (FID features of backgrounds and composites): "
            + ", ".join(f"{k} {v:.3f}" for k, v in classifier.picture.accuracy.items())
            if classifier.picture is not None else ""), "",
        "### Targets (all mechanisms on)", "",
        format_targets(check_targets(rows, boxes=boxes), mechanism_gains(rows)), "",
        "### Ablation", "", format_table(rows), "",
        "### Samples", "", *samples]


def write_report(path: Path, args: argparse.Namespace, sections: list[list[str]],
                 seconds: float, pending: list[str]) -> None:
    """The whole report, replaced atomically; `pending`: models not measured yet (the
    report is written after each model, so a long run's finished models are kept)."""
    import jax

    from dreamlayer_jax.eval.evaluate import MEASURES

    device = jax.devices()[0]
    note = "" if args.scenes >= MIN_SCENES else (
        f"\n**Note:** only {args.scenes} scenes per row (< {MIN_SCENES}): indicative only.\n")
    command = "python benchmarks/quality.py " + shlex.join(args.argv)
    text = [
        "# Quality results (synthetic world)", "",
        f"Generated by `{command}` on {datetime.date.today().isoformat()} "
        f"({device.platform}: {device.device_kind}), {seconds / 60:.1f} min"
        + (f" (this run; {args.kept_rows} rows were measured by an earlier run and kept "
           "by --resume)." if getattr(args, "kept_rows", 0) else "."), "",
        f"- {args.scenes} held-out scenes per row (seed stream 10000+{args.seed}, never "
        f"used in training), {args.steps} steps, guidance {args.guidance}, the model's "
        "scheduler; every row of every model uses the same scenes and seeds",
        "- the first row of each table scores the ground truth itself (no model): the "
        "reference value of each measure",
        "- cells: mean ± half-width of the 95% confidence interval (Student's t; bootstrap "
        "for the noise and FID columns); PSNR is capped at 100 dB", note,
        *notes_lines(args.notes),
        *([f"**Still running:** {', '.join(f'`{m}`' for m in pending)} (this page is "
           "rewritten as each model finishes).", ""] if pending else []),
        *(line for section in sections for line in section), "",
        "## Measures", "",
        *(f"- **{MEASURES[m][0]}**: {d}" for m, d in DEFINITIONS.items())]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(text) + "\n", encoding="utf-8")
    tmp.replace(path)


def notes_lines(path: str | None) -> list[str]:
    """The `--notes` file's lines, then a blank line (none without `--notes`)."""
    if path is None:
        return []
    return [*Path(path).read_text(encoding="utf-8").rstrip().splitlines(), ""]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    args.argv = argv  # the report names the command as given
    from dreamlayer_jax.eval.classifier import train_classifier
    from dreamlayer_jax.eval.evaluate import ablation, format_table, held_out_scenes
    from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline

    if args.notes is not None and not Path(args.notes).is_file():
        print(f"error: --notes {args.notes}: no such file", file=sys.stderr)
        return 2
    pipes = {}
    for name in args.model or [None]:
        try:
            pipes[name or "builtin"] = DreamLayerPipeline.from_pretrained(name)
        except DreamLayerError as exc:
            print(f"error: cannot load {name or 'the built-in model'}: {exc}", file=sys.stderr)
            return 2
    start = time.perf_counter()
    classifiers: dict[int, Any] = {}
    sections = []
    out = Path(args.out)
    try:
        store = RowStore(out.with_suffix(".rows.json"), args,
                         {name: pipeline_fingerprint(pipe) for name, pipe in pipes.items()})
    except DreamLayerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name in store.stale:
        print(f"note: {name} changed since its rows were measured (or they predate "
              "fingerprints, or --remeasure names it): measuring it again")
    args.kept_rows = sum(len(rows) for rows in store.models.values())
    if args.scenes < MIN_SCENES:
        print(f"note: {args.scenes} scenes (< {MIN_SCENES}): indicative only")
    for name, pipe in pipes.items():
        resolution = pipe.config.resolution
        if resolution not in classifiers:
            classifiers[resolution] = train_classifier(resolution, seed=args.seed)
        classifier = classifiers[resolution]
        print(f"{name}: classifier accuracy on ground truth at {resolution} px: "
              f"colour {classifier.accuracy['colour']:.3f}, "
              f"shape {classifier.accuracy['shape']:.3f}")
        rows = ablation(pipe, args.scenes, seed=args.seed, steps=args.steps,
                        guidance=args.guidance, batch_size=args.batch_size,
                        classifier=classifier, decomposition=not args.no_decomposition,
                        foreground_counts=[k for k in (1, 2, 3) if k <= pipe.max_foregrounds],
                        count_scenes=args.count_scenes,
                        decomposition_scenes=args.decomposition_scenes,
                        fid_scenes=args.fid_scenes,
                        log=lambda line: print(f"  {line}", flush=True),
                        done=store.done(name),
                        on_row=lambda row, name=name: store.add(name, row))
        print(format_table(rows), flush=True)
        pairs = held_out_scenes(args.samples, args.seed, resolution,
                                max_foregrounds=min(3, pipe.max_foregrounds))
        slug = "".join(c if c.isalnum() else "_" for c in name)
        samples = save_samples(pipe, pairs, out.parent / "img", "img", args, slug)
        sections.append(model_section(name, pipe, rows, classifier, samples, args))
        pending = list(pipes)[len(sections):]
        write_report(out, args, sections, time.perf_counter() - start, pending)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
