"""Rebuild a Hugging Face fast tokenizer from the vocabulary inside a GGUF file.

Byte-level BPE vocabularies (``tokenizer.ggml.model == "gpt2"``: GPT-2, SmolLM,
StarCoder, Llama-3 and Qwen2 styles) are assembled from the `tokenizers`
library's parts; the pre-tokenizer follows llama.cpp's ``tokenizer.ggml.pre``
name. Gemma 3's SentencePiece vocabulary (``"llama"``) is built by transformers'
own GGUF tokenizer converter (:func:`sentencepiece_tokenizer`).
"""

from __future__ import annotations

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from ..errors import SLMError

# Token types used by GGUF: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
CONTROL, USER_DEFINED = 3, 4
SENTENCEPIECE_ARCHITECTURES = ("gemma3",)  # "llama" (SentencePiece) vocabularies rebuilt, by architecture

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _byte_level(use_regex: bool):
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=use_regex)


def _split(pattern: str):
    return pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(pattern), behavior="isolated"), _byte_level(False)]
    )


PRE_TOKENIZERS = {
    "default": lambda: _byte_level(True),
    "gpt2": lambda: _byte_level(True),
    "smollm": lambda: pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), _byte_level(True)]
    ),
    "starcoder": lambda: pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), _byte_level(True)]
    ),
    "llama-bpe": lambda: _split(LLAMA3_SPLIT),
    "llama3": lambda: _split(LLAMA3_SPLIT),
    "qwen2": lambda: _split(QWEN2_SPLIT),
}


def vocabulary(fields: dict) -> tuple[list, list, list]:
    """(tokens, token types, merge pairs), checked: unique string tokens, one integer type per
    token, merges "a b" whose parts and result are tokens (the `tokenizers` library raises or
    panics on anything else)."""
    tokens = fields.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise SLMError("GGUF tokenizer.ggml.tokens is missing or not a list of strings")
    ids = {}
    for i, token in enumerate(tokens):
        if ids.setdefault(token, i) != i:
            raise SLMError(f"GGUF vocabulary holds token {token!r} twice (ids {ids[token]} and {i})")
    types = fields.get("tokenizer.ggml.token_type", [1] * len(tokens))
    if not isinstance(types, list) or len(types) != len(tokens) or not all(type(k) is int for k in types):
        raise SLMError(f"GGUF tokenizer.ggml.token_type does not give each of the {len(tokens)} tokens an integer")
    merges = fields.get("tokenizer.ggml.merges", [])
    if not isinstance(merges, list):
        raise SLMError("GGUF tokenizer.ggml.merges is not a list")
    pairs = []
    for merge in merges:
        pair = merge.split(" ", 1) if isinstance(merge, str) else []
        if len(pair) != 2 or pair[0] not in ids or pair[1] not in ids or pair[0] + pair[1] not in ids:
            raise SLMError(f"GGUF tokenizer.ggml.merges holds {merge!r}, not two tokens that merge into a third")
        pairs.append(tuple(pair))
    return tokens, types, pairs


def tokenizer_from_gguf_fields(fields: dict):
    """Build a ``transformers.PreTrainedTokenizerFast`` from GGUF ``tokenizer.*`` fields.

    fields: GGUF key -> decoded value (str, int, list).
    """
    kind = fields.get("tokenizer.ggml.model")
    if kind == "llama" and fields.get("general.architecture") in SENTENCEPIECE_ARCHITECTURES:
        return sentencepiece_tokenizer(fields)
    if kind != "gpt2":
        raise SLMError(
            f"GGUF tokenizer model {kind!r} is not supported; mlx_slm rebuilds byte-level BPE "
            f"('gpt2') vocabularies, and SentencePiece ('llama') ones of {', '.join(SENTENCEPIECE_ARCHITECTURES)} files"
        )
    pre = fields.get("tokenizer.ggml.pre", "default")
    if not isinstance(pre, str) or pre not in PRE_TOKENIZERS:
        raise SLMError(
            f"GGUF pre-tokenizer {pre!r} is not supported; known: {', '.join(sorted(PRE_TOKENIZERS))}"
        )
    tokens, types, merges = vocabulary(fields)
    vocab = {tok: i for i, tok in enumerate(tokens)}

    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tokenizer.pre_tokenizer = PRE_TOKENIZERS[pre]()
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == CONTROL]
    )
    tokenizer.add_tokens(
        [AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == USER_DEFINED]
    )
    # llama.cpp adds BOS when the file says so (Llama 3 style vocabularies), and not by default
    return fast_tokenizer(tokenizer, fields, tokens, add_bos_token=flag(fields, "add_bos_token", False),
                          add_eos_token=flag(fields, "add_eos_token", False))


def fast_tokenizer(tokenizer, fields: dict, tokens: list, **options):
    """``tokenizer`` (a `tokenizers.Tokenizer`) as a ``PreTrainedTokenizerFast`` with the file's
    bos/eos/unk/pad tokens and chat template; ``options``: more keyword arguments (add_bos_token)."""
    from transformers import PreTrainedTokenizerFast

    def token(key):
        index = fields.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[index] if type(index) is int and 0 <= index < len(tokens) else None

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=token("bos"),
        eos_token=token("eos"),
        unk_token=token("unknown"),
        pad_token=token("padding"),
        chat_template=fields.get("tokenizer.chat_template"),
        clean_up_tokenization_spaces=False,
        **options,
    )


def flag(fields: dict, key: str, default: bool) -> bool:
    """A boolean ``tokenizer.ggml.*`` field, ``default`` when absent."""
    value = fields.get(f"tokenizer.ggml.{key}", default)
    if type(value) is not bool:
        raise SLMError(f"GGUF metadata tokenizer.ggml.{key} = {value!r} is not a boolean")
    return value


def sentencepiece_tokenizer(fields: dict):
    """A Gemma 3 SentencePiece vocabulary (BPE over text with spaces written "▁", byte fallback, no
    merges stored) as a ``PreTrainedTokenizerFast`` that encodes as SentencePiece does.

    transformers' own GGUF converter builds it: merges rebuilt from the vocabulary in file order,
    tokens of several spaces respelled as "▁"s, control tokens special, user-defined ones whole.
    Only its file reader needs torch, so the fields read here go to the converter directly.
    BOS is added unless tokenizer.ggml.add_bos_token says not (llama.cpp's default for these files).
    """
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer
    except ImportError:
        raise SLMError("rebuilding a SentencePiece GGUF vocabulary needs transformers' GGUF tokenizer converter "
                       "(transformers 5): pip install -U transformers") from None
    tokens, types, merges = vocabulary(fields)
    described = {"tokenizer_type": "llama", "tokens": tokens, "token_type": types}
    if merges:
        described["merges"] = [" ".join(pair) for pair in merges]
    options = {"add_bos_token": flag(fields, "add_bos_token", True),
               "add_eos_token": flag(fields, "add_eos_token", False)}
    try:
        tokenizer, _ = convert_gguf_tokenizer(fields["general.architecture"], described)
    except Exception as err:  # the converter and the tokenizers library raise many kinds on odd vocabularies
        raise SLMError(f"cannot rebuild the GGUF SentencePiece vocabulary: {' '.join(str(err).split())}") from None
    return fast_tokenizer(tokenizer, fields, tokens, **options)
