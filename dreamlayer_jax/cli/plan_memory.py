"""`python -m dreamlayer_jax.cli.plan_memory`: per-device memory of a train step, planned.

    python -m dreamlayer_jax.cli.plan_memory --model sd15 --px 512 --layers 4 --batch 8 \\
        --chips 8 --device v5e
    python -m dreamlayer_jax.cli.plan_memory --model sdxl --train-params kv --variant paper
    python -m dreamlayer_jax.cli.plan_memory --model runs/sd15/init --px 512   # a folder
    python -m dreamlayer_jax.cli.plan_memory --model sd15 --table              # docs table

`--model`: `sd15`, `sdxl` (their architectures), a model folder (its unet/, dreamlayer/
and text_encoder*/ configs) or a JSON file of a base UNet config (diffusers keys). The
state (params, grads, Adam, EMA, text encoders) is exact from shapes. The temporaries:

- `--method trace` (default): what the forward pass keeps for the backward pass, counted
  from the traced gradient at the target size (`memory_plan.residual_bytes`, no
  compile; seconds to minutes for SD1.5 / SDXL), at batch 1 and 2 of the smallest latent
  side (the batch-independent part: the bf16 weight copy) and at batch 1 of the target:
  linear in the batch per device, exact in layers and pixels.
  With `--depth extrapolate` (default) each trace is of UNets whose transformers are 1
  layer deep, and one level at a time 2 deep, extrapolated linearly in each level's
  transformer layers (exact for SD1.5, whose depth is 1; SDXL's 70 layers from 3 traces
  of 11-15: `benchmarks/memory_plan_depth.py` checks it against the whole trace);
- `--method compile`: the real step compiled on this CPU at two small latent sides and
  extrapolated linearly in batch x layers x latent pixels, a third compiled size (batch
  2) checking the line (`memory_plan.TempFit`); slow for SD1.5 / SDXL on a small CPU,
  and the attention scores of the xla backend grow with pixels squared, not linearly.

The mesh is fsdp over all `--chips` chips; the batch is global. Everything runs on the
CPU, with the xla attention backend (its scores are kept for the backward pass: cudnn /
splash keep less, so this is an upper bound for them); `--attention flash` leaves the
traced score residuals out, an estimate of what cudnn / splash keep.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from dreamlayer_jax.cli.common import ArgumentParser, run_cli  # noqa: E402

SD15_UNET = {"in_channels": 4, "out_channels": 4,
             "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
             "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
             "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
             "attention_head_dim": 8, "norm_num_groups": 32, "cross_attention_dim": 768}
CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
          "num_attention_heads": 12, "max_position_embeddings": 77, "projection_dim": 768}
SDXL_UNET = {"in_channels": 4, "out_channels": 4,
             "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
             "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
             "block_out_channels": [320, 640, 1280], "layers_per_block": 2,
             "attention_head_dim": [5, 10, 20], "transformer_layers_per_block": [1, 2, 10],
             "norm_num_groups": 32, "cross_attention_dim": 2048, "use_linear_projection": True,
             "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
             "projection_class_embeddings_input_dim": 2816}
CLIP_BIG_G = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
              "num_attention_heads": 20, "max_position_embeddings": 77,
              "projection_dim": 1280, "hidden_act": "gelu"}
MODELS = {"sd15": (SD15_UNET, (CLIP_L,)), "sdxl": (SDXL_UNET, ({**CLIP_L,
                                                                 "hidden_act": "quick_gelu"},
                                                                CLIP_BIG_G))}
TRAIN_MODES = {"full": ("all", {}), "lora": ("dreamlayer", {"lora_rank": 32}),
               "paper K/V": ("kv", {"variant": "paper"})}


def model_spec(model: str, dreamlayer: dict[str, Any]) -> Any:
    from dreamlayer_jax.training.memory_plan import ModelSpec

    if model in MODELS:
        unet, text = MODELS[model]
        return ModelSpec(unet, dreamlayer, text)
    path = Path(model)
    if path.is_file():
        return ModelSpec(json.loads(path.read_text()), dreamlayer, (CLIP_L,))
    if not (path / "unet" / "config.json").is_file():
        raise SystemExit(f"--model {model}: not sd15/sdxl, a model folder or a JSON config")
    unet = json.loads((path / "unet" / "config.json").read_text())
    dl_file = path / "dreamlayer" / "config.json"
    saved = json.loads(dl_file.read_text()) if dl_file.is_file() else {}
    saved = {k: v for k, v in saved.items() if not k.startswith("_")}
    texts = tuple(json.loads((path / sub / "config.json").read_text())
                  for sub in ("text_encoder", "text_encoder_2")
                  if (path / sub / "config.json").is_file())
    return ModelSpec(unet, {**saved, **dreamlayer}, texts)


def small_text(spec: Any) -> Any:
    """The spec with 1-layer text encoders: what is compiled (text runs under
    stop_gradient; its state bytes are counted from the full spec)."""
    from dreamlayer_jax.training.memory_plan import ModelSpec

    return ModelSpec(spec.unet, spec.dreamlayer,
                     tuple({**t, "num_hidden_layers": 1} for t in spec.text), spec.tokens)


def measure_fit(spec: Any, train_params: str, sizes: list[tuple[int, int, int]],
                check: tuple[int, int, int] | None, say=print) -> tuple[Any, float | None]:
    """The temporaries' line from compiled sizes `(batch, layers, latent)`, and its
    relative error at `check`."""
    import jax

    from dreamlayer_jax.parallel.mesh import make_mesh
    from dreamlayer_jax.training import memory_plan as mp

    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    points = []
    for b, layers, latent in [*sizes, *([check] if check else [])]:
        start = time.perf_counter()
        compiled = mp.compile_step(small_text(spec), train_params, b, layers, latent, mesh)
        temp = mp.compiled_bytes(compiled)["temporaries"]
        say(f"  compiled B={b} L={layers} {latent}x{latent} latents: temporaries "
            f"{temp / 2**20:.1f} MiB ({time.perf_counter() - start:.0f} s)")
        points.append((mp.units(b, layers, latent), temp))
    fit = mp.fit_temporaries(points[: len(sizes)])
    error = fit.check(*points[-1]) if check else None
    return fit, error


def gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


class TraceTemps:
    """Temporaries per device from traced residuals (`--method trace`), cached per size;
    `flash`: without the xla attention's kept scores."""

    def __init__(self, spec: Any, train_params: str, state: Any, say=print,
                 flash: bool = False, by_depth: bool = True) -> None:
        self.spec, self.train_params, self.say, self.cache = spec, train_params, say, {}
        self.flash, self.by_depth = flash, by_depth
        self.state1 = state

    def split(self, batch: int, layers: int, latent: int) -> dict[str, int]:
        from dreamlayer_jax.training import memory_plan as mp

        key = (batch, layers, latent)
        if key not in self.cache:
            start = time.perf_counter()
            trace = mp.residual_split_by_depth if self.by_depth else mp.residual_split
            split = trace(self.spec, self.train_params, *key)
            self.cache[key] = split
            self.say(f"  traced B={batch} L={layers} {latent}x{latent}: residuals "
                     f"{gib(split['total'])} GiB, of which attention scores "
                     f"{gib(split['scores'])} GiB ({time.perf_counter() - start:.0f} s)")
        return self.cache[key]

    def residuals(self, batch: int, layers: int, latent: int,
                  flash: bool | None = None) -> int:
        split = self.split(batch, layers, latent)
        flash = self.flash if flash is None else flash
        return split["total"] - (split["scores"] if flash else 0)

    def fixed(self, flash: bool | None = None) -> int:
        """Batch-independent (the bf16 weight copy): from batch 1 and 2 at 8x8, 3 layers."""
        one, two = self.residuals(1, 3, 8, flash), self.residuals(2, 3, 8, flash)
        return max(2 * one - two, 0)

    def line(self, layers: int, latent: int, flash: bool | None = None) -> Any:
        """`TempFit` in units of this (layers, latent): temporaries = fixed + per scene."""
        from dreamlayer_jax.training import memory_plan as mp

        fixed = self.fixed(flash)
        per_scene = self.residuals(1, layers, latent, flash) - fixed
        return mp.TempFit(float(fixed), per_scene / mp.units(1, layers, latent), ())


def summary_rows(spec: Any, states: dict[int, Any], temps: TraceTemps, label: str,
                 flash: bool) -> list[list[str]]:
    """docs/PERFORMANCE.md's rows: per (px, L), the state per chip on 1 / 8 / 64 chips,
    the temporaries of one scene per chip and the largest batch per chip on v5e / v5p /
    H100 at 1 / 8 / 64 chips (fsdp over all)."""
    from dreamlayer_jax.training import memory_plan as mp

    rows = []
    for px in (512, 1024):
        for layers in (4, 5):
            line = temps.line(layers, px // 8, flash)
            most = [" / ".join(str(mp.largest_batch(spec, line, states[n], layers, px // 8,
                                                   mp.DEVICE_MEMORY[dev]))
                               for n in (1, 8, 64)) for dev in ("v5e", "v5p", "h100")]
            rows.append([label, str(px), str(layers),
                         " / ".join(f"{states[n].total / 2**30:.1f}" for n in (1, 8, 64)),
                         gib(line(mp.units(1, layers, px // 8))), *most])
    return rows


SUMMARY_HEADERS = ["training", "px", "L", "state GiB/chip (1 / 8 / 64 chips)",
                   "temporaries GiB, 1 scene/chip", "max B/chip v5e 16 GiB (1 / 8 / 64)",
                   "v5p 95 GiB", "H100 80 GiB"]


def plan_rows(spec: Any, state: Any, fit: Any, chips: int, batch: int, layers: int,
              px: int, device: str) -> list[str]:
    """One table row; `state`: `StateBytes` for `chips` (fsdp over all of them)."""
    from dreamlayer_jax.training import memory_plan as mp

    latent = px // 8
    p = mp.plan(spec, fit, state, batch / chips, layers, latent)
    cap = mp.DEVICE_MEMORY[device]
    most = mp.largest_batch(spec, fit, state, layers, latent, cap)
    return [str(chips), gib(state.params), gib(state.grads), gib(state.adam), gib(state.ema),
            gib(state.text), gib(p.temporaries), gib(p.total),
            "yes" if p.total <= 0.9 * cap else "no", str(most)]


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


HEADERS = ["chips", "params", "grads", "Adam", "EMA", "text", "temporaries", "total GiB",
           "fits", "max B/chip"]


def main_body(argv: list[str] | None) -> int:
    parser = ArgumentParser(prog="python -m dreamlayer_jax.cli.plan_memory",
                            description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sd15", help="sd15, sdxl, a folder or a JSON")
    parser.add_argument("--train-params", default="all", choices=("all", "dreamlayer", "kv"))
    parser.add_argument("--variant", default="box", choices=("box", "paper"))
    parser.add_argument("--lora-rank", type=int, default=0)
    parser.add_argument("--px", type=int, default=512, help="picture side (latents: px/8)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=0, help="global batch (0: chips)")
    parser.add_argument("--chips", type=int, default=1, help="fsdp over this many chips")
    parser.add_argument("--device", default="h100", choices=("v5e", "v5p", "h100", "h200"))
    parser.add_argument("--fit-latents", default="8,16",
                        help="latent sides compiled for the line (B=1, L=3)")
    parser.add_argument("--method", default="trace", choices=("trace", "compile"))
    parser.add_argument("--attention", default="xla", choices=("xla", "flash"),
                        help="flash: without the xla backend's kept scores (trace only)")
    parser.add_argument("--depth", default="extrapolate", choices=("extrapolate", "exact"),
                        help="trace shallow UNets and extrapolate in transformer depth "
                             "(memory_plan.residual_split_by_depth), or trace it whole")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--table", action="store_true",
                        help="all of 512/1024 px x 4/5 layers x 1/8/64 chips x devices")
    args = parser.parse_args(argv)

    from dreamlayer_jax.training import memory_plan as mp

    dreamlayer: dict[str, Any] = {}
    if args.variant == "paper":
        dreamlayer["variant"] = "paper"
    if args.lora_rank:
        dreamlayer["lora_rank"] = args.lora_rank
    spec = model_spec(args.model, dreamlayer)
    chip_counts = (1, 8, 64) if args.table else tuple(sorted({1, args.chips}))
    states = mp.state_bytes_for(spec, args.train_params, chip_counts)
    state = states[1]
    print(f"{args.model}: {state.param_count / 1e6:.0f} M UNet parameters, "
          f"{state.trained_count / 1e6:.1f} M trained ({args.train_params})")
    cases = ([(px, layers, chips, dev) for px in (512, 1024) for layers in (4, 5)
              for dev in ("v5e", "v5p", "h100") for chips in (1, 8, 64)] if args.table
             else [(args.px, args.layers, args.chips, args.device)])
    if args.method == "compile":
        sides = [int(s) for s in args.fit_latents.split(",")]
        fit, error = measure_fit(spec, args.train_params, [(1, 3, s) for s in sides],
                                 (2, 3, sides[-1]))
        grads1 = state.grads  # the 1-device compile holds unsharded grads: counted apart
        fit = mp.TempFit(max(fit.fixed - grads1, 0.0), fit.per_unit, fit.points)
        print(f"temporaries: {gib(fit.fixed)} GiB + {fit.per_unit:.0f} B per image-pixel "
              f"(compiled); checked at B=2: {100 * error:+.1f}%")
        lines = {}
    else:
        temps = TraceTemps(spec, args.train_params, state, flash=args.attention == "flash",
                           by_depth=args.depth == "extrapolate")
        print(f"temporaries: {gib(temps.fixed())} GiB fixed + traced residuals per scene")
        lines = {(layers, px): temps.line(layers, px // 8) for px, layers, _, _ in cases}
    rows = []
    for px, layers, chips, dev in cases:
        batch = args.batch or chips
        line = lines.get((layers, px), fit if args.method == "compile" else None)
        rows.append([f"{px}", str(layers), dev, str(batch),
                     *plan_rows(spec, states[chips], line, chips, batch, layers, px, dev)])
    headers = ["px", "L", "device", "B", *HEADERS]
    print(markdown_table(headers, rows))
    if args.table and args.method == "trace":
        label = {"all": "full", "dreamlayer": "LoRA", "kv": "K/V"}[args.train_params]
        for flash in (False, True):
            print(f"\nsummary, {'flash attention (estimate)' if flash else 'xla attention'}:")
            print(markdown_table(SUMMARY_HEADERS,
                                 summary_rows(spec, states, temps, label, flash)))
    if args.json:
        args.json.write_text(json.dumps({
            "model": args.model, "train_params": args.train_params, "variant": args.variant,
            "lora_rank": args.lora_rank, "method": args.method,
            "param_count": state.param_count, "trained_count": state.trained_count,
            "headers": headers, "rows": rows}, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(main_body, argv)


if __name__ == "__main__":
    sys.exit(main())
