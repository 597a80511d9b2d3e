"""The sdpa backend's lse comes from the fused kernel that produced the output (the ATen op that
returns it), equals the eager reference's lse, and falls back to the eager pass when the op is
missing or refuses the inputs; the report says which ran (`lse_source`)."""

from __future__ import annotations

import functools

import pytest
import torch
from support.models import random_model
from support.reference import qkv as random_qkv

import attnscope
from attnscope import masks
from attnscope.backends import eager, get_backend, sdpa, take_lse_source

pytestmark = pytest.mark.usefixtures("single_thread")

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CPU_OP = f"aten.{sdpa.CPU_FLASH}"
EMPTY_ROW = torch.ones(6, 9, dtype=torch.bool).tril(3)
EMPTY_ROW[2] = False  # query row 2 may see no key

# (spec, Sq, Sk, whether some row has no allowed key)
MASKS = [
    (masks.causal(), 16, 16, False),  # the kernel's own is_causal
    (masks.causal(), 1, 23, False),  # a decode step: every key, no mask
    (masks.causal(), 5, 21, False),  # a chunk after a cache: bottom-right, as an additive mask
    (masks.causal() & masks.sliding_window(4), 16, 16, False),
    (masks.causal() & masks.document([0] * 7 + [1] * 9), 16, 16, False),
    (masks.causal() & masks.padding([16, 11], "left"), 16, 16, True),  # row 1's padding queries see nothing
    (masks.custom(EMPTY_ROW), 6, 9, True),
]


def mask_id(x) -> str:
    return repr(x) if isinstance(x, masks.MaskSpec) else str(x)


qkv = functools.partial(random_qkv, v_scale=1.5)  # v as spread as q and k


@pytest.mark.parametrize(("spec", "Sq", "Sk", "empty"), MASKS, ids=mask_id)
def test_kernel_lse_is_the_eager_lse(spec, Sq, Sk, empty):
    q, k, v = qkv(2, 8, 2, Sq, Sk)
    take_lse_source()
    out, lse = sdpa.attend(q, k, v, spec, 0.25)
    assert take_lse_source() == CPU_OP  # the kernel's own lse, not the eager pass
    want_out, want_lse = eager.attend(q, k, v, spec, 0.25)
    assert torch.equal(lse == float("-inf"), want_lse == float("-inf"))
    assert bool((lse == float("-inf")).any()) == empty
    finite = torch.isfinite(want_lse)
    torch.testing.assert_close(lse[finite], want_lse[finite], atol=1e-5, rtol=0)
    torch.testing.assert_close(out, want_out, atol=1e-5, rtol=0)
    assert bool((out[~finite] == 0).all())  # rows with no key: out 0, not NaN


@pytest.mark.parametrize(
    "spec",
    [masks.causal(), masks.causal() & masks.sliding_window(5), masks.causal() & masks.padding([17, 12], "left")],
    ids=repr,
)
def test_a_decode_step_packs_each_kv_group_into_one_head(monkeypatch, spec):
    """One query row of GQA: the kernel runs once with each kv group's query heads as the rows of one
    head (K and V read once per kv head), and gives the eager reference's output and lse."""
    q, k, v = qkv(2, 8, 2, 1, 17)
    seen = []
    call = sdpa._call

    def recording(name, q, k, v, *rest):
        seen.append((tuple(q.shape), k.shape[1]))
        return call(name, q, k, v, *rest)

    monkeypatch.setattr(sdpa, "_call", recording)
    take_lse_source()
    out, lse = sdpa.attend(q, k, v, spec, 0.3)
    assert seen == [((2, 2, 4, 16), 2)] and take_lse_source() == CPU_OP
    want_out, want_lse = eager.attend(q, k, v, spec, 0.3)
    assert out.shape == (2, 8, 1, 16) and lse.shape == (2, 8, 1)
    torch.testing.assert_close(out, want_out, atol=1e-5, rtol=0)
    torch.testing.assert_close(lse, want_lse, atol=1e-5, rtol=0)


def test_a_per_head_mask_is_not_packed(monkeypatch):
    """A mask that differs between the query heads of a group keeps one head per query head."""
    q, k, v = qkv(1, 4, 2, 1, 9)
    allowed = torch.ones(1, 4, 1, 9, dtype=torch.bool)
    allowed[:, 1, :, 4:] = False  # head 1 (kv group 0) sees fewer keys than head 0
    spec = masks.custom(allowed)
    seen = []
    call = sdpa._call
    monkeypatch.setattr(sdpa, "_call", lambda name, q, *rest: seen.append(tuple(q.shape)) or call(name, q, *rest))
    out, _ = sdpa.attend(q, k, v, spec, 0.3)
    assert seen == [(1, 4, 1, 16)]
    torch.testing.assert_close(out, eager.attend(q, k, v, spec, 0.3)[0], atol=1e-5, rtol=0)


def test_gqa_is_expanded_only_for_an_op_that_needs_it(monkeypatch):
    """The CPU kernel reads kv head h // G itself; an op that does not gets k and v expanded, with
    the same result."""
    assert sdpa.takes_gqa(sdpa.CPU_FLASH, "cpu")
    q, k, v = qkv(1, 8, 2, 12, 12)
    spec = masks.causal() & masks.sliding_window(5)
    native = sdpa.attend(q, k, v, spec, 0.3)
    seen = []
    call = sdpa._call
    monkeypatch.setattr(sdpa, "takes_gqa", lambda name, device: False)

    def counting(name, q, k, v, *rest):
        seen.append(k.shape[1])
        return call(name, q, k, v, *rest)

    monkeypatch.setattr(sdpa, "_call", counting)
    expanded = sdpa.attend(q, k, v, spec, 0.3)
    assert seen == [8]
    torch.testing.assert_close(expanded, native, atol=1e-6, rtol=0)


def test_a_missing_op_falls_back_to_the_eager_lse(monkeypatch):
    q, k, v = qkv(2, 4, 2, 7, 7)
    spec = masks.causal() & masks.padding([7, 4], "right")
    kernel_out, kernel_lse = sdpa.attend(q, k, v, spec, 0.3)
    monkeypatch.setattr(sdpa, "_op", lambda name: None)
    take_lse_source()
    out, lse = sdpa.attend(q, k, v, spec, 0.3)
    assert take_lse_source() == "eager"
    torch.testing.assert_close(lse, eager.log_sum_exp(q, k, spec, 0.3), atol=0, rtol=0)
    torch.testing.assert_close(out, kernel_out, atol=1e-6, rtol=0)
    torch.testing.assert_close(lse, kernel_lse, atol=1e-5, rtol=0)


def test_an_op_that_refuses_the_inputs_is_not_asked_again(monkeypatch):
    calls = []

    def refuse(name, *args):
        calls.append(name)
        raise RuntimeError("inputs not supported")

    monkeypatch.setattr(sdpa, "_call", refuse)
    monkeypatch.setattr(sdpa, "_refused", set())
    q, k, v = qkv(1, 4, 2, 5, 5, D=24)
    for _ in range(3):
        out, lse = sdpa.attend(q, k, v, masks.causal(), 0.3)
        assert take_lse_source() == "eager"
    assert calls == [sdpa.CPU_FLASH]  # refused once, remembered for inputs of this kind
    torch.testing.assert_close(lse, eager.log_sum_exp(q, k, masks.causal(), 0.3), atol=0, rtol=0)


def test_the_report_names_the_lse_source(monkeypatch):
    model = random_model(layers=2, vocab=50, hidden=32, max_positions=64)
    ids = list(range(3, 15))
    for backend, source in (("sdpa", CPU_OP), ("eager", "eager"), ("flex", "flex_attention")):
        report = attnscope.Scope(model, backend=backend).run(ids).report()
        assert report.lse_source == source
        assert report.to_dict()["lse_source"] == source
    monkeypatch.setattr(sdpa, "_op", lambda name: None)
    assert attnscope.Scope(model, backend="sdpa").run(ids).report().lse_source == "eager"


def test_a_backend_that_notes_nothing_is_its_own_source():
    from attnscope.backends import register_backend

    sdpa_attend = get_backend("sdpa")

    def mine(q, k, v, mask, scale, *, need_lse=True):
        out, lse = sdpa_attend(q, k, v, mask, scale, need_lse=need_lse)
        take_lse_source()  # forget what the wrapped backend noted
        return out, lse

    register_backend("lse-test-own", mine)
    model = random_model(layers=1, vocab=50, hidden=32, max_positions=64)
    assert attnscope.Scope(model, backend="lse-test-own").run([5, 6, 7]).report().lse_source == "lse-test-own"


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("spec", "Sq", "Sk", "empty"), MASKS, ids=mask_id)
def test_gpu_kernel_lse_is_the_eager_lse(dtype, spec, Sq, Sk, empty):
    q, k, v = qkv(2, 8, 2, Sq, Sk, D=64, dtype=dtype, device="cuda")
    take_lse_source()
    out, lse = sdpa.attend(q, k, v, spec, 0.125)
    assert take_lse_source().startswith("aten.")
    want_out, want_lse = eager.attend(q.float(), k.float(), v.float(), spec, 0.125)
    assert torch.equal(lse == float("-inf"), want_lse == float("-inf"))
    finite = torch.isfinite(want_lse)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(lse[finite], want_lse[finite], atol=tol, rtol=0)
    torch.testing.assert_close(out.float(), want_out, atol=tol, rtol=0)
