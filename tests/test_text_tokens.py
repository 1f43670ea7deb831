"""Long texts are tokenized piece by piece with exactly the ids of one encode of the whole text."""

import numpy as np
import pytest

from mlx_slm.data import tokens as text_tokens
from mlx_slm.data.tokens import encode_text, piece_bounds


class DummyPrefixTokenizer:
    """Like SentencePiece with a dummy prefix: the first word of every encode call differs."""

    def encode(self, text, add_special_tokens=False):
        ids = [ord(c) for c in text]
        return [1] + ids if text and not text[0].isspace() else ids


def test_pieces_cut_after_a_lone_newline():
    text = "alpha beta\n\ngamma\n delta\nepsilon\nzeta eta theta\n" * 40
    bounds = piece_bounds(text, 50)
    assert bounds[0] == 0 and bounds[-1] == len(text) and len(bounds) > 5
    assert "".join(text[a:b] for a, b in zip(bounds, bounds[1:])) == text
    for cut in bounds[1:-1]:
        assert text[cut - 1] == "\n" and not text[cut].isspace() and not text[cut - 2].isspace()
        assert cut >= 50


@pytest.mark.parametrize("piece_chars", [500, 4096])
def test_smollm2_tokenizer_pieces_equal_one_encode(smollm2_dir, english_text, monkeypatch, piece_chars):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    text = english_text.read_text()[:200_000]
    monkeypatch.setattr(text_tokens, "PIECE_CHARS", piece_chars)
    whole = np.asarray(tokenizer.encode(text, add_special_tokens=False), np.int32)
    np.testing.assert_array_equal(encode_text(tokenizer, text), whole)
    first = encode_text(tokenizer, text, max_tokens=1000)
    assert 1000 <= len(first) < len(whole)
    np.testing.assert_array_equal(first[:1000], whole[:1000])


def test_mlx_lm_tokenizer_wrapper_is_encoded_in_batches_with_the_same_ids(smollm2_dir, english_text, monkeypatch):
    from transformers import AutoTokenizer

    wrapper = pytest.importorskip("mlx_lm.tokenizer_utils").TokenizerWrapper
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    text = english_text.read_text()[:100_000]
    monkeypatch.setattr(text_tokens, "PIECE_CHARS", 2000)
    one_by_one, calls = text_tokens.encode, []
    monkeypatch.setattr(text_tokens, "encode", lambda *args: calls.append(args) or one_by_one(*args))
    ids = encode_text(wrapper(tokenizer), text)
    assert len(calls) == 3  # only joins_exactly's check of the first cut
    np.testing.assert_array_equal(ids, tokenizer.encode(text, add_special_tokens=False))


def test_a_tokenizer_whose_pieces_do_not_join_gets_the_whole_text(monkeypatch):
    monkeypatch.setattr(text_tokens, "PIECE_CHARS", 16)
    text = "one two three\nfour five six\nseven eight\nnine ten\n" * 5
    tokenizer = DummyPrefixTokenizer()
    np.testing.assert_array_equal(encode_text(tokenizer, text), tokenizer.encode(text))


def test_windows_start_with_bos_where_the_tokenizer_puts_one():
    """A tokenizer that starts every text with BOS (Gemma, Llama 3) gets BOS in each window's first,
    never-scored position, as llama.cpp's perplexity tool does; the rest of each window is unchanged,
    and a tokenizer without one (SmolLM2) gets its windows as they were."""
    from helpers import byte_level_fields, sample_text

    from mlx_slm.data.tokens import leading_bos
    from mlx_slm.data.windows import calibration_windows, token_windows
    from mlx_slm.io.gguf_tokenizer import tokenizer_from_gguf_fields

    fields = {**byte_level_fields(), "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm",
              "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2}
    plain = tokenizer_from_gguf_fields(fields)
    with_bos = tokenizer_from_gguf_fields({**fields, "tokenizer.ggml.add_bos_token": True})
    assert leading_bos(plain) is None and leading_bos(with_bos) == 1
    text = [sample_text(20)]
    for cut in (lambda t: token_windows(t, text, 32, 4), lambda t: calibration_windows(t, text, 4, 32)[0]):
        before, after = cut(plain), cut(with_bos)
        assert (after[:, 0] == 1).all() and (before[:, 0] != 1).all()
        np.testing.assert_array_equal(after[:, 1:], before[:, 1:])
