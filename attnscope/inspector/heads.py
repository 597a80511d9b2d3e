"""Head roles: what each attention head does, scored on inputs where the answer is known.

For every head, scores in [0, 1] (means over query rows):

- ``previous_token``: weight on the key just before the query;
- ``induction``: on a random token sequence repeated twice (as TransformerLens' head detector
  does), the weight that a query in the second copy puts on the token that followed its previous
  occurrence: the copying circuit's signature;
- ``sink``: weight on the first token (BOS; the attention sink);
- ``local``: weight on the query itself and the three keys before it;
- ``broad``: entropy over the allowed keys divided by its maximum, ln(number of keys): 1 is
  perfectly broad attention.

A head's role is the highest-scoring one whose score passes its threshold (`THRESHOLDS`); a head
that passes none has no role. ``previous_token`` heads are local too, so ``local`` is only named
when ``previous_token`` is not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnscope.inspector.capture import row_stats
from attnscope.inspector.run import Run, Step

ROLES = ("induction", "previous_token", "sink", "local", "broad")
THRESHOLDS = {"induction": 0.4, "previous_token": 0.5, "sink": 0.6, "local": 0.8, "broad": 0.9}
REPEAT_LENGTH = 48  # length of the random sequence that is repeated for the induction score


@dataclass
class HeadRole:
    layer: int
    head: int
    kv_head: int
    scores: dict[str, float]
    role: str | None


def repeated_sequence(vocab_size: int, length: int = REPEAT_LENGTH, bos: int | None = None, seed: int = 0) -> list[int]:
    """[bos] + R + R for R of `length` random token ids (special ids 0..3 avoided), fixed by `seed`."""
    gen = torch.Generator().manual_seed(seed)
    low = min(4, vocab_size - 1)
    rand = torch.randint(low, vocab_size, (length,), generator=gen).tolist()
    return ([bos] if bos is not None else []) + rand + rand


def _mean(x: torch.Tensor) -> float:
    return float(x.mean()) if x.numel() else 0.0


def pick_role(scores: dict[str, float]) -> str | None:
    passing = {r: s for r, s in scores.items() if s >= THRESHOLDS[r]}
    if "previous_token" in passing:
        passing.pop("local", None)
    return max(passing, key=lambda r: passing[r]) if passing else None


def head_roles(run: Run, probe: Run, step: Step | None = None) -> list[list[HeadRole]]:
    """Score every head and name its role.

    Args:
        run: the forward whose rows give the previous-token, sink, local and broad scores (row 0).
        probe: the forward of `repeated_sequence` (row 0), which gives the induction score; it may
            be `run` itself.
        step: called with (layers done, layers) as each layer is scored.

    Returns:
        Per layer, per query head, a `HeadRole`.
    """
    n = REPEAT_LENGTH
    start = probe.inputs.shape[1] - n  # first query of the second copy
    row_stats(run.records)
    out = []
    for layer, (rec, rep_rec) in enumerate(zip(run.records, probe.records, strict=True)):
        stats = rec.stats
        T = rec.shape[0]
        keys = torch.arange(1, T + 1, device=rec.q.device).float()  # allowed keys per causal row
        layer_roles = []
        for h in range(rec.q.shape[1]):
            near = [rec.weights_at(h, off) for off in range(4)]  # (Sq,) each: weight on the key `off` back
            prev, local = near[1][1:], torch.stack(near).sum(0)
            # query at t in the 2nd copy attends to t - n + 1: the token after t's earlier occurrence
            induction = rep_rec.weights_at(h, n - 1)[start:]
            entropy = stats.entropy[0, h]
            broad = (entropy[1:] / torch.log(keys[1:])).clamp(0, 1)
            scores = {
                "induction": _mean(induction),
                "previous_token": _mean(prev),
                "sink": _mean(stats.first_token_mass[0, h, 1:]),
                "local": _mean(local[1:]),
                "broad": _mean(broad[3:]),
            }
            layer_roles.append(HeadRole(layer, h, h // rec.group_size, scores, pick_role(scores)))
        out.append(layer_roles)
        if step is not None:
            step(layer + 1, len(run.records))
    return out
