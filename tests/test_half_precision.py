"""Half precision you can gate CI on: on the 24-layer `deep-random` sample, a correct model passes
every check in float16 and bfloat16, and each fault injected into the incremental path only (a cache
write that drops a token, keys cached with RoPE one position off, a decode step whose mask hides one
cached key), in one layer, is found at that layer and at no other (`full_vs_incremental` in
isolation), while the free-running figures show the accumulation it causes downstream. The checks
run in the default incremental mode (prefill chunks, then the last 32 tokens one at a time): the
decode-step faults sit in that tail; two faults that only chunked prefill exposes (a chunk whose
causal mask is top-left aligned, a chunk whose RoPE positions restart at 0) are found by the default
and not by the token-by-token mode."""

from __future__ import annotations

import dataclasses
import functools
import sys

import pytest
import torch

import attnscope
from attnscope import masks
from attnscope.inspector.checks import CHECK_NAMES, RULE_FACTOR, Tolerance, compare
from attnscope.junit import junit_xml
from attnscope.model import KVCache
from attnscope.model.llama import apply_rope
from attnscope.render.checks import mark
from attnscope.samples import sample_models_dir

HALF = ["bfloat16", "float16"]
FAULT_LAYER = 13  # deep enough that the free-running pass has accumulated twelve layers of rounding
DROPPED = 20  # the position whose cache write is lost / whose key a decode step hides: in the default
# mode's one-token tail of the 48-token prompt (positions 16-47) and of any shorter one


@functools.cache
def deep(dtype: str):
    return attnscope.load_model("deep-random", dtype=dtype)


def prompt_ids(n: int, seed: int = 0) -> list[int]:
    """`n` tokens of real text (tiny-code's model card), BOS first, from an offset per seed."""
    text = (sample_models_dir() / "tiny-code" / "README.md").read_text()
    ids = deep("float32").tokenizer.encode(text[seed * 997 :])
    assert len(ids) >= n
    return ids[:n]


def checks_of(dtype: str, backend: str, ids: list[int], checks="all") -> dict:
    result = attnscope.Scope(deep(dtype), backend=backend).run(ids, checks=checks)
    return {c.name: c for c in result.checks}


# ---- a correct deep model passes, in both half precisions ----------------------------------------------


# the fast lane keeps sdpa in bfloat16 on the short prompt; the rest are slow
@pytest.mark.parametrize("dtype", ["bfloat16", pytest.param("float16", marks=pytest.mark.slow)])
@pytest.mark.parametrize("backend", [pytest.param("eager", marks=pytest.mark.slow), "sdpa"])
@pytest.mark.parametrize(
    "n, seed", [(32, 0), pytest.param(160, 1, marks=pytest.mark.slow), pytest.param(512, 2, marks=pytest.mark.slow)]
)
def test_a_correct_deep_model_passes_every_check(dtype, backend, n, seed):
    found = checks_of(dtype, backend, prompt_ids(n, seed))
    assert set(found) == set(CHECK_NAMES)
    assert all(c.passed for c in found.values()), {name: c.message for name, c in found.items()}
    fvi = found["full_vs_incremental"].figures
    assert fvi["isolated"] and fvi["calibration"]["end_to_end"] == "float32 forward of the same inputs"
    assert fvi["worst_error_ratio"] <= 1.0
    # the accumulation is real: the free-running pass parts from the full forward far more at the top
    # than any one layer does in isolation, and the constant tolerance of before would have failed it
    free = fvi["free_running"]["per_layer_max_abs_diff"]
    assert max(free[-6:]) > 4 * max(fvi["per_layer_max_abs_diff"])


@pytest.mark.slow
def test_flex_passes_on_the_deep_model():
    """flex on the CPU runs its unfused path (~50 ms a call): a short prompt."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    found = checks_of("bfloat16", "flex", prompt_ids(12), checks="full_vs_incremental,backend_vs_reference")
    assert all(c.passed for c in found.values()), {name: c.message for name, c in found.items()}


@pytest.mark.slow
def test_the_old_constant_tolerance_cries_wolf_on_the_same_run():
    """What the calibration fixes: with bfloat16's constant tolerance given explicitly (as the check
    ran before), the same correct model fails full_vs_incremental end to end."""
    result = attnscope.Scope(deep("bfloat16"), backend="sdpa").run(
        prompt_ids(160, 1), checks="full_vs_incremental", atol=1e-2, rtol=1e-2
    )
    check = result.checks[0]
    assert check.figures["calibration"]["end_to_end"].startswith("constant tolerance as given")
    assert check.figures["free_running"]["over_tolerance"]


# ---- faults in the incremental path of one layer are found there, and only there ----------------------


class DroppingCache(KVCache):
    """The write of position `DROPPED` in layer `FAULT_LAYER` is lost when it comes one token at a time
    (a decode step): that key and value stay zero."""

    def update(self, layer, k, v):
        if layer == FAULT_LAYER and k.shape[2] == 1 and self.length == DROPPED:
            k, v = torch.zeros_like(k), torch.zeros_like(v)
        return super().update(layer, k, v)


class ShiftedRopeCache(KVCache):
    """Layer `FAULT_LAYER` caches the keys of decode steps rotated one position too far (RoPE at p + 1
    for a key at p): every cached key's offset to the query is off by one."""

    def update(self, layer, k, v):
        if layer == FAULT_LAYER and k.shape[2] == 1:
            cos, sin = self.rope(1, 1, None, k.dtype, k.device)  # rotating by one more position
            k = apply_rope(k, cos, sin)
        return super().update(layer, k, v)


class HideKey(masks.MaskSpec):
    def predicate(self, b, h, q_idx, kv_idx):
        return kv_idx != DROPPED

    def __repr__(self):
        return f"hide({DROPPED})"


def hide_a_cached_key_in_decode_steps(net):
    """Layer `FAULT_LAYER`'s decode steps (one new token after a cache of more than `DROPPED`) do not
    see the cached key `DROPPED`."""
    attention = net.layers[FAULT_LAYER].self_attn
    forward = attention.forward

    def faulty(x, rope, attend, cache, recorder, mask):
        if cache is not None and x.shape[1] == 1 and cache.length > DROPPED:
            mask = mask & HideKey()
        return forward(x, rope, attend, cache, recorder, mask)

    return attention, faulty


# fault -> the first position it changes in the default mode on 48 tokens (prefill chunks over positions
# 0-15, one token at a time over 16-47): the lost write's own row; the first row decoded one token at a
# time (every decoded row has cached keys; token by token it is row 1: row 0 attends to itself alone,
# whatever its rotation); the first row after the hidden key
FAULTS = {"dropped cache write": DROPPED, "rope off by one": 16, "decode mask hides a key": DROPPED + 1}


def inject(monkeypatch, model, fault: str) -> None:
    net = model.net
    if fault == "decode mask hides a key":
        attention, faulty = hide_a_cached_key_in_decode_steps(net)
        monkeypatch.setattr(attention, "forward", faulty)
        return
    cache_class = DroppingCache if fault == "dropped cache write" else ShiftedRopeCache

    def new_cache(batch, max_len):
        cache = cache_class(net.config, batch, max_len, model.dtype, model.device)
        cache.rope = net.rotary_emb
        return cache

    monkeypatch.setattr(net, "new_cache", new_cache)


@pytest.mark.parametrize("dtype", ["bfloat16", pytest.param("float16", marks=pytest.mark.slow)])
@pytest.mark.parametrize("backend", ["sdpa", pytest.param("eager", marks=pytest.mark.slow)])
@pytest.mark.parametrize("fault", FAULTS)
def test_a_fault_in_one_layer_is_found_at_that_layer_only(monkeypatch, dtype, backend, fault):
    model = attnscope.load_model("deep-random", dtype=dtype)  # a model of its own: the fault is patched in
    inject(monkeypatch, model, fault)
    result = attnscope.Scope(model, backend=backend).run(prompt_ids(48, 3), checks="all")
    found = {c.name: c for c in result.checks}
    check = found["full_vs_incremental"]
    assert not check.passed
    assert check.where["layer"] == FAULT_LAYER and check.where["path"] == "isolated", check.message
    assert check.where["position"] == FAULTS[fault]
    ratios = check.figures["per_layer_error_ratio"]
    assert ratios[FAULT_LAYER] > 1.0
    assert max(r for i, r in enumerate(ratios) if i != FAULT_LAYER) <= 1.0, ratios  # every other layer passes
    # the free-running pass, which carries every earlier layer's rounding, jumps at the fault's layer
    free = check.figures["free_running"]["per_layer_max_abs_diff"]
    assert free[FAULT_LAYER] > 2 * max(free[:FAULT_LAYER])
    # the fault is in the KV-cache path only: the parallel forward's checks pass
    assert found["causality"].passed and found["backend_vs_reference"].passed and found["nan"].passed


@dataclasses.dataclass(frozen=True)
class TopLeft(masks.MaskSpec):
    """Causal alignment from the top left: query row i of a chunk after `past` cached keys sees keys
    0 .. i (as if the chunk started the sequence) instead of 0 .. past + i."""

    past: int

    def predicate(self, b, h, q_idx, kv_idx):
        return kv_idx <= q_idx - self.past

    def __repr__(self):
        return f"top_left({self.past})"


def chunk_fault(net, fault: str):
    """Layer `FAULT_LAYER`'s attention on a chunk of several tokens after a cache (what chunked prefill
    runs, and neither the parallel forward nor a decode step): its causal mask top-left aligned, or
    its RoPE positions restarting at 0."""
    attention = net.layers[FAULT_LAYER].self_attn
    forward = attention.forward

    def faulty(x, rope, attend, cache, recorder, mask):
        if cache is not None and x.shape[1] > 1 and cache.length > 0:
            if fault == "chunk mask top-left aligned":
                mask = mask & TopLeft(cache.length)
            else:
                rope = net.rotary_emb(0, x.shape[1], None, x.dtype, x.device)
        return forward(x, rope, attend, cache, recorder, mask)

    return attention, faulty


CHUNK_FAULTS = ["chunk mask top-left aligned", "chunk rope restarts at 0"]


@pytest.mark.parametrize("fault", CHUNK_FAULTS)
def test_a_chunked_prefill_fault_is_found_by_the_default_mode_only(monkeypatch, fault):
    """The default mode finds it at its layer, at the first row of the first chunk that meets a cache
    (position 7, after the 7-token first chunk); every token one at a time never runs such a chunk."""
    model = attnscope.load_model("deep-random", dtype="bfloat16")
    attention, faulty = chunk_fault(model.net, fault)
    monkeypatch.setattr(attention, "forward", faulty)
    scope = attnscope.Scope(model, backend="sdpa")
    check = scope.run(prompt_ids(48, 3), checks="full_vs_incremental").checks[0]
    assert not check.passed
    assert (check.where["layer"], check.where["position"], check.where["path"]) == (FAULT_LAYER, 7, "isolated")
    assert "in prefill chunk 7–15" in check.message and "[default]" in check.message
    ratios = check.figures["per_layer_error_ratio"]
    assert max(r for i, r in enumerate(ratios) if i != FAULT_LAYER) <= 1.0 < ratios[FAULT_LAYER]
    assert check.figures["incremental"]["chunks"] == [[0, 6], [7, 15]]
    tokens = scope.run(prompt_ids(48, 3), checks="full_vs_incremental", incremental="tokens").checks[0]
    assert tokens.passed, tokens.message
    assert tokens.figures["incremental"] == {
        "mode": "tokens",
        "chunks": [],
        "one_token_at_a_time": [0, 47],
        "forward_calls": 48,
    }


def test_decode_step_faults_are_found_token_by_token_from_their_own_row(monkeypatch):
    """The exhaustive mode finds the decode-step faults where they start: RoPE one off from row 1."""
    model = attnscope.load_model("deep-random", dtype="bfloat16")
    inject(monkeypatch, model, "rope off by one")
    check = (
        attnscope.Scope(model, backend="sdpa")
        .run(prompt_ids(48, 3), checks="full_vs_incremental", incremental="tokens")
        .checks[0]
    )
    assert (check.where["layer"], check.where["position"]) == (FAULT_LAYER, 1)


@pytest.mark.slow
def test_faults_are_far_above_the_noise_they_are_judged_against(monkeypatch):
    """Each fault's size (in float32, where a correct model's two paths agree to ~1e-6) against the
    difference that bfloat16 rounding alone makes at the same layer: many times larger, so none
    could hide below the noise, and finding them is no accident of the rule's constants."""
    noise = checks_of("bfloat16", "sdpa", prompt_ids(48, 3), "full_vs_incremental")["full_vs_incremental"]
    rounding = noise.figures["per_layer_max_abs_diff"][FAULT_LAYER]
    for fault in FAULTS:
        model = attnscope.load_model("deep-random", dtype="float32")
        with monkeypatch.context() as patch:
            inject(patch, model, fault)
            check = attnscope.Scope(model).run(prompt_ids(48, 3), checks="full_vs_incremental").checks[0]
        size = check.figures["per_layer_max_abs_diff"][FAULT_LAYER]
        assert size > 10 * rounding, (fault, size, rounding)


# ---- the rule itself -----------------------------------------------------------------------------------


def test_compare_follows_flash_attentions_rule():
    """Per head: over where |actual - ref| > factor * max |baseline - ref| + atol * max(1, max |ref|)."""
    ref = torch.zeros(1, 2, 3, 4)
    ref[0, 1] = 3.0  # head 1's magnitude scales its atol by 3
    baseline = ref.clone()
    baseline[0, 0, 0, 0] += 0.01  # head 0's noise 0.01, head 1's 0
    actual = ref.clone()
    tol = Tolerance.for_dtype(torch.bfloat16)
    limit0 = RULE_FACTOR * 0.01 + tol.atol
    actual[0, 0, 2, 1] += limit0 * 0.99  # within head 0's limit
    actual[0, 1, 1, 3] += 3 * tol.atol * 1.01  # over head 1's (noise 0: the atol alone)
    d = compare(actual, baseline, ref, tol)
    assert torch.allclose(d.limit, torch.tensor([limit0, 3 * tol.atol]))
    assert d.bad_rows[0].tolist() == [[False, False, False], [False, True, False]]
    assert d.first_bad() == (0, 1, 1)
    # without a reference: the dtype's constant tolerance
    assert not compare(actual, baseline, None, tol).bad_rows.any()
    # an explicit tolerance is never calibrated
    assert not Tolerance.for_dtype(torch.bfloat16, atol=1e-3).calibrated


def test_backend_vs_reference_of_eager_float32_is_skipped_and_says_so():
    check = checks_of("float32", "eager", prompt_ids(8), checks="backend_vs_reference")["backend_vs_reference"]
    assert check.passed and check.figures == {"skipped": "the backend is the eager float32 reference"}
    assert check.message.startswith("skipped") and check.skipped
    xml = junit_xml([(0, "x", "eager", [check])])
    assert 'skipped="1"' in xml and '<skipped message="the backend is the eager float32 reference"' in xml
    assert str(mark(check)) == "-"


# ---- the hf engine isolates its decoder layers with forward pre-hooks ---------------------------------


@pytest.fixture(scope="module")
def hf_deep():
    pytest.importorskip("transformers")
    return attnscope.load_model("deep-random", dtype="bfloat16", engine="hf")


@pytest.mark.slow  # the fast lane keeps the hf engine finding a fault (below)
def test_hf_engine_passes_the_correct_deep_model_in_bfloat16(hf_deep):
    check = attnscope.Scope(hf_deep, backend="sdpa").run(prompt_ids(64, 1), checks="full_vs_incremental").checks[0]
    assert check.passed, check.message
    assert check.figures["isolated"] and check.figures["worst_error_ratio"] <= 1.0
    assert check.figures["calibration"]["end_to_end"] == "float32 forward of the same inputs"


def test_hf_engine_finds_a_lost_cache_write_at_its_layer(hf_deep, monkeypatch):
    from transformers import DynamicCache

    class Forgetful(DynamicCache):
        """Layer `FAULT_LAYER` loses the key and value of position `DROPPED` (a decode step's write)."""

        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            if layer_idx == FAULT_LAYER and key_states.shape[2] == 1 and self.get_seq_length(layer_idx) == DROPPED:
                key_states, value_states = torch.zeros_like(key_states), torch.zeros_like(value_states)
            return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    monkeypatch.setattr(hf_deep, "new_cache", lambda batch, max_len: Forgetful())
    check = attnscope.Scope(hf_deep, backend="sdpa").run(prompt_ids(32, 1), checks="full_vs_incremental").checks[0]
    assert not check.passed
    assert (check.where["layer"], check.where["position"], check.where["path"]) == (FAULT_LAYER, DROPPED, "isolated")
    ratios = check.figures["per_layer_error_ratio"]
    assert max(r for i, r in enumerate(ratios) if i != FAULT_LAYER) <= 1.0 < ratios[FAULT_LAYER]


def test_hf_engine_feeds_its_own_cache_chunks(hf_deep, monkeypatch):
    """The hf engine's default mode feeds the model's own cache chunks: a cache that loses the first key
    of a chunk written after others is found at its layer, at that chunk's first row; token by token
    it is not."""
    from transformers import DynamicCache

    class ChunkForgetful(DynamicCache):
        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            if layer_idx == FAULT_LAYER and key_states.shape[2] > 1 and self.get_seq_length(layer_idx) > 0:
                key_states, value_states = key_states.clone(), value_states.clone()
                key_states[:, :, 0], value_states[:, :, 0] = 0, 0
            return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    monkeypatch.setattr(hf_deep, "new_cache", lambda batch, max_len: ChunkForgetful())
    scope = attnscope.Scope(hf_deep, backend="sdpa")
    check = scope.run(prompt_ids(48, 1), checks="full_vs_incremental").checks[0]
    assert not check.passed
    assert (check.where["layer"], check.where["position"], check.where["path"]) == (FAULT_LAYER, 7, "isolated")
    assert scope.run(prompt_ids(48, 1), checks="full_vs_incremental", incremental="tokens").checks[0].passed


def test_a_padded_batch_is_isolated_row_by_row():
    """Left padding in bfloat16: every row's real tokens pass, isolated, and the padding rows (no key
    to attend to) are left out of the comparison rather than compared as -inf against -inf."""
    rows = [prompt_ids(40, 0), prompt_ids(17, 1)]
    result = attnscope.Scope(deep("bfloat16"), backend="sdpa").run(rows, checks="all")
    found = {c.name: c for c in result.checks}
    assert all(c.passed for c in found.values()), {name: c.message for name, c in found.items()}
    assert found["full_vs_incremental"].figures["isolated"]


@pytest.mark.slow
def test_without_room_for_a_float32_forward_the_end_to_end_figures_gate_nothing(monkeypatch):
    """Where a float32 copy of the weights does not fit, the report says so, the logits are shown
    against the dtype's constant tolerance, and only the isolated layers decide."""
    from attnscope.model import native

    def no_room(module, device):
        raise MemoryError("a float32 copy of the weights needs 9 GB, more than the 1 GB available")

    monkeypatch.setattr(native, "require_float32_copy_fits", no_room)
    check = checks_of("bfloat16", "sdpa", prompt_ids(160, 1), "full_vs_incremental")["full_vs_incremental"]
    assert check.passed, check.message
    calibration = check.figures["calibration"]
    assert calibration["end_to_end"].startswith("none (no float32 forward: a float32 copy of the weights needs 9 GB")
    assert calibration["layers"] == "float32 computation of each layer's attention on the same input"
    assert check.figures["gates"] == ["isolated layers"]
    assert check.figures["free_running"]["over_tolerance"]  # the constant tolerance cries wolf; nobody listens
    assert "not calibrated" in check.message


def test_a_wrong_decode_position_is_found_by_isolation_without_a_float32_forward(monkeypatch):
    """The rotary position a decode step gets from the model's own bookkeeping (`_embed` after the
    cached tokens) is what the isolated pass uses too: one position off is found at the first layer
    even where no float32 forward can calibrate the logits."""
    from attnscope.model import native

    def no_room(module, device):
        raise MemoryError("no room")

    model = attnscope.load_model("deep-random", dtype="bfloat16")
    net = model.net
    embed = net._embed

    def off_by_one(ids, past, positions):
        return embed(ids, past + 1 if ids.shape[1] == 1 and past > 0 else past, positions)

    monkeypatch.setattr(native, "require_float32_copy_fits", no_room)
    monkeypatch.setattr(net, "_embed", off_by_one)
    check = attnscope.Scope(model, backend="sdpa").run(prompt_ids(32), checks="full_vs_incremental").checks[0]
    assert not check.passed
    assert (check.where["layer"], check.where["position"], check.where["path"]) == (0, 1, "isolated")


@pytest.mark.parametrize("dtype", [pytest.param("bfloat16", marks=pytest.mark.slow), "float16"])
def test_an_engine_that_cannot_isolate_is_judged_by_its_logits(monkeypatch, dtype):
    """Without isolation, the free-running layers (two trajectories of rounding) are shown, not judged:
    the correct model passes on prompts where they cross the rule, and a lost cache write still
    fails, by the logits."""
    model = attnscope.load_model("deep-random", dtype=dtype)
    monkeypatch.setattr(model, "forward_isolated", None, raising=False)
    for seed in range(4):
        check = attnscope.Scope(model, backend="sdpa").run(prompt_ids(32, seed), checks="full_vs_incremental").checks[0]
        assert check.passed, check.message
        assert not check.figures["isolated"] and check.figures["gates"] == ["logits"]
    # a write lost early (position 5: every later logit reads it; the default mode decodes all 32 tokens
    # one at a time) shows in the logits of either half precision
    monkeypatch.setattr(sys.modules[__name__], "DROPPED", 5)
    inject(monkeypatch, model, "dropped cache write")
    check = attnscope.Scope(model, backend="sdpa").run(prompt_ids(32), checks="full_vs_incremental").checks[0]
    assert not check.passed and check.where["stage"] == "logits"
    assert check.figures["free_running"]["first_layer_over"] == FAULT_LAYER


@pytest.mark.parametrize(
    "model, dtype, ids",
    [
        ("tiny-code", "float16", [821, 958, 285]),
        ("tiny-code", "bfloat16", [194, 513]),
        ("deep-random", "float16", [0, 527]),
    ],
)
def test_short_prompts_leave_room_for_one_rounding_of_the_output(model, dtype, ids):
    """A head's baseline error over two or three rows can be tiny: a correct backend one rounding away
    from it passes (these prompts failed with a fixed atol of 1e-5)."""
    result = attnscope.Scope(attnscope.load_model(model, dtype=dtype), backend="sdpa").run(
        ids, checks="backend_vs_reference,full_vs_incremental"
    )
    assert all(c.passed for c in result.checks), [c.message for c in result.checks]


def test_float32_isolates_only_to_name_the_layer_of_a_difference(monkeypatch):
    model = attnscope.load_model("deep-random", dtype="float32")
    clean = attnscope.Scope(model).run(prompt_ids(24), checks="full_vs_incremental").checks[0]
    assert clean.passed and not clean.figures["isolated"]
    inject(monkeypatch, model, "dropped cache write")
    faulty = attnscope.Scope(model).run(prompt_ids(24), checks="full_vs_incremental").checks[0]
    assert not faulty.passed and faulty.figures["isolated"]
    assert (faulty.where["layer"], faulty.where["position"], faulty.where["path"]) == (FAULT_LAYER, DROPPED, "isolated")
