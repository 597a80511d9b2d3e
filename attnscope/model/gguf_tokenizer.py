"""The tokenizer of a GGUF file's ``tokenizer.ggml.*`` metadata, as llama.cpp tokenizes with it.

The reference is llama.cpp's ``src/llama-vocab.cpp`` (and ``src/unicode.cpp``):

- ``tokenizer.ggml.model`` ``llama``: a SentencePiece vocabulary with scores. llama.cpp merges the
  best-scored pair first; here that is a BPE whose merges follow from the scores, with byte fallback,
  and a ``▁`` before the text and after each special token (``add_space_prefix``).
- ``tokenizer.ggml.model`` ``gpt2``: a byte-level BPE with merges. ``tokenizer.ggml.pre`` names how
  the text is split into words first; llama.cpp maps each name to a pre-tokenizer type
  (``LLAMA_VOCAB_PRE_TYPE_*``) and each type to a list of regexes that split the text one after the
  other (every match, and every run of text between matches, a word). `PRE_TYPES` is that table.
  llama.cpp runs the regexes with ``std::regex`` over text whose non-ASCII characters are collapsed
  to one byte per Unicode category and non-ASCII white space to ``\\v``, so its ``\\p{Lu}`` is any
  letter and its ``\\d`` is ASCII; `onig_regex` writes its regexes for the `tokenizers`
  library with those meanings. The gpt2, llama3, kimi-k2 and afmoe splits are hand-written loops in
  llama.cpp; their regexes here say what those loops do.
- the control tokens special (matched in the text before it is split), user-defined tokens matched
  too; BOS / EOS added as ``add_bos_token`` / ``add_eos_token`` say, else as llama.cpp's defaults
  (BOS for ``llama`` and for the llama3, tekken and chameleon pre-tokenizers).

A pre-tokenizer whose words this module cannot reproduce is refused by name (`PreType.refused`).
tests/test_gguf_tokenizers.py compares the ids with llama.cpp's own on every pre-tokenizer type.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnscope.errors import LoadError
from attnscope.model.config import show

CONTROL, USER_DEFINED = 3, 4  # gguf.TokenType
MODELS = ("gpt2", "llama")  # tokenizer.ggml.model values read here
NO_VOCABULARY = ("no_vocab", "none")  # tokenizer.ggml.model of a file without a tokenizer


@dataclass(frozen=True)
class PreType:
    """One of llama.cpp's pre-tokenizer types: the names that select it and how it splits."""

    names: tuple[str, ...]  # tokenizer.ggml.pre values
    splits: tuple[str, ...]  # llama.cpp's regexes, applied one after the other
    ignore_merges: bool = False  # a word that is a token of the vocabulary is that token
    add_bos: bool = False  # llama.cpp's default when the file has no add_bos_token
    refused: str | None = None  # why attnscope cannot tokenize as llama.cpp does


# llama.cpp's regexes, as llama-vocab.cpp writes them (its contractions spelled '[sS] as std::regex
# has no (?i:)); the gpt2 and llama3 ones are the hand-written loops that llama.cpp runs for them
_CONTRACTIONS = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_CASED_WORD = (  # tekken's upper-then-lower words, in the form llama.cpp runs
    r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+{c}"
    r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*{c}"
)
_TAIL = r" ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_CJK_SPLITS = (  # deepseek-v3 and its kin
    r"\p{N}{1,3}",
    "[一-龥぀-ゟ゠-ヿ]+",
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
)
_STARCODER = (r"\p{N}", GPT2)
_GPT4O = (_CASED_WORD.replace("{c}", _CONTRACTIONS + "?") + r"|\p{N}{1,3}|" + _TAIL,)
_HAN = (
    r"\x{4E00}-\x{9FFF}\x{3400}-\x{4DBF}\x{20000}-\x{2A6DF}\x{2A700}-\x{2B73F}\x{2B740}-\x{2B81F}"
    r"\x{2B820}-\x{2CEAF}\x{2CEB0}-\x{2EBEF}\x{F900}-\x{FAFF}\x{2F800}-\x{2FA1F}"
)  # unicode_cpt_is_han
_RAW_UTF8 = "its vocabulary is SentencePiece-style BPE over raw UTF-8 (not byte-level), which attnscope does not read"

PRE_TYPES: dict[str, PreType] = {
    "default": PreType(
        ("default",), (r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]")
    ),  # also a file without tokenizer.ggml.pre
    "llama3": PreType(
        ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano"),
        (LLAMA3,),
        ignore_merges=True,
        add_bos=True,
    ),
    "dbrx": PreType(("dbrx",), (LLAMA3,)),
    "smaug": PreType(("smaug-bpe",), (LLAMA3,)),
    "chatglm4": PreType(("glm4", "chatglm-bpe"), (LLAMA3,)),
    "jais2": PreType(
        ("jais-2",),
        (
            _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
            r"|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)|\s{8}(?!\S)"
            r"|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}",
        ),
    ),
    "minicpm5": PreType(
        ("minicpm5",),
        (
            r"\p{N}{1,3}",
            _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ),
        ignore_merges=True,
    ),
    "deepseek-llm": PreType(
        ("deepseek-llm",),
        (
            "[\r\n]",
            r"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\x{1F7D}ᾀ-ᾴᾶ-ᾼ\x{1FBE}ῂ-ῄῆ-ῌῐ-\x{1FD3}ῖ-\x{1FDB}ῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\x{2126}ℨ\x{212A}-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
            r"\s?[!-/:-~！-／：-～‘-‟　-。]+",
            r"\s+$",
            "[一-龥ࠀ-一가-퟿]+",
            r"\p{N}+",
        ),
    ),
    "deepseek-coder": PreType(
        ("deepseek-coder",), ("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[一-龥ࠀ-一가-퟿]+", r"\p{N}")
    ),
    "deepseek3-llm": PreType(("deepseek-v3",), _CJK_SPLITS),
    "hunyuan-dense": PreType(("hunyuan-dense",), _CJK_SPLITS),
    "joyai-llm": PreType(("joyai-llm",), _CJK_SPLITS),
    "hy-v4": PreType(("hy_v4",), _CJK_SPLITS),
    "spark2-5": PreType(
        ("spark2_5",),
        (
            r"\p{N}{1,3}",
            "[一-龥぀-ゟ゠-ヿ]+",
            r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
            r"| ?[\p{P}\p{S}]+|[\r\n]|\s+(?!\S)|\s+",
            r"\p{N}",
        ),
    ),
    "youtu": PreType(
        ("youtu",),
        (
            "[가-힣ㄱ-ㆎ]+|[！…“”‘’—：；，、-〿︰-﹏]+|[ㄅ-ㄯ]+|[一-龥぀-ゟ゠-ヿ]+",
            r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+" + _CONTRACTIONS + "?"
            r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*" + _CONTRACTIONS + "?"
            r"|\p{N}" + "|" + _TAIL,
        ),
        ignore_merges=True,
    ),
    "falcon": PreType(
        ("falcon",),
        (
            r"[\p{P}\$\+<=>\^~\|`]+",
            r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
            "[0-9][0-9][0-9]",
        ),
    ),
    "starcoder": PreType(("starcoder",), _STARCODER),
    "refact": PreType(("refact",), _STARCODER),
    "command-r": PreType(("command-r",), _STARCODER),
    "smollm": PreType(("smollm",), _STARCODER),
    "codeshell": PreType(("codeshell",), _STARCODER),
    "exaone": PreType(("exaone",), _STARCODER),
    "minerva": PreType(("minerva-7b",), _STARCODER),
    "mellum2": PreType(("mellum2",), _STARCODER),
    "gpt2": PreType(
        (
            "gpt-2",
            "phi-2",
            "jina-es",
            "jina-de",
            "gigachat",
            "jina-v2-es",
            "jina-v2-de",
            "a.x-4.0",
            "mellum",
            "modern-bert",
            "jina-v1-en",
            "jina-v2-code",
            "roberta-bpe",
            "exaone4",
        ),
        (GPT2,),
    ),
    "mpt": PreType(("mpt",), (GPT2,)),
    "olmo": PreType(("olmo",), (GPT2,)),
    "jais": PreType(("jais",), (GPT2,)),
    "trillion": PreType(("trillion",), (GPT2,)),
    "granite-docling": PreType(("granite-docling",), (GPT2,)),
    "qwen2": PreType(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"), (QWEN2,)),
    "stablelm2": PreType(("stablelm2",), (QWEN2,)),
    "hunyuan": PreType(("hunyuan",), (QWEN2,)),
    "solar-open": PreType(("solar-open",), (QWEN2,)),
    "grok-2": PreType(("grok-2",), (QWEN2,)),
    "qwen35": PreType(
        ("qwen35",),
        (
            _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+"
            r"|\s+(?!\S)|\s+",
        ),
    ),
    "poro": PreType(("poro-chat",), (r" ?[^(\s|.,!?…。，、।۔،)]+",)),
    "bloom": PreType(("bloom",), (r" ?[^(\s|.,!?…。，、।۔،)]+",)),
    "gpt3-finnish": PreType(("gpt3-finnish",), (r" ?[^(\s|.,!?…。，、।۔،)]+",)),
    "viking": PreType(("viking",), (r" ?[^(\s|.,!?…。，、।۔،)]+", r"\p{N}")),
    "tekken": PreType(
        ("tekken",), (_CASED_WORD.replace("{c}", "") + r"|\p{N}|" + _TAIL,), ignore_merges=True, add_bos=True
    ),
    "chameleon": PreType(
        ("chameleon",),
        (
            "<sentinel:[0-9]+>",
            "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
            "([\\t\\n]|    |  )",
            r"\p{N}",
            r"[\p{P}!-/:-@\[-`{-~]",
            r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
        ),
        add_bos=True,
    ),
    "gpt4o": PreType(("gpt-4o", "llama4", "kanana2", "talkie"), _GPT4O),
    "minimax-m2": PreType(("minimax-m2",), _GPT4O),
    "granite-emb-multi": PreType(
        ("granite-embed-multi-97m",),
        (
            _CASED_WORD.replace(r"(?=[\p{L}])", r"(?=[\p{L}\p{M}])").replace("{c}", _CONTRACTIONS + "?")
            + r"|\p{N}{1,3}|"
            + _TAIL,
        ),
        ignore_merges=True,
    ),
    "tiny-aya": PreType(
        ("tiny_aya", "cohere2moe"),
        (),
        refused="llama.cpp's split of its digit runs (std::regex's \\d{1,3}(?=(?:\\d{3})*\\b)) differs from "
        "what the tokenizers library gives on non-ASCII digits",
    ),
    "kimi-k2": PreType(
        ("kimi-k2",),
        (
            f"[{_HAN}]+|[^\\r\\n\\p{{L}}\\p{{N}}]?[\\p{{L}}&&[^{_HAN}]]+{_CONTRACTIONS}?"
            r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ),
    ),
    "superbpe": PreType(("superbpe",), (r"\p{N}+", r"(?=(\d{3})+(?!\d))")),
    "bailingmoe": PreType(
        ("bailingmoe", "bailingmoe2", "llada-moe"),
        (
            r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]|\s+(?!\S)|\s+",
        ),
    ),
    "seed-coder": PreType(
        ("seed-coder",),
        (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+",),
    ),
    "ufakzeka": PreType(
        ("ufakzeka",), (r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",)
    ),
    "afmoe": PreType(
        ("afmoe",),
        (
            r"\p{N}{1,2}(?=(?:\p{N}{3})*(?!\p{N}))|\p{N}{3}",  # llama.cpp's loop: n % 3 digits, then threes
            r"[一-鿿㐀-䶿\x{F900}-﫿぀-ゟ゠-ヿ･-ﾟ⼀-⿟เ-๿຀-໿ក-៿က-႟ꩠ-ꩿꧠ-꧿가-힯ᄀ-ᇿ]+",
            _CJK_SPLITS[2],
        ),
    ),
    "laguna": PreType(("laguna",), ("[^\\n]+|[\\n]+", QWEN2)),
    "exaone-moe": PreType(
        ("exaone-moe",),
        (
            _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]?"
            r"|\s*[\r\n]|\s+(?!\S)|\s+",
        ),
    ),
    "gemma4": PreType(("gemma4", "granite-embed-multi-311m"), (), refused=_RAW_UTF8),
    "sarvam-moe": PreType(("sarvam-moe",), (), refused=_RAW_UTF8),
    "whitespace": PreType(("whitespace",), (), refused=_RAW_UTF8),
}
PRE_TOKENIZERS = {name: key for key, pre in PRE_TYPES.items() for name in pre.names}  # name -> type

_LETTER_CLASSES = re.compile(r"\\p\{L[ultmo]\}")
_CLASS = re.compile(r"(?<!\\)\[(?!\^)((?:\\.|[^\]\\])*)\]")  # a character class that is not negated
_WIDE_SPACE = r"\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}"  # non-ASCII \s


def onig_regex(expr: str) -> str:
    """llama.cpp's regex `expr` with the meaning llama.cpp gives it, for the `tokenizers` library
    (Oniguruma). llama.cpp matches a copy of the text whose non-ASCII white space is ``\\v``, so a
    character class of non-ASCII characters matches none of it; for a regex with ``\\p{..}`` the
    copy holds one byte per category of the other non-ASCII characters, so every letter class is
    ``\\p{L}``; ``std::regex``'s ``\\d`` is ASCII."""
    expr = _CLASS.sub(lambda m: f"[{m[1]}&&[^{_WIDE_SPACE}]]" if any(ord(c) > 127 for c in m[1]) else m[0], expr)
    expr = _LETTER_CLASSES.sub(r"\\p{L}", expr)
    return expr.replace(r"\d", "[0-9]")


def require_supported(path: Path, metadata: Mapping[str, Any]) -> None:
    """A `LoadError` when the tokenizer of the metadata is one attnscope does not read (from the
    metadata alone: a loader calls this before it reads any tensor)."""
    kind = metadata.get("tokenizer.ggml.model")
    if kind is None or kind in NO_VOCABULARY:
        return
    if kind not in MODELS:
        raise LoadError(
            f"{path}: unsupported tokenizer.ggml.model {show(kind)} (supported: {', '.join(MODELS)}, "
            f"or {' / '.join(NO_VOCABULARY)} for none)"
        )
    if kind == "llama":
        return
    pre = metadata.get("tokenizer.ggml.pre", "default")
    if not isinstance(pre, str) or pre not in PRE_TOKENIZERS:
        raise LoadError(
            f"{path}: unsupported tokenizer.ggml.pre {show(pre)}: not in llama.cpp's table of "
            f"pre-tokenizers (src/llama-vocab.cpp), which attnscope follows (see docs/models.md)"
        )
    refused = PRE_TYPES[PRE_TOKENIZERS[pre]].refused
    if refused:
        raise LoadError(f"{path}: unsupported tokenizer.ggml.pre {show(pre)}: {refused}")


# tokenizer.ggml.* arrays: the Python types of their elements, and how a message names them
_LISTS = {
    "tokens": ((str,), "a string"),
    "merges": ((str,), "a string"),
    "token_type": ((int,), "an integer"),
    "scores": ((int, float), "a number"),
}
_FLAGS = ("add_bos_token", "add_eos_token", "add_space_prefix")
_IDS = ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id")


def validate_vocabulary(path: Path, metadata: Mapping[str, Any]) -> None:
    """A `LoadError` naming the key when the ``tokenizer.ggml.*`` metadata is not what llama.cpp reads:
    arrays of the right element type (token_type and scores one per token), no token twice, flags that
    are booleans, token ids that are integers. The `tokenizers` library sees only metadata that passed."""
    for name, (kinds, noun) in _LISTS.items():
        values = metadata.get(f"tokenizer.ggml.{name}")
        if values is None:
            continue
        if not isinstance(values, list):
            raise LoadError(f"{path}: tokenizer.ggml.{name} must be an array, got {show(values)}")
        bad = next((i for i, v in enumerate(values) if isinstance(v, bool) or not isinstance(v, kinds)), None)
        if bad is not None:
            raise LoadError(f"{path}: tokenizer.ggml.{name}[{bad}] is {show(values[bad])}, not {noun}")
    tokens = metadata.get("tokenizer.ggml.tokens") or []
    for name in ("token_type", "scores"):
        values = metadata.get(f"tokenizer.ggml.{name}")
        if values is not None and len(values) != len(tokens):
            raise LoadError(f"{path}: tokenizer.ggml.{name} has {len(values):,} entries for {len(tokens):,} tokens")
    for name in _FLAGS:
        value = metadata.get(f"tokenizer.ggml.{name}")
        if value is not None and not isinstance(value, bool):
            raise LoadError(f"{path}: tokenizer.ggml.{name} must be a boolean, got {show(value)}")
    for name in _IDS:
        value = metadata.get(f"tokenizer.ggml.{name}")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise LoadError(f"{path}: tokenizer.ggml.{name} must be an integer, got {show(value)}")


def _require_distinct(path: Path, tokens: list[str], spelled: list[str]) -> dict[str, int]:
    """The vocabulary (spelling -> id) of `tokens` as `spelled` for the tokenizer; a `LoadError` naming
    a token that is there twice."""
    vocab: dict[str, int] = {}
    for i, token in enumerate(spelled):
        first = vocab.setdefault(token, i)
        if first != i:
            raise LoadError(f"{path}: tokenizer.ggml.tokens holds {show(tokens[i])} twice (ids {first} and {i})")
    return vocab


def _require_merges(path: Path, merges: list[str], vocab: dict[str, int]) -> list[tuple[str, str]]:
    """The pairs of ``tokenizer.ggml.merges``; a `LoadError` naming a merge that is not two tokens of
    the vocabulary whose concatenation is one too."""
    pairs = []
    for i, merge in enumerate(merges):
        pair = merge.split(" ")
        if len(pair) != 2:
            raise LoadError(f"{path}: tokenizer.ggml.merges holds {merge!r}, not two tokens separated by a space")
        missing = next((t for t in (*pair, "".join(pair)) if t not in vocab), None)
        if missing is not None:
            raise LoadError(
                f"{path}: tokenizer.ggml.merges[{i}] {show(merge)} names {show(missing)}, which is not a token"
            )
        pairs.append((pair[0], pair[1]))
    return pairs


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's printable spelling of each byte (``bytes_to_unicode``), the alphabet of byte-level BPE."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    spelling, extra = {}, 0
    for b in range(256):
        if b in printable:
            spelling[b] = chr(b)
        else:
            spelling[b] = chr(256 + extra)
            extra += 1
    return spelling


def spm_merges(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """The BPE merges a SentencePiece vocabulary implies: every split of a piece into two pieces of
    the vocabulary, best-scored piece first (as transformers' SentencePiece converter orders them)."""
    vocab = {token: i for i, token in enumerate(tokens)}
    merges = []
    for piece, score in dict(zip(tokens, scores, strict=True)).items():
        local = [
            (piece[:i], piece[i:], score) for i in range(1, len(piece)) if piece[:i] in vocab and piece[i:] in vocab
        ]
        merges.extend(sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]])))
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in merges]


def read_tokenizer(path: Path, metadata: Mapping[str, Any]):
    """The `attnscope.model.tokenizer.Tokenizer` of the ``tokenizer.ggml.*`` `metadata` of GGUF file
    `path`, or None when the file has no vocabulary."""
    from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers import Tokenizer as Backend

    from attnscope.model.tokenizer import Tokenizer

    require_supported(path, metadata)
    kind = metadata.get("tokenizer.ggml.model")
    tokens = metadata.get("tokenizer.ggml.tokens")
    if (kind is None and tokens is None) or kind in NO_VOCABULARY:
        return None
    if not isinstance(tokens, list) or not tokens:
        raise LoadError(f"{path}: tokenizer.ggml.tokens must be a list of token strings")
    validate_vocabulary(path, metadata)
    types = metadata.get("tokenizer.ggml.token_type") or []
    merges: list[str] | None = metadata.get("tokenizer.ggml.merges")
    if kind == "gpt2":
        pre = PRE_TYPES[PRE_TOKENIZERS[metadata.get("tokenizer.ggml.pre", "default")]]
        add_bos_default = pre.add_bos
        spelling = _byte_alphabet()
        alphabet = set(spelling.values())
        spelled = [t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode()) for t in tokens]
        vocab = _require_distinct(path, tokens, spelled)
        pairs = None if merges is None else _require_merges(path, merges, vocab)
        backend = Backend(
            models.BPE(
                vocab,
                pairs or [],
                dropout=None,
                continuing_subword_prefix="",
                end_of_word_suffix="",
                fuse_unk=False,
                ignore_merges=pre.ignore_merges,
            )
        )
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                *(pre_tokenizers.Split(Regex(onig_regex(split)), behavior="isolated") for split in pre.splits),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        backend.decoder = decoders.ByteLevel()
        special = [t for t, k in zip(tokens, types, strict=False) if k == CONTROL and set(t) <= alphabet]
    else:
        add_bos_default = True
        scores = metadata.get("tokenizer.ggml.scores")
        vocab = _require_distinct(path, tokens, tokens)
        if merges is not None:
            pairs = _require_merges(path, merges, vocab)
        else:
            if not isinstance(scores, list) or len(scores) != len(tokens):
                raise LoadError(f"{path}: a llama vocabulary needs tokenizer.ggml.scores, one per token")
            pairs = spm_merges(tokens, scores)
        backend = Backend(models.BPE(vocab, pairs, fuse_unk=True, byte_fallback=True, dropout=None))
        prefix = metadata.get("tokenizer.ggml.add_space_prefix", True)
        # llama.cpp puts the space before the text and after each special token, even before a space
        escape = normalizers.Replace(" ", "▁")
        backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), escape]) if prefix else escape
        steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        backend.decoder = decoders.Sequence(steps + ([decoders.Strip(content=" ", left=1)] if prefix else []))
        special = [t for t, k in zip(tokens, types, strict=False) if k == CONTROL]
    for end in ("bos", "eos", "unknown", "padding"):  # the named special tokens, as transformers adds them
        token_id: Any = metadata.get(f"tokenizer.ggml.{end}_token_id")
        if isinstance(token_id, int) and 0 <= token_id < len(tokens) and tokens[token_id] not in special:
            special.append(tokens[token_id])
    if special:
        backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in special])
    user = [t for t, k in zip(tokens, types, strict=False) if k == USER_DEFINED and t in vocab]
    if user:
        backend.add_tokens([AddedToken(t, normalized=False, special=False) for t in user])

    # BOS / EOS as the post-processor adds them
    template, ends = ["$A:0"], []
    for end in ("bos", "eos"):
        token_id = metadata.get(f"tokenizer.ggml.{end}_token_id")
        valid = isinstance(token_id, int) and not isinstance(token_id, bool) and 0 <= token_id < len(tokens)
        flag = metadata.get(f"tokenizer.ggml.add_{end}_token")
        if flag is None:
            flag = end == "bos" and add_bos_default and valid
        if not flag:
            continue
        if not valid:
            raise LoadError(
                f"{path}: tokenizer.ggml.add_{end}_token is true but tokenizer.ggml.{end}_token_id "
                f"is {show(token_id)}, not a token of the vocabulary"
            )
        piece = f"{tokens[token_id]}:0"
        template = [piece, *template] if end == "bos" else [*template, piece]
        ends.append((tokens[token_id], token_id))
    if ends:
        backend.post_processor = processors.TemplateProcessing(
            single=template, special_tokens=list(dict.fromkeys(ends))
        )
    return Tokenizer.from_backend(backend, path)
