"""Assertion helpers for your own pytest suites. Each raises AssertionError with the finding's text.

import attnscope
from attnscope.testing import assert_incremental_matches_full

model = attnscope.load_model("path/to/my-port", dtype="float16", device="cuda")
assert_incremental_matches_full(model, "The quick brown fox", backend="sdpa")
"""

from __future__ import annotations

from attnscope.inspector.report import Check
from attnscope.scope import Result, Scope


def _assert(check: Check) -> None:
    if not check.passed:
        where = ", ".join(f"{k}={v}" for k, v in (check.where or {}).items() if v is not None)
        raise AssertionError(f"attnscope {check.name}: {check.message}" + (f" [{where}]" if where else ""))


def _run(model, prompt, backend: str, check: str, **tolerances) -> Check:
    result = Scope(model, backend=backend).run(prompt, checks=(check,), **tolerances)
    return result.checks[0]


def assert_no_nan(result: Result) -> None:
    """No NaN/Inf in any layer's scores, weights, outputs, residual stream, or in the logits."""
    from attnscope.inspector.checks import nan_check

    _assert(nan_check(result.run))


def assert_incremental_matches_full(
    model, prompt, backend: str = "eager", atol: float | None = None, rtol: float | None = None
) -> None:
    """Token-by-token decoding through the KV cache gives the full forward's attention and logits."""
    _assert(_run(model, prompt, backend, "full_vs_incremental", atol=atol, rtol=rtol))


def assert_backend_matches(
    model, prompt, backend: str, reference: str = "eager", atol: float | None = None, rtol: float | None = None
) -> None:
    """`backend`'s attention output matches the float32 eager reference on the same q, k, v."""
    if reference != "eager":
        raise ValueError("the reference backend is eager (float32)")
    _assert(_run(model, prompt, backend, "backend_vs_reference", atol=atol, rtol=rtol))


def assert_causal(model, prompt, backend: str = "eager") -> None:
    """Changing later tokens never changes earlier positions' attention output."""
    _assert(_run(model, prompt, backend, "causality"))
