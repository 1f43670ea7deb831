"""Fine-tuning data: JSONL in mlx-lm's three record shapes, checked, then mlx-lm's own datasets.

Each line is one JSON object of one shape, the same on every line:

- ``{"text": "..."}``: plain text, trained on every token (EOS appended);
- ``{"prompt": "...", "completion": "..."}``: one user/assistant exchange through the chat template;
- ``{"messages": [{"role": ..., "content": ...}, ...]}``: a conversation through the chat template.

The records are tokenized by :mod:`mlx_lm.tuner.datasets` (its chat template and
prompt masking); mlx-lm checks only the first record's shape, so every line is
checked here first.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

from ..data.text import decode_text
from ..errors import SLMError

log = logging.getLogger("mlx_slm")

SHAPES = {"text": ("text",), "completions": ("prompt", "completion"), "chat": ("messages",)}
EXPECTED = 'expected {"text": ...}, {"prompt": ..., "completion": ...} or {"messages": [...]}'


def record_shape(record) -> str | None:
    """"text", "completions", "chat", or None for any other record."""
    if not isinstance(record, dict):
        return None
    if isinstance(record.get("prompt"), str) and isinstance(record.get("completion"), str):
        return "completions"
    if isinstance(record.get("messages"), list) and record["messages"]:
        return "chat"
    if isinstance(record.get("text"), str) and record["text"].strip():
        return "text"
    return None


def read_records(path) -> tuple[list[dict], str]:
    """``(records, shape)`` of a JSONL file whose every non-empty line has the same shape."""
    path = Path(path)
    if not path.is_file():
        raise SLMError(f"no such JSONL file: {path}")
    records, shape = [], None
    for number, line in enumerate(decode_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise SLMError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        this = record_shape(record)
        if this is None:
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise SLMError(f"{path}:{number}: unknown record shape {keys}; {EXPECTED}")
        if shape is not None and this != shape:
            raise SLMError(f"{path}:{number}: a {this} record in a file of {shape} records; use one shape per file")
        shape = this
        records.append(record)
    if not records:
        raise SLMError(f"{path} holds no records; {EXPECTED}")
    return records, shape


class TokenizedDataset:
    """Item i -> (token ids, prompt length), tokenized once and cut to ``max_length`` tokens."""

    def __init__(self, items: list, max_length: int):
        self.items = [(tokens[:max_length], offset) for tokens, offset in items]
        self.truncated = sum(len(tokens) > max_length for tokens, _ in items)
        self.prompt_only = sum(offset >= len(tokens) for tokens, offset in self.items)  # nothing left to learn

    def __getitem__(self, index: int):
        return self.items[index]

    def __len__(self) -> int:
        return len(self.items)


def load_dataset(path, tokenizer, max_length: int, mask_prompt: bool = False) -> TokenizedDataset:
    """The records of ``path`` tokenized by mlx-lm's datasets, each cut to ``max_length`` tokens
    (one warning says how many were longer; mlx-lm's batching would warn on every batch)."""
    from mlx_lm.tuner.datasets import create_dataset

    records, shape = read_records(path)
    if shape != "text" and not getattr(tokenizer, "chat_template", None):
        raise SLMError(f"{path} holds {shape} records, which need a chat template, and the tokenizer has none; "
                       'use {"text": ...} records')
    if shape == "text" and mask_prompt:
        raise SLMError(f"{path} holds text records, which have no prompt to mask; drop mask_prompt")
    dataset = create_dataset(records, tokenizer, SimpleNamespace(mask_prompt=mask_prompt))
    try:
        tokenized = TokenizedDataset([dataset.process(record) for record in records], max_length)
    except (ValueError, TypeError, KeyError) as err:
        raise SLMError(f"cannot tokenize {path}: {err}") from None
    if tokenized.truncated:
        log.warning("%s: %d of %d examples are longer than %d tokens and are cut to that length",
                    path, tokenized.truncated, len(tokenized), max_length)
    if tokenized.prompt_only == len(tokenized):
        raise SLMError(f"{path}: with the prompt masked, no example keeps a completion token within {max_length} "
                       "tokens; raise seq_len or drop mask_prompt")
    if tokenized.prompt_only:
        log.warning("%s: %d examples keep no completion token within %d tokens", path, tokenized.prompt_only,
                    max_length)
    return tokenized
