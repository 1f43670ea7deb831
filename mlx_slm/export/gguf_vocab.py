"""A tokenizer -> GGUF ``tokenizer.*`` metadata, as llama.cpp's converter writes a byte-level BPE vocabulary.

GGUF holds the vocabulary itself (``tokenizer.ggml.model = "gpt2"``): every token string by id
(ids the tokenizer lacks up to the model's vocab_size become ``[PAD{id}]``, type unused), one type
per token (normal, or control / user-defined for added tokens), the merges as ``"a b"`` strings, the
special token ids, the add-BOS flag and the chat template. The pre-tokenizer is not stored as such,
only named (``tokenizer.ggml.pre``): llama.cpp names SmolLM's ``smollm``, Qwen2's ``qwen2``,
Llama 3's ``llama-bpe``, GPT-2's ``gpt2``. The name is found by running each candidate that
:mod:`mlx_slm.io.gguf_tokenizer` can rebuild on a probe text beside the tokenizer's own, and the
written fields are checked by rebuilding the tokenizer from them and encoding the probe again.
"""

from __future__ import annotations

import json

from ..errors import SLMError
from ..io.gguf_tokenizer import PRE_TOKENIZERS, tokenizer_from_gguf_fields

NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5  # GGUF token types
PRE_NAMES = ("smollm", "qwen2", "llama-bpe", "gpt2")  # tried in this order; the first that splits alike wins
PROBE = ("Hello World! It's 2024: 12345 apples, DON'T print(value)\n\n\tindented   spaces\r\n"
         "ünïcödé 日本語 🙂 x=1;y==2 ...end")


def hf_tokenizer(tokenizer):
    """The Hugging Face fast tokenizer inside ``tokenizer`` (mlx-lm's TokenizerWrapper holds one)."""
    inner = getattr(tokenizer, "_tokenizer", None)
    hf = inner if hasattr(inner, "backend_tokenizer") else tokenizer
    if not hasattr(hf, "backend_tokenizer"):
        raise SLMError("GGUF export needs a fast (tokenizer.json) tokenizer; this one has no tokenizers backend")
    return hf


def looks_special(token: str) -> bool:
    """llama.cpp marks added tokens shaped like ``<|...|>`` as control tokens even when not flagged special."""
    return token.startswith("<|") and token.endswith("|>")


def pieces(pre_tokenizer, text: str) -> list[str]:
    return [piece for piece, _ in pre_tokenizer.pre_tokenize_str(text)]


def pre_name(backend) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer (one our GGUF reader rebuilds)."""
    if backend.pre_tokenizer is None:
        raise SLMError("the tokenizer has no pre-tokenizer; GGUF export supports byte-level BPE tokenizers only")
    own = pieces(backend.pre_tokenizer, PROBE)
    for name in PRE_NAMES:
        if pieces(PRE_TOKENIZERS[name](), PROBE) == own:
            return name
    raise SLMError(f"the tokenizer's pre-tokenizer splits text like none of {', '.join(PRE_NAMES)} "
                   "(the llama.cpp pre-tokenizers mlx_slm can write)")


def merge_strings(merges: list) -> list[str]:
    """tokenizer.json merges ("a b" strings, or [a, b] pairs in newer files) as GGUF's "a b" strings."""
    return [merge if isinstance(merge, str) else " ".join(merge) for merge in merges]


def adds_token(hf, token_id, first: bool) -> bool:
    """Whether encoding with special tokens puts ``token_id`` first (BOS) or last (EOS)."""
    if token_id is None:
        return False
    plain, marked = hf.encode("a", add_special_tokens=False), hf.encode("a", add_special_tokens=True)
    return len(marked) > len(plain) and marked[0 if first else -1] == token_id


def first_id(value):
    """A config's token id: an int, or the first of a list of them (mlx-lm's several EOS ids)."""
    if isinstance(value, list):
        value = value[0] if value else None
    return value if type(value) is int else None


def special_id(hf, config: dict, key: str):
    """The tokenizer's BOS or EOS id, else the model config's (as llama.cpp falls back to config.json)."""
    value = getattr(hf, f"{key}_token_id", None)
    return first_id(value if value is not None else config.get(f"{key}_token_id"))


def vocab_fields(tokenizer, config: dict) -> dict:
    """GGUF ``tokenizer.*`` key -> value for ``tokenizer`` and a model with ``config["vocab_size"]`` rows.

    Raises SLMError for anything but a byte-level BPE tokenizer whose ids fit the embedding.
    """
    hf = hf_tokenizer(tokenizer)
    backend = hf.backend_tokenizer
    spec = json.loads(backend.to_str())
    if (spec.get("model") or {}).get("type") != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise SLMError("GGUF export supports byte-level BPE tokenizers (GPT-2, SmolLM, Llama 3, Qwen2 styles) only, "
                       f"not a {(spec.get('model') or {}).get('type')} model with a "
                       f"{(spec.get('decoder') or {}).get('type')} decoder")
    vocab = hf.get_vocab()
    size = int(config.get("vocab_size") or 0) or max(vocab.values()) + 1
    if max(vocab.values()) >= size:
        raise SLMError(f"the tokenizer has token id {max(vocab.values())}, beyond the model's vocab_size {size}")
    added = {int(i): token for i, token in hf.added_tokens_decoder.items()}
    tokens, types = [f"[PAD{i}]" for i in range(size)], [UNUSED] * size
    for token, i in vocab.items():
        tokens[i] = token
        if i in added:
            types[i] = CONTROL if added[i].special or looks_special(token) else USER_DEFINED
        else:
            types[i] = NORMAL
    fields = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre_name(backend),
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": merge_strings(spec["model"].get("merges") or []),
    }
    ids = {"bos": special_id(hf, config, "bos"), "eos": special_id(hf, config, "eos"),
           "unknown": first_id(hf.unk_token_id), "padding": first_id(hf.pad_token_id)}
    for key, value in ids.items():
        if value is not None:
            fields[f"tokenizer.ggml.{key}_token_id"] = value
    fields["tokenizer.ggml.add_bos_token"] = adds_token(hf, ids["bos"], first=True)
    fields["tokenizer.ggml.add_eos_token"] = adds_token(hf, ids["eos"], first=False)
    if isinstance(getattr(hf, "chat_template", None), str):
        fields["tokenizer.chat_template"] = hf.chat_template
    check_round_trip(hf, fields)
    return fields


def check_round_trip(hf, fields: dict) -> None:
    """The tokenizer rebuilt from ``fields`` (as :func:`mlx_slm.load` will) must encode the probe alike."""
    rebuilt = tokenizer_from_gguf_fields(fields)
    own, back = hf.encode(PROBE, add_special_tokens=False), rebuilt.encode(PROBE, add_special_tokens=False)
    if own != back:
        at = next((i for i, (a, b) in enumerate(zip(own, back)) if a != b), min(len(own), len(back)))
        raise SLMError(f"the GGUF vocabulary would not tokenize like the tokenizer (token {at} of a probe text "
                       "differs); this tokenizer cannot be exported to GGUF yet")


def write_vocab(writer, fields: dict) -> None:
    """Add ``fields`` to a ``gguf.GGUFWriter`` with the value types llama.cpp's converter uses."""
    writer.add_tokenizer_model(fields["tokenizer.ggml.model"])
    writer.add_tokenizer_pre(fields["tokenizer.ggml.pre"])
    writer.add_token_list(fields["tokenizer.ggml.tokens"])
    writer.add_token_types(fields["tokenizer.ggml.token_type"])
    writer.add_token_merges(fields["tokenizer.ggml.merges"])
    adders = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id,
              "unknown": writer.add_unk_token_id, "padding": writer.add_pad_token_id}
    for key, add in adders.items():
        if f"tokenizer.ggml.{key}_token_id" in fields:
            add(fields[f"tokenizer.ggml.{key}_token_id"])
    writer.add_add_bos_token(fields["tokenizer.ggml.add_bos_token"])
    if fields["tokenizer.ggml.add_eos_token"]:  # llama.cpp's converter writes it only where a tokenizer adds EOS
        writer.add_add_eos_token(True)
    if "tokenizer.chat_template" in fields:
        writer.add_chat_template(fields["tokenizer.chat_template"])
