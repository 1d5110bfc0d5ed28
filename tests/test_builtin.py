"""The built-in model ships in the package, loads offline and samples a scene."""

import numpy as np
import pytest

from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline, builtin_model_path
from dreamlayer_jax.pipeline.scene import Layer, Scene

pytestmark = pytest.mark.skipif(not (builtin_model_path() / "model_index.json").is_file(),
                                reason="no built-in model in this checkout")

SCENE = Scene("a small red star in front of a striped blue wall in daylight",
              "a striped blue wall in daylight", [Layer("a small red star", (0.2, 0.2, 0.7, 0.7))])


def test_the_builtin_model_samples_a_layered_scene_deterministically():
    pipe = DreamLayerPipeline.from_pretrained()
    assert pipe.max_foregrounds == 3
    a = pipe(SCENE, num_inference_steps=4, seed=0)
    b = pipe(SCENE, num_inference_steps=4, seed=0)
    res = pipe.config.resolution
    assert a.background.shape == (res, res, 3) and a.composite.shape == (res, res, 3)
    assert len(a.layers) == 1 and a.layers[0].shape == (res, res, 4)
    np.testing.assert_array_equal(a.layers[0], b.layers[0])
    alpha = a.layers[0][..., 3]
    assert alpha.min() >= 0 and alpha.max() <= 255
    rows, cols = np.nonzero(alpha)
    if rows.size:  # opacity only inside the box plus the margin
        margin = pipe.config.box_margin
        assert cols.min() >= int((0.2 - margin) * res) - 1 and cols.max() <= (0.7 + margin) * res
