"""Head roles: what each attention head does, scored on an input where the answer is known.

A head's role is a property of the head, not of a prompt: it is always measured on the probe, a
random token sequence repeated twice (`repeated_sequence`, as TransformerLens' head detector does),
so that `attnscope run`, `attnscope heads`, the JSON report and the TUI name the same role for the
same head whatever prompt they show. For every head, scores in [0, 1] (means over query rows):

- ``induction``: the weight that a query in the second copy puts on the token that followed its
  previous occurrence: the copying circuit's signature;
- ``previous_token``: weight on the key just before the query;
- ``sink``: weight on the first token (BOS; the attention sink);
- ``local``: weight on the query itself and the three keys before it;
- ``broad``: entropy over the allowed keys divided by its maximum, ln(number of keys): 1 is
  perfectly broad attention.

A score only counts rows that can tell the roles apart: rows with at least `MIN_KEYS` allowed keys
(on a row with 4 keys, the query and the three before it are every key, so any head is ``local``;
with 16, a head that spreads its weight evenly puts 1/4 on them and 1/16 on the first token, far
below the thresholds), and the induction score only rows of the second copy whose target key is
allowed. A score needs `MIN_ROWS` such rows: with fewer (a model whose positions cannot hold the
probe, a sliding window narrower than `MIN_KEYS`), the head gets no role, and a reason.

A head's role is the highest-scoring one whose score passes its threshold (`THRESHOLDS`); a head
that passes none has no role. ``previous_token`` heads are local too, so ``local`` is only named
when ``previous_token`` is not.

`scores_on` measures the same scores (all but induction) on any other run, a prompt's: what the
head does there, which names no role.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnscope.inspector.capture import LayerRecord, row_stats
from attnscope.inspector.run import Run, Step

ROLES = ("induction", "previous_token", "sink", "local", "broad")
THRESHOLDS = {"induction": 0.4, "previous_token": 0.5, "sink": 0.6, "local": 0.8, "broad": 0.9}
REPEAT_LENGTH = 48  # length of the random sequence that is repeated for the induction score
MIN_KEYS = 16  # a row is scored when it may see at least this many keys
MIN_ROWS = 16  # a score is a mean over at least this many scored rows


@dataclass
class HeadRole:
    layer: int
    head: int
    kv_head: int
    scores: dict[str, float]  # on the probe; a score that could not be measured is left out
    role: str | None
    reason: str | None = None  # why no role could be named (too few rows); None when the scores were measured
    prompt_scores: dict[str, float] | None = None  # `scores_on` a prompt, when one was given and long enough


def repeated_sequence(vocab_size: int, length: int = REPEAT_LENGTH, bos: int | None = None, seed: int = 0) -> list[int]:
    """[bos] + R + R for R of `length` random token ids (special ids 0..3 avoided), fixed by `seed`."""
    gen = torch.Generator().manual_seed(seed)
    low = min(4, vocab_size - 1)
    rand = torch.randint(low, vocab_size, (length,), generator=gen).tolist()
    return ([bos] if bos is not None else []) + rand + rand


def probe_length(max_positions: int, bos: int | None) -> int:
    """The length of the repeated sequence: `REPEAT_LENGTH`, or less where the model's positions
    cannot hold twice that (and the BOS)."""
    return max(0, min(REPEAT_LENGTH, (max_positions - (bos is not None)) // 2))


def pick_role(scores: dict[str, float]) -> str | None:
    """The highest-scoring role whose score passes its threshold; None when none does."""
    passing = {r: s for r, s in scores.items() if s >= THRESHOLDS[r]}
    if "previous_token" in passing:
        passing.pop("local", None)
    return max(passing, key=lambda r: passing[r]) if passing else None


def key_counts(rec: LayerRecord) -> torch.Tensor:
    """``[Hq|1, Sq]``: how many keys each query row of row 0 of the batch may see, per query head
    (one row for all when the mask is the same for every head): from the mask's intervals where each
    row's keys form one (no ``[Sq, Sk]`` mask built), else from the dense mask."""
    q_len, k_len = rec.shape
    positions = torch.arange(k_len - q_len, k_len, device=rec.q.device)
    intervals = rec.mask.row_intervals(positions, k_len, 0)
    if intervals is None:
        return rec.mask.dense(q_len, k_len, rec.q.device)[0].sum(-1)
    lo, hi = (bound.clamp(0, k_len) for bound in intervals)
    return (hi - lo).clamp_min(0)[None]


def head_keys(counts: torch.Tensor, head: int) -> torch.Tensor:
    """``[Sq]``: a head's row of `key_counts`."""
    return counts[min(head, counts.shape[0] - 1)]


def too_few(n: int, what: str) -> str:
    return f"{n} {what} (a role needs {MIN_ROWS})"


def _row_scores(rec: LayerRecord, head: int, keys: torch.Tensor, rows: torch.Tensor) -> dict[str, float]:
    """previous_token, sink, local and broad: means over `rows` (bool ``[Sq]``) of row 0 of the
    batch, whose rows may see `keys` ``[Sq]`` keys."""
    near = [rec.weights_at(head, off) for off in range(4)]  # (Sq,) each: weight on the key `off` back
    stats = rec.stats
    broad = (stats.entropy[0, head] / keys.float().log()).clamp(0, 1)
    return {
        "previous_token": float(near[1][rows].mean()),
        "sink": float(stats.first_token_mass[0, head][rows].mean()),
        "local": float(torch.stack(near).sum(0)[rows].mean()),
        "broad": float(broad[rows].mean()),
    }


def scores_on(run: Run) -> list[list[dict[str, float] | None]]:
    """The previous-token, sink, local and broad scores of every head on `run` (row 0 of its batch; a
    prompt's run): per layer, per query head, the scores, or None where the run has fewer than
    `MIN_ROWS` rows with `MIN_KEYS` keys (a prompt of fewer than MIN_KEYS + MIN_ROWS - 1 tokens)."""
    row_stats(run.records)
    out: list[list[dict[str, float] | None]] = []
    for rec in run.records:
        counts = key_counts(rec)
        layer_scores: list[dict[str, float] | None] = []
        for h in range(rec.q.shape[1]):
            keys = head_keys(counts, h)
            rows = keys >= MIN_KEYS
            layer_scores.append(_row_scores(rec, h, keys, rows) if int(rows.sum()) >= MIN_ROWS else None)
        out.append(layer_scores)
    return out


def head_roles(probe: Run, repeat_length: int, step: Step | None = None) -> list[list[HeadRole]]:
    """Score every head on the probe and name its role.

    Args:
        probe: the forward of `repeated_sequence` (row 0): its last 2 × `repeat_length` tokens are
            the random sequence twice.
        repeat_length: the length of that sequence.
        step: called with (layers done, layers) as each layer is scored.

    Returns:
        Per layer, per query head, a `HeadRole` (with a `reason` and no role where the probe has
        too few rows to score the head).
    """
    n = repeat_length
    T = probe.inputs.shape[1]
    queries = torch.arange(T, device=probe.model.device)
    # a query at t in the 2nd copy attends to t - n + 1: the token after t's earlier occurrence
    target = queries - (n - 1)
    row_stats(probe.records)
    out = []
    for layer, rec in enumerate(probe.records):
        counts = key_counts(rec)
        layer_roles = []
        for h in range(rec.q.shape[1]):
            keys = head_keys(counts, h)
            rows = keys >= MIN_KEYS
            induction_rows = rows & (queries >= T - n) & (n > 0)  # (Sq,) second copy only
            induction_rows &= rec.allowed(h)[queries, target.clamp(0, T - 1)]  # its target may be seen
            n_rows, n_induction = int(rows.sum()), int(induction_rows.sum())
            reason = None
            if n_rows < MIN_ROWS:
                reason = too_few(n_rows, f"probe rows with at least {MIN_KEYS} keys")
            elif n_induction < MIN_ROWS:
                reason = too_few(
                    n_induction, "probe rows in the second copy that may see the token after their earlier occurrence"
                )
            scores: dict[str, float] = {}
            if n_induction:
                scores["induction"] = float(rec.weights_at(h, n - 1)[induction_rows].mean())
            if n_rows:
                scores |= _row_scores(rec, h, keys, rows)
            role = None if reason is not None else pick_role(scores)
            layer_roles.append(HeadRole(layer, h, h // rec.group_size, scores, role, reason))
        out.append(layer_roles)
        if step is not None:
            step(layer + 1, len(probe.records))
    return out
