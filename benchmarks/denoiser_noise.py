"""Where a model's per-pixel noise comes from: its one-step denoising, timestep by timestep.

The held-out measure `noise` (`eval.measures.noise_ratio`) compares sampled layers with the
ground truth. This script takes the sampler out: it noises held-out ground-truth scenes to
timestep `t` (`x_t = sqrt(a) x0 + sqrt(1 - a) eps`), runs the model once, and measures its
estimate `x0_hat` against `x0`:

- `v mse`: the model's error on its own target (v, epsilon or x0: the model's prediction
  type), per latent element, over valid layers;
- `x0 PSNR`: of the decoded `x0_hat` against the decoded `x0` (premultiplied RGBA in
  [0, 1]);
- `noise`: `noise_ratio(x0_hat, x0)`, the high-frequency energy of the estimate over the
  truth's (1 = as smooth as the truth), with its 95% interval;
- `blur noise` / `blur PSNR`: the same two for a model-free estimate, `x_t / sqrt(a)`
  decoded and smoothed by a 3x3 binomial filter, as a yardstick.

If `noise` is far above 1 at every `t`, even from the true `x_t`, the sampler cannot be
what adds the noise: the denoiser's own estimates carry it.

    python benchmarks/denoiser_noise.py --model builtin:box --scenes 16
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dreamlayer_jax.data.compositing import premultiply

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import truth_latents  # noqa: E402

TIMESTEPS = (10, 30, 60, 100, 200, 400, 600, 800, 999)


def blur3(image: np.ndarray) -> np.ndarray:
    """`[H, W, C]` smoothed by the separable 3x3 binomial filter (1, 2, 1) / 4, edges
    replicated."""
    p = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
    rows = (p[:-2] + 2.0 * p[1:-1] + p[2:]) / 4.0
    return (rows[:, :-2] + 2.0 * rows[:, 1:-1] + rows[:, 2:]) / 4.0


def psnr01(image: np.ndarray, reference: np.ndarray) -> float:
    """PSNR of straight RGBA pictures `[..., 4]` in [0, 1], compared premultiplied (as
    `laplacian_energy` does): colour under transparent pixels is invisible and not counted."""
    mse = float(np.mean((premultiply(image).astype(np.float64) - premultiply(reference)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


@dataclass
class Probe:
    """Held-out scenes with their clean latents `x0 [B, L, h, w, c]` and a decoder."""

    pipe: Any
    ctx: Any
    uncond: Any
    x0: Any
    valid: np.ndarray  # bool [B, L]
    decode: Callable[[Any], np.ndarray]  # latents [B, L, h, w, c] -> valid layers [N, H, W, 4]


def probe(model: str, scenes: int, seed: int) -> Probe:
    import jax

    from dreamlayer_jax.eval.scenes import held_out_scenes
    from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline

    pipe = DreamLayerPipeline.from_pretrained(model)
    # one foreground count, so that every scene has the same slots and no padding
    pairs = held_out_scenes(scenes, seed=seed, resolution=pipe.config.resolution,
                            num_foregrounds=min(2, pipe.max_foregrounds))
    ctx, uncond = pipe.layer_context([request for request, _ in pairs])
    num_layers, b = ctx.num_layers, len(pairs)
    x0 = truth_latents(pipe, [truth for _, truth in pairs], num_layers)
    valid = np.asarray(ctx.layer_valid)
    decode = jax.jit(pipe.codec.decode)

    def pictures(latents: Any) -> np.ndarray:
        rgba = np.asarray(decode(latents.reshape(b * num_layers, *latents.shape[2:])))
        return rgba.reshape(b, num_layers, *rgba.shape[1:])[valid]

    return Probe(pipe, ctx, uncond, x0, valid, pictures)


def one_step(p: Probe, seed: int, timesteps: tuple[int, ...]) -> list[dict]:
    """One row per timestep: the model's estimate from the true `x_t` (module docstring)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from dreamlayer_jax.eval.measures import noise_ratio
    from dreamlayer_jax.schedulers.forward_process import add_noise, get_target

    x0, valid, pictures = p.x0, p.valid, p.decode
    b, num_layers = valid.shape
    sched = p.pipe.scheduler
    prediction = sched.config.prediction_type
    graph, params = nnx.split(p.pipe.unet)

    @jax.jit
    def forward(params, x: jax.Array, t: jax.Array) -> jax.Array:
        unet = nnx.merge(graph, params)
        return unet(x, jnp.broadcast_to(t[:, None], (b, num_layers)), p.ctx)

    truth = pictures(x0)
    rows = []
    for t in timesteps:
        key = jax.random.fold_in(jax.random.key(seed), t)
        noise = jax.random.normal(key, x0.shape)
        tt = jnp.full((b,), t, jnp.int32)
        x_t = add_noise(sched, x0, noise, tt)
        out = forward(params, x_t, tt)
        a = float(sched.alphas_cumprod[t])
        if prediction == "v_prediction":
            x0_hat = np.sqrt(a) * x_t - np.sqrt(1.0 - a) * out
        elif prediction == "epsilon":
            x0_hat = (x_t - np.sqrt(1.0 - a) * out) / np.sqrt(a)
        else:
            x0_hat = out
        target = get_target(sched, x0, noise, tt, prediction)
        err = np.asarray((out - target) ** 2)[valid]
        estimate = pictures(jnp.asarray(x0_hat))
        blurred = np.clip([blur3(img) for img in pictures(x_t / np.sqrt(a))], 0.0, 1.0)
        ratio, half = noise_ratio(list(estimate), list(truth))
        blur_ratio, _ = noise_ratio(list(blurred), list(truth))
        rows.append({"t": t, "alpha_bar": a, "target_mse": float(err.mean()),
                     "x0_psnr": psnr01(estimate, truth), "noise": ratio, "noise_ci": half,
                     "blur_psnr": psnr01(blurred, truth), "blur_noise": blur_ratio})
        print(f"t={t:4d}  {prediction} mse {rows[-1]['target_mse']:.4f}  x0 PSNR "
              f"{rows[-1]['x0_psnr']:.1f} dB  noise {ratio:.1f} ± {half:.1f}  | blur: "
              f"{rows[-1]['blur_psnr']:.1f} dB, noise {blur_ratio:.1f}", flush=True)
    return rows


def sampled(p: Probe, seed: int, steps: int, starts: tuple[int, ...],
            guidance: tuple[float, ...], floors: tuple[float, ...] = (0.0,)) -> list[dict]:
    """The model's sampler (all mechanisms on) started at step `k` of `steps` from the
    truth noised to that step (`k = 0`: from pure noise), per guidance scale and guidance
    floor (`guidance_min_timestep`): the noise ratio of the sampled layers, and of the
    global layers alone, against the truth."""
    import jax

    from dreamlayer_jax.eval.measures import noise_ratio
    from dreamlayer_jax.pipeline.irh import resolve_settings

    pipe, x0 = p.pipe, p.x0
    sched = pipe.scheduler
    plan = sched.set_timesteps(steps)
    settings = resolve_settings(pipe.config, enabled=True)
    truth = p.decode(x0)
    is_global = np.zeros_like(p.valid)
    is_global[:, -1] = True
    is_global = is_global[p.valid]
    noise = jax.random.normal(jax.random.key(seed + 1), x0.shape)
    runs = []
    for g, floor, k in itertools.product(guidance, floors, starts):
        x = (noise * sched.init_noise_sigma(plan) if k == 0
             else sched.add_noise_at_step(plan, k, x0, noise))
        out = p.decode(pipe.run_sampler(sched, plan, p.ctx, p.uncond, x, g, seed,
                                        settings, start=k, guidance_min_t=floor))
        every, half = noise_ratio(list(out), list(truth))
        glob, _ = noise_ratio(list(out[is_global]), list(truth[is_global]))
        t_start = int(plan.timesteps[k])
        runs.append({"guidance": g, "guidance_min_timestep": floor, "start": k,
                     "t_start": t_start, "noise": every, "noise_ci": half,
                     "noise_global": glob, "psnr": psnr01(out, truth)})
        print(f"guidance {g:g} (t >= {floor:g}) start {k} (t={t_start}): noise {every:.2f} "
              f"± {half:.2f}, global {glob:.2f}, PSNR {runs[-1]['psnr']:.1f} dB", flush=True)
    return runs


def sampled_table(runs: list[dict], steps: int) -> str:
    lines = [f"| guidance | guided at t >= | start (of {steps}) | t | noise, all layers | "
             "noise, global | PSNR vs truth (dB) |", "|---|---|---|---|---|---|---|"]
    for r in runs:
        start = "pure noise" if r["start"] == 0 else str(r["start"])
        lines.append(f"| {r['guidance']:g} | {r['guidance_min_timestep']:g} | {start} | "
                     f"{r['t_start']} | {r['noise']:.2f} ± {r['noise_ci']:.2f} | "
                     f"{r['noise_global']:.2f} | {r['psnr']:.1f} |")
    return "\n".join(lines)


def table(rows: list[dict], prediction: str = "target") -> str:
    lines = [f"| t | alpha_bar | {prediction} MSE | x0 PSNR (dB) | noise | 3x3 blur PSNR (dB) "
             "| blur noise |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['t']} | {r['alpha_bar']:.4f} | {r['target_mse']:.4f} | "
                     f"{r['x0_psnr']:.1f} | {r['noise']:.1f} ± {r['noise_ci']:.1f} | "
                     f"{r['blur_psnr']:.1f} | {r['blur_noise']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin", help="model folder or builtin[:variant]")
    parser.add_argument("--scenes", type=int, default=16, help="held-out scenes (2 foregrounds)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timesteps", type=int, nargs="+", default=list(TIMESTEPS))
    parser.add_argument("--steps", type=int, default=20, help="sampling steps")
    parser.add_argument("--starts", type=int, nargs="+", default=[0, 5, 10, 15],
                        help="sampling steps to start from the noised truth (0 = pure noise)")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 5.0])
    parser.add_argument("--guidance-min-timestep", type=float, nargs="+", default=[0.0],
                        help="guidance floors to compare (0 = every step guided)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    p = probe(args.model, args.scenes, args.seed)
    rows = one_step(p, args.seed, tuple(args.timesteps))
    print(table(rows))
    runs = sampled(p, args.seed, args.steps, tuple(args.starts), tuple(args.guidance),
                   tuple(args.guidance_min_timestep))
    print(sampled_table(runs, args.steps))
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "scenes": args.scenes,
                                         "one_step": rows, "sampled": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
