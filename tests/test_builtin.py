"""The built-in model ships in the package, loads offline and samples a scene."""

import numpy as np
import pytest

from dreamlayer_jax.pipeline.builtin import builtin_model_path
from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline
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
    if rows.size:  # opacity only inside the box plus the model's clear margin
        margin = pipe.config.clear_margin
        assert cols.min() >= int((0.2 - margin) * res) - 1 and cols.max() <= (0.7 + margin) * res


def _config_module(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "configs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_v2_config_holds_every_3_foreground_prompt_and_the_paper_global_slot():
    from dreamlayer_jax.data.synthetic import SyntheticSceneGenerator
    from dreamlayer_jax.models.tokenizer import load_tokenizer

    v1, v2 = _config_module("builtin"), _config_module("builtin_v2")
    length = v2.ARCHITECTURE["text_encoder"]["max_position_embeddings"]
    assert v1.ARCHITECTURE["text_encoder"]["max_position_embeddings"] == 32  # shipped model
    assert {k: v for k, v in v2.ARCHITECTURE.items() if k != "text_encoder"} == {
        k: v for k, v in v1.ARCHITECTURE.items() if k != "text_encoder"}
    tokenizer = load_tokenizer(builtin_model_path())  # the same word list as init_model's
    generator = SyntheticSceneGenerator(resolution=32, max_foregrounds=3, min_foregrounds=3)
    longest = concat = 0
    for i in range(300):
        scene = generator.sample((0, i))

        def count(text: str) -> int:
            return len(tokenizer(text)["input_ids"])  # [SOS] and [EOS] included

        longest = max(longest, count(scene.prompt))
        concat = max(concat, 2 + sum(count(p) - 2 for p in
                                     [scene.background_prompt, *scene.layer_prompts]))
    assert longest > 32  # what cut the v1 model's prompts
    assert longest <= length and concat <= length
