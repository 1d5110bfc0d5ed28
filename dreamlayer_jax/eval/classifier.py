"""Layer fidelity: a small classifier of a foreground layer's colour and shape.

Each RGBA layer becomes a short feature vector (`layer_features`): the mean colour of its
opaque pixels, and shape descriptors of its body (alpha above the shadow's 0.5): the mask
cropped to its bounding box and resampled to `GRID x GRID`, the fill ratio and aspect of
that box, a radial histogram around the centroid and rotation-invariant angular moments
(so a rotated triangle still looks like one). Two one-hidden-layer MLPs (colour, shape)
are trained on these features of *ground-truth* synthetic layers with full-batch Adam in
plain numpy: no compilation and no cache, a few seconds on a CPU.

    clf = train_classifier(resolution=32)      # trained on CLASSIFIER_BASE seeds
    clf.accuracy                                # on held-out ground truth
    clf.fidelity(layer_rgba, "red", "star")     # -> (colour_ok, shape_ok)
    clf.features(layers)                        # penultimate features (closed-world FID)
    clf.picture.features(pictures)              # the same for RGB backgrounds/composites

A second classifier (`PictureClassifier`) reads whole RGB pictures (`picture_features`:
4x4 block colours, colour statistics, gradient and Laplacian energies) and names the
background's kind, colour and light; it is trained on ground-truth backgrounds and
composites. The hidden layers of both are the feature spaces of the closed-world FID
(`measures.fid`): foreground layers in the layer classifier's, backgrounds and
composites in the picture classifier's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dreamlayer_jax.data.compositing import to_float
from dreamlayer_jax.data.synthetic_vocab import COLOURS, SHAPES
from dreamlayer_jax.eval.scenes import CLASSIFIER_BASE, synthetic_scenes

GRID = 8  # the cropped body mask is resampled to GRID x GRID
RADIAL_BINS = 8
HARMONICS = 8
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
SHAPE_NAMES: tuple[str, ...] = tuple(SHAPES)
NUM_FEATURES = 3 + 3 + GRID * GRID + 2 + RADIAL_BINS + HARMONICS


def _resample(mask: np.ndarray, box: tuple[int, int, int, int], grid: int) -> np.ndarray:
    """Bilinear samples of `mask[H, W]` on a `grid x grid` lattice spanning `box`."""
    x0, y0, x1, y1 = box
    h, w = mask.shape
    ys = np.clip(y0 + (np.arange(grid) + 0.5) / grid * (y1 - y0) - 0.5, 0, h - 1)
    xs = np.clip(x0 + (np.arange(grid) + 0.5) / grid * (x1 - x0) - 0.5, 0, w - 1)
    iy, ix = np.minimum(ys.astype(int), h - 2), np.minimum(xs.astype(int), w - 2)
    fy, fx = (ys - iy)[:, None], (xs - ix)[None, :]
    top = mask[iy][:, ix] * (1 - fx) + mask[iy][:, ix + 1] * fx
    bottom = mask[iy + 1][:, ix] * (1 - fx) + mask[iy + 1][:, ix + 1] * fx
    return (top * (1 - fy) + bottom * fy).ravel()


def layer_features(layer: np.ndarray) -> np.ndarray | None:
    """Features float32 `[NUM_FEATURES]` of a straight-alpha RGBA layer `[H, W, 4]`, or None
    when the layer has no body (nothing with alpha above 0.5)."""
    rgba = to_float(np.asarray(layer))
    alpha = rgba[..., 3]
    body = np.clip((alpha - 0.5) * 2.0, 0.0, 1.0)  # the shadow (alpha <= 0.5) drops out
    mass = float(body.sum())
    if mass <= 0.0 or min(alpha.shape) < 2:
        return None
    rgb = (rgba[..., :3] * body[..., None]).sum(axis=(0, 1)) / mass
    chroma = rgb / max(float(rgb.sum()), 1e-6)

    rows, cols = np.flatnonzero(body.any(axis=1)), np.flatnonzero(body.any(axis=0))
    box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    crop = _resample(body, box, GRID)
    box_w, box_h = box[2] - box[0], box[3] - box[1]
    fill = mass / (box_w * box_h)
    aspect = np.log(box_w / box_h)

    yy, xx = np.mgrid[0 : alpha.shape[0], 0 : alpha.shape[1]].astype(np.float32) + 0.5
    cx, cy = (body * xx).sum() / mass, (body * yy).sum() / mass
    dx, dy = xx - cx, yy - cy
    radius = np.sqrt(dx**2 + dy**2) / np.sqrt(mass / np.pi)  # 1 = the equal-area disc's edge
    radial, _ = np.histogram(radius, bins=RADIAL_BINS, range=(0.0, 2.0), weights=body)
    theta = np.arctan2(dy, dx)
    weight = body * radius**2
    k = np.arange(1, HARMONICS + 1)[:, None, None]
    moments = np.abs((weight * np.exp(1j * k * theta)).sum(axis=(1, 2))) / max(weight.sum(), 1e-6)
    return np.concatenate(
        [rgb, chroma, crop, [fill, aspect], radial / mass, moments]).astype(np.float32)


@dataclass
class MLP:
    """A one-hidden-layer softmax classifier on standardised features (numpy)."""

    mean: np.ndarray
    scale: np.ndarray
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray

    def logits(self, x: np.ndarray) -> np.ndarray:
        """`x[N, F]` -> logits `[N, C]`."""
        h = np.maximum((x - self.mean) / self.scale @ self.w1 + self.b1, 0.0)
        return h @ self.w2 + self.b2

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.argmax(self.logits(x), axis=-1)

    def hidden(self, x: np.ndarray) -> np.ndarray:
        """`x[N, F]` -> the penultimate (hidden ReLU) activations `[N, hidden]`."""
        return np.maximum((x - self.mean) / self.scale @ self.w1 + self.b1, 0.0)


def train_mlp(x: np.ndarray, y: np.ndarray, num_classes: int, *, hidden: int = 32,
              steps: int = 300, lr: float = 0.02, weight_decay: float = 1e-3, seed: int = 0
              ) -> MLP:
    """Full-batch Adam on the softmax cross-entropy of `x[N, F]`, labels `y[N]`."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x, np.float32)
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    xs = (x - mean) / scale
    params = [rng.normal(0.0, np.sqrt(2.0 / x.shape[1]), (x.shape[1], hidden)),
              np.zeros(hidden), rng.normal(0.0, np.sqrt(1.0 / hidden), (hidden, num_classes)),
              np.zeros(num_classes)]
    params = [p.astype(np.float32) for p in params]
    first = [np.zeros_like(p) for p in params]
    second = [np.zeros_like(p) for p in params]
    onehot = np.eye(num_classes, dtype=np.float32)[y]
    for step in range(1, steps + 1):
        w1, b1, w2, b2 = params
        pre = xs @ w1 + b1
        h = np.maximum(pre, 0.0)
        logits = h @ w2 + b2
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        d_logits = (p - onehot) / len(y)
        d_h = (d_logits @ w2.T) * (pre > 0)
        grads = [xs.T @ d_h + weight_decay * w1, d_h.sum(0),
                 h.T @ d_logits + weight_decay * w2, d_logits.sum(0)]
        for i, g in enumerate(grads):  # Adam, betas (0.9, 0.999)
            first[i] = 0.9 * first[i] + 0.1 * g
            second[i] = 0.999 * second[i] + 0.001 * g * g
            m_hat, v_hat = first[i] / (1 - 0.9**step), second[i] / (1 - 0.999**step)
            params[i] = params[i] - lr * m_hat / (np.sqrt(v_hat) + 1e-8)
    return MLP(mean, scale, *params)


def ground_truth_examples(n_scenes: int, seed: int | tuple[int, ...], resolution: int
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features `[N, F]`, colour and shape labels `[N]` of every foreground of `n_scenes`
    synthetic scenes `sample((*seed, i))` (layers without a body are skipped)."""
    feats, colours, shapes = [], [], []
    for scene in synthetic_scenes(n_scenes, seed, resolution):
        for layer, attrs in zip(scene.layers, scene.meta["layer_attributes"]):
            f = layer_features(layer)
            if f is not None:
                feats.append(f)
                colours.append(COLOUR_NAMES.index(attrs["colour"]))
                shapes.append(SHAPE_NAMES.index(attrs["shape"]))
    return np.stack(feats), np.asarray(colours), np.asarray(shapes)


PICTURE_BLOCKS = 4  # picture_features: PICTURE_BLOCKS x PICTURE_BLOCKS mean colours
PICTURE_TASKS = ("kind", "colour", "light")  # background_attributes the picture MLPs name


def picture_features(picture: np.ndarray) -> np.ndarray:
    """Features float32 of an RGB picture `[H, W, 3]` (an RGBA one loses its alpha): the
    mean colour of `PICTURE_BLOCKS^2` blocks, the channels' means and standard deviations,
    and the logs of the mean squared x/y differences and Laplacian of its grey level."""
    rgb = to_float(np.asarray(picture))[..., :3].astype(np.float64)
    h, w, _ = rgb.shape
    b = PICTURE_BLOCKS
    blocks = rgb[: h - h % b, : w - w % b].reshape(b, h // b, b, w // b, 3).mean(axis=(1, 3))
    grey = rgb.mean(axis=-1)
    p = np.pad(grey, 1, mode="edge")
    lap = p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4.0 * grey
    energies = [np.mean(np.diff(grey, axis=1) ** 2), np.mean(np.diff(grey, axis=0) ** 2),
                np.mean(lap**2)]
    return np.concatenate([blocks.ravel(), rgb.mean(axis=(0, 1)), rgb.std(axis=(0, 1)),
                           np.log(np.asarray(energies) + 1e-6)]).astype(np.float32)


@dataclass
class PictureClassifier:
    """MLPs naming a background's kind, colour and light from a whole RGB picture.

    `accuracy` holds each task's accuracy on held-out ground-truth backgrounds and
    composites; `features` is the FID feature space of pictures."""

    models: dict[str, MLP]
    labels: dict[str, tuple[str, ...]]
    accuracy: dict[str, float]

    def features(self, pictures: Sequence[np.ndarray]) -> np.ndarray:
        """The hidden activations of every task's MLP, concatenated: `[N, 3 * hidden]`."""
        x = np.stack([picture_features(p) for p in pictures])
        return np.concatenate([self.models[t].hidden(x) for t in PICTURE_TASKS], axis=1)


def train_picture_classifier(resolution: int, train_scenes: int = 800, test_scenes: int = 200,
                             seed: int = 0) -> PictureClassifier:
    """Train on the backgrounds and composites of ground-truth scenes from
    `(CLASSIFIER_BASE + seed, 2, i)`, test on `(CLASSIFIER_BASE + seed, 3, i)`."""
    base = CLASSIFIER_BASE + int(seed)

    def examples(n: int, stream: int) -> tuple[np.ndarray, dict[str, list[str]]]:
        feats, names = [], {t: [] for t in PICTURE_TASKS}
        for scene in synthetic_scenes(n, (base, stream), resolution):
            attrs = scene.meta["background_attributes"]
            for picture in (scene.background, scene.composite):
                feats.append(picture_features(picture))
                for task in PICTURE_TASKS:
                    names[task].append(str(attrs[task]))
        return np.stack(feats), names

    x, names = examples(train_scenes, 2)
    xt, names_t = examples(test_scenes, 3)
    models, labels, accuracy = {}, {}, {}
    for i, task in enumerate(PICTURE_TASKS):
        labels[task] = tuple(sorted(set(names[task]) | set(names_t[task])))
        y = np.asarray([labels[task].index(v) for v in names[task]])
        yt = np.asarray([labels[task].index(v) for v in names_t[task]])
        models[task] = train_mlp(x, y, len(labels[task]), seed=seed + 2 + i)
        accuracy[task] = float(np.mean(models[task].predict(xt) == yt))
    return PictureClassifier(models, labels, accuracy)


@dataclass
class LayerClassifier:
    """Colour and shape classifiers of foreground layers at one resolution.

    `accuracy` holds `{"colour": ..., "shape": ...}` measured on held-out ground truth
    (scenes from another seed stream than the training scenes).
    """

    resolution: int
    colour_model: MLP
    shape_model: MLP
    accuracy: dict[str, float]
    picture: PictureClassifier | None = None

    def features(self, layers: Sequence[np.ndarray]) -> np.ndarray:
        """Penultimate features `[N, 2 * hidden]` (colour and shape MLPs' hidden layers)
        of the RGBA layers that have a body (empty layers are left out)."""
        feats = [f for f in (layer_features(layer) for layer in layers) if f is not None]
        width = self.colour_model.w1.shape[1] + self.shape_model.w1.shape[1]
        if not feats:
            return np.zeros((0, width), np.float32)
        x = np.stack(feats)
        return np.concatenate([self.colour_model.hidden(x), self.shape_model.hidden(x)], 1)

    def predict(self, layers: Sequence[np.ndarray]) -> list[tuple[str, str] | None]:
        """`(colour, shape)` names per RGBA layer `[H, W, 4]`; None for an empty layer."""
        feats = [layer_features(layer) for layer in layers]
        present = [f for f in feats if f is not None]
        if not present:
            return [None] * len(feats)
        x = np.stack(present)
        colours, shapes = self.colour_model.predict(x), self.shape_model.predict(x)
        out: list[tuple[str, str] | None] = []
        index = 0
        for f in feats:
            if f is None:
                out.append(None)
            else:
                out.append((COLOUR_NAMES[colours[index]], SHAPE_NAMES[shapes[index]]))
                index += 1
        return out

    def fidelity(self, layer: np.ndarray, colour: str, shape: str) -> tuple[bool, bool]:
        """Whether RGBA `layer` `[H, W, 4]` shows the asked `colour` and `shape`; an empty
        layer fails both."""
        found = self.predict([layer])[0]
        if found is None:
            return False, False
        return found[0] == colour, found[1] == shape


def train_classifier(resolution: int, train_scenes: int = 800, test_scenes: int = 200,
                     seed: int = 0, picture: bool = True) -> LayerClassifier:
    """Train on ground-truth layers of `train_scenes` scenes from `(CLASSIFIER_BASE + seed,
    0, i)` and measure accuracy on `test_scenes` from `(CLASSIFIER_BASE + seed, 1, i)`;
    both streams are disjoint from training (small seeds) and evaluation
    (`HELD_OUT_BASE`). With `picture`, the `PictureClassifier` is trained too."""
    base = CLASSIFIER_BASE + int(seed)
    x, colours, shapes = ground_truth_examples(train_scenes, (base, 0), resolution)
    colour_model = train_mlp(x, colours, len(COLOUR_NAMES), seed=seed)
    shape_model = train_mlp(x, shapes, len(SHAPE_NAMES), seed=seed + 1)
    xt, colours_t, shapes_t = ground_truth_examples(test_scenes, (base, 1), resolution)
    accuracy = {
        "colour": float(np.mean(colour_model.predict(xt) == colours_t)),
        "shape": float(np.mean(shape_model.predict(xt) == shapes_t)),
    }
    pictures = (train_picture_classifier(resolution, train_scenes, test_scenes, seed)
                if picture else None)
    return LayerClassifier(int(resolution), colour_model, shape_model, accuracy, pictures)
