"""What both engines compute the same way: greedy decoding from a one-token step, and a module
called in float32 (the exact computation that a low-precision model rounds)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.func import functional_call


def greedy(
    step: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    logits: torch.Tensor,
    max_new_tokens: int,
    eos_token_ids: Sequence[int] = (),
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Greedy decoding from a prefill's `logits` ``[B, T, vocab]``: `step(ids [B, 1], positions [B, 1] or
    None)` runs one token through the engine's cache and returns its logits. `positions` are the
    prefill's rotary positions ``[B, T]`` (padded rows), if any. Returns the new ids
    ``[B, <= max_new_tokens]``; stops when every row produced an end-of-sequence token."""
    eos = torch.tensor(list(eos_token_ids), device=logits.device, dtype=torch.long)
    new = []
    for i in range(max_new_tokens):
        next_ids = logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        new.append(next_ids)
        if eos.numel() and bool(torch.isin(next_ids, eos).all()):
            break
        if i + 1 < max_new_tokens:
            logits = step(next_ids, None if positions is None else positions[:, -1:] + i + 1)  # (B, 1, vocab)
    return torch.cat(new, dim=1) if new else logits.new_zeros(logits.shape[0], 0, dtype=torch.long)


def in_float32(module: torch.nn.Module, *args, **kwargs):
    """``module(*args, **kwargs)`` with its floating parameters and buffers upcast to float32 for this
    call (a float32 copy of each; the module keeps its own), through `torch.func.functional_call`:
    the float32 computation that a low-precision model rounds."""
    tensors = {
        name: t.float() if t.is_floating_point() else t
        for name, t in [*module.named_parameters(), *module.named_buffers()]
    }
    return functional_call(module, tensors, args, kwargs)
