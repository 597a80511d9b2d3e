"""The Report: plain dataclasses, JSON-serializable, versioned (``attnscope.report/1``).

The report is the single source that the CLI, the TUI and CI read. Top-level keys: ``schema,
model, backend, reference, device, dtype, prompt, tokens, continuation, masks, layers, checks,
passed``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA = "attnscope.report/1"


@dataclass
class Token:
    index: int  # absolute position
    id: int
    text: str


@dataclass
class HeadStats:
    head: int  # query head index
    kv_head: int  # the kv head it reads (GQA)
    entropy: float  # mean over query rows, in nats
    max_weight: float  # mean over query rows of the row's largest weight
    first_token_mass: float  # mean over query rows of the weight on position 0 (attention sink)
    nonfinite: int = 0  # NaN/Inf values in this head's scores, weights and output
    fully_masked_rows: int = 0  # query rows of real tokens with no allowed key
    full_vs_incremental: float | str | None = None  # max |Δ| of the attention output (None: not checked)
    backend_vs_reference: float | str | None = None  # max |Δ| against eager float32 (None: not checked)
    flags: list[str] = field(default_factory=list)  # checks that found a problem in this head
    role: str | None = None  # induction, previous_token, sink, local, broad (None: no clear role)
    role_scores: dict[str, float] | None = None  # None when roles were not scored


@dataclass
class LayerReport:
    index: int
    mask: str  # readable mask spec, e.g. "causal & sliding_window(4096)"
    heads: list[HeadStats]


@dataclass
class Check:
    name: str
    passed: bool
    figures: dict[str, Any] = field(default_factory=dict)  # max_abs_diff, tolerance, ...
    where: dict[str, Any] | None = None  # layer, head, position, stage of the worst place
    message: str = ""


@dataclass
class Report:
    model: dict[str, Any]
    backend: str
    reference: str
    device: str
    dtype: str
    prompt: str | list[int]
    tokens: list[Token]
    continuation: list[Token]
    masks: list[str]
    layers: list[LayerReport]
    checks: list[Check] = field(default_factory=list)
    mask_cache: dict[str, int] = field(default_factory=dict)  # hits / misses of the dense-mask cache
    schema: str = SCHEMA

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        order = ["schema", "model", "backend", "reference", "device", "dtype", "prompt", "tokens",
                 "continuation", "masks", "layers", "checks", "passed", "mask_cache"]
        return {key: d[key] for key in order}

    def check(self, name: str) -> Check | None:
        """The check called `name`, or None when it did not run."""
        return next((c for c in self.checks if c.name == name), None)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)


def json_number(x: float) -> float | str:
    """A float for JSON: NaN and infinities become the strings "nan", "inf", "-inf"."""
    if x != x:
        return "nan"
    if x in (float("inf"), float("-inf")):
        return "inf" if x > 0 else "-inf"
    return x
