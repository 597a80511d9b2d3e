"""The Triton kernels (`attnscope.kernels`) against the eager float32 reference and torch SDPA.

Without CUDA the kernels run in Triton's interpreter on CPU tensors. A kernel is built for the
interpreter when its module (`attnscope.kernels.flash`) is first imported with TRITON_INTERPRET=1
in the environment, so this module sets the variable for that import only and puts it back at
once: other test modules (the CLI's) check, in this same process, that the triton backend is
unavailable on a machine without a GPU. The autouse fixture `interpreter` sets it again around
each test here (for `unavailable_reason()`). The interpreter is slow, so shapes are small and B is
1..3; tests marked ``gpu`` (low-precision accuracy by the flash-attention rule) need CUDA.
"""

from __future__ import annotations

import functools
import importlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from support.models import random_model
from support.reference import qkv as random_qkv

import attnscope
from attnscope import kernels, masks
from attnscope.backends import get_backend
from attnscope.backends.eager import attend as eager_attend
from attnscope.backends.eager import probabilities
from attnscope.errors import BackendUnavailable
from attnscope.inspector.capture import LayerRecord

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
_saved = os.environ.get("TRITON_INTERPRET")
if not HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"
try:
    triton = pytest.importorskip("triton")
    flash = importlib.import_module("attnscope.kernels.flash")  # the kernels are built here
    importlib.import_module("attnscope.kernels.probs")
finally:
    if _saved is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = _saved
if not HAS_CUDA and not (flash.INTERPRETING and type(triton.language.zeros).__name__ == "InterpretedFunction"):
    pytest.skip(
        "triton was imported without TRITON_INTERPRET=1 before this module: its kernels cannot run in "
        "the interpreter (import triton with the variable set in tests/conftest.py)",
        allow_module_level=True,
    )
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    """TRITON_INTERPRET=1 during each test on a machine without CUDA (see the module docstring)."""
    if not HAS_CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "1")


qkv = functools.partial(random_qkv, device=DEVICE)  # seeded q, k, v on the device the kernels run on


def allowed_mask(B, Sq, Sk, causal=True, window=None, q_offset=None) -> torch.Tensor:
    """The kernels' mask rules, written out: bool ``[B, 1, Sq, Sk]``."""
    offsets = torch.as_tensor(Sk - Sq if q_offset is None else q_offset).reshape(-1).expand(B).cpu()
    i = torch.arange(Sq).view(1, Sq, 1)
    j = torch.arange(Sk).view(1, 1, Sk)
    pos = offsets.view(B, 1, 1) + i  # (B, Sq, 1) absolute positions
    allowed = (j < offsets.view(B, 1, 1) + Sq).expand(B, Sq, Sk)  # keys of each row's sequence
    if causal:
        allowed = allowed & (j <= pos)
    if window is not None:
        allowed = allowed & (j > pos - window)
    return allowed.unsqueeze(1).to(DEVICE)


def reference(q, k, v, allowed, scale):
    """Eager float32 (out, lse) under an explicit mask."""
    return eager_attend(q.float(), k.float(), v.float(), masks.custom(allowed), scale)


def sdpa_reference(q, k, v, allowed, scale, dtype=torch.float32):
    out = F.scaled_dot_product_attention(
        q.to(dtype), k.to(dtype), v.to(dtype), attn_mask=allowed, scale=scale, enable_gqa=True
    )
    return out.masked_fill(~allowed.any(-1, keepdim=True), 0.0)  # rows with no key: 0 (SDPA may give NaN)


def check_against_references(q, k, v, out, lse, allowed, scale, atol=1e-4):
    ref_out, ref_lse = reference(q, k, v, allowed, scale)
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    torch.testing.assert_close(out.float(), ref_out, atol=atol, rtol=0)
    torch.testing.assert_close(lse, ref_lse, atol=atol, rtol=0)  # -inf where ref is -inf
    torch.testing.assert_close(out.float(), sdpa_reference(q, k, v, allowed, scale), atol=atol, rtol=0)


# ----------------------------------------------------------------------------------------------
# attention(): the main grid, float32 within 1e-4 of eager and SDPA

MASKS = {"causal": (True, None), "window8": (True, 8), "full": (False, None)}


@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("D", [32, 80])
@pytest.mark.parametrize("past", [0, 13])
@pytest.mark.parametrize("Sq", [1, 7, 64])
@pytest.mark.parametrize("heads", [(4, 4), (8, 2), (6, 1)], ids=lambda h: f"{h[0]}q{h[1]}kv")
def test_attention_matches_references(heads, Sq, past, D, mask):
    (Hq, Hkv), (causal, window) = heads, MASKS[mask]
    B, Sk = 1 + (Sq + past + D) % 2, Sq + past
    q, k, v = qkv(B, Hq, Hkv, Sq, Sk, D, seed=Sq + past)
    out, lse = kernels.attention(q, k, v, causal=causal, window=window, return_lse=True)
    assert out.shape == (B, Hq, Sq, D) and out.dtype == q.dtype
    assert lse.shape == (B, Hq, Sq) and lse.dtype == torch.float32
    check_against_references(q, k, v, out, lse, allowed_mask(B, Sq, Sk, causal, window), D**-0.5)


@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("offsets", [[13, 0, -3], [5, -7, 2]], ids=str)
def test_ragged_per_batch_offsets(offsets, mask):
    """q_offset [B]: row b's queries sit at q_offset[b] + i and its sequence holds q_offset[b] + Sq keys;
    queries at negative positions (and a row with no keys at all) are fully masked: 0 and -inf."""
    (causal, window), (B, Hq, Hkv, Sq, Sk, D) = MASKS[mask], (3, 8, 2, 7, 20, 32)
    q, k, v = qkv(B, Hq, Hkv, Sq, Sk, D, seed=3)
    q_offset = torch.tensor(offsets, device=DEVICE)
    out, lse = kernels.attention(q, k, v, causal=causal, window=window, q_offset=q_offset, return_lse=True)
    allowed = allowed_mask(B, Sq, Sk, causal, window, q_offset)
    check_against_references(q, k, v, out, lse, allowed, D**-0.5)
    empty = ~allowed.any(-1).expand(B, Hq, Sq)  # (B, Hq, Sq)
    if causal or -Sq in offsets:
        assert empty.any()
    assert torch.all(out[empty] == 0) and torch.all(lse[empty] == float("-inf"))
    assert torch.isfinite(lse[~empty]).all()


def test_scalar_q_offset_places_the_queries():
    B, Hq, Hkv, Sq, Sk, D = 1, 4, 2, 6, 15, 32
    q, k, v = qkv(B, Hq, Hkv, Sq, Sk, D, seed=4)
    for q_offset in (-2, 0, 4, Sk - Sq):
        out, lse = kernels.attention(q, k, v, q_offset=q_offset, window=5, return_lse=True)
        check_against_references(q, k, v, out, lse, allowed_mask(B, Sq, Sk, True, 5, q_offset), D**-0.5)
    out, lse = kernels.attention(q, k[:, :, :2], v[:, :, :2], q_offset=-4, return_lse=True)  # Sq > Sk
    assert torch.all(out[:, :, :4] == 0) and torch.all(lse[:, :, :4] == float("-inf"))


@pytest.mark.parametrize("window", [None, 5, 40])
@pytest.mark.parametrize("heads", [(4, 2), (6, 1)], ids=lambda h: f"{h[0]}q{h[1]}kv")
def test_small_tiles_cover_partial_full_and_skipped_tiles(heads, window):
    """16 × 16 tiles over 64 queries × 77 keys: tiles below the window and above the diagonal are
    skipped, those inside are full (no mask), those on the edges partial."""
    (Hq, Hkv), (B, Sq, Sk, D) = heads, (1, 64, 77, 32)
    q, k, v = qkv(B, Hq, Hkv, Sq, Sk, D, seed=5)
    out, lse = kernels.attention(q, k, v, window=window, return_lse=True, block_m=16, block_n=16)
    check_against_references(q, k, v, out, lse, allowed_mask(B, Sq, Sk, True, window), D**-0.5)


@pytest.mark.parametrize("D", [16, 64, 96, 128, 256])
def test_head_dims(D):
    B, Hq, Hkv, Sq, Sk = 1, 2, 1, 5, 21
    q, k, v = qkv(B, Hq, Hkv, Sq, Sk, D, seed=D)
    out, lse = kernels.attention(q, k, v, return_lse=True)
    check_against_references(q, k, v, out, lse, allowed_mask(B, Sq, Sk), D**-0.5)


def test_strided_views_are_read_in_place():
    """A KV-cache view of a preallocated buffer and transposed queries, no .contiguous() needed."""
    B, Hq, Hkv, Sq, Sk, D = 2, 4, 2, 5, 19, 32
    q, k, v = qkv(B, Hq, Hkv, Sq, Sk, D, seed=6)
    cache_k = torch.zeros(B, Hkv, 64, D, device=DEVICE)
    cache_v = torch.zeros(B, Hkv, 64, D, device=DEVICE)
    cache_k[:, :, :Sk], cache_v[:, :, :Sk] = k, v
    q_t = q.transpose(1, 2).contiguous().transpose(1, 2)  # (B, Hq, Sq, D) with (Sq, Hq) memory order
    out, lse = kernels.attention(q_t, cache_k[:, :, :Sk], cache_v[:, :, :Sk], scale=0.3, return_lse=True)
    check_against_references(q, k, v, out, lse, allowed_mask(B, Sq, Sk), 0.3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision(dtype):
    """float16 / bfloat16 inputs (float32 accumulation); on CPU the interpreter's numerics, loosely."""
    B, Hq, Hkv, Sq, Sk, D = 2, 8, 2, 9, 30, 64
    q, k, v = qkv(B, Hq, Hkv, Sq, Sk, D, seed=7)
    allowed = allowed_mask(B, Sq, Sk, True, 12)
    ref_out, ref_lse = reference(q, k, v, allowed, D**-0.5)
    out, lse = kernels.attention(q.to(dtype), k.to(dtype), v.to(dtype), window=12, return_lse=True)
    assert out.dtype == dtype and lse.dtype == torch.float32
    tol = 1e-2 if dtype == torch.float16 else 5e-2
    torch.testing.assert_close(out.float(), ref_out, atol=tol, rtol=0)
    torch.testing.assert_close(lse, ref_lse, atol=tol, rtol=0)


# ----------------------------------------------------------------------------------------------
# split-KV decoding


class CountingLaunch:
    """Wraps a kernel to count its launches (``kernel[grid](...)``)."""

    def __init__(self, kernel):
        self.kernel, self.calls = kernel, 0

    def __getitem__(self, grid):
        self.calls += 1
        return self.kernel[grid]


@pytest.mark.parametrize("window", [None, 8, 40])
@pytest.mark.parametrize("Sq", [1, 7])
@pytest.mark.parametrize("heads", [(4, 4), (8, 2)], ids=lambda h: f"{h[0]}q{h[1]}kv")
def test_split_kv_matches_references(heads, Sq, window, monkeypatch):
    combine = CountingLaunch(flash._attn_combine)
    monkeypatch.setattr(flash, "_attn_combine", combine)
    (Hq, Hkv), (B, Sk, D) = heads, (1 + Sq % 2, 70, 32)
    q, k, v = qkv(B, Hq, Hkv, Sq, Sk, D, seed=8)
    out, lse = kernels.attention(q, k, v, window=window, return_lse=True, kv_chunk=16, block_n=16)
    assert combine.calls == 1  # partials were written and merged
    check_against_references(q, k, v, out, lse, allowed_mask(B, Sq, Sk, True, window), D**-0.5)


def test_split_kv_with_empty_splits_and_ragged_rows(monkeypatch):
    """Splits past a short row's keys and rows with no key at all merge to 0 and -inf, not NaN."""
    combine = CountingLaunch(flash._attn_combine)
    monkeypatch.setattr(flash, "_attn_combine", combine)
    B, Hq, Hkv, Sq, Sk, D = 3, 4, 2, 1, 90, 32
    q, k, v = qkv(B, Hq, Hkv, Sq, Sk, D, seed=9)
    q_offset = torch.tensor([89, 10, -1], device=DEVICE)
    out, lse = kernels.attention(q, k, v, q_offset=q_offset, return_lse=True, kv_chunk=16, block_n=16)
    assert combine.calls == 1
    check_against_references(q, k, v, out, lse, allowed_mask(B, Sq, Sk, True, None, q_offset), D**-0.5)
    assert torch.all(out[2] == 0) and torch.all(lse[2] == float("-inf"))


def test_automatic_split_only_when_the_grid_is_small():
    assert flash._splits(8, 131072, 64, None, torch.device("cpu")) == (1, 131072)  # never on CPU
    n, chunk = flash._splits(8, 1000, 16, 100, torch.device("cpu"))  # forced
    assert chunk == 112 and n == 9


# ----------------------------------------------------------------------------------------------
# the backend: attend() and get_backend("triton")


SPECS = [
    masks.causal(),
    masks.causal() & masks.sliding_window(4),
    masks.sliding_window(3),
    masks.sliding_window(6) & masks.causal() & masks.sliding_window(4),
]


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_backend_matches_eager(spec):
    B, Hq, Hkv, Sq, Sk, D = 2, 4, 2, 5, 21, 16
    q, k, v = qkv(B, Hq, Hkv, Sq, Sk, D, seed=10)
    attend = get_backend("triton")
    assert attend is kernels.attend
    out, lse = attend(q, k, v, spec, D**-0.5)
    ref_out, ref_lse = eager_attend(q, k, v, spec, D**-0.5)
    torch.testing.assert_close(out, ref_out, atol=1e-4, rtol=0)
    torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=0)
    out2, _ = attend(q, k, v, spec, D**-0.5, need_lse=False)
    torch.testing.assert_close(out2, out, atol=0, rtol=0)


@pytest.mark.parametrize(
    "spec",
    [
        masks.causal() & masks.padding([3, 5], "left"),
        masks.causal() & masks.document([0, 0, 1, 1, 1, 2]),
        masks.prefix_lm(2),
        masks.causal() & masks.chunked(2),
        masks.custom(torch.ones(6, 6, dtype=torch.bool)),
        masks.causal() | masks.prefix_lm(2),
    ],
    ids=repr,
)
def test_backend_refuses_masks_it_cannot_express(spec):
    q, k, v = qkv(2, 4, 2, 6, 6, 16)
    with pytest.raises(BackendUnavailable, match="supports causal and sliding-window masks, not") as err:
        kernels.attend(q, k, v, spec, 0.25)
    assert repr(spec) in str(err.value)


PROMPT = [(7 * i + 3) % 90 + 1 for i in range(20)]
MODEL_ARGS = dict(layers=2, vocab=96, hidden=64, max_positions=128, device=DEVICE)  # D = 16, GQA 4/2


@pytest.mark.parametrize("sliding_window", [None, pytest.param(6, marks=pytest.mark.slow)])
def test_scope_with_triton_backend_passes_every_check(sliding_window):
    sliding = (
        {}
        if sliding_window is None
        else dict(  # the first layer slides
            sliding_window=sliding_window, layer_types=["sliding_attention", "full_attention"]
        )
    )
    model = random_model(**MODEL_ARGS, **sliding)
    result = attnscope.Scope(model, backend="triton").run(PROMPT, checks="all")
    assert all(c.passed for c in result.checks), {c.name: c.message for c in result.checks}
    assert len(result.checks) == 5
    # the inspector's pooled maps come from the probability kernel with this backend
    reference = attnscope.Scope(model, backend="eager").run(PROMPT)
    for reduce in ("max", "mean"):
        pooled = result.attention_pooled(1, 3, height=5, width=7, reduce=reduce)
        np.testing.assert_allclose(
            pooled, reference.attention_pooled(1, 3, height=5, width=7, reduce=reduce), atol=1e-5
        )


@pytest.mark.slow  # the fast lane keeps the triton backend through a Scope (above)
@pytest.mark.usefixtures("tiny_code")  # the committed default model: missing, the test fails
def test_check_command_with_the_triton_backend_on_the_default_model():
    from typer.testing import CliRunner

    from attnscope.cli import app

    result = CliRunner().invoke(app, ["check", "--backend", "triton", "-p", "def fibonacci(n):", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "5 passed, 0 failed" in result.output and "triton matches the eager" in result.output


def test_scope_with_triton_backend_refuses_a_padded_batch():
    with pytest.raises(BackendUnavailable, match=r"not causal & padding\(left, \[0, 11\]\)"):
        attnscope.Scope(random_model(**MODEL_ARGS), backend="triton").run([PROMPT, PROMPT[:9]])


# ----------------------------------------------------------------------------------------------
# attention_probs(): exact regions and pooled maps from the lse


@pytest.mark.parametrize(
    ("causal", "window", "q_offset"),
    [(True, None, None), (True, 7, None), (False, None, None), (True, 7, -3), (False, None, 10)],
)
def test_attention_probs_matches_eager(causal, window, q_offset):
    B, Hq, Hkv, Sq, Sk, D = 1, 4, 2, 37, 48, 32
    q, k, v = qkv(B, Hq, Hkv, Sq, Sk, D, seed=11)
    allowed = allowed_mask(B, Sq, Sk, causal, window, q_offset)
    _, lse = reference(q, k, v, allowed, D**-0.5)
    kw = dict(causal=causal, window=window, q_offset=q_offset)
    for head in (0, 3):
        ref = probabilities(q[0, head], k[0, head // 2], lse[0, head], allowed[0, 0], D**-0.5)  # (Sq, Sk)
        p = kernels.attention_probs(q[0, head], k[0, head // 2], lse[0, head], **kw)
        torch.testing.assert_close(p, ref, atol=1e-5, rtol=0)
        part = kernels.attention_probs(
            q[0, head], k[0, head // 2], lse[0, head], rows=slice(3, 30), cols=slice(5, -2), **kw
        )
        torch.testing.assert_close(part, ref[3:30, 5:-2], atol=1e-5, rtol=0)
    group = kernels.attention_probs(q[0, 2:4], k[0, 1], lse[0, 2:4], **kw)  # (G, Sq, Sk)
    ref_group = probabilities(q[0, 2:4], k[0, 1], lse[0, 2:4], allowed[0, 0], D**-0.5)
    torch.testing.assert_close(group, ref_group, atol=1e-5, rtol=0)
    if q_offset is not None and q_offset < 0 and causal:
        assert torch.all(p[:-q_offset] == 0)  # rows with no key


@pytest.mark.parametrize("reduce", ["max", "mean"])
@pytest.mark.parametrize(
    ("pool", "rows", "cols"),
    [
        ((5, 7), slice(None), slice(None)),
        ((4, 9), slice(2, None), slice(1, 40)),
        ((3, 100), slice(None), slice(30, 42)),
    ],
)  # 3 x 12 cells
def test_attention_probs_pooled_matches_eager_pooling(pool, rows, cols, reduce):
    B, Hq, Hkv, Sq, Sk, D = 1, 4, 2, 37, 48, 32
    spec = masks.causal() & masks.sliding_window(9)
    q, k, v = qkv(B, Hq, Hkv, Sq, Sk, D, seed=12)
    out, lse = eager_attend(q, k, v, spec, D**-0.5)
    record = LayerRecord(0, q, k, v, out, lse, spec, D**-0.5)
    pooled = kernels.attention_probs(
        q[0, 3], k[0, 1], lse[0, 3], window=9, pool=pool, reduce=reduce, rows=rows, cols=cols
    )
    ref = record.pooled(3, *pool, reduce, queries=rows, keys=cols)
    assert pooled.shape == ref.shape
    np.testing.assert_allclose(pooled.cpu().numpy(), ref, atol=1e-5, rtol=0)
    if pool == (5, 7):
        group = kernels.attention_probs(q[0, 2:4], k[0, 1], lse[0, 2:4], window=9, pool=pool, reduce=reduce)
        np.testing.assert_allclose(group[1].cpu().numpy(), ref, atol=1e-5, rtol=0)


def test_attention_probs_of_the_kernels_lse_sum_to_one():
    B, Hq, Hkv, Sq, Sk, D = 1, 2, 1, 20, 33, 80
    q, k, v = qkv(B, Hq, Hkv, Sq, Sk, D, seed=13)
    _, lse = kernels.attention(q, k, v, window=11, return_lse=True)
    p = kernels.attention_probs(q[0], k[0, 0], lse[0], window=11)  # (G, Sq, Sk)
    torch.testing.assert_close(p.sum(-1), torch.ones(Hq, Sq, device=DEVICE), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------
# validation and availability


def _attention_call(**changes):
    q, k, v = qkv(1, 4, 2, 3, 8, 16)
    args = {"q": q, "k": k, "v": v, **changes}
    return lambda: kernels.attention(args.pop("q"), args.pop("k"), args.pop("v"), **args)


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"q": torch.zeros(4, 3, 16)}, ValueError, r"q must be \[B, Hq, Sq, D\]"),
        ({"v": torch.zeros(1, 2, 9, 16)}, ValueError, "k and v shapes differ"),
        ({"q": torch.zeros(2, 4, 3, 16)}, ValueError, "disagree on batch size or head_dim"),
        ({"q": torch.zeros(1, 3, 3, 16)}, ValueError, r"query heads \(3\) must be a multiple of kv heads \(2\)"),
        ({"q": torch.zeros(1, 4, 3, 16, dtype=torch.float64)}, TypeError, "float16, bfloat16 or float32"),
        ({"k": torch.zeros(1, 2, 8, 16, dtype=torch.float16)}, TypeError, "use one dtype"),
        ({"q": [[1.0]]}, TypeError, "q must be a torch.Tensor"),
        (
            {"q": torch.zeros(1, 4, 3, 512), "k": torch.zeros(1, 2, 8, 512), "v": torch.zeros(1, 2, 8, 512)},
            ValueError,
            "head_dim 512 is not supported",
        ),
        ({"q": torch.zeros(1, 4, 9, 16)}, ValueError, r"more queries \(9\) than keys \(8\)"),
        ({"q_offset": 6}, ValueError, r"q_offset must be in \[-Sq, Sk - Sq\] = \[-3, 5\], got 6"),
        ({"q_offset": torch.tensor([1.5])}, TypeError, "integer tensor"),
        ({"q_offset": torch.tensor([1, 2])}, ValueError, r"shape \[B\] = \[1\]"),
        ({"q_offset": 2.0}, TypeError, "q_offset must be an int"),
        ({"window": 0}, ValueError, "window must be an int >= 1"),
        ({"window": 4, "causal": False}, ValueError, "a sliding window is causal"),
        ({"scale": float("nan")}, ValueError, "scale must be a finite"),
        ({"kv_chunk": 3}, ValueError, "kv_chunk must be an int >= 16"),
    ],
)
def test_attention_errors(changes, error, message):
    changes = {name: value.to(DEVICE) if isinstance(value, torch.Tensor) else value for name, value in changes.items()}
    with pytest.raises(error, match=message):
        _attention_call(**changes)()


@pytest.mark.skipif(HAS_CUDA, reason="CPU tensors are accepted on the interpreter only")
def test_attention_on_a_device_it_cannot_use(monkeypatch):
    monkeypatch.setattr(flash, "INTERPRETING", False)
    with pytest.raises(ValueError, match="need CUDA tensors, or TRITON_INTERPRET=1"):
        _attention_call()()


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda q, k, lse: kernels.attention_probs(q, k[None], lse),
            ValueError,
            r"q must be \[Sq, D\] or \[G, Sq, D\]",
        ),
        (lambda q, k, lse: kernels.attention_probs(q, k, lse[:-1]), ValueError, r"lse must have shape \(3,\)"),
        (
            lambda q, k, lse: kernels.attention_probs(q, k, lse, reduce="sum"),
            ValueError,
            "reduce must be 'max' or 'mean'",
        ),
        (lambda q, k, lse: kernels.attention_probs(q, k, lse, pool=(0, 4)), ValueError, "pool must be"),
        (lambda q, k, lse: kernels.attention_probs(q, k, lse, rows=slice(0, 3, 2)), ValueError, "step 1"),
        (lambda q, k, lse: kernels.attention_probs(q, k[:, :8], lse), ValueError, "disagree on head_dim"),
        (
            lambda q, k, lse: kernels.attention_probs(q, k, lse, q_offset=torch.tensor([1, 2])),
            TypeError,
            "must be an int",
        ),
    ],
)
def test_attention_probs_errors(call, error, message):
    q, k, _ = qkv(1, 1, 1, 3, 8, 16)
    with pytest.raises(error, match=message):
        call(q[0, 0], k[0, 0], torch.zeros(3, device=DEVICE))


def test_unavailable_reason(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernels.unavailable_reason() is None
    monkeypatch.delenv("TRITON_INTERPRET")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert kernels.unavailable_reason() is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    reason = kernels.unavailable_reason()
    assert "no CUDA GPU" in reason and "TRITON_INTERPRET=1" in reason
    with pytest.raises(BackendUnavailable, match="backend 'triton' is not available: no CUDA GPU"):
        get_backend("triton")
    monkeypatch.setattr(kernels.importlib.util, "find_spec", lambda name: None)
    assert "triton is not installed" in kernels.unavailable_reason()


def test_importing_the_package_does_not_import_triton():
    code = (
        "import sys, attnscope.kernels as k; k.unavailable_reason(); k.mask_window(__import__('attnscope').masks"
        ".causal()); assert 'triton' not in sys.modules, 'triton imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------------------------
# GPU: float16 / bfloat16 by the flash-attention rule, and the automatic split-KV decode path


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    ("Hq", "Hkv", "Sq", "Sk", "D", "window"),
    [
        (8, 2, 128, 128, 64, None),
        (8, 2, 333, 1000, 128, None),
        (32, 8, 1, 4096, 128, None),
        (6, 1, 257, 300, 80, 64),
        (4, 4, 64, 64, 256, None),
        (8, 8, 100, 100, 96, 16),
    ],
)
def test_gpu_low_precision_error_within_twice_sdpa(dtype, Hq, Hkv, Sq, Sk, D, window):
    """flash-attention's rule: the kernel's error against float32 is at most 2× (plus a hair) the
    error of torch SDPA run in the same low precision."""
    B = 2
    q, k, v = qkv(B, Hq, Hkv, Sq, Sk, D)
    allowed = allowed_mask(B, Sq, Sk, True, window)
    ref = sdpa_reference(q.double(), k.double(), v.double(), allowed, D**-0.5, torch.float64)
    out = kernels.attention(q.to(dtype), k.to(dtype), v.to(dtype), window=window)
    low = sdpa_reference(q.to(dtype), k.to(dtype), v.to(dtype), allowed, D**-0.5, dtype)
    kernel_err = (out.double() - ref).abs().max().item()
    sdpa_err = (low.double() - ref).abs().max().item()
    assert kernel_err <= 2 * sdpa_err + 1e-5, (kernel_err, sdpa_err)


@gpu
@needs_cuda
def test_gpu_decode_splits_automatically(monkeypatch):
    combine = CountingLaunch(flash._attn_combine)
    monkeypatch.setattr(flash, "_attn_combine", combine)
    B, Hq, Hkv, Sq, Sk, D = 1, 32, 8, 1, 16384, 128
    q, k, v = qkv(B, Hq, Hkv, Sq, Sk, D)
    out, lse = kernels.attention(q, k, v, return_lse=True)
    assert combine.calls == 1
    check_against_references(q, k, v, out, lse, allowed_mask(B, Sq, Sk), D**-0.5)
