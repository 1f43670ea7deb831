"""SentencePiece-style (``▁`` for spaces, byte fallback) tokenizers and their goldens, for make_golden.py.

Two tokenizer.json files, both small enough to commit:

- ``gemma3.json``: the real Gemma 3 tokenizer (rebuilt from the Gemma 3 270M GGUF that mlx_slm installs,
  12 MB, 262k tokens) cut down to the tokens that can occur while encoding the golden texts: every
  vocabulary entry that is a substring of a normalized golden text, the 256 byte tokens, the merges
  among those, and the added tokens that are not special plus the special ones the goldens use. BPE only
  ever builds substrings of its word, so the cut tokenizer gives the full one's ids for those texts,
  which ``gemma3_files`` checks. Ids are the real ones.
- ``mistral.json``: a Mistral v0.3-style tokenizer (Prepend + Replace normalizer, byte fallback,
  Replace/ByteFallback/Fuse/Strip decoder) trained here with ``tokenizers``' BpeTrainer on the golden
  texts themselves, as no Mistral tokenizer is installed offline. Its variants (``mistral_*.json``)
  use the Metaspace pre-tokenizer forms transformers writes (``prepend_scheme`` first / always, ``split``).

Goldens come from ``tokenizers`` (the Rust reference) on the same files: encode without special tokens,
decode, and decode of random ids with and without skipping special tokens.
"""

from __future__ import annotations

import json
import random
from collections import Counter

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

SPACE = "\u2581"
BYTE_TOKENS = [f"<0x{byte:02X}>" for byte in range(256)]

EXTRA_TEXTS = [
    "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    "<bos>text<eos>",
    "<s>[INST] Hello [/INST] Hi</s>",
    "[INST]x[/INST]",
    "<table><tr><td>x</td></tr></table>",
    SPACE + "already" + SPACE + SPACE + "marked",
    "\U0001F9FF\U0001FAE8 rare emoji \U00010348 gothic",
    "\x00nul \x7f del",
]

MISTRAL_SPECIALS = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"]
MISTRAL_DECODER = {"type": "Sequence", "decoders": [
    {"type": "Replace", "pattern": {"String": SPACE}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"},
    {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}


def metaspace(prepend_scheme: str, split: bool) -> dict:
    return {"type": "Metaspace", "replacement": SPACE, "prepend_scheme": prepend_scheme, "split": split}


MISTRAL_VARIANTS = {  # name -> JSON merge patch over mistral.json (null: no normalizer)
    "metaspace_first": {"normalizer": None, "pre_tokenizer": metaspace("first", False)},
    "metaspace_always_split": {"normalizer": None, "pre_tokenizer": metaspace("always", True),
                               "decoder": metaspace("always", True)},
}


def compact(document: dict) -> str:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")) + "\n"


def cases(tokenizer: Tokenizer, texts: list[str]) -> list[dict]:
    rows = []
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        rows.append({"text": text, "ids": ids, "decoded": tokenizer.decode(ids, skip_special_tokens=False)})
    return rows


def decode_cases(tokenizer: Tokenizer, document: dict, rng: random.Random, count: int = 150) -> list[dict]:
    """Random ids from the vocabulary, runs of byte tokens (often invalid UTF-8) and added tokens."""
    vocabulary = document["model"]["vocab"]
    ordinary = sorted(vocabulary.values())
    byte_ids = [vocabulary[token] for token in BYTE_TOKENS]
    added = sorted(token["id"] for token in document["added_tokens"])
    rows = []
    for _ in range(count):
        ids = [rng.choice(ordinary) for _ in range(rng.randint(1, 8))]
        for _ in range(rng.randint(0, 2)):
            run = [rng.choice(byte_ids) for _ in range(rng.randint(1, 4))]
            position = rng.randrange(len(ids) + 1)
            ids[position:position] = run
        if rng.random() < 0.5:
            ids.insert(rng.randrange(len(ids) + 1), rng.choice(added))
        rows.append({"ids": ids, "decoded": tokenizer.decode(ids, skip_special_tokens=False),
                     "decoded_skip_special": tokenizer.decode(ids, skip_special_tokens=True)})
    return rows


def reduced_gemma3(full: Tokenizer, texts: list[str]) -> str:
    """The full Gemma 3 tokenizer cut down to what encoding ``texts`` can use (see the module doc)."""
    document = json.loads(full.to_str())
    vocabulary = document["model"]["vocab"]
    longest = max(map(len, vocabulary))
    kept = set(BYTE_TOKENS) | {document["model"]["unk_token"]}
    used_ids = set()
    for text in texts:
        normalized = full.normalizer.normalize_str(text)
        for start in range(len(normalized)):
            for end in range(start + 1, min(len(normalized), start + longest) + 1):
                if normalized[start:end] in vocabulary:
                    kept.add(normalized[start:end])
        used_ids.update(full.encode(text, add_special_tokens=False).ids)
    document["added_tokens"] = [token for token in document["added_tokens"]
                                if not token["special"] or token["id"] < 4 or token["id"] in used_ids
                                or token["content"] in ("<start_of_turn>", "<end_of_turn>")]
    kept.update(token["content"] for token in document["added_tokens"])  # else tokenizers renumbers them
    document["model"]["merges"] = [pair for pair in document["model"]["merges"]
                                   if pair[0] in kept and pair[1] in kept and pair[0] + pair[1] in kept]
    document["model"]["vocab"] = {token: vocabulary[token] for token in sorted(kept, key=vocabulary.get)}
    reduced = compact(document)
    cut = Tokenizer.from_str(reduced)
    for text in texts:
        if cut.encode(text, add_special_tokens=False).ids != full.encode(text, add_special_tokens=False).ids:
            raise SystemExit(f"the reduced Gemma 3 tokenizer encodes {text!r} differently")
    return reduced


def trained_mistral(texts: list[str]) -> str:
    """A Mistral v0.3-style tokenizer.json: specials, the 256 byte tokens, then BPE tokens trained on
    ``texts`` (words split at spaces as SentencePiece does; rare characters left to byte fallback)."""
    trainer_model = Tokenizer(models.BPE())
    trainer_model.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)])
    trainer_model.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never", split=True)
    # Rare characters are left out here rather than by limit_alphabet, whose cut among equally rare
    # ones is not reproducible; the tokenizer then spells them with byte tokens.
    counts = Counter("".join(texts))
    common = ["".join(c for c in text if counts[c] >= 4) for text in texts]
    trainer = trainers.BpeTrainer(vocab_size=1200, show_progress=False)
    trainer_model.train_from_iterator(common, trainer)
    trained = json.loads(trainer_model.to_str())["model"]
    vocabulary = {token: index for index, token in enumerate(MISTRAL_SPECIALS + BYTE_TOKENS)}
    for token, _ in sorted(trained["vocab"].items(), key=lambda item: item[1]):
        vocabulary.setdefault(token, len(vocabulary))
    added = [{"id": index, "content": token, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for index, token in enumerate(MISTRAL_SPECIALS)]
    document = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": SPACE}, {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}]},
        "pre_tokenizer": None, "post_processor": None, "decoder": MISTRAL_DECODER,
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocabulary, "merges": trained["merges"]},
    }
    return compact(document)
