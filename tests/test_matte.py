"""The picture matte: decomposed foregrounds re-cut from the picture over its background."""

import numpy as np
import pytest

from dreamlayer_jax.pipeline.matte import dilate, picture_matte


def _scene():
    """A grey 12x12 background, a red 4x4 square at rows/cols 2-5, a blue one at 6-9."""
    background = np.full((12, 12, 3), 128, np.uint8)
    picture = background.copy()
    picture[2:6, 2:6] = (230, 20, 20)
    picture[6:10, 6:10] = (20, 20, 230)
    return picture, background


def _blob(rows: slice, cols: slice, colour=(200, 60, 60)) -> np.ndarray:
    layer = np.zeros((12, 12, 4), np.uint8)
    layer[rows, cols, :3] = colour
    layer[rows, cols, 3] = 255
    return layer


def test_dilate_grows_a_mask_by_whole_pixels():
    mask = np.zeros((5, 5), bool)
    mask[2, 2] = True
    assert dilate(mask, 1).sum() == 9 and dilate(mask, 2).all()
    assert (dilate(mask, 0) == mask).all()


def test_a_blob_near_the_object_takes_the_pictures_outline_and_colours():
    picture, background = _scene()
    # the model's body: one pixel off and a pixel short of the red square
    red = _blob(slice(3, 6), slice(3, 7))
    (out,) = picture_matte(picture, background, [red], reach=2)
    expected = np.zeros((12, 12), np.uint8)
    expected[2:6, 2:6] = 255
    np.testing.assert_array_equal(out[..., 3], expected)
    np.testing.assert_array_equal(out[2:6, 2:6, :3], picture[2:6, 2:6])
    # beyond its reach the blue square is not taken
    assert out[6:10, 6:10, 3].max() == 0


def test_a_front_layer_keeps_the_pixels_it_covers_from_the_layers_behind():
    picture, background = _scene()
    back = _blob(slice(2, 10), slice(2, 10))  # a body over both squares
    front = _blob(slice(6, 10), slice(6, 10), (40, 40, 200))
    matted_back, matted_front = picture_matte(picture, background, [back, front], reach=1)
    assert (matted_front[6:10, 6:10, 3] == 255).all()
    assert matted_back[6:10, 6:10, 3].max() == 0  # the front layer claimed them
    assert (matted_back[2:6, 2:6, 3] == 255).all()


def test_a_layer_without_a_body_or_contrast_is_kept_as_the_model_drew_it():
    picture, background = _scene()
    empty = np.zeros((12, 12, 4), np.uint8)
    grey = _blob(slice(0, 2), slice(10, 12), (128, 128, 128))  # where the picture is bare
    out_empty, out_grey = picture_matte(picture, background, [empty, grey])
    np.testing.assert_array_equal(out_empty, empty)
    np.testing.assert_array_equal(out_grey, grey)


def test_decompose_with_the_matte_encodes_the_matted_layers_into_its_latents(tiny_pipe):
    from dreamlayer_jax.pipeline.decompose import decompose
    from dreamlayer_jax.pipeline.scene import Layer

    picture = np.zeros((8, 8, 3), np.uint8)
    picture[..., 2] = 200
    picture[1:4, 1:4] = (230, 20, 20)
    layers = [Layer("a red star", (0.0, 0.0, 0.6, 0.6))]
    plain = decompose(tiny_pipe, picture, layers, "a blue wall", num_inference_steps=2, seed=1,
                      matte=False)
    matted = decompose(tiny_pipe, picture, layers, "a blue wall", num_inference_steps=2,
                       seed=1)  # the box variant's default
    assert plain.info["matte"] is False and matted.info["matte"] is True
    np.testing.assert_array_equal(matted.background, plain.background)
    expected = picture_matte(picture, plain.background, plain.layers)
    np.testing.assert_array_equal(matted.layers[0], expected[0])
    encoded = tiny_pipe.codec.encode(np.stack(expected).astype(np.float32) / 255.0)
    np.testing.assert_allclose(matted.latents[1], np.asarray(encoded)[0], atol=1e-6)
    np.testing.assert_array_equal(matted.latents[[0, -1]], plain.latents[[0, -1]])


@pytest.mark.parametrize("reach", [0, 3])
def test_the_matte_never_gives_alpha_outside_the_reach_of_a_body(reach):
    picture, background = _scene()
    red = _blob(slice(3, 5), slice(3, 5))
    (out,) = picture_matte(picture, background, [red], reach=reach)
    allowed = dilate(red[..., 3] > 127, reach)
    assert not (out[..., 3] > 0)[~allowed].any()
