"""The synthetic scene generator: determinism, ground truth, geometry, lighting, prompts."""

import numpy as np
import pytest

from dreamlayer_jax.data.compositing import alpha_composite, preview_strip
from dreamlayer_jax.data.scene_folder import read_scene_folder
from dreamlayer_jax.data.synthetic import (
    VOCABULARY,
    SyntheticSceneGenerator,
    write_synthetic_folders,
)
from dreamlayer_jax.data.synthetic_vocab import (
    COLOURS,
    SHAPES,
    background_prompt,
    global_prompt,
    layer_prompt,
)
from dreamlayer_jax.errors import ConfigError

SEEDS = range(12)


@pytest.fixture(scope="module", params=[32, 64, 128])
def scenes(request):
    generator = SyntheticSceneGenerator(resolution=request.param)
    return [generator.sample(seed) for seed in SEEDS]


def _same(a, b):
    return (
        a.prompt == b.prompt
        and a.boxes == b.boxes
        and a.meta == b.meta
        and np.array_equal(a.background, b.background)
        and np.array_equal(a.composite, b.composite)
        and all(np.array_equal(x, y) for x, y in zip(a.layers, b.layers))
    )


def test_same_seed_gives_the_same_scene_and_other_seeds_differ():
    generator = SyntheticSceneGenerator(resolution=32)
    assert _same(generator.sample(5), generator.sample(5))
    assert _same(generator.sample((5, 2)), generator.sample((5, 2)))
    from_rng = generator.sample(np.random.default_rng(9))
    assert _same(from_rng, generator.sample(np.random.default_rng(9)))
    composites = [generator.sample(seed).composite for seed in range(6)]
    for i in range(6):
        for j in range(i + 1, 6):
            assert not np.array_equal(composites[i], composites[j])


def test_scenes_have_the_asked_resolution_and_layer_count(scenes):
    size = scenes[0].meta["resolution"]
    for scene in scenes:
        assert scene.background.shape == (size, size, 3)
        assert scene.composite.shape == (size, size, 3)
        assert 1 <= scene.num_foregrounds <= 3
        assert all(layer.shape == (size, size, 4) for layer in scene.layers)
    generator = SyntheticSceneGenerator(resolution=32, min_foregrounds=3, max_foregrounds=3)
    assert all(generator.sample(seed).num_foregrounds == 3 for seed in range(4))
    assert {scene.num_foregrounds for scene in scenes} == {1, 2, 3}


def test_each_foreground_lies_inside_its_box_and_inside_the_picture(scenes):
    for scene in scenes:
        for index, layer in enumerate(scene.layers):
            x0, y0, x1, y1 = scene.box_pixels(index)
            alpha = layer[..., 3].copy()
            assert alpha[y0:y1, x0:x1].max() == 255
            # The box is tight: the alpha touches each of its four sides.
            assert alpha[y0, x0:x1].any() and alpha[y1 - 1, x0:x1].any()
            assert alpha[y0:y1, x0].any() and alpha[y0:y1, x1 - 1].any()
            alpha[y0:y1, x0:x1] = 0
            assert not alpha.any(), "alpha outside the box"
            # Object and shadow are whole: nothing touches the picture's border.
            border = np.concatenate(
                [layer[0, :, 3], layer[-1, :, 3], layer[:, 0, 3], layer[:, -1, 3]]
            )
            assert not border.any()
            assert not layer[layer[..., 3] == 0].any(), "colour left where alpha is 0"


def test_shape_edges_are_antialiased():
    generator = SyntheticSceneGenerator(resolution=64, shadows=False)
    for seed in range(6):
        for layer in generator.sample(seed).layers:
            alpha = layer[..., 3]
            opaque, partial = alpha == 255, (alpha > 0) & (alpha < 255)
            assert opaque.sum() > 0
            # Fractional alpha all around the outline: at least one pixel per 4 of perimeter.
            outline = np.sqrt(opaque.sum())
            assert partial.sum() >= outline
            # ... and only at the edge: every partial pixel touches an opaque or empty one.
            padded = np.pad(partial, 1)
            inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
            assert (partial & inner).sum() < 0.25 * partial.sum()


def test_drop_shadow_is_semi_transparent_black_below_right_of_the_object():
    generator = SyntheticSceneGenerator(resolution=64, lights=["daylight"])
    for seed in range(6):
        for layer in generator.sample(seed).layers:
            shadow = (layer[..., 3] > 0) & (layer[..., :3].max(-1) == 0)
            assert shadow.sum() > 0
            assert layer[..., 3][shadow].max() <= 128
            ys, xs = np.nonzero(shadow)
            ys_obj, xs_obj = np.nonzero(layer[..., 3] == 255)
            assert ys.mean() > ys_obj.mean() and xs.mean() > xs_obj.mean()


def test_daylight_composite_is_the_plain_alpha_composite():
    generator = SyntheticSceneGenerator(resolution=64, lights=["daylight"])
    for seed in range(6):
        scene = generator.sample(seed)
        assert np.array_equal(scene.composite, alpha_composite(scene.background, scene.layers))


@pytest.mark.parametrize("light", ["sunset", "night"])
def test_lighting_changes_the_objects_like_the_background(light):
    lit = SyntheticSceneGenerator(resolution=64, lights=[light])
    for seed in range(6):
        scene = lit.sample(seed)
        plain = scene.flatten().astype(np.float32)
        composite = scene.composite.astype(np.float32)
        covered = np.any([layer[..., 3] > 0 for layer in scene.layers], axis=0)
        # Where no object is, the composite is the (already lit) background.
        assert np.array_equal(composite[~covered], plain[~covered])
        objects = np.any([layer[..., 3] == 255 for layer in scene.layers], axis=0)
        warmth = (composite[..., 0] - composite[..., 2])[objects].mean()
        plain_warmth = (plain[..., 0] - plain[..., 2])[objects].mean()
        if light == "sunset":
            assert warmth > plain_warmth + 10
        else:
            assert composite[objects].mean() < plain[objects].mean() - 20
            assert warmth < plain_warmth


def test_opaque_object_pixels_have_the_named_colour():
    generator = SyntheticSceneGenerator(resolution=64, lights=["daylight"])
    names = list(COLOURS)
    palette = np.array([COLOURS[n] for n in names]) * 255
    for seed in range(10):
        scene = generator.sample(seed)
        for layer, attributes in zip(scene.layers, scene.meta["layer_attributes"]):
            mean = layer[..., :3][layer[..., 3] == 255].mean(0)
            nearest = names[int(np.argmin(((palette - mean) ** 2).sum(-1)))]
            assert nearest == attributes["colour"]
            assert attributes["colour"] != scene.meta["background_attributes"]["colour"]


def test_prompts_are_built_from_the_attributes(scenes):
    for scene in scenes:
        bg = scene.meta["background_attributes"]
        assert scene.background_prompt == background_prompt(bg["kind"], bg["colour"], bg["light"])
        assert bg["colour"] in scene.background_prompt.split()
        for prompt, attributes in zip(scene.layer_prompts, scene.meta["layer_attributes"]):
            assert attributes["shape"] in SHAPES
            assert prompt == f"a {attributes['size']} {attributes['colour']} {attributes['shape']}"
        expected = " and ".join(scene.layer_prompts) + " in front of " + scene.background_prompt
        assert scene.prompt == expected
        assert set(scene.prompt.split()) <= set(VOCABULARY)
    assert background_prompt("stripes", "blue", "sunset") == "a striped blue wall at sunset"
    assert background_prompt("floor", "orange", "night") == "an orange floor at night"
    assert layer_prompt("small", "red", "star") == "a small red star"
    assert (
        global_prompt(["a small red star", "a large green ring"], "a striped blue wall at sunset")
        == "a small red star and a large green ring in front of a striped blue wall at sunset"
    )


def test_every_background_kind_and_light_occurs():
    generator = SyntheticSceneGenerator(resolution=32)
    seen = [generator.sample(seed).meta["background_attributes"] for seed in range(60)]
    assert {b["kind"] for b in seen} == {"gradient", "floor", "stripes", "checks", "noise"}
    assert {b["light"] for b in seen} == {"daylight", "sunset", "night"}


def test_bad_generator_settings_are_config_errors():
    with pytest.raises(ConfigError, match="resolution"):
        SyntheticSceneGenerator(resolution=8)
    with pytest.raises(ConfigError, match="min_foregrounds"):
        SyntheticSceneGenerator(min_foregrounds=3, max_foregrounds=2)
    with pytest.raises(ConfigError, match="lights"):
        SyntheticSceneGenerator(lights=["dusk"])


def test_written_folders_hold_the_same_scenes(tmp_path):
    folders = write_synthetic_folders(tmp_path, n=3, seed=4, resolution=32)
    assert [f.name for f in folders] == ["scene_000000", "scene_000001", "scene_000002"]
    generator = SyntheticSceneGenerator(resolution=32)
    for index, folder in enumerate(folders):
        assert _same(read_scene_folder(folder), generator.sample((4, index)))


def test_preview_strip_puts_all_layers_side_by_side(scenes):
    scene = scenes[0]
    strip = preview_strip(scene.background, scene.layers, scene.composite, gap=2)
    k, size = scene.num_foregrounds, scene.width
    assert strip.dtype == np.uint8
    assert strip.shape == (size, (k + 2) * size + (k + 1) * 2, 3)
    assert np.array_equal(strip[:, :size], scene.background)
    assert np.array_equal(strip[:, -size:], scene.composite)
