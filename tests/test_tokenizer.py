"""Loading CLIP tokenizers from diffusers-style folders and tokenizing prompts to fixed length."""

import json

import numpy as np
import pytest

from dreamlayer_jax.errors import InputError, WeightsError
from dreamlayer_jax.models.tokenizer import load_tokenizer, tokenize

BOS, EOS, A, CAT, DOG = 0, 1, 2, 7, 12
VOCAB = {"<|startoftext|>": BOS, "<|endoftext|>": EOS, "a</w>": A, "c": 3, "a": 4, "t</w>": 5,
         "at</w>": 6, "cat</w>": CAT, "d": 8, "o": 9, "g</w>": 10, "og</w>": 11, "dog</w>": DOG}
MERGES = "#version: 0.2\na t</w>\nc at</w>\no g</w>\nd og</w>\n"


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A model folder whose `tokenizer/` holds vocab.json, merges.txt and a max length of 6."""
    root = tmp_path_factory.mktemp("model")
    folder = root / "tokenizer"
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(VOCAB))
    (folder / "merges.txt").write_text(MERGES)
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 6}))
    return root


def test_prompts_are_wrapped_in_bos_eos_and_padded_to_model_max_length(model_folder):
    ids = tokenize(load_tokenizer(model_folder), ["a cat", "A  DOG"])
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids, [[BOS, A, CAT, EOS, EOS, EOS],
                                        [BOS, A, DOG, EOS, EOS, EOS]])


def test_long_prompts_are_truncated_keeping_the_eos_token(model_folder):
    ids = tokenize(load_tokenizer(model_folder), ["cat dog cat dog cat dog"], max_length=4)
    np.testing.assert_array_equal(ids, [[BOS, CAT, DOG, EOS]])


def test_save_pretrained_round_trip_tokenizes_the_same(model_folder, tmp_path):
    tokenizer = load_tokenizer(model_folder)
    tokenizer.save_pretrained(str(tmp_path / "tokenizer"))
    reloaded = load_tokenizer(tmp_path)
    assert reloaded.model_max_length == 6
    prompts = ["a dog", "cat cat a dog cat"]
    np.testing.assert_array_equal(tokenize(reloaded, prompts), tokenize(tokenizer, prompts))


def test_a_folder_without_tokenizer_files_is_a_weights_error(tmp_path):
    (tmp_path / "tokenizer").mkdir()
    with pytest.raises(WeightsError, match="no CLIP tokenizer"):
        load_tokenizer(tmp_path)
    with pytest.raises(WeightsError, match="no 'tokenizer' sub-folder"):
        load_tokenizer(tmp_path / "tokenizer")


def test_a_bare_string_is_an_input_error(model_folder):
    with pytest.raises(InputError, match="list of prompt strings"):
        tokenize(load_tokenizer(model_folder), "a cat")
