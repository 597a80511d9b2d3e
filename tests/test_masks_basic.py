"""Mask specs: dense and additive views against torch's and HF's definitions, composition, repr,
and what the backends do with rows whose every key is masked."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.attention.bias import causal_lower_right

from attnscope import masks
from attnscope.backends import get_backend
from attnscope.masks import MaskSpec, causal, sliding_window

pytestmark = pytest.mark.usefixtures("single_thread")

# (q_len, k_len): decode (q=1), square prefill, chunked prefill with a cache in front
GRID = [(1, 1), (1, 9), (1, 64), (3, 3), (4, 11), (8, 8), (7, 32), (16, 16), (20, 27)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def dense2d(spec: MaskSpec, q_len: int, k_len: int) -> torch.Tensor:
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


def hf_mask(mask_function, q_len: int, k_len: int) -> torch.Tensor:
    q_idx, kv_idx = absolute_positions(q_len, k_len)
    zero = torch.zeros((), dtype=torch.long)
    return torch.broadcast_to(mask_function(zero, zero, q_idx, kv_idx), (q_len, k_len))


@pytest.mark.parametrize(("q_len", "k_len"), GRID)
def test_causal_is_torch_causal_lower_right(q_len, k_len):
    expected = causal_lower_right(q_len, k_len)._materialize()
    got = dense2d(causal(), q_len, k_len)
    assert torch.equal(got, expected)
    assert torch.equal(got, torch.ones(q_len, k_len, dtype=torch.bool).tril(k_len - q_len))


def test_causal_decode_row_sees_everything():
    assert dense2d(causal(), 1, 17).all()


@pytest.mark.parametrize(("q_len", "k_len"), GRID)
@pytest.mark.parametrize("window", [1, 2, 3, 8, 100])
def test_sliding_window_is_hf_sliding_window_causal(q_len, k_len, window):
    from transformers.masking_utils import sliding_window_causal_mask_function

    expected = hf_mask(sliding_window_causal_mask_function(window), q_len, k_len)
    assert torch.equal(dense2d(sliding_window(window), q_len, k_len), expected)
    assert torch.equal(dense2d(causal() & sliding_window(window), q_len, k_len), expected)
    # every row sees exactly min(window, position + 1) keys
    q_idx, _ = absolute_positions(q_len, k_len)
    assert torch.equal(expected.sum(-1), torch.clamp(q_idx[:, 0] + 1, max=window))


@settings(max_examples=60, deadline=None)
@given(
    k_len=st.integers(1, 40),
    data=st.data(),
    w1=st.integers(1, 12),
    w2=st.integers(1, 12),
)
def test_composition_is_elementwise(k_len, data, w1, w2):
    q_len = data.draw(st.integers(1, k_len))
    a, b, c = causal(), sliding_window(w1), sliding_window(w2)
    da, db, dc = (dense2d(s, q_len, k_len) for s in (a, b, c))
    assert torch.equal(dense2d(a & b, q_len, k_len), da & db)
    assert torch.equal(dense2d(b | c, q_len, k_len), db | dc)
    assert torch.equal(dense2d((b | c) & a, q_len, k_len), (db | dc) & da)
    assert torch.equal(dense2d(b & (c | a), q_len, k_len), db & (dc | da))


def test_repr():
    assert repr(causal()) == "causal"
    assert repr(sliding_window(8)) == "sliding_window(8)"
    assert repr(causal() & sliding_window(8)) == "causal & sliding_window(8)"
    assert repr(causal() | sliding_window(8)) == "causal | sliding_window(8)"
    # an | inside an & needs parentheses to keep its meaning
    either = causal() | sliding_window(4)
    assert repr(either & sliding_window(8)) == "(causal | sliding_window(4)) & sliding_window(8)"
    assert repr(sliding_window(8) & either) == "sliding_window(8) & (causal | sliding_window(4))"


def test_specs_are_values():
    assert causal() == causal() and hash(causal()) == hash(causal())
    assert sliding_window(8) == sliding_window(8) != sliding_window(9)
    assert causal() & sliding_window(8) == causal() & sliding_window(8)
    assert len({causal() & sliding_window(8), causal() & sliding_window(8), causal()}) == 2


@pytest.mark.parametrize("window", [0, -3])
def test_sliding_window_must_be_positive(window):
    with pytest.raises(ValueError, match="window"):
        sliding_window(window)


@pytest.mark.parametrize("spec", [causal(), sliding_window(3), causal() & sliding_window(8)], ids=repr)
def test_q_longer_than_k_raises(spec):
    with pytest.raises(ValueError, match="q_len"):
        spec.dense(5, 3)
    with pytest.raises(ValueError, match="q_len"):
        spec.additive(2, 1, torch.float16)


def test_dense_is_cached():
    spec = causal() & sliding_window(5)
    first = spec.dense(13, 31)
    before = masks.cache_stats()
    again = (causal() & sliding_window(5)).dense(13, 31)  # an equal spec hits the same entry
    after = masks.cache_stats()
    assert after["hits"] > before["hits"] and after["misses"] == before["misses"]
    assert torch.equal(again, first)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("q_len", "k_len"), [(1, 9), (8, 8), (7, 32)])
def test_additive_form(dtype, q_len, k_len):
    spec = causal() & sliding_window(3)
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


@dataclass(frozen=True)
class ForbidRows(MaskSpec):
    """Causal, except that queries at positions that are multiples of `every` may attend to nothing."""

    every: int

    def predicate(self, b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (q_idx % self.every != 0)

    def __repr__(self) -> str:
        return f"forbid_rows({self.every})"


def test_custom_spec_composes():
    spec = ForbidRows(3) & sliding_window(4)
    assert repr(spec) == "forbid_rows(3) & sliding_window(4)"
    rows = spec.fully_masked_rows(6, 10)[0, 0]
    assert rows.tolist() == [False, False, True, False, False, True]  # positions 4..9: 6 and 9


def reference_attention(q, k, v, allowed, scale):
    """float64 attention with K/V repeated per query head; a fully-masked row gives out 0, lse -inf."""
    groups = q.shape[1] // k.shape[1]
    k = k.double().repeat_interleave(groups, dim=1)
    v = v.double().repeat_interleave(groups, dim=1)
    scores = (q.double() @ k.transpose(-1, -2) * scale).masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(scores, -1)
    probs = torch.exp(scores - lse.unsqueeze(-1)).nan_to_num(0.0)
    return probs @ v, lse


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("q_len", "k_len"), [(12, 12), (5, 12), (1, 9), (1, 10)])
@pytest.mark.parametrize("spec", [ForbidRows(3), ForbidRows(3) & sliding_window(4), ForbidRows(1)], ids=repr)
def test_fully_masked_rows_give_zero_and_minus_inf(backend, dtype, q_len, k_len, spec):
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
    ref_out, ref_lse = reference_attention(q, k, v, spec.dense(q_len, k_len), D**-0.5)
    tol = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}[dtype]
    torch.testing.assert_close(out.double(), ref_out, atol=tol, rtol=0)
    torch.testing.assert_close(lse[:, :, ~empty].double(), ref_lse[:, :, ~empty], atol=tol, rtol=0)
