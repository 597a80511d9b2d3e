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
    return max(passing, key=passing.get) if passing else None


def head_roles(scope, prompt=None, seed: int = 0, result=None) -> list[list[HeadRole]]:
    """Score every head of `scope`'s model and name its role.

    Args:
        scope: an `attnscope.Scope` (model + backend).
        prompt: text or ids for the previous-token, sink, local and broad scores (default: the
            repeated random sequence, which also gives the induction score).
        seed: seed of the random sequence.
        result: a `Result` of `scope` to score instead of running `prompt` again.

    Returns:
        Per layer, per query head, a `HeadRole`.
    """
    config = scope.model.config
    bos = config.bos_token_id if isinstance(config.bos_token_id, int) else None
    rep = repeated_sequence(config.vocab_size, REPEAT_LENGTH, bos, seed)
    rep_result = scope.run(rep)
    if result is None:
        result = scope.run(prompt) if prompt is not None else rep_result
    n = REPEAT_LENGTH
    start = len(rep) - n  # first query of the second copy
    out = []
    for layer, (rec, rep_rec) in enumerate(zip(result.records, rep_result.records, strict=True)):
        rows = rec.rows
        T = rec.shape[0]
        keys = torch.arange(1, T + 1, device=rec.q.device).float()  # allowed keys per causal row
        layer_roles = []
        for h in range(rec.q.shape[1]):
            prev = rec.weights_at(h, 1)[1:]
            local = sum(rec.weights_at(h, off) for off in range(4))
            # query at t in the 2nd copy attends to t - n + 1: the token after t's earlier occurrence
            induction = rep_rec.weights_at(h, n - 1)[start:]
            entropy = rows.entropy[0, h]
            broad = (entropy[1:] / torch.log(keys[1:])).clamp(0, 1)
            scores = {"induction": _mean(induction), "previous_token": _mean(prev),
                      "sink": _mean(rows.first_token_mass[0, h, 1:]), "local": _mean(local[1:]),
                      "broad": _mean(broad[3:])}
            layer_roles.append(HeadRole(layer, h, h // rec.group_size, scores, pick_role(scores)))
        out.append(layer_roles)
    return out
