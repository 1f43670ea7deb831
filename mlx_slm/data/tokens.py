"""Tokenizing long texts piece by piece, so a book costs megabytes rather than a tokenizer's
per-token bookkeeping for the whole of it (about 0.8 GB for the 4 MB King James Bible).

The text is cut after a lone newline between two non-space characters: a word boundary
for every common pre-tokenizer. Whether pieces really join exactly is checked once per
text on the first cut (the line before and after it); a tokenizer that treats a piece's
start specially (e.g. SentencePiece's dummy prefix) fails that check and gets the whole
text at once, so the ids are always those of one ``encode`` of the whole text.
"""

from __future__ import annotations

import numpy as np

from ..errors import SLMError

PIECE_CHARS = 1 << 16  # characters per piece (about 16k tokens of English)
PIECES_PER_BATCH = 16  # pieces a fast tokenizer encodes at once, in parallel
UNREADABLE_REFUSED = 0.5  # above this share of unknown / partial-byte tokens a text is not one the model reads


def piece_bounds(text: str, size: int = PIECE_CHARS) -> list[int]:
    """Offsets [0, ..., len(text)] cutting ``text`` into pieces of at least ``size`` characters
    (the last may be shorter), each cut just after a lone newline: non-space characters on
    both sides (a run of whitespace tokenizes differently at the end of a piece)."""
    bounds = [0]
    while len(text) - bounds[-1] > size:
        cut = text.find("\n", bounds[-1] + size)
        while cut != -1 and (cut + 1 == len(text) or text[cut + 1].isspace() or text[cut - 1].isspace()):
            cut = text.find("\n", cut + 1)
        if cut == -1:
            break
        bounds.append(cut + 1)
    return bounds + [len(text)]


def encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def encode_batch(tokenizer, texts: list[str]) -> list[np.ndarray]:
    """Ids int32 of each text: one batched call of a transformers tokenizer (whose Rust core spreads
    the texts over the cores; mlx-lm's TokenizerWrapper holds it as ``_tokenizer``), else one
    ``encode`` per text."""
    inner = getattr(tokenizer, "_tokenizer", None)
    batched = inner if callable(inner) else tokenizer
    if callable(batched):
        return [np.asarray(ids, np.int32) for ids in batched(texts, add_special_tokens=False)["input_ids"]]
    return [np.asarray(encode(tokenizer, text), np.int32) for text in texts]


def joins_exactly(tokenizer, text: str, cut: int) -> bool:
    """Whether the line before ``cut`` and the line after it tokenize the same apart and together."""
    left = text[text.rfind("\n", 0, cut - 1) + 1 : cut]
    end = text.find("\n", cut)
    right = text[cut : len(text) if end == -1 else end + 1]
    return encode(tokenizer, left + right) == encode(tokenizer, left) + encode(tokenizer, right)


def encode_text(tokenizer, text: str, max_tokens: int | None = None) -> np.ndarray:
    """Token ids [n] int32 of ``text`` without special tokens, as one ``tokenizer.encode`` gives
    them. With ``max_tokens``, pieces stop once that many ids are known (n >= max_tokens
    unless the text is shorter; the first ``max_tokens`` ids are exact)."""
    bounds = piece_bounds(text, PIECE_CHARS)
    if len(bounds) > 2 and not joins_exactly(tokenizer, text, bounds[1]):
        bounds = [0, len(text)]
    pieces, count = [], 0
    for first in range(0, len(bounds) - 1, PIECES_PER_BATCH):
        edges = bounds[first : first + PIECES_PER_BATCH + 1]
        encoded = encode_batch(tokenizer, [text[start:end] for start, end in zip(edges, edges[1:])])
        pieces += encoded
        count += sum(map(len, encoded))
        if max_tokens is not None and count >= max_tokens:
            break
    return np.concatenate(pieces) if pieces else np.zeros(0, np.int32)


def leading_bos(tokenizer) -> int | None:
    """The BOS id ``tokenizer.encode`` puts before every text (Gemma, Llama 3), or None (SmolLM2, Qwen).
    Such a model has seen BOS at the start of everything it was trained on; a window without it
    scores far worse than the model is (Gemma 3 270M: PPL 80 instead of 27)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    with_special, plain = list(tokenizer.encode("a")), list(tokenizer.encode("a", add_special_tokens=False))
    return bos if with_special[:1] == [bos] and plain[:1] != [bos] else None


def start_with_bos(tokenizer, windows: np.ndarray) -> np.ndarray:
    """``windows`` [W, T] with the first token of each replaced by the tokenizer's leading BOS, if it has
    one (as llama.cpp's perplexity tool does): position 0 is context only, never scored."""
    bos = leading_bos(tokenizer)
    if bos is not None:
        windows = windows.copy()
        windows[:, 0] = bos
    return windows


def unreadable_share(tokenizer, ids: np.ndarray) -> float:
    """The share of ``ids`` that are the unknown token or stand for part of a character (a byte
    of a multi-byte UTF-8 sequence the vocabulary lacks: alone it decodes to U+FFFD). Text in
    a script or encoding the tokenizer does not know is mostly such tokens; English has none."""
    if len(ids) == 0:
        return 0.0
    distinct, counts = np.unique(ids, return_counts=True)
    unknown = getattr(tokenizer, "unk_token_id", None)
    bad = [i == unknown or set(tokenizer.decode([int(i)])) == {"\ufffd"} for i in distinct]
    return float(counts[np.array(bad, bool)].sum() / len(ids))


def check_readable(tokenizer, ids: np.ndarray, source: str) -> None:
    """SLMError when more than :data:`UNREADABLE_REFUSED` of ``ids`` are unreadable (see
    :func:`unreadable_share`): calibrating or evaluating on it would measure nothing useful."""
    share = unreadable_share(tokenizer, ids)
    if share > UNREADABLE_REFUSED:
        raise SLMError(f"{source}: {share:.0%} of its tokens are unknown or partial characters to this model's "
                       "tokenizer (text in a script or encoding it does not read); give text in the model's "
                       "language")
