"""The SDPA backend: torch.nn.functional.scaled_dot_product_attention with ``enable_gqa``.

torch picks its own kernel (flash, memory-efficient or math). The public SDPA call does not return
the log-sum-exp, so when the inspector asks for it (``need_lse=True``) it is computed by the eager
reference's float32 pass over the same q and k. Rows with no allowed key are set to 0, as the
interface requires (some SDPA kernels return NaN there).

Attention sinks (``sinks=``) are applied after the call: a sink only adds a term to each row's
softmax denominator, so the output is rescaled by ``exp(lse_keys - lse)``. Logit soft-capping has no
SDPA form; this backend does not accept it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnscope.backends import check_shapes
from attnscope.backends.eager import log_sum_exp
from attnscope.masks import Causal, MaskSpec


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: MaskSpec, scale: float, *, need_lse: bool = True,
    sinks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention through torch SDPA; see `attnscope.backends` for the contract."""
    check_shapes(q, k, v, mask)
    Sq, Sk = q.shape[2], k.shape[2]
    if isinstance(mask, Causal) and Sq == Sk:
        # Square causal: top-left and bottom-right alignment coincide, so SDPA's fast path applies.
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
    else:
        allowed = mask.dense(Sq, Sk, q.device)  # (B|1, Hq|1, Sq, Sk)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale, enable_gqa=True)
        empty_rows = ~allowed.any(dim=-1, keepdim=True)  # (B|1, Hq|1, Sq, 1)
        out = out.masked_fill(empty_rows, 0.0)  # unconditionally: asking first would sync the device
    if sinks is None:
        return out, (log_sum_exp(q, k, mask, scale) if need_lse else None)
    lse_keys = log_sum_exp(q, k, mask, scale)  # (B, Hq, Sq)
    lse = torch.logaddexp(lse_keys, sinks.float().view(1, -1, 1))
    return (out * torch.exp(lse_keys - lse).unsqueeze(-1).to(out.dtype)), lse
