"""Mask specs: dense and additive views against references we did not write (HF transformers'
masking_utils mask functions, torch FlexAttention's create_mask and torch's causal_lower_right);
composition, repr and validation; properties with hypothesis; the dense-mask cache; what the backends
do with rows whose every key is masked; padded batches end to end; `attnscope mask`."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from support.models import random_model
from support.reference import reference_attention
from torch.nn.attention.bias import causal_lower_right
from torch.nn.attention.flex_attention import create_mask
from transformers import masking_utils as hf
from typer.testing import CliRunner

import attnscope
from attnscope import masks
from attnscope.backends import get_backend
from attnscope.cli import app

pytestmark = pytest.mark.usefixtures("single_thread")

SIZES = [(1, 1), (1, 9), (5, 5), (7, 20), (16, 16), (3, 40), (0, 6)]
# (q_len, k_len): decode (q=1), square prefill, chunked prefill with a cache in front
GRID = [(1, 1), (1, 9), (1, 64), (3, 3), (4, 11), (8, 8), (7, 32), (16, 16), (20, 27)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# the random model of the cache and padded-batch tests: every parameter, the norms too, drawn from N(0, 0.3)
TINY_MODEL = dict(layers=3, vocab=96, hidden=64, intermediate=96, max_positions=256, std=0.3, norm=None)


# ---- helpers ---------------------------------------------------------------------------------


def flex_dense(fn, q_len: int, k_len: int, batch: int = 1) -> torch.Tensor:
    """FlexAttention's materialization of an absolute-position predicate, bottom-right aligned."""
    if q_len == 0:
        return torch.zeros(batch, 1, 0, k_len, dtype=torch.bool)
    past = k_len - q_len
    return create_mask(lambda b, h, q, kv: fn(b, h, q + past, kv), batch, 1, q_len, k_len, device="cpu")


def dense2d(spec: masks.MaskSpec, q_len: int, k_len: int) -> torch.Tensor:
    allowed = spec.dense(q_len, k_len)
    assert allowed.dtype == torch.bool
    assert allowed.dim() == 4 and allowed.shape[-2:] == (q_len, k_len)
    assert allowed.shape[:2] == (1, 1)
    return allowed[0, 0]


def absolute_positions(q_len: int, k_len: int):
    """Query rows are the last q_len of k_len positions (bottom-right alignment)."""
    q_idx = torch.arange(k_len - q_len, k_len).view(q_len, 1)
    kv_idx = torch.arange(k_len).view(1, k_len)
    return q_idx, kv_idx


# ---- dense masks against torch's and HF's ----------------------------------------------------


@pytest.mark.parametrize("q_len, k_len", SIZES)
def test_causal_matches_torch_lower_right_and_hf(q_len, k_len):
    ours = masks.causal().dense(q_len, k_len)[0, 0]
    if q_len:
        assert torch.equal(ours, causal_lower_right(q_len, k_len)._materialize("cpu"))
    assert torch.equal(ours, flex_dense(hf.causal_mask_function, q_len, k_len)[0, 0])


@pytest.mark.parametrize(("q_len", "k_len"), GRID)
def test_causal_is_torch_causal_lower_right(q_len, k_len):
    expected = causal_lower_right(q_len, k_len)._materialize()
    got = dense2d(masks.causal(), q_len, k_len)
    assert torch.equal(got, expected)
    assert torch.equal(got, torch.ones(q_len, k_len, dtype=torch.bool).tril(k_len - q_len))


def test_causal_decode_row_sees_everything():
    assert dense2d(masks.causal(), 1, 17).all()


@pytest.mark.parametrize("q_len, k_len", SIZES)
@pytest.mark.parametrize("window", [1, 3, 8])
def test_sliding_window_matches_hf(q_len, k_len, window):
    ours = masks.sliding_window(window).dense(q_len, k_len)
    ref = flex_dense(hf.sliding_window_causal_mask_function(window), q_len, k_len)
    assert torch.equal(ours, ref)
    assert torch.equal((masks.causal() & masks.sliding_window(window)).dense(q_len, k_len), ref)


@pytest.mark.parametrize(("q_len", "k_len"), GRID)
@pytest.mark.parametrize("window", [1, 2, 3, 8, 100])
def test_sliding_window_is_hf_sliding_window_causal(q_len, k_len, window):
    expected = flex_dense(hf.sliding_window_causal_mask_function(window), q_len, k_len)[0, 0]
    assert torch.equal(dense2d(masks.sliding_window(window), q_len, k_len), expected)
    assert torch.equal(dense2d(masks.causal() & masks.sliding_window(window), q_len, k_len), expected)
    # every row sees exactly min(window, position + 1) keys
    q_idx, _ = absolute_positions(q_len, k_len)
    assert torch.equal(expected.sum(-1), torch.clamp(q_idx[:, 0] + 1, max=window))


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("q_len, k_len", [(9, 9), (1, 9), (4, 9)])
def test_padding_matches_hf_padding_function(side, q_len, k_len):
    lengths = [9, 5, 1]
    attention_mask = torch.zeros(3, k_len, dtype=torch.bool)  # HF's 2-D attention_mask
    for b, n in enumerate(lengths):
        if side == "left":
            attention_mask[b, k_len - n :] = True
        else:
            attention_mask[b, :n] = True
    ref = flex_dense(
        hf.and_masks(hf.causal_mask_function, hf.padding_mask_function(attention_mask)), q_len, k_len, batch=3
    )
    ours = (masks.causal() & masks.padding(lengths, side, total=k_len)).dense(q_len, k_len)
    assert torch.equal(ours, ref)


def test_padding_keeps_generated_tokens_visible():
    spec = masks.padding([2, 4], "right", total=4)  # positions 4.. are generated after the prompt
    allowed = spec.dense(1, 6)  # decode step at position 5
    assert allowed[0, 0, 0].tolist() == [True, True, False, False, True, True]
    assert allowed[1, 0, 0].tolist() == [True] * 6


@pytest.mark.parametrize("q_len, k_len", [(8, 8), (3, 8), (1, 8)])
def test_document_matches_hf_packed_sequence(q_len, k_len):
    ids = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2], [0, 1, 1, 1, 1, 1, 2, 3]])
    ref = flex_dense(
        hf.and_masks(hf.causal_mask_function, hf.packed_sequence_mask_function(ids)), q_len, k_len, batch=2
    )
    ours = (masks.causal() & masks.document(ids)).dense(q_len, k_len)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("q_len, k_len", [(12, 12), (5, 12), (1, 12)])
@pytest.mark.parametrize("size", [1, 4, 5])
def test_chunked_matches_hf_chunked_overlay(q_len, k_len, size):
    no_padding = torch.zeros(1, dtype=torch.long)
    ref = flex_dense(hf.chunked_causal_mask_function(size, no_padding), q_len, k_len)
    assert torch.equal((masks.causal() & masks.chunked(size)).dense(q_len, k_len), ref)


@pytest.mark.parametrize("q_len, k_len", [(10, 10), (4, 10)])
@pytest.mark.parametrize("prefix", [0, 3, 10])
def test_prefix_lm_matches_hf_or_of_causal_and_prefix(q_len, k_len, prefix):
    ref = flex_dense(hf.or_masks(hf.causal_mask_function, lambda b, h, q, kv: kv < prefix), q_len, k_len)
    assert torch.equal(masks.prefix_lm(prefix).dense(q_len, k_len), ref)


def test_custom_tensor_is_bottom_right_aligned():
    t = torch.rand(6, 6) > 0.5
    spec = masks.custom(t, "random")
    assert torch.equal(spec.dense(6, 6)[0, 0], t)
    assert torch.equal(spec.dense(2, 6)[0, 0], t[4:])
    assert repr(spec & masks.causal()) == "random & causal"
    with pytest.raises(ValueError, match="covers 6 positions"):
        spec.dense(7, 7)


# ---- composition, repr, values, validation ---------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    k_len=st.integers(1, 40),
    data=st.data(),
    w1=st.integers(1, 12),
    w2=st.integers(1, 12),
)
def test_composition_is_elementwise(k_len, data, w1, w2):
    q_len = data.draw(st.integers(1, k_len))
    a, b, c = masks.causal(), masks.sliding_window(w1), masks.sliding_window(w2)
    da, db, dc = (dense2d(s, q_len, k_len) for s in (a, b, c))
    assert torch.equal(dense2d(a & b, q_len, k_len), da & db)
    assert torch.equal(dense2d(b | c, q_len, k_len), db | dc)
    assert torch.equal(dense2d((b | c) & a, q_len, k_len), (db | dc) & da)
    assert torch.equal(dense2d(b & (c | a), q_len, k_len), db & (dc | da))


def test_repr_is_readable():
    spec = masks.causal() & masks.sliding_window(4096) & masks.padding([3, 4], "left")
    assert repr(spec) == "causal & sliding_window(4096) & padding(left, [1, 0])"  # padded positions per row
    assert repr(masks.padding([13], "right", total=16)) == "padding(right, 3)"
    assert repr((masks.causal() | masks.prefix_lm(4)) & masks.chunked(8)) == "(causal | prefix_lm(4)) & chunked(8)"


def test_repr():
    assert repr(masks.causal()) == "causal"
    assert repr(masks.sliding_window(8)) == "sliding_window(8)"
    assert repr(masks.causal() & masks.sliding_window(8)) == "causal & sliding_window(8)"
    assert repr(masks.causal() | masks.sliding_window(8)) == "causal | sliding_window(8)"
    # an | inside an & needs parentheses to keep its meaning
    either = masks.causal() | masks.sliding_window(4)
    assert repr(either & masks.sliding_window(8)) == "(causal | sliding_window(4)) & sliding_window(8)"
    assert repr(masks.sliding_window(8) & either) == "sliding_window(8) & (causal | sliding_window(4))"


def test_specs_are_values():
    assert masks.causal() == masks.causal() and hash(masks.causal()) == hash(masks.causal())
    assert masks.sliding_window(8) == masks.sliding_window(8) != masks.sliding_window(9)
    assert masks.causal() & masks.sliding_window(8) == masks.causal() & masks.sliding_window(8)
    both = masks.causal() & masks.sliding_window(8)
    assert len({both, masks.causal() & masks.sliding_window(8), masks.causal()}) == 2


@dataclass(frozen=True)
class ForbidRows(masks.MaskSpec):
    """Causal, except that queries at positions that are multiples of `every` may attend to nothing."""

    every: int

    def predicate(self, b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (q_idx % self.every != 0)

    def __repr__(self) -> str:
        return f"forbid_rows({self.every})"


def test_custom_spec_composes():
    spec = ForbidRows(3) & masks.sliding_window(4)
    assert repr(spec) == "forbid_rows(3) & sliding_window(4)"
    rows = spec.fully_masked_rows(6, 10)[0, 0]
    assert rows.tolist() == [False, False, True, False, False, True]  # positions 4..9: 6 and 9


def test_sizes_are_validated():
    with pytest.raises(ValueError, match="cannot be more queries than keys"):
        masks.causal().dense(5, 4)
    with pytest.raises(ValueError, match="non-negative"):
        masks.causal().dense(-1, 4)
    assert masks.causal().dense(0, 4).shape == (1, 1, 0, 4)
    with pytest.raises(ValueError):
        masks.sliding_window(0)


@pytest.mark.parametrize("window", [0, -3])
def test_sliding_window_must_be_positive(window):
    with pytest.raises(ValueError, match="window"):
        masks.sliding_window(window)


@pytest.mark.parametrize(
    "spec", [masks.causal(), masks.sliding_window(3), masks.causal() & masks.sliding_window(8)], ids=repr
)
def test_q_longer_than_k_raises(spec):
    with pytest.raises(ValueError, match="q_len"):
        spec.dense(5, 3)
    with pytest.raises(ValueError, match="q_len"):
        spec.additive(2, 1, torch.float16)


# ---- the additive form -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("q_len", "k_len"), [(1, 9), (8, 8), (7, 32)])
def test_additive_form(dtype, q_len, k_len):
    spec = masks.causal() & masks.sliding_window(3)
    add = spec.additive(q_len, k_len, dtype)
    allowed = spec.dense(q_len, k_len)
    assert add.dtype == dtype
    assert add.shape[-2:] == (q_len, k_len)
    assert not torch.isnan(add).any() and not torch.isinf(add).any()
    allowed = torch.broadcast_to(allowed, add.shape)
    assert (add[allowed] == 0).all()
    assert (add[~allowed] == torch.finfo(dtype).min).all()
    assert (~allowed).any()
    # added to scores of that dtype, a fully-masked row still gives a finite softmax
    scores = torch.zeros(add.shape, dtype=dtype) + add
    assert torch.isfinite(torch.softmax(scores.float(), -1)).all()


# ---- properties ------------------------------------------------------------------------------

parts = st.one_of(
    st.just(masks.causal()),
    st.integers(1, 12).map(masks.sliding_window),
    st.integers(0, 12).map(masks.prefix_lm),
    st.integers(1, 6).map(masks.chunked),
    st.tuples(st.integers(0, 24), st.sampled_from(["left", "right"])).map(
        lambda a: masks.padding([a[0]], a[1], total=24)
    ),
)
specs = st.recursive(
    parts, lambda inner: st.builds(lambda a, b, op: a & b if op else a | b, inner, inner, st.booleans()), max_leaves=4
)
shapes = st.integers(0, 24).flatmap(lambda k: st.tuples(st.integers(0, k), st.just(k)))


@settings(max_examples=80, deadline=None)
@given(specs, specs, shapes)
def test_and_or_act_elementwise_on_dense(a, b, shape):
    q_len, k_len = shape
    assert torch.equal((a & b).dense(q_len, k_len), a.dense(q_len, k_len) & b.dense(q_len, k_len))
    assert torch.equal((a | b).dense(q_len, k_len), a.dense(q_len, k_len) | b.dense(q_len, k_len))


@settings(max_examples=60, deadline=None)
@given(specs, shapes, st.integers(1, 8), st.integers(1, 8))
def test_block_states_agree_with_dense(spec, shape, bm, bn):
    q_len, k_len = shape
    allowed = spec.dense(q_len, k_len)[0, 0]
    tiles = spec.blocks(q_len, k_len, bm, bn)
    assert tiles.states.shape[-2:] == (math.ceil(q_len / bm), math.ceil(k_len / bn))
    for i in range(tiles.states.shape[-2]):
        for j in range(tiles.states.shape[-1]):
            tile = allowed[i * bm : (i + 1) * bm, j * bn : (j + 1) * bn]
            expected = masks.FULL if tile.all() else masks.EMPTY if not tile.any() else masks.PARTIAL
            assert int(tiles.states[0, 0, i, j]) == expected
    n_empty = int((tiles.states == masks.EMPTY).sum())
    assert tiles.sparsity == pytest.approx(n_empty / max(1, tiles.states.numel()))


# parts whose rows are not always one key interval, for the summaries: document ids (sorted or
# recurring) and right padding with generated tokens after it (total 8 < k_len)
scan_parts = st.one_of(
    parts,
    st.lists(st.integers(0, 3), min_size=24, max_size=24)
    .flatmap(lambda ids: st.sampled_from([sorted(ids), ids]))
    .map(masks.document),
    st.tuples(st.integers(0, 8), st.sampled_from(["left", "right"])).map(
        lambda a: masks.padding([a[0]], a[1], total=8)
    ),
)
scan_specs = st.recursive(
    scan_parts,
    lambda inner: st.builds(lambda a, b, op: a & b if op else a | b, inner, inner, st.booleans()),
    max_leaves=4,
)


@settings(max_examples=100, deadline=None)
@given(scan_specs, shapes)
def test_row_intervals_agree_with_the_predicate(spec, shape):
    q_len, k_len = shape
    intervals = spec.row_intervals(torch.arange(k_len - q_len, k_len), k_len)
    if intervals is not None:
        kv = torch.arange(k_len)
        from_intervals = (kv >= intervals[0][:, None]) & (kv < intervals[1][:, None])  # (Sq, Sk)
        assert torch.equal(from_intervals, spec.dense(q_len, k_len)[0, 0])


@settings(max_examples=100, deadline=None)
@given(scan_specs, shapes, st.integers(1, 9), st.integers(1, 9), st.integers(1, 7), st.integers(1, 7))
def test_scan_counts_agree_with_dense(spec, shape, rows, cols, bm, bn):
    """Counts from row intervals (or from the predicate in chunks) are what the dense mask holds."""
    q_len, k_len = shape
    found = masks.scan(spec, q_len, k_len, rows=rows, cols=cols, block=(bm, bn))
    allowed = spec.dense(q_len, k_len)[0, 0]
    assert torch.equal(found.row_allowed, allowed.sum(-1))
    re, ce = found.row_edges.tolist(), found.col_edges.tolist()
    expected = [
        [int(allowed[re[i] : re[i + 1], ce[j] : ce[j + 1]].sum()) for j in range(len(ce) - 1)]
        for i in range(len(re) - 1)
    ]
    assert found.grid.tolist() == expected
    assert torch.equal(found.tiles, spec.blocks(q_len, k_len, bm, bn).states[0, 0])


def test_a_mask_of_a_million_positions_is_summarized_from_its_row_intervals():
    """A sliding window of 4096 over 2^20 positions: the counts are exact and no dense mask is built.
    Row block i of 1024 rows sees tiles i-3 .. i-1 whole, its diagonal and tile i-4 in part."""
    n, window, block = 1 << 20, 4096, 1024
    masks.cache_clear()
    summary = masks.summary(masks.causal() & masks.sliding_window(window), n, n, (block, block))
    assert masks.cache_stats()["misses"] == 0
    assert summary["allowed"] == window * (window + 1) // 2 + (n - window) * window
    blocks, n_blocks = summary["blocks"], n // block
    assert blocks["full"] == sum(min(i, 3) for i in range(n_blocks))
    assert blocks["partial"] == n_blocks + (n_blocks - 4)
    assert blocks["empty"] == n_blocks**2 - blocks["full"] - blocks["partial"]


def test_a_large_mask_whose_rows_are_not_intervals_is_refused():
    recurring = masks.causal() & masks.document([i % 2 for i in range(20000)])
    with pytest.raises(ValueError, match="evaluated one by one"):
        masks.summary(recurring, 20000, 20000)
    masks.summary(recurring, 100, 20000)  # 2e6 cells: evaluated
    with pytest.raises(ValueError, match="query rows is more than a summary reads"):
        masks.summary(masks.causal(), masks.MAX_SCAN_ROWS + 1, masks.MAX_SCAN_ROWS + 1)


@settings(max_examples=40, deadline=None)
@given(specs, shapes, st.sampled_from(DTYPES))
def test_additive_is_finite_and_matches_dense(spec, shape, dtype):
    add = spec.additive(*shape, dtype=dtype)
    assert add.dtype == dtype and torch.isfinite(add).all()
    allowed = spec.dense(*shape)
    assert torch.equal(add == 0, allowed.expand_as(add))
    assert (add[~allowed.expand_as(add)] == torch.finfo(dtype).min).all()


# ---- the dense-mask cache --------------------------------------------------------------------


def test_dense_is_cached():
    spec = masks.causal() & masks.sliding_window(5)
    first = spec.dense(13, 31)
    before = masks.cache_stats()
    again = (masks.causal() & masks.sliding_window(5)).dense(13, 31)  # an equal spec hits the same entry
    after = masks.cache_stats()
    assert after["hits"] > before["hits"] and after["misses"] == before["misses"]
    assert torch.equal(again, first)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_generation_hits_the_mask_cache(backend):
    model = random_model(
        **TINY_MODEL, sliding_window=16, layer_types=["full_attention", "sliding_attention", "full_attention"]
    )
    scope = attnscope.Scope(model, backend=backend)
    scope.run(list(range(1, 11)), max_new_tokens=1)  # warm: the prefill's masks
    before = masks.cache_stats()
    scope.run(list(range(1, 11)), max_new_tokens=64)
    after = masks.cache_stats()
    hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]
    assert hits + misses >= 64
    assert hits / (hits + misses) >= 0.9, (hits, misses)


# ---- mask_mod: FlexAttention's view of a spec ------------------------------------------------

MASK_MOD_SPECS = [
    masks.causal(),
    masks.causal() & masks.sliding_window(3),
    masks.prefix_lm(4),
    masks.causal() & masks.chunked(3),
    masks.causal() & masks.padding([9, 4], "left"),
    masks.padding([6, 0], "right"),
    masks.causal() & masks.document([[0, 0, 0, 1, 1, 2, 2, 2, 2], [0, 1, 1, 1, 1, 1, 1, 2, 3]]),
    masks.custom(torch.tensor([[1, 0, 1, 1, 0, 1, 1, 0, 1]] * 4, dtype=torch.bool)),
    masks.custom(torch.rand(2, 4, 4, 9, generator=torch.Generator().manual_seed(0)) > 0.5, "per-head"),
]


@pytest.mark.parametrize("spec", MASK_MOD_SPECS, ids=repr)
@pytest.mark.parametrize(("q_len", "k_len"), [(9, 9), (4, 9), (1, 9)])
def test_mask_mod_is_the_dense_mask_for_flex(spec, q_len, k_len):
    """FlexAttention's materialization of `mask_mod` (scalar calls under vmap, q_idx counted from
    the first query) is the dense mask, for every batch row and head of a spec that has them."""
    B, H = 2, 4
    got = create_mask(spec.mask_mod(q_len, k_len), B, H, q_len, k_len, device="cpu")
    assert torch.equal(got, spec.dense(q_len, k_len).expand(B, H, q_len, k_len))


# ---- fully-masked rows in the backends -------------------------------------------------------


@pytest.mark.parametrize("backend", ["eager", "sdpa", "flex"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "spec",
    [
        masks.causal() & masks.padding([3, 6], "left", total=6),
        masks.causal()
        & masks.document([0, 0, 1, 1, 2, 2])
        & masks.custom(torch.tensor([[1, 1, 1, 1, 1, 1]] * 3 + [[0] * 6] + [[1] * 6] * 2, dtype=torch.bool), "drop(3)"),
    ],
)
def test_fully_masked_rows_give_zero_and_minus_inf(backend, dtype, spec):
    torch.manual_seed(0)
    q = torch.randn(2, 4, 6, 16, dtype=dtype)
    k, v = torch.randn(2, 2, 6, 16, dtype=dtype), torch.randn(2, 2, 6, 16, dtype=dtype)
    out, lse = get_backend(backend)(q, k, v, spec, 0.25)
    empty = spec.fully_masked_rows(6, 6).expand(2, 4, 6)  # (B, H, Sq)
    assert empty.any()
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    assert (out[empty] == 0).all()
    assert (lse[empty] == float("-inf")).all() and torch.isfinite(lse[~empty]).all()
    ref, ref_lse = get_backend("eager")(q.float(), k.float(), v.float(), spec, 0.25)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(out.float(), ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("q_len", "k_len"), [(12, 12), (5, 12), (1, 9), (1, 10)])
@pytest.mark.parametrize("spec", [ForbidRows(3), ForbidRows(3) & masks.sliding_window(4), ForbidRows(1)], ids=repr)
def test_fully_masked_rows_match_a_float64_reference(backend, dtype, q_len, k_len, spec):
    gen = torch.Generator().manual_seed(q_len * 100 + k_len)
    B, Hq, Hkv, D = 2, 4, 2, 16
    q = torch.randn(B, Hq, q_len, D, generator=gen).to(dtype)
    k = torch.randn(B, Hkv, k_len, D, generator=gen).to(dtype)
    v = torch.randn(B, Hkv, k_len, D, generator=gen).to(dtype)
    empty = spec.fully_masked_rows(q_len, k_len)[0, 0]  # (Sq,)
    assert empty.any() or (q_len, k_len) == (1, 9)  # position 8 is the one row that is not forbidden
    out, lse = get_backend(backend)(q, k, v, spec, D**-0.5)
    assert out.shape == q.shape and out.dtype == dtype
    assert lse.shape == (B, Hq, q_len) and lse.dtype == torch.float32
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    assert (out[:, :, empty] == 0).all()
    assert (lse[:, :, empty] == float("-inf")).all()
    assert torch.isfinite(lse[:, :, ~empty]).all()
    ref_out, ref_lse, _ = reference_attention(q, k, v, spec.dense(q_len, k_len), D**-0.5)
    tol = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}[dtype]
    torch.testing.assert_close(out.double(), ref_out, atol=tol, rtol=0)
    torch.testing.assert_close(lse[:, :, ~empty].double(), ref_lse[:, :, ~empty], atol=tol, rtol=0)


# ---- padded batches end to end ---------------------------------------------------------------


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("backend", ["eager", "sdpa", "flex"])
def test_padded_batch_rows_equal_their_single_runs(side, backend):
    model = random_model(**TINY_MODEL)
    scope = attnscope.Scope(model, backend=backend)
    prompts = [list(range(3, 23)), list(range(40, 48)), list(range(60, 73))]
    batch = scope.run(prompts, max_new_tokens=6, padding_side=side)
    assert f"padding({side}, [0, 12, 7])" in repr(batch.records[0].mask)
    for b, prompt in enumerate(prompts):
        single = scope.run(prompt, max_new_tokens=6)
        cols = slice(20 - len(prompt), 20) if side == "left" else slice(0, len(prompt))
        assert torch.allclose(batch.logits[b, cols], single.logits, atol=1e-5)
        assert batch.continuation_ids_by_row[b] == single.continuation_ids
        assert torch.allclose(batch.attention(1, 3, batch=b)[cols, cols], single.attention(1, 3), atol=1e-6)
        assert not torch.isnan(batch.logits[b]).any()
        # every row's data, not row 0's: ids and tokens (padding included), the continuation
        assert batch.ids[b][cols] == single.ids == prompt and len(batch.ids[b]) == 20
        assert batch.tokens[b][cols] == single.tokens and batch.row_tokens(b) == batch.tokens[b]
        assert batch.continuation_ids[b] == single.continuation_ids
        assert batch.continuation[b] == single.continuation
    assert len(batch.tokens) == len(batch.ids) == len(batch.continuation) == len(prompts)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_full_equals_incremental(side):
    model = random_model(**TINY_MODEL)
    net = model.net
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11], [0, 0, 0, 0, 12, 13, 14]])
    if side == "right":
        ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11], [12, 13, 14, 0, 0, 0, 0]])
    real = ids != 0  # (B, T): token id 0 is the padding here
    spec = masks.padding([7, 3], side, total=7)
    pos = (real.long().cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        full = net(ids, mask=spec, positions=pos)
        cache = net.new_cache(2, 7)
        steps = [net(ids[:, i : i + 1], cache, mask=spec, positions=pos[:, i : i + 1]) for i in range(7)]
    inc = torch.cat(steps, dim=1)
    assert torch.allclose(full[real], inc[real], atol=1e-5)


# ---- attnscope mask --------------------------------------------------------------------------

runner = CliRunner()


def test_mask_command_draws_grid_and_tiles():
    result = runner.invoke(
        app,
        [
            "mask",
            "--q-len",
            "12",
            "--k-len",
            "16",
            "--window",
            "4",
            "--padding",
            "3",
            "--side",
            "left",
            "--block",
            "4x4",
        ],
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert "causal & sliding_window(4) & padding(left, 3)" in out
    assert "past 4" in out and "3×4 tiles of 4×4" in out and "sparsity" in out
    assert "█" in out and "·" in out


def test_mask_command_marks_rows_without_keys_and_summarizes_large_masks():
    result = runner.invoke(app, ["mask", "-q", "8", "--padding", "3", "--side", "left"])
    assert "×" in result.output and "3 row(s) with no allowed key: positions 0, 1, 2" in result.output
    big = runner.invoke(app, ["mask", "-q", "4096", "--window", "512"])
    assert big.exit_code == 0 and "summarized" in big.output
    assert len(big.output.splitlines()) < 60


def test_mask_command_json():
    result = runner.invoke(app, ["mask", "-q", "8", "--documents", "0,0,0,1,1,2,2,2", "--block", "4x4", "--json"])
    summary = json.loads(result.output)
    assert summary["spec"] == "causal & document(3 docs)"
    assert summary["allowed"] == 6 + 3 + 6 and summary["fully_masked_rows"] == []
    assert summary["blocks"]["shape"] == [2, 2] and summary["blocks"]["empty"] == 1


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["-q", "-1"], "--q-len must be >= 1"),
        (["-q", "0"], "--q-len must be >= 1"),  # not an empty mask
        (["-q", "5", "-k", "3"], "--q-len 5 > --k-len 3"),
        (["-q", "5", "--window", "0"], "--window must be >= 1"),
        (["-q", "5", "--padding", "6"], "--padding 6 must be within 0..5"),
        (["-q", "4", "--documents", "0,1"], "--documents has 2 ids for 4 positions"),
        (["-q", "4", "--documents", "a,b"], "comma-separated integers"),
        (["-q", "4", "--chunk", "0"], "--chunk must be >= 1"),
        (["-q", "4", "--block", "4by4"], "--block must look like 4x4"),
        (["-q", "4", "--side", "up", "--padding", "1"], "--side must be left or right"),
    ],
)
def test_mask_command_bad_input(argv, fragment):
    result = runner.invoke(app, ["mask", *argv])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr
