"""What one `Scope.run` produced: the run itself, the continuation, the checks' findings, and views.

`Result` is data (the `Run`, the prompt, the continuation, the checks, their per-layer diffs, the
head roles) plus views of it: token texts, attention probabilities of any region recomputed from
q, k and lse, pooled maps, a kv group's maps, and the `Report`. For a batch of prompts the views
take ``batch=`` (the row) and ``.logits`` is ``[B, T, vocab]``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from attnscope.errors import UserError
from attnscope.inspector.capture import LayerRecord
from attnscope.inspector.checks import Diff
from attnscope.inspector.heads import HeadRole
from attnscope.inspector.report import Check, HeadStats, Report, build_report, head_stats
from attnscope.inspector.run import Run
from attnscope.prompts import Prompt


@dataclass
class Result:
    run: Run
    prompt: Prompt | Sequence[Prompt]  # as given: text or ids, or a list of those for a batch
    batched: bool
    continuation_ids_by_row: list[list[int]]
    checks: list[Check] = field(default_factory=list)
    diffs: dict[str, list[Diff]] = field(default_factory=dict)  # check name -> per-layer Diff
    roles: list[list[HeadRole]] | None = None  # per layer, per head, when run with roles=True

    # ---- data ----------------------------------------------------------------------------------
    @property
    def records(self) -> list[LayerRecord]:
        return self.run.records

    @property
    def backend(self) -> str:
        return self.run.backend

    @property
    def real(self) -> torch.Tensor:
        """[B, T] bool: True for the rows' real tokens, False for padding."""
        return self.run.inputs.real

    @property
    def logits(self) -> torch.Tensor:
        """Float32 ``[T, vocab]`` (``[B, T, vocab]`` for a batch)."""
        return self.run.logits if self.batched else self.run.logits[0]

    @functools.cached_property
    def batch_ids(self) -> list[list[int]]:
        """Per row, the padded token ids."""
        return self.run.inputs.ids.tolist()

    @property
    def ids(self) -> list[int] | list[list[int]]:
        """Token ids of the prompt; for a batch, a list per row (padding included)."""
        return self.batch_ids if self.batched else self.batch_ids[0]

    @property
    def tokens(self) -> list[str] | list[list[str]]:
        """The prompt's tokens as text; for a batch, a list per row (padding included)."""
        return self._row_tokens if self.batched else self._row_tokens[0]

    def row_tokens(self, batch: int = 0) -> list[str]:
        """The tokens of one row as text (of the prompt when it is not a batch)."""
        return self._row_tokens[batch]

    @functools.cached_property
    def _row_tokens(self) -> list[list[str]]:
        return [self.token_texts(ids) for ids in self.batch_ids]

    @property
    def continuation_ids(self) -> list[int] | list[list[int]]:
        """The greedy continuation's ids; for a batch, a list per row."""
        return self.continuation_ids_by_row if self.batched else self.continuation_ids_by_row[0]

    @property
    def continuation(self) -> str | list[str]:
        """The greedy continuation as text; for a batch, one per row."""
        texts = [self._decode(ids) for ids in self.continuation_ids_by_row]
        return texts if self.batched else texts[0]

    def _decode(self, ids: list[int]) -> str:
        tok = self.run.model.tokenizer
        return tok.decode(ids) if tok else " ".join(map(str, ids))

    @property
    def n_layers(self) -> int:
        return len(self.records)

    @property
    def n_heads(self) -> int:
        return self.run.model.layout.n_heads

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def token_texts(self, ids: list[int]) -> list[str]:
        return self.run.token_texts(ids)

    def first_failure(self) -> tuple[int, int] | None:
        """(layer, head) where the first failing check that names a head is worst, or None."""
        where = next(
            (c.where for c in self.checks if not c.passed and c.where and c.where.get("head") is not None), None
        )
        return (min(where["layer"], self.n_layers - 1), min(where["head"], self.n_heads - 1)) if where else None

    # ---- views ---------------------------------------------------------------------------------
    def record_at(self, layer: int, head: int | None = None) -> LayerRecord:
        """The record of `layer`; a UserError naming the valid range when layer or head is outside it."""
        return record_at(self.records, self.n_heads, layer, head)

    def attention(
        self, layer: int, head: int, queries: slice = slice(None), keys: slice = slice(None), batch: int = 0
    ) -> torch.Tensor:
        """Float32 attention probabilities ``[queries, keys]`` of query head `head` in `layer`."""
        rec = self.record_at(layer, head)
        validate_region(rec, queries, keys, batch)
        return rec.probabilities(head, queries, keys, batch=batch)

    def attention_pooled(
        self,
        layer: int,
        head: int,
        height: int,
        width: int,
        reduce: str = "max",
        batch: int = 0,
        queries: slice = slice(None),
        keys: slice = slice(None),
    ) -> np.ndarray:
        """A height × width pooled map (numpy float32) of one head, computed tile by tile: for
        screens and long prompts, never materializing the full matrix. A backend whose attend
        function offers ``pooled_probabilities`` (`attnscope.backends`: the triton backend's
        probability kernel) computes it; else the eager recomputation from q, k and the lse."""
        rec = self.record_at(layer, head)
        validate_region(rec, queries, keys, batch)
        pooled = getattr(self.run.attend, "pooled_probabilities", None)
        if pooled is None:
            return rec.pooled(head, height, width, reduce, batch, queries, keys)
        Sq, Sk = rec.shape
        probs = pooled(
            rec.q[batch, head],
            rec.k[batch, head // rec.group_size],
            rec.kept_lse[batch, head],
            scale=rec.scale,
            mask=rec.mask,
            q_offset=Sk - Sq,
            rows=queries,
            cols=keys,
            pool=(height, width),
            reduce=reduce,
        )
        return probs.cpu().numpy()

    def attention_group(self, layer: int, kv_head: int, batch: int = 0, reduce: str | None = None) -> torch.Tensor:
        """The query heads that read `kv_head`: stacked ``[G, q, k]``, or summed with reduce="sum"."""
        rec = self.record_at(layer)
        if not 0 <= kv_head < rec.k.shape[1]:
            raise UserError(f"kv head {kv_head} is out of range (0..{rec.k.shape[1] - 1})")
        heads = range(kv_head * rec.group_size, (kv_head + 1) * rec.group_size)
        maps = torch.stack([rec.probabilities(h, batch=batch) for h in heads])
        return maps.sum(0) if reduce == "sum" else maps

    def head_stats(self, batch: int = 0) -> list[list[HeadStats]]:
        """Per layer, per query head statistics (see `attnscope.inspector.report.head_stats`)."""
        return head_stats(self.run, self.diffs, self.roles, batch)

    def _repr_html_(self) -> str:
        """The interactive HTML report (`attnscope.htmlview`, as ``--html`` writes it) in an iframe, as
        Jupyter, JupyterLab and VS Code notebooks show a cell's value (row 0 of a batch)."""
        from attnscope.htmlview import notebook_frame, result_page

        return notebook_frame(result_page(self))

    def report(self, batch: int = 0) -> Report:
        """The JSON-serializable `Report` of one row (row 0 by default)."""
        prompt = self.prompt[batch] if self.batched else self.prompt
        return build_report(
            self.run, prompt, self.continuation_ids_by_row[batch], self.checks, self.diffs, self.roles, batch
        )


def record_at(records: list, n_heads: int, layer: int, head: int | None = None):
    """``records[layer]``; a UserError naming the valid range when layer or head is outside it."""
    if not 0 <= layer < len(records):
        raise UserError(f"layer {layer} is out of range (the model has {len(records)} layers: 0..{len(records) - 1})")
    if head is not None and not 0 <= head < n_heads:
        raise UserError(f"head {head} is out of range (each layer has {n_heads} heads: 0..{n_heads - 1})")
    return records[layer]


def validate_region(rec, queries: slice, keys: slice, batch: int) -> None:
    """A UserError when a region or a batch row is outside record `rec` (an empty view would hide it)."""
    B = rec.q.shape[0]
    if not 0 <= batch < B:
        raise UserError(f"batch row {batch} is out of range (0..{B - 1})")
    for what, sl, n in (("query", queries, rec.shape[0]), ("key", keys, rec.shape[1])):
        if sl.step not in (None, 1):
            raise UserError(f"{what} slice {sl} must have step 1")
        start, stop, _ = sl.indices(n)
        if (sl.start is not None and not -n <= sl.start < n) or (sl.stop is not None and sl.stop > n) or start >= stop:
            raise UserError(f"{what} slice {sl.start}:{sl.stop} is empty or out of range (0..{n})")
