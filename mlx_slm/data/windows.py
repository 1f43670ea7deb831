"""Token windows of a local text: consecutive ones for evaluation and training (:func:`token_windows`),
and calibration windows spread evenly over the whole text, so a long book contributes from its
beginning to its end (:func:`calibration_windows`, :class:`Calibration`).

Nothing is downloaded: a text is a .txt / .jsonl path or a list of strings
(:func:`mlx_slm.data.text.read_text`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from ..errors import SLMError
from .teacher_text import DATA
from .text import describe_text, read_text
from .tokens import check_readable, encode_text, start_with_bos

DEFAULT_NUM_SAMPLES = 64
DEFAULT_SEQ_LEN = 256
SAMPLE_SEED = 0  # the seed of the text a data="teacher" calibration samples
MISSING_TEXT = "calibration text is missing: pass calib=<.txt/.jsonl path or list of strings> (--calib FILE)"


def check_windows(seq_len: int, max_windows: int | None) -> None:
    """SLMError for window settings no text could satisfy (the CLI checks them before loading a model)."""
    if seq_len < 2:
        raise SLMError(f"seq_len must be at least 2, not {seq_len}")
    if max_windows is not None and max_windows < 1:
        raise SLMError(f"max_windows must be at least 1, not {max_windows}")


def token_windows(tokenizer, text, seq_len: int, max_windows: int | None) -> np.ndarray:
    """Non-overlapping windows of ``seq_len`` token ids, ``[W, seq_len]`` int32; each starts with BOS
    where the tokenizer puts one before every text (:func:`~mlx_slm.data.tokens.start_with_bos`)."""
    check_windows(seq_len, max_windows)
    ids = encode_text(tokenizer, read_text(text), None if max_windows is None else max_windows * seq_len)
    check_readable(tokenizer, ids, f"text {describe_text(text)}")
    count = len(ids) // seq_len
    if max_windows is not None:
        count = min(count, max_windows)
    if count == 0:
        raise SLMError(f"the text has {len(ids)} tokens, fewer than one window of {seq_len}")
    return start_with_bos(tokenizer, ids[: count * seq_len].reshape(count, seq_len))


def check_tokenizer(tokenizer) -> None:
    """One clear error where a calibration has no tokenizer to cut (or sample) its text with."""
    if tokenizer is None:
        raise SLMError("calibrated quantization needs the model's tokenizer: pass tokenizer=...")


def calibration_windows(tokenizer, calib, num_samples: int = DEFAULT_NUM_SAMPLES,
                        seq_len: int = DEFAULT_SEQ_LEN) -> tuple[np.ndarray, dict]:
    """Tokenize ``calib`` into ``num_samples`` non-overlapping windows of ``seq_len`` tokens.

    Returns ``(tokens [num_samples, seq_len] int32, record)``, each window starting with BOS where
    the tokenizer puts one before every text; the record (source,
    sample count, seq_len, token count, sha256 of the text) goes into the saved config.
    """
    if calib is None:
        raise SLMError(MISSING_TEXT)
    check_tokenizer(tokenizer)
    if num_samples < 1 or seq_len < 2:
        raise SLMError(f"need num_samples >= 1 and seq_len >= 2, not {num_samples} and {seq_len}")
    text = read_text(calib)
    ids = encode_text(tokenizer, text)
    check_readable(tokenizer, ids, f"calibration text {describe_text(calib)}")
    available = len(ids) // seq_len
    if available < num_samples:
        raise SLMError(f"calibration text too short: {len(ids)} tokens give {available} windows of {seq_len}, "
                       f"{num_samples} requested (lower --num-samples / --seq-len or give more text)")
    starts = np.linspace(0, available - 1, num_samples).round().astype(int) * seq_len
    tokens = start_with_bos(tokenizer, np.stack([ids[s : s + seq_len] for s in starts]))
    record = {
        "source": describe_text(calib),
        "num_samples": num_samples,
        "seq_len": seq_len,
        "text_tokens": len(ids),
        "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
    }
    return tokens, record


@dataclass
class Calibration:
    """Calibration text and how it is cut: ``text`` (.txt / .jsonl path or list of strings),
    the model's ``tokenizer``, ``num_samples`` windows of ``seq_len`` tokens. The windows are
    cut once, on first use, and shared by every method of one quantization run.

    ``data="teacher"`` calibrates on text the float model writes instead of a given text
    (data-free, LLM-QAT's recipe: :mod:`mlx_slm.data.teacher_text`): :meth:`sampled` samples it at
    ``seed``, as many tokens as the windows need, before the model is quantized (block-wise training on
    sampled text samples its windows the same way, at its own seed)."""

    text: object = None
    tokenizer: object = None
    num_samples: int = DEFAULT_NUM_SAMPLES
    seq_len: int = DEFAULT_SEQ_LEN
    data: str = "calib"
    seed: int = SAMPLE_SEED  # of the sampled text (data="teacher")
    _cut: tuple | None = field(default=None, init=False, repr=False, compare=False)
    # (tokens, seed) -> text sampled from the float model with this one's (:meth:`sampled`'s ``more``)
    sampled_texts: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def check(self) -> Calibration:
        if self.data not in DATA:
            raise SLMError(f"calibration data must be one of {', '.join(DATA)}, not {self.data!r}")
        if self.data == "teacher" and self.text is not None:
            raise SLMError("calibration on text sampled from the model (calib_data='teacher', --calib-data "
                           "teacher) reads no text: leave out calib (--calib)")
        return self

    def sampled(self, model, progress: bool = True, more=()) -> Calibration:
        """This calibration on text sampled from ``model`` (an MLX float model) at ``seed``,
        :func:`~mlx_slm.data.teacher_text.window_tokens` tokens of it, cut as any calibration text.
        ``more``: token counts of the other texts this run's training methods train on at the same seed,
        sampled with it at once (:func:`~mlx_slm.data.teacher_text.sample_texts`) and kept in
        ``sampled_texts``."""
        from .teacher_text import sample_texts, window_tokens

        check_tokenizer(self.tokenizer)
        counts = [window_tokens(self.num_samples, self.seq_len), *more]
        text, *others = sample_texts(model, self.tokenizer, counts, self.seed, progress)
        done = Calibration([text], self.tokenizer, self.num_samples, self.seq_len, self.data, self.seed)
        done.sampled_texts = {(count, self.seed): sampled for count, sampled in zip(more, others)}
        return done

    def windows(self) -> tuple[np.ndarray, dict]:
        """(tokens [num_samples, seq_len] int32, record): :func:`calibration_windows` (a sampled
        text's record says so)."""
        if self._cut is None:
            if self.text is None and self.data == "calib":
                raise SLMError(f"{MISSING_TEXT}, or calibrate on text sampled from the float model: "
                               "calib_data='teacher' (--calib-data teacher; MLX only)")
            self._cut = calibration_windows(self.tokenizer, self.text, self.num_samples, self.seq_len)
        tokens, record = self._cut
        if self.data == "teacher":
            return tokens, {**record, "source": f"text sampled from the float model (seed {self.seed})",
                            "data": self.data}
        return tokens, dict(record)
