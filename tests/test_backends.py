"""The attention interface: eager, sdpa and flex against a float64 reference, GQA head mapping, lse,
shape validation; flex on every mask kind; the optional features against transformers' own code."""

from __future__ import annotations

import pytest
import torch
from support.reference import qkv, reference_attention

from attnscope import masks
from attnscope.backends import eager, get_backend
from attnscope.backends.eager import probabilities
from attnscope.masks import causal, sliding_window

pytestmark = pytest.mark.usefixtures("single_thread")

BACKENDS = ["eager", "sdpa", "flex"]
TOL = {torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}


CASES = [
    # B, Hq, Hkv, Sq, Sk
    (1, 4, 2, 16, 16),  # square prefill, GQA
    (2, 8, 2, 5, 21),  # chunk after a cache
    (2, 4, 1, 1, 13),  # decode, MQA
    (1, 4, 4, 9, 9),  # MHA
]
SPECS = [causal(), causal() & sliding_window(4), sliding_window(1)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_backend_matches_reference(backend, dtype, case, spec):
    B, Hq, Hkv, Sq, Sk = case
    D = 16
    q, k, v = qkv(B, Hq, Hkv, Sq, Sk, D, dtype)
    out, lse = get_backend(backend)(q, k, v, spec, D**-0.5)
    assert out.shape == (B, Hq, Sq, D) and out.dtype == dtype
    assert lse.shape == (B, Hq, Sq) and lse.dtype == torch.float32
    ref_out, ref_lse, _ = reference_attention(q, k, v, spec.dense(Sq, Sk), D**-0.5)
    torch.testing.assert_close(out.double(), ref_out, atol=TOL[dtype], rtol=0)
    torch.testing.assert_close(lse.double(), ref_lse, atol=TOL[dtype], rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_need_lse_false(backend):
    q, k, v = qkv(1, 4, 2, 6, 6, 8)
    out, lse = get_backend(backend)(q, k, v, causal(), 0.3, need_lse=False)
    full_out, full_lse = get_backend(backend)(q, k, v, causal(), 0.3)
    torch.testing.assert_close(out, full_out, atol=0, rtol=0)
    assert lse is None or torch.equal(lse, full_lse)


def test_probabilities_from_lse():
    """exp(q·k·scale − lse) is the softmax, for every head, without storing it."""
    D = 16
    q, k, v = qkv(1, 4, 2, 7, 12, D)
    spec = causal() & sliding_window(5)
    allowed = spec.dense(7, 12)
    _, lse = eager.attend(q, k, v, spec, D**-0.5)
    _, _, ref_probs = reference_attention(q, k, v, allowed, D**-0.5)
    for h in range(4):
        p = probabilities(q[0, h], k[0, h // 2], lse[0, h], allowed[0, 0], D**-0.5)
        torch.testing.assert_close(p.double(), ref_probs[0, h], atol=1e-6, rtol=0)


def test_eager_row_chunking(monkeypatch):
    """Scores are computed in chunks of query rows when they would be large: same result."""
    D = 8
    q, k, v = qkv(2, 4, 2, 11, 19, D)
    spec = causal() & sliding_window(6)
    expected = eager.attend(q, k, v, spec, 0.4)
    monkeypatch.setattr(eager, "MAX_SCORE_ELEMENTS", 2 * 4 * 19 * 3)  # 3 rows per chunk
    got = eager.attend(q, k, v, spec, 0.4)
    torch.testing.assert_close(got[0], expected[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(got[1], expected[1], atol=1e-6, rtol=0)
    torch.testing.assert_close(eager.log_sum_exp(q, k, spec, 0.4), expected[1], atol=1e-6, rtol=0)


def test_grouped_matmul_is_each_query_head_times_its_kv_head():
    """A kv group's query rows times that kv head's keys (and the weights times its values), for a
    chunk of rows that is not contiguous across the group: what a broadcasting matmul computes."""
    q, k, v = qkv(2, 6, 2, 9, 13, 8)
    qg = q.view(2, 2, 3, 9, 8)[..., 2:7, :]  # (B, Hkv, G, rows, D): rows 2..6 of every head
    scores = eager.grouped_matmul(qg, k.transpose(-1, -2))  # (B, Hkv, G, rows, Sk)
    torch.testing.assert_close(scores, qg @ k.unsqueeze(2).transpose(-1, -2))
    torch.testing.assert_close(eager.grouped_matmul(scores, v), scores @ v.unsqueeze(2))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", [causal(), causal() & sliding_window(3)], ids=repr)
def test_nan_input_is_visible(backend, spec):
    """A NaN in q is a finding: the inspector must see it (in the lse every backend returns), and
    the eager reference must propagate it to the output rather than hide it. (torch's CPU SDPA
    kernel for is_causal=True writes 0 for such a row, so the sdpa output may not show it.)"""
    q, k, v = qkv(1, 2, 1, 4, 4, 8)
    q[0, 1, 2, 3] = float("nan")
    out, lse = get_backend(backend)(q, k, v, spec, 0.5)
    assert torch.isnan(lse[0, 1, 2])
    assert torch.isfinite(lse[0, 0]).all() and torch.isfinite(out[0, 0]).all()
    if backend == "eager":
        assert torch.isnan(out[0, 1, 2]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_shape_validation(backend):
    attend = get_backend(backend)
    q, k, v = qkv(1, 4, 2, 6, 6, 8)
    with pytest.raises(ValueError, match="more queries"):
        attend(q, k[:, :, :3], v[:, :, :3], causal(), 1.0)
    with pytest.raises(ValueError, match="divisible"):
        attend(q, torch.cat([k, k[:, :1]], 1), torch.cat([v, v[:, :1]], 1), causal(), 1.0)
    with pytest.raises(ValueError, match="k and v"):
        attend(q, k, v[:, :, :5], causal(), 1.0)
    with pytest.raises(ValueError):
        attend(q[0], k, v, causal(), 1.0)
    with pytest.raises(TypeError, match="MaskSpec"):
        attend(q, k, v, torch.ones(6, 6, dtype=torch.bool), 1.0)


# --- optional features: logit soft-capping (Gemma 2) and attention sinks (gpt-oss) ----------------------


def _hf_eager(module_name, q, k, v, allowed, scale, **features):
    """transformers' own eager attention of that architecture: output [B, Hq, Sq, D], weights."""
    modeling = pytest.importorskip(f"transformers.models.{module_name}.modeling_{module_name}")
    module = torch.nn.Module()
    module.num_key_value_groups, module.head_dim = q.shape[1] // k.shape[1], q.shape[-1]
    if "sinks" in features:
        module.sinks = features.pop("sinks")
    bias = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
    out, weights = modeling.eager_attention_forward(module, q, k, v, bias, scaling=scale, **features)
    return out.transpose(1, 2), weights


@pytest.mark.parametrize("backend", ["eager", "flex"])
@pytest.mark.parametrize("B, Hq, Hkv, Sq, Sk", CASES)
def test_softcap_matches_gemma2(backend, B, Hq, Hkv, Sq, Sk):
    q, k, v = qkv(B, Hq, Hkv, Sq, Sk, 16)
    q = q * 4  # scores well beyond the cap
    spec = causal()
    allowed = spec.dense(Sq, Sk).expand(B, Hq, Sq, Sk)
    want_out, want_w = _hf_eager("gemma2", q, k, v, allowed, 0.25, softcap=5.0)
    out, lse = get_backend(backend)(q, k, v, spec, 0.25, softcap=5.0)
    torch.testing.assert_close(out, want_out, atol=2e-5, rtol=0)
    plain, _ = get_backend(backend)(q, k, v, spec, 0.25)
    assert (plain - out).abs().max() > 1e-2  # the cap changes the output: the test can fail
    kr = k.repeat_interleave(Hq // Hkv, dim=1)
    got_w = probabilities(q, kr, lse, allowed, 0.25, softcap=5.0)
    torch.testing.assert_close(got_w, want_w, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B, Hq, Hkv, Sq, Sk", CASES)
def test_sinks_match_gpt_oss(backend, B, Hq, Hkv, Sq, Sk):
    q, k, v = qkv(B, Hq, Hkv, Sq, Sk, 16)
    sinks = torch.linspace(-1.0, 3.0, Hq)
    spec = causal() & sliding_window(4)
    allowed = spec.dense(Sq, Sk).expand(B, Hq, Sq, Sk)
    want_out, want_w = _hf_eager("gpt_oss", q, k, v, allowed, 0.25, sinks=sinks)
    out, lse = get_backend(backend)(q, k, v, spec, 0.25, sinks=sinks)
    torch.testing.assert_close(out, want_out, atol=2e-5, rtol=0)
    kr = k.repeat_interleave(Hq // Hkv, dim=1)
    got_w = probabilities(q, kr, lse, allowed, 0.25)
    torch.testing.assert_close(got_w, want_w, atol=1e-5, rtol=0)
    assert bool((got_w.sum(-1) < 1 - 1e-3).all())  # every sink takes mass: without it the sums would be 1


def test_a_backend_without_a_feature_is_refused_by_name():
    from attnscope.backends import require_features, supports
    from attnscope.errors import UnsupportedFeature

    sdpa, flex = get_backend("sdpa"), get_backend("flex")
    assert supports(eager.attend, "softcap") and supports(sdpa, "sinks") and not supports(sdpa, "softcap")
    assert supports(flex, "softcap") and supports(flex, "sinks")
    assert require_features(sdpa, {"softcap": None, "sinks": None}, "layer 0") == {}
    with pytest.raises(UnsupportedFeature, match="layer 3 uses attention logit soft-capping, which backend 'sdpa'"):
        require_features(sdpa, {"softcap": 30.0}, "layer 3")


# --- flex: every mask kind as a block mask ---------------------------------------------------------------

FLEX_MASKS = [
    masks.causal() & masks.padding([21, 13], "left"),
    masks.causal() & masks.padding([21, 9], "right"),
    masks.padding([0, 21], "left"),  # row 0 has no real key: every row of it is empty
    masks.causal() & masks.document([0] * 8 + [1] * 6 + [2] * 7),
    masks.document([[0] * 10 + [1] * 11, [0] * 3 + [1] * 18]),  # per-row documents
    masks.prefix_lm(6),
    masks.causal() & masks.chunked(4),
    masks.custom(torch.rand(9, 21, generator=torch.Generator().manual_seed(3)) > 0.6),
    masks.custom(torch.rand(2, 4, 9, 21, generator=torch.Generator().manual_seed(4)) > 0.5),  # per row and head
]


@pytest.mark.parametrize("spec", FLEX_MASKS, ids=repr)
@pytest.mark.parametrize("Sq", [9, 1])
def test_flex_runs_every_mask_kind(spec, Sq):
    """The spec's mask_mod as FlexAttention's block mask gives the reference, per batch row and head,
    with out 0 / lse -inf on rows that see no key."""
    B, Hq, Hkv, Sk, D = 2, 4, 2, 21, 16
    q, k, v = qkv(B, Hq, Hkv, Sq, Sk, D)
    out, lse = get_backend("flex")(q, k, v, spec, D**-0.5)
    allowed = spec.dense(Sq, Sk).expand(B, Hq, Sq, Sk)
    ref_out, ref_lse, _ = reference_attention(q, k, v, allowed, D**-0.5)
    empty = ~allowed.any(-1)
    assert torch.equal(lse == float("-inf"), empty)
    torch.testing.assert_close(out.double()[~empty], ref_out[~empty], atol=2e-5, rtol=0)
    torch.testing.assert_close(lse.double()[~empty], ref_lse[~empty], atol=2e-5, rtol=0)
    assert bool((out[empty] == 0).all())


def test_flex_bounds_the_scores_of_its_eager_path(monkeypatch):
    """On the CPU the eager flex path materializes a call's scores: query rows run in chunks of at
    most MAX_SCORE_ELEMENTS scores, each with its own block mask, with the same result."""
    from attnscope.backends import flex

    q, k, v = qkv(2, 4, 2, 11, 19, 8)
    spec = masks.causal() & masks.sliding_window(6)
    whole = flex.attend(q, k, v, spec, 0.4)
    monkeypatch.setattr(eager, "MAX_SCORE_ELEMENTS", 2 * 4 * 19 * 3)  # 3 rows per call
    calls = []
    run = flex._flex
    monkeypatch.setattr(flex, "_flex", lambda q, *rest: calls.append(q.shape[2]) or run(q, *rest))
    chunked = flex.attend(q, k, v, spec, 0.4)
    assert calls == [3, 3, 3, 2]
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("B", "Sq", "Sk"), [(1, 0, 5), (0, 3, 3), (1, 0, 0)])
def test_empty_inputs(backend, B, Sq, Sk):
    """No rows, no batch, no keys: empty outputs of the right shapes (the CPU flash op itself
    divides by zero on no rows, so sdpa must not call it)."""
    q, k, v = qkv(max(B, 1), 4, 2, Sq, Sk, 8)
    q, k, v = q[:B], k[:B], v[:B]
    out, lse = get_backend(backend)(q, k, v, causal(), 0.3)
    assert out.shape == (B, 4, Sq, 8) and lse.shape == (B, 4, Sq)


def test_spans_of_the_keys_seen_and_hidden():
    """Per band of rows, the keys some row may see and those some row may not (as `masked_scores`
    reads both back at once)."""
    allowed = torch.ones(8, 8, dtype=torch.bool).tril()  # causal
    bands = [slice(0, 3), slice(3, 6), slice(6, 8)]
    assert eager.key_spans(allowed, bands) == [slice(0, 3), slice(0, 6), slice(0, 8)]
    seen, hidden = eager._column_spans(allowed, bands, eager._seen, eager._hidden)
    assert seen == [slice(0, 3), slice(0, 6), slice(0, 8)]
    assert hidden == [slice(1, 8), slice(4, 8), slice(7, 8)]
    everything = torch.ones(1, 1, 8, 8, dtype=torch.bool)
    assert eager._column_spans(everything, bands, eager._hidden) == [[slice(0, 0)] * 3]
    assert eager.key_spans(~everything, bands) == [None] * 3


@pytest.mark.parametrize(
    "spec",
    [*SPECS, masks.causal() & masks.document([0] * 5 + [1] * 6), masks.causal() & masks.padding([11, 7], "left")],
    ids=repr,
)
def test_masked_scores_are_minus_inf_exactly_where_masked(spec):
    """Chunks mask only the keys some row of theirs may not see; every masked score is still -inf
    and every allowed one is q·k·scale."""
    q, k, _ = qkv(2, 4, 2, 11, 11, 8)
    dense = spec.dense(11, 11).expand(2, 4, 11, 11)
    want = (q @ k.repeat_interleave(2, dim=1).transpose(-1, -2) * 0.3).masked_fill(~dense, float("-inf"))
    seen = torch.full((2, 4, 11, 11), float("nan"))
    for rows, keys, scores, _ in eager.masked_scores(q, k, spec, 0.3, max_elements=2 * 4 * 11 * 3):
        seen[:, :, rows, keys] = scores.reshape(2, 4, rows.stop - rows.start, keys.stop - keys.start)
    outside = seen.isnan()  # keys no row of a chunk may see are not computed
    assert bool((~dense[outside]).all())
    torch.testing.assert_close(seen[~outside], want[~outside], atol=1e-6, rtol=0)
    assert torch.equal(seen[~outside] == float("-inf"), ~dense[~outside])
