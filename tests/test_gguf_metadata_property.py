"""A property over GGUF metadata: every key the loader reads, given a random type and value (numbers of
every width and sign, strings, arrays of any element type, counts that claim more than the file holds),
loads the model or is refused with one `UserError` line; never another exception, in bounded time and
memory. Hand-written files (tests/support/gguf_files.py) of the one-layer llama that loads as it is."""

from __future__ import annotations

import resource
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import gguf_files as g

import attnscope
from attnscope.errors import UserError

pytest.importorskip("gguf")

# every key the loader reads (attnscope/model/gguf.py's _KEYS and _REFUSED, gguf_tokenizer.py's tokenizer.ggml.*)
ARCH_KEYS = [
    "vocab_size",
    "embedding_length",
    "feed_forward_length",
    "block_count",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.key_length",
    "attention.value_length",
    "context_length",
    "attention.layer_norm_rms_epsilon",
    "rope.freq_base",
    "rope.scaling.factor",
    "rope.scaling.type",
    "rope.dimension_count",
    "attention.sliding_window",
    "expert_count",
    "attn_logit_softcapping",
]
TOKENIZER_KEYS = [
    "model",
    "pre",
    "tokens",
    "token_type",
    "scores",
    "merges",
    "bos_token_id",
    "eos_token_id",
    "unknown_token_id",
    "padding_token_id",
    "add_bos_token",
    "add_eos_token",
    "add_space_prefix",
]
KEYS = [
    "general.architecture",
    "general.name",
    "general.alignment",
    *(f"llama.{k}" for k in ARCH_KEYS),
    *(f"tokenizer.ggml.{k}" for k in TOKENIZER_KEYS),
]
INTS = {0: (0, 255), 1: (-128, 127), 2: (0, 65535), 3: (-32768, 32767), 4: (0, 2**32 - 1), 5: (-(2**31), 2**31 - 1)}
INTS |= {10: (0, 2**64 - 1), 11: (-(2**63), 2**63 - 1)}
TEXT = st.sampled_from(["", "llama", "gpt2", "gpt-2", "qwen2", "a", "ab", "a b", "ab c", "<s>", "none", "linear"])


def scalar(kind: int):
    if kind in INTS:
        return st.one_of(
            st.integers(*INTS[kind]), st.sampled_from([v for v in (0, 1, 2, 3, 4, 64) if v <= INTS[kind][1]])
        )
    if kind in (6, 12):
        return st.floats(allow_nan=True, allow_infinity=True, width=32 if kind == 6 else 64)
    if kind == 7:
        return st.booleans()
    return TEXT


@st.composite
def values(draw):
    """(type, value[, element type[, claimed count]]) of one metadata value."""
    kind = draw(st.sampled_from([*INTS, 6, 7, 8, 9, 12]))
    if kind != g.ARRAY:
        return (kind, draw(scalar(kind)))
    item = draw(st.sampled_from([*INTS, 6, 7, 8]))
    items = draw(st.lists(scalar(item), max_size=8))
    claimed = draw(st.one_of(st.none(), st.sampled_from([len(items) + 1, 1 << 20, 1 << 40, 2**64 - 1])))
    return (kind, items, item, claimed)


@st.composite
def metadata(draw):
    """The tiny model's metadata with a few of the keys the loader reads given random values (or dropped)."""
    edited = g.tiny_metadata()
    for key in draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=4, unique=True)):
        if draw(st.integers(0, 5)) == 0:
            edited.pop(key, None)
        else:
            edited[key] = draw(values())
    return edited


PEAK_GROWTH_KIB = 512 << 10  # ru_maxrss (KiB on Linux) may grow by at most 512 MiB over all examples


@pytest.mark.skipif(sys.platform != "linux", reason="measures the peak memory with getrusage (Linux units)")
@settings(
    max_examples=20,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(metadata())
def test_random_metadata_loads_or_is_one_user_error(tmp_path_factory, edited):
    file = tmp_path_factory.mktemp("meta") / "model.gguf"
    file.write_bytes(g.gguf_bytes(edited))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    try:
        model = attnscope.load_model(file)
        attnscope.Scope(model, backend="eager").run([0, 1], checks="none")
    except UserError as exc:
        assert "\n" not in str(exc).strip() and str(exc).strip(), repr(exc)
    assert time.monotonic() - start < 10
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < PEAK_GROWTH_KIB
