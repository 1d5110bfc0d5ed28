"""The paper variant's built-in model (`builtin:paper`) ships too: no boxes needed."""

import numpy as np
import pytest

from dreamlayer_jax.pipeline.builtin import builtin_model_path
from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline
from dreamlayer_jax.pipeline.scene import Layer, Scene

pytestmark = pytest.mark.skipif(
    not (builtin_model_path("paper") / "model_index.json").is_file(),
    reason="no built-in paper model in this checkout")


def test_builtin_paper_samples_foregrounds_without_boxes():
    pipe = DreamLayerPipeline.from_pretrained("builtin:paper")
    assert pipe.config.variant == "paper" and pipe.name == "builtin:paper"
    scene = Scene("a small red star and a green ring in front of a striped blue wall",
                  "a striped blue wall", [Layer("a small red star"), Layer("a green ring")])
    result = pipe(scene, num_inference_steps=3, seed=0)
    res = pipe.config.resolution
    assert result.composite.shape == (res, res, 3)
    assert [layer.shape for layer in result.layers] == [(res, res, 4)] * 2
    assert all(np.isfinite(layer).all() for layer in result.layers)
    assert result.info["model"] == "builtin:paper"
    # guided only at t >= 500, as measured best in docs/BUILTIN.md
    assert result.info["guidance_min_timestep"] == 500.0
