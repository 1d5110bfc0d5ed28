"""The synthetic world's attributes and the prompts built from them.

Every prompt the generator writes uses only the words of `VOCABULARY`, so a tiny
word-level tokenizer covers it, and every prompt is a function of the scene's
ground-truth attributes (kept in `LayeredScene.meta`), so evaluation can check them.

    layer       "a small red star"
    background  "a striped blue wall at sunset"
    global      "a small red star and a large green ring in front of a striped blue wall
                 at sunset"
"""

from __future__ import annotations

from collections.abc import Sequence

# The named colours (linear-ish sRGB in [0, 1]); objects and backgrounds share them.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.12, 0.12),
    "orange": (0.96, 0.52, 0.08),
    "yellow": (0.95, 0.86, 0.16),
    "green": (0.18, 0.68, 0.24),
    "blue": (0.14, 0.34, 0.86),
    "purple": (0.54, 0.24, 0.76),
    "pink": (0.97, 0.52, 0.72),
    "white": (0.94, 0.94, 0.94),
}

SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "ring",
    "diamond",
    "cross",
    "hexagon",
)

# Object radius (the shape fits in a circle of this radius), as a fraction of the side.
SIZES: dict[str, tuple[float, float]] = {
    "small": (0.10, 0.14),
    "large": (0.17, 0.23),
}

BACKGROUND_KINDS: tuple[str, ...] = ("gradient", "floor", "stripes", "checks", "noise")

# How each background kind is named; `{colour}` is replaced by the colour's name.
BACKGROUND_PHRASES: dict[str, str] = {
    "gradient": "{colour} gradient",
    "floor": "{colour} floor",
    "stripes": "striped {colour} wall",
    "checks": "checkered {colour} wall",
    "noise": "textured {colour} wall",
}

# Lighting conditions and how the prompt says them.
LIGHTS: dict[str, str] = {
    "daylight": "in daylight",
    "sunset": "at sunset",
    "night": "at night",
}

_GLUE_WORDS = ("a", "an", "and", "in", "front", "of")


def with_article(phrase: str) -> str:
    """`"orange floor"` -> `"an orange floor"`, `"red star"` -> `"a red star"`."""
    article = "an" if phrase[:1].lower() in "aeiou" else "a"
    return f"{article} {phrase}"


def layer_prompt(size: str, colour: str, shape: str) -> str:
    """The prompt of one foreground, e.g. `"a small red star"`."""
    return with_article(f"{size} {colour} {shape}")


def background_prompt(kind: str, colour: str, light: str) -> str:
    """The prompt of a background, e.g. `"a striped blue wall at sunset"`."""
    return f"{with_article(BACKGROUND_PHRASES[kind].format(colour=colour))} {LIGHTS[light]}"


def global_prompt(layer_prompts: Sequence[str], background: str) -> str:
    """`"<layer 1> and <layer 2> ... in front of <background>"`; the background alone
    when there is no foreground."""
    if not layer_prompts:
        return background
    return f"{' and '.join(layer_prompts)} in front of {background}"


def _vocabulary() -> list[str]:
    words = set(_GLUE_WORDS) | set(COLOURS) | set(SHAPES) | set(SIZES)
    for phrase in list(BACKGROUND_PHRASES.values()) + list(LIGHTS.values()):
        words.update(w for w in phrase.split() if w != "{colour}")
    return sorted(words)


VOCABULARY: list[str] = _vocabulary()
