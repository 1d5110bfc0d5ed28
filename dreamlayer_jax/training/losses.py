"""The denoising objective over the valid layers of a batch of scenes, and the paper
variant's map losses beside it.

One timestep per scene, shared by its layers (DreamLayer denoises layers together):
`t: int32[B]`, noise `[B, L, h, w, c]`, and the regression of the model's output onto
the epsilon / v / sample target, averaged over the elements of valid layers only.

The paper variant (DESIGN.md section 8) adds, per foreground `f` with a map:
- `L_c` (`context_loss`): the refined context map `M_G^f` against the foreground's
  ground-truth alpha, area-resized to the map's size;
- `L_layout` (`layout_loss`): the foreground's own cross-attention map `M_F^f` against
  `M_G^f` clipped to [0, 1] under `stop_gradient`. The paper writes
  `||M_G^f - M_F^f||` with no stop-gradient; ours lets the context map (taught by
  `L_c`) teach the foreground's own cross-attention, rather than the reverse.
Both are squared errors averaged over each map's pixels, then over the foregrounds
counted in `mask`; 0 when there is none.

`edge_weights` (either variant, `TrainConfig.edge_loss_weight`) weights each foreground
layer's denoising loss towards its alpha edges: a shape lives in the few pixels around
its silhouette, a colour in the whole body, so under a uniform loss the shape term is
small and learnt late (docs/BUILTIN.md, "Why it draws no shapes").

`sample_timesteps` draws the scenes' timesteps: uniform over a range, or with a share
of them from a focus band (`TrainConfig.timestep_focus`), e.g. the high-noise steps
where the sampler lays objects out and the shape word matters.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from dreamlayer_jax.schedulers.forward_process import snr


def sample_timesteps(key: jax.Array, batch: int, t_range: tuple[int, int],
                     focus: tuple[int, int, float] = (0, 0, 0.0)) -> jax.Array:
    """`int32[B]` timesteps, one per scene: uniform over `low <= t < high` of `t_range`,
    or, with probability `p` of `focus = (f_low, f_high, p)` per scene, uniform over
    `f_low <= t < f_high`. Without a focus it draws exactly `randint(key, ...)`."""
    f_low, f_high, prob = focus
    if not prob:
        return jax.random.randint(key, (batch,), *t_range)
    key_t, key_focus, key_pick = jax.random.split(key, 3)
    t = jax.random.randint(key_t, (batch,), *t_range)
    focused = jax.random.randint(key_focus, (batch,), f_low, f_high)
    return jnp.where(jax.random.uniform(key_pick, (batch,)) < prob, focused, t)


def min_snr_weights(sched, t: jax.Array, gamma: float, prediction_type: str) -> jax.Array:
    """Min-SNR-gamma loss weights `[B]` (Hang et al. 2023); all ones when `gamma <= 0`.

    epsilon: `min(snr, gamma) / snr`; v_prediction: `min(snr, gamma) / (snr + 1)`;
    sample: `min(snr, gamma)`.
    """
    if gamma <= 0:
        return jnp.ones(t.shape, jnp.float32)
    s = snr(sched, t).astype(jnp.float32)
    clipped = jnp.minimum(s, gamma)
    if prediction_type == "epsilon":
        return clipped / s
    if prediction_type == "v_prediction":
        return clipped / (s + 1.0)
    return clipped


def role_weights(roles: jax.Array, weights: Sequence[float]) -> jax.Array:
    """`float32[B, L]`: the loss weight of each slot's role (background, foreground, global)."""
    return jnp.asarray(weights, jnp.float32)[roles]


def layer_mse(pred: jax.Array, target: jax.Array,
              pixel_weights: jax.Array | None = None) -> jax.Array:
    """`float32[B, L]`: mean squared error of each layer `[B, L, h, w, c]`, each latent
    pixel's error times `pixel_weights[B, L, h, w]` when given."""
    err = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32))
    if pixel_weights is not None:
        err = err * pixel_weights[..., None]
    return err.mean(axis=tuple(range(2, err.ndim)))


def masked_layer_loss(pred: jax.Array, target: jax.Array, layer_valid: jax.Array,
                      weights: jax.Array | None = None,
                      pixel_weights: jax.Array | None = None) -> jax.Array:
    """Scalar: `sum(w * mse * valid) / sum(valid)`, i.e. the mean over the elements of
    valid layers (each layer's elements weighted by `weights[B, L]`, each latent pixel
    by `pixel_weights[B, L, h, w]`). Padded layers contribute nothing, whatever they
    hold (NaN included)."""
    valid = layer_valid.astype(bool)
    per_layer = jnp.where(valid, layer_mse(pred, target, pixel_weights), 0.0)
    if weights is not None:
        per_layer = per_layer * weights
    return per_layer.sum() / jnp.maximum(valid.sum(), 1).astype(jnp.float32)


def area_resize(maps: jax.Array, h: int, w: int) -> jax.Array:
    """`maps[..., H, W] -> [..., h, w]`, each output pixel the mean of the input pixels it
    covers: an exact box filter when `h`, `w` divide `H`, `W`; otherwise
    `jax.image.resize` ("linear", antialiased)."""
    big_h, big_w = maps.shape[-2:]
    if (big_h, big_w) == (h, w):
        return maps
    lead = maps.shape[:-2]
    if big_h % h == 0 and big_w % w == 0:
        blocks = maps.reshape(*lead, h, big_h // h, w, big_w // w)
        return blocks.mean(axis=(-3, -1))
    return jax.image.resize(maps, (*lead, h, w), "linear", antialias=True)


def alpha_edges(alphas: jax.Array) -> jax.Array:
    """`float32[..., H, W]` in [0, 1]: each pixel's largest absolute alpha step to a
    4-neighbour, so a hard silhouette marks a band two pixels wide (both sides)."""
    a = alphas.astype(jnp.float32)
    dy = jnp.abs(a[..., 1:, :] - a[..., :-1, :])
    dx = jnp.abs(a[..., :, 1:] - a[..., :, :-1])
    pad = [(0, 0)] * (a.ndim - 2)
    return jnp.maximum(
        jnp.maximum(jnp.pad(dy, [*pad, (1, 0), (0, 0)]), jnp.pad(dy, [*pad, (0, 1), (0, 0)])),
        jnp.maximum(jnp.pad(dx, [*pad, (0, 0), (1, 0)]), jnp.pad(dx, [*pad, (0, 0), (0, 1)])))


def edge_weights(alphas: jax.Array, is_foreground: jax.Array, h: int, w: int,
                 strength: float) -> jax.Array:
    """`float32[B, L, h, w]`: per-latent-pixel loss weights. A foreground layer's
    (`is_foreground[B, L]`) are `1 + strength * edges`, its `alpha_edges` of the alphas
    `[B, L, H, W]` area-resized to the `h x w` latent grid, then divided by their mean
    so that the layer's total weight is unchanged; every other layer's are 1."""
    edges = area_resize(alpha_edges(alphas), h, w)
    raw = 1.0 + strength * edges
    raw = raw / raw.mean(axis=(-2, -1), keepdims=True)
    return jnp.where(is_foreground[..., None, None], raw, 1.0)


def masked_map_mse(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
    """Scalar: the mean over the maps `[B, L, h, w]` where `mask[B, L]` of each map's mean
    squared error; 0 when `mask` is all False (masked maps may hold anything, NaN too)."""
    err = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)).mean(axis=(-2, -1))
    per_map = jnp.where(mask, err, 0.0)
    return per_map.sum() / jnp.maximum(mask.sum(), 1).astype(jnp.float32)


def context_loss(context_maps: jax.Array, alphas: jax.Array, mask: jax.Array) -> jax.Array:
    """`L_c`: refined context maps `[B, L, hm, wm]` against the ground-truth alphas
    `[B, L, H, W]` (in [0, 1]) area-resized to `hm x wm`, over the maps where `mask[B, L]`."""
    target = area_resize(alphas.astype(jnp.float32), *context_maps.shape[-2:])
    return masked_map_mse(context_maps, target, mask)


def layout_loss(context_maps: jax.Array, own_maps: jax.Array, mask: jax.Array) -> jax.Array:
    """`L_layout`: each foreground's own map `M_F [B, L, hm, wm]` against its context map
    `M_G` clipped to [0, 1] (a fixed target: `stop_gradient`), over `mask[B, L]`."""
    teacher = jax.lax.stop_gradient(jnp.clip(context_maps.astype(jnp.float32), 0.0, 1.0))
    return masked_map_mse(own_maps, teacher, mask)
