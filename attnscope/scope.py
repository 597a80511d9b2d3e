"""Scope: run a model on a prompt with a chosen backend and keep what its attention did.

    model = attnscope.load_model("tiny-code")
    result = attnscope.Scope(model, backend="sdpa").run("def fibonacci(n):", max_new_tokens=16)
    result.attention(layer=0, head=3)   # float32 [q, k] probabilities, recomputed from q, k, lse
    result.report().to_json()

A list of prompts runs as one padded batch (left or right padding): the padding mask and per-row
rotary positions make every row compute what it would alone.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch

from attnscope import masks
from attnscope.backends import get_backend
from attnscope.errors import UserError
from attnscope.inspector.capture import Capture, LayerRecord
from attnscope.inspector.checks import CHECK_NAMES, run_checks
from attnscope.inspector.report import Check, HeadStats, LayerReport, Report, Token, json_number
from attnscope.model.loader import LoadedModel

Prompt = str | Sequence[int]


class Scope:
    """A model plus an attention backend, ready to inspect prompts."""

    def __init__(self, model: LoadedModel, backend: str = "eager"):
        get_backend(backend)  # fail early on an unknown or unavailable backend
        self.model = model
        self.backend = backend

    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt (a string, or token ids as they are), validated against the model."""
        config = self.model.config
        if isinstance(prompt, str):
            if not prompt:
                raise UserError("the prompt is empty")
            if self.model.tokenizer is None:
                raise UserError(f"{self.model.path} has no tokenizer.json: pass token ids, not text")
            ids = self.model.tokenizer.encode(prompt)
        else:
            ids = [int(i) for i in prompt]
        if not ids:
            raise UserError("the prompt is empty (no tokens)")
        bad = [i for i in ids if not 0 <= i < config.vocab_size]
        if bad:
            raise UserError(f"token id {bad[0]} is out of range for vocab_size {config.vocab_size}")
        return ids

    @torch.inference_mode()
    def run(self, prompt: Prompt | Sequence[Prompt], max_new_tokens: int = 0, padding_side: str = "left",
            checks: Sequence[str] = (), atol: float | None = None, rtol: float | None = None,
            on_layer: Callable[[int], None] | None = None, on_check: Callable[[Check], None] | None = None,
            roles: bool = False) -> Result:
        """Run the prompt in one parallel forward, capturing every layer's attention, then decode
        `max_new_tokens` greedily with the KV cache, then run the named checks.

        Args:
            prompt: text or a list of token ids; or a list of those, run as one padded batch.
            max_new_tokens: greedy continuation length.
            padding_side: "left" or "right", for a batch of prompts of different lengths.
            checks: names from `CHECK_NAMES` ("all" for every one), run on the prompt.
            atol, rtol: override the dtype's default tolerances of the comparing checks.
            on_layer, on_check: called as each layer's record arrives and as each check finishes (for
                live views); an exception raised there stops the run.
            roles: also score every head's role (`attnscope.inspector.heads`; one more forward pass).

        Returns:
            A `Result` with ``.tokens``, ``.logits``, ``.attention(layer, head)``, ``.report()``.
        """
        checks = CHECK_NAMES if checks == "all" else tuple(checks)
        batched = not isinstance(prompt, str) and bool(prompt) and not isinstance(prompt[0], int)
        prompts = list(prompt) if batched else [prompt]
        rows = [self.encode(p) for p in prompts]
        if max_new_tokens < 0:
            raise UserError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if padding_side not in ("left", "right"):
            raise UserError(f"padding side must be 'left' or 'right', got {padding_side!r}")
        total = max(len(r) for r in rows)
        limit = self.model.config.max_position_embeddings
        if total + max_new_tokens > limit:
            raise UserError(
                f"prompt ({total} tokens) + {max_new_tokens} new tokens exceeds the model's {limit} positions"
            )
        device = self.model.device
        ids = torch.zeros(len(rows), total, dtype=torch.long, device=device)  # (B, T); pads are id 0
        real = torch.zeros(len(rows), total, dtype=torch.bool, device=device)  # (B, T)
        for b, row in enumerate(rows):
            cols = slice(total - len(row), total) if padding_side == "left" else slice(0, len(row))
            ids[b, cols] = torch.tensor(row, device=device)
            real[b, cols] = True
        pad_mask = positions = None
        if not bool(real.all()):
            pad_mask = masks.padding([len(r) for r in rows], padding_side, total)
            positions = (real.long().cumsum(-1) - 1).clamp(min=0)  # (B, T): each row counts from 0

        net = self.model.net
        previous, net.backend = net.backend, self.backend
        try:
            cache = net.new_cache(len(rows), total + max_new_tokens)
            capture = Capture(on_layer=on_layer)
            # all positions at once: one attention call per layer
            logits = net(ids, cache, recorder=capture, mask=pad_mask, positions=positions)  # (B, T, vocab)
            last = torch.tensor([total - 1 if padding_side == "left" else len(r) - 1 for r in rows], device=device)
            last_logits = logits[torch.arange(len(rows), device=device), last].unsqueeze(1)  # (B, 1, vocab)
            new_ids = net.decode(last_logits, cache, max_new_tokens, self.model.config.eos_token_id,
                                 mask=pad_mask, positions=positions)
        finally:
            net.backend = previous
        result = Result(self, prompts if batched else prompt, (ids, pad_mask, positions), real, logits.float(),
                        new_ids.tolist(), capture.layers(), batched)
        result.checks, result.diffs = run_checks(result, checks, atol, rtol, on_check=on_check)
        if roles:
            from attnscope.inspector.heads import head_roles

            result.roles = head_roles(self, result=result)
        return result


class Result:
    """What one `Scope.run` produced: tokens, logits, continuation and per-layer attention records.

    For a batch of prompts, methods take ``batch=`` (the row) and ``.logits`` is ``[B, T, vocab]``.
    """

    def __init__(self, scope: Scope, prompt, inputs, real: torch.Tensor, logits: torch.Tensor,
                 continuation: list[list[int]], records: list[LayerRecord], batched: bool):
        self.scope = scope
        self.prompt = prompt
        self.inputs = inputs  # (ids [B, T], padding mask spec or None, rotary positions [B, T] or None)
        self.batch_ids = inputs[0].tolist()  # per row, the padded token ids
        self.real = real  # [B, T] bool: True for the rows' real tokens, False for padding
        self.batched = batched
        self.logits = logits if batched else logits[0]  # float32 [T, vocab] ([B, T, vocab] for a batch)
        self.continuation_ids_by_row = continuation
        self.records = records
        self.checks = []  # Check findings, filled by Scope.run
        self.diffs = {}  # check name -> per-layer Diff (per head figures)
        self.roles = None  # per layer, per head HeadRole when run with roles=True

    @property
    def ids(self) -> list[int]:
        """Token ids of the prompt (row 0 of a batch, padding included)."""
        return self.batch_ids[0]

    @functools.cached_property
    def tokens(self) -> list[str]:
        """The prompt's tokens as text (token ids as strings when the model has no tokenizer)."""
        return self.token_texts(self.ids)

    @property
    def continuation_ids(self) -> list[int]:
        return self.continuation_ids_by_row[0]

    @property
    def continuation(self) -> str:
        tok = self.scope.model.tokenizer
        return tok.decode(self.continuation_ids) if tok else " ".join(map(str, self.continuation_ids))

    @property
    def n_layers(self) -> int:
        return len(self.records)

    @property
    def n_heads(self) -> int:
        return self.scope.model.config.num_attention_heads

    def token_texts(self, ids: list[int]) -> list[str]:
        tok = self.scope.model.tokenizer
        return tok.token_texts(ids) if tok else [str(i) for i in ids]

    def check_place(self, layer: int, head: int | None = None) -> LayerRecord:
        """The record of `layer`; a UserError naming the valid range when layer or head is outside it."""
        if not 0 <= layer < self.n_layers:
            raise UserError(f"layer {layer} is out of range (the model has {self.n_layers} layers: "
                            f"0..{self.n_layers - 1})")
        if head is not None and not 0 <= head < self.n_heads:
            raise UserError(f"head {head} is out of range (each layer has {self.n_heads} heads: "
                            f"0..{self.n_heads - 1})")
        return self.records[layer]

    def attention(self, layer: int, head: int, q: slice = slice(None), k: slice = slice(None),
                  batch: int = 0) -> torch.Tensor:
        """Float32 attention probabilities ``[q, k]`` of query head `head` in `layer`."""
        return self.check_place(layer, head).probabilities(head, q, k, batch=batch)

    def attention_pooled(self, layer: int, head: int, rows: int, cols: int, reduce: str = "max",
                         batch: int = 0, q: slice = slice(None), k: slice = slice(None)):
        """A rows × cols pooled map (numpy float32) of one head, computed tile by tile: for
        screens and long prompts, never materializing the full matrix. With the triton backend
        the map comes from the probability kernel (`attnscope.kernels.attention_probs`)."""
        rec = self.check_place(layer, head)
        if self.scope.backend != "triton":
            return rec.pooled(head, rows, cols, reduce, batch, q, k)
        from attnscope import kernels

        Sq, Sk = rec.shape
        probs = kernels.attention_probs(
            rec.q[batch, head], rec.k[batch, head // rec.group_size], rec.lse[batch, head], scale=rec.scale,
            causal=True, window=kernels.mask_window(rec.mask), q_offset=Sk - Sq, rows=q, cols=k,
            pool=(rows, cols), reduce=reduce)
        return probs.cpu().numpy()

    def attention_group(self, layer: int, kv_head: int, batch: int = 0, reduce: str | None = None):
        """The query heads that read `kv_head`: stacked ``[G, q, k]``, or summed with reduce="sum"."""
        rec = self.check_place(layer)
        if not 0 <= kv_head < rec.k.shape[1]:
            raise UserError(f"kv head {kv_head} is out of range (0..{rec.k.shape[1] - 1})")
        heads = range(kv_head * rec.group_size, (kv_head + 1) * rec.group_size)
        maps = torch.stack([rec.probabilities(h, batch=batch) for h in heads])
        return maps.sum(0) if reduce == "sum" else maps

    def head_stats(self, batch: int = 0) -> list[list[HeadStats]]:
        """Per layer, per query head: means over the real query rows of entropy, max weight and
        first-token mass; non-finite and fully-masked counts; the checks' largest differences."""
        real = self.real[batch]  # (T,)
        n = max(1, int(real.sum()))
        out = []
        for layer, rec in enumerate(self.records):
            r = rec.rows

            def mean(t, real=real):
                return t[batch].masked_fill(~real, 0).sum(-1).div(n).tolist()  # (Hq,)

            entropy, max_w, sink = mean(r.entropy), mean(r.max_weight), mean(r.first_token_mass)
            bad = (r.nonfinite_scores + r.nonfinite_weights + r.nonfinite_output)[batch].sum(-1).tolist()
            empty = (r.fully_masked[batch] & real).sum(-1).tolist()
            diffs = {name: self.diffs[name][layer].max_abs.tolist() for name in self.diffs}
            over = {name: self.diffs[name][layer].bad_rows[batch].any(-1).tolist() for name in self.diffs}

            def flags(h, bad=bad, empty=empty, over=over):
                found = ["nan"] if bad[h] else []
                found += ["masked_rows"] if empty[h] else []
                return found + [name for name, o in over.items() if o[h]]

            out.append([
                HeadStats(head=h, kv_head=h // rec.group_size, entropy=json_number(entropy[h]),
                          max_weight=json_number(max_w[h]), first_token_mass=json_number(sink[h]),
                          nonfinite=int(bad[h]), fully_masked_rows=int(empty[h]),
                          **{name: json_number(d[h]) for name, d in diffs.items()}, flags=flags(h),
                          **self._role(layer, h))
                for h in range(self.n_heads)
            ])
        return out

    def _role(self, layer: int, head: int) -> dict:
        if self.roles is None:
            return {}
        r = self.roles[layer][head]
        return {"role": r.role, "role_scores": {k: round(v, 4) for k, v in r.scores.items()}}

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def report(self, batch: int = 0) -> Report:
        """The JSON-serializable `Report` of one row (row 0 by default)."""
        model = self.scope.model
        c = model.config
        ids = self.batch_ids[batch]
        tokens = [Token(i, t, s) for i, (t, s) in enumerate(zip(ids, self.token_texts(ids), strict=True))]
        new = self.continuation_ids_by_row[batch]
        continuation = [Token(len(ids) + i, t, s) for i, (t, s) in enumerate(zip(new, self.token_texts(new),
                                                                                   strict=True))]
        layers = [LayerReport(rec.layer, repr(rec.mask), heads)
                  for rec, heads in zip(self.records, self.head_stats(batch), strict=True)]
        prompt = self.prompt[batch] if self.batched else self.prompt
        return Report(
            model={"name": model.name, "path": str(model.path), "model_type": c.model_type,
                   "layers": c.num_hidden_layers, "heads": c.num_attention_heads,
                   "kv_heads": c.num_key_value_heads, "head_dim": c.head_dim, "vocab_size": c.vocab_size},
            backend=self.scope.backend,
            reference="eager",
            device=str(model.device),
            dtype=str(model.dtype).removeprefix("torch."),
            prompt=prompt if isinstance(prompt, str) else [int(i) for i in prompt],
            tokens=tokens,
            continuation=continuation,
            masks=[layer.mask for layer in layers],
            layers=layers,
            checks=list(self.checks),
            mask_cache=masks.cache_stats(),
        )
