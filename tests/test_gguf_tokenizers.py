"""GGUF tokenizers against llama.cpp: for every pre-tokenizer type of llama.cpp's table
(`attnscope.model.gguf_tokenizer.PRE_TYPES`) a vocabulary-only GGUF file, and one SentencePiece
(``llama``) file, tokenized by attnscope and by llama.cpp on strings that split differently under
each type's rules (digit runs, CJK, emoji, runs of spaces and newlines, tabs, code, contractions in
both cases, accents, case changes, non-ASCII white space, control and user-defined tokens).

The ids llama.cpp gives are recorded in tests/data/gguf_tokenizers.json with the vocabularies (byte-
level BPE trained on the strings themselves, no pre-split, so that a token spans any boundary a
pre-tokenizer could draw and a wrong split shows in the ids) and the llama-cpp-python version that
produced them. Every run compares with the record; with llama-cpp-python installed it compares with
llama.cpp live too. ``python tests/test_gguf_tokenizers.py`` records them again (needs llama_cpp).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from support.gguf_files import finish
from test_cli import assert_user_error, invoke

import attnscope
from attnscope.errors import LoadError
from attnscope.model import gguf as gguf_loader
from attnscope.model.gguf_tokenizer import PRE_TOKENIZERS, PRE_TYPES

gguf = pytest.importorskip("gguf")

GOLDEN = Path(__file__).parent / "data" / "gguf_tokenizers.json"
SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"]  # control tokens
USER = "<tool>"  # a user-defined token
TEXTS = [
    "Hello world",
    "1234567",
    "3.14159 and 1,000,000",
    "1234é 12345 1234567890 １２３４５",
    "你好，世界！中文测试",
    "日本語のテキスト",
    "한국어 텍스트",
    "emoji 🤖🎉 👍🏽 family 👨‍👩‍👧",
    "a  b   c    d",
    "\n\n\nx\n \n",
    "\t\tindented\ttabs\t",
    "   leading and trailing   ",
    "def f(x):\n    return x ** 2  # square\n",
    "if (a != b && c <= d) { x->y[0] = ~z; }",
    "I'm you're we've they'll he'd it's don't",
    "I'M YOU'RE WE'VE THEY'LL HE'D IT'S DON'T",
    "café naïve résumé Ångström über",
    "ÀÉÎÕÜ àéîõü caféÉcole",
    "HelloWorld camelCase XMLHttpRequest",
    "Ελληνικά кириллица العربية עברית हिन्दी",
    "ὼ\u1f7d ΐ\u1fd3 K\u212a \u2126 \u8c48\uf900",
    "$100 + 20% = ~120 | a^b `code` a ~~ b~c",
    "...!!!???",
    "\r\n\r\nwindows\r\n",
    "word's 'quoted' ''",
    "\u00a0nbsp\u2003em\u3000ideo a\u2003\u2003b \u2003 d\u0085e",
    "<|begin_of_text|>hello<|end_of_text|>",
    "a<|im_start|>user\nhi<|im_end|> <tool> x<tool>y",
    "x" * 40,
    "",
    " ",
]
CASES = [*(key for key, pre in PRE_TYPES.items() if not pre.refused), "spm"]  # "spm": tokenizer.ggml.model llama


def vocabularies() -> dict:
    """A byte-level BPE and a SentencePiece vocabulary trained on `TEXTS` (twice) with no pre-split."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    bpe.train_from_iterator(
        TEXTS * 2, trainers.BpeTrainer(vocab_size=5000, initial_alphabet=alphabet, show_progress=False)
    )
    model = json.loads(bpe.to_str())["model"]
    learned = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]

    spm = Tokenizer(models.BPE())
    spm.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    spm.train_from_iterator(TEXTS * 2, trainers.BpeTrainer(vocab_size=5000, show_progress=False))
    pieces = [t for t, _ in sorted(spm.get_vocab().items(), key=lambda kv: kv[1]) if t not in ["<unk>", *SPECIAL, USER]]
    return {
        "bpe": {"tokens": [*SPECIAL, USER, *(t for t in learned if t not in [*SPECIAL, USER])], "merges": merges},
        "spm": {"tokens": ["<unk>", *SPECIAL, USER, *(f"<0x{b:02X}>" for b in range(256)), *pieces]},
    }


def write_vocab_file(path: Path, case: str, vocab: dict, pre: str | None = None) -> Path:
    """A GGUF file of architecture llama (the hyper-parameters llama.cpp reads) with no tensors and
    the vocabulary of `case`: a pre-tokenizer type's first name (or `pre`), or "spm"."""
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in (("block_count", 1), ("context_length", 64), ("embedding_length", 8)):
        getattr(writer, f"add_{key}")(value)
    writer.add_feed_forward_length(16)
    writer.add_head_count(1)
    writer.add_layer_norm_rms_eps(1e-5)
    if case == "spm":
        tokens = vocab["spm"]["tokens"]
        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_types([2, 3, 3, 3, 3, 4] + [6] * 256 + [1] * (len(tokens) - 262))
        writer.add_token_scores([0.0] * 262 + [-float(i) for i in range(len(tokens) - 262)])
        writer.add_unk_token_id(0)
    else:
        tokens = vocab["bpe"]["tokens"]
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre or PRE_TYPES[case].names[0])
        writer.add_token_list(tokens)
        writer.add_token_types([3, 3, 3, 3, 4] + [1] * (len(tokens) - 5))
        writer.add_token_merges(vocab["bpe"]["merges"])
    writer.add_vocab_size(len(tokens))
    writer.add_bos_token_id(tokens.index(SPECIAL[0]))
    writer.add_eos_token_id(tokens.index(SPECIAL[1]))
    return finish(writer, path)


def attnscope_ids(file: Path) -> list[list[int]]:
    tokenizer = gguf_loader.read_tokenizer(file, gguf_loader.GGUFFile(file).metadata)
    return [tokenizer.encode(text) for text in TEXTS]


def llama_cpp_ids(file: Path) -> list[list[int]]:
    """llama.cpp's ids: BOS / EOS as the file says (add_special), control tokens parsed (special)."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(file), vocab_only=True, verbose=False)
    return [llm.tokenize(text.encode(), add_bos=True, special=True) for text in TEXTS]


@pytest.fixture(scope="session")
def golden() -> dict:
    return json.loads(GOLDEN.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def files(golden, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gguf-tokenizers")
    return {case: write_vocab_file(root / f"{case}.gguf", case, golden) for case in CASES}


def test_the_record_is_of_these_strings_and_every_type(golden):
    assert golden["texts"] == TEXTS, "TEXTS changed: record again with python tests/test_gguf_tokenizers.py"
    assert sorted(golden["ids"]) == sorted(CASES)


@pytest.fixture(scope="session")
def ours(files) -> dict[str, list[list[int]]]:
    return {case: attnscope_ids(file) for case, file in files.items()}


@pytest.mark.parametrize("case", CASES)
def test_ids_equal_the_ids_llama_cpp_gave(ours, golden, case):
    for text, mine, theirs in zip(TEXTS, ours[case], golden["ids"][case], strict=True):
        assert mine == theirs, (case, text)


@pytest.mark.parametrize("case", CASES)
def test_ids_equal_llama_cpp_live(files, ours, case):
    pytest.importorskip("llama_cpp")
    for text, mine, theirs in zip(TEXTS, ours[case], llama_cpp_ids(files[case]), strict=True):
        assert mine == theirs, (case, text)


def test_every_name_has_one_type():
    names = [name for pre in PRE_TYPES.values() for name in pre.names]
    assert len(names) == len(set(names)) == len(PRE_TOKENIZERS)
    assert all(PRE_TYPES[PRE_TOKENIZERS[name]].names for name in names)


def fail_on_tensor_reading(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a tensor was read")

    monkeypatch.setattr(gguf_loader.GGUFFile, "read_rows", fail)
    monkeypatch.setattr(gguf_loader.GGUFTensors, "__init__", fail)


@pytest.mark.parametrize(
    ("pre", "message"),
    [
        ("no-such-pre", "unsupported tokenizer.ggml.pre 'no-such-pre': not in llama.cpp's table"),
        ("gemma4", "unsupported tokenizer.ggml.pre 'gemma4': its vocabulary is SentencePiece-style BPE"),
        ("tiny_aya", "unsupported tokenizer.ggml.pre 'tiny_aya': llama.cpp's split of its digit runs"),
    ],
)
def test_a_refused_pre_tokenizer_is_one_line_before_any_tensor_is_read(golden, tmp_path, monkeypatch, pre, message):
    file = write_vocab_file(tmp_path / "m.gguf", "gpt2", golden, pre=pre)
    fail_on_tensor_reading(monkeypatch)
    with pytest.raises(LoadError, match=message):
        attnscope.load_model(file)
    assert_user_error(invoke("run", "-m", str(file), "-p", "x"), message)


def test_an_unknown_tokenizer_model_is_refused_by_name(tmp_path, monkeypatch):
    path = tmp_path / "bert.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("bert")
    writer.add_token_list(["[PAD]", "a"])
    finish(writer, path)
    fail_on_tensor_reading(monkeypatch)
    with pytest.raises(LoadError, match=r"unsupported tokenizer.ggml.model 'bert' \(supported: gpt2, llama"):
        attnscope.load_model(path)


def record() -> None:
    """Train the vocabularies, tokenize with llama.cpp and write `GOLDEN`."""
    import llama_cpp

    vocab = vocabularies()
    ids = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            ids[case] = llama_cpp_ids(write_vocab_file(Path(tmp) / f"{case}.gguf", case, vocab))
    head = {"llama_cpp_python": llama_cpp.__version__, "texts": TEXTS, **vocab}
    lines = [f" {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}," for key, value in head.items()]
    rows = [f"  {json.dumps(case)}: {json.dumps(case_ids)}" for case, case_ids in ids.items()]
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text("{\n" + "\n".join(lines) + '\n "ids": {\n' + ",\n".join(rows) + "\n }\n}\n", encoding="utf-8")
    print(f"{GOLDEN}: {len(ids)} cases x {len(TEXTS)} strings, llama-cpp-python {llama_cpp.__version__}")


if __name__ == "__main__":
    record()
