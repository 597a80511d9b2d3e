"""Scope: run a model on a prompt with a chosen backend and keep what its attention did.

    model = attnscope.load_model("tiny-code")
    result = attnscope.Scope(model, backend="sdpa").run("def fibonacci(n):", max_new_tokens=16)
    result.attention(layer=0, head=3)   # float32 [q, k] probabilities, recomputed from q, k, lse
    result.report().to_json()
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from attnscope.backends import get_backend
from attnscope.errors import UserError
from attnscope.inspect.capture import Capture, LayerRecord
from attnscope.inspect.report import HeadStats, LayerReport, Report, Token, json_number
from attnscope.model.loader import LoadedModel


class Scope:
    """A model plus an attention backend, ready to inspect prompts."""

    def __init__(self, model: LoadedModel, backend: str = "eager"):
        get_backend(backend)  # fail early on an unknown or unavailable backend
        self.model = model
        self.backend = backend

    def encode(self, prompt: str | Sequence[int]) -> list[int]:
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
    def run(self, prompt: str | Sequence[int], max_new_tokens: int = 0) -> Result:
        """Run the prompt in one parallel forward, capturing every layer's attention, then decode
        `max_new_tokens` greedily with the KV cache.

        Args:
            prompt: text (tokenized with the model's tokenizer) or a list of token ids.
            max_new_tokens: greedy continuation length.

        Returns:
            A `Result` with ``.tokens``, ``.logits``, ``.attention(layer, head)``, ``.report()``.
        """
        ids = self.encode(prompt)
        if max_new_tokens < 0:
            raise UserError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        limit = self.model.config.max_position_embeddings
        if len(ids) + max_new_tokens > limit:
            raise UserError(
                f"prompt ({len(ids)} tokens) + {max_new_tokens} new tokens exceeds the model's "
                f"{limit} positions"
            )
        net = self.model.net
        previous, net.backend = net.backend, self.backend
        try:
            x = torch.tensor([ids], device=self.model.device)  # (1, T)
            cache = net.new_cache(1, len(ids) + max_new_tokens)
            capture = Capture()
            logits = net(x, cache, recorder=capture)  # (1, T, vocab): all positions at once
            new_ids = net.decode(logits, cache, max_new_tokens, self.model.config.eos_token_id)
        finally:
            net.backend = previous
        return Result(self, prompt, ids, logits[0].float(), new_ids[0].tolist(), capture.records)


class Result:
    """What one `Scope.run` produced: tokens, logits, continuation and per-layer attention records."""

    def __init__(self, scope: Scope, prompt, ids: list[int], logits: torch.Tensor, continuation: list[int],
                 records: dict[int, LayerRecord]):
        self.scope = scope
        self.prompt = prompt
        self.ids = ids
        self.logits = logits  # [T, vocab] float32
        self.continuation_ids = continuation
        self.records = [records[i] for i in range(len(records))]

    @property
    def tokens(self) -> list[str]:
        """The prompt's tokens as text (token ids as strings when the model has no tokenizer)."""
        return _token_texts(self.scope.model, self.ids)

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

    def _record(self, layer: int, head: int) -> LayerRecord:
        if not 0 <= layer < self.n_layers:
            raise UserError(f"layer {layer} is out of range (the model has {self.n_layers} layers: 0..{self.n_layers - 1})")
        if not 0 <= head < self.n_heads:
            raise UserError(f"head {head} is out of range (each layer has {self.n_heads} heads: 0..{self.n_heads - 1})")
        return self.records[layer]

    def attention(self, layer: int, head: int, q: slice = slice(None), k: slice = slice(None)) -> torch.Tensor:
        """Float32 attention probabilities ``[q, k]`` of query head `head` in `layer`."""
        return self._record(layer, head).probabilities(head, q, k)

    def head_stats(self) -> list[list[HeadStats]]:
        """Per layer, per query head: mean entropy, max weight and first-token mass."""
        out = []
        for rec in self.records:
            stats = {name: t.tolist() for name, t in rec.head_statistics().items()}
            out.append([
                HeadStats(head=h, kv_head=h // rec.n_groups,
                          entropy=json_number(stats["entropy"][h]),
                          max_weight=json_number(stats["max_weight"][h]),
                          first_token_mass=json_number(stats["first_token_mass"][h]))
                for h in range(self.n_heads)
            ])
        return out

    def report(self) -> Report:
        model = self.scope.model
        c = model.config
        tokens = [Token(i, t, s) for i, (t, s) in enumerate(zip(self.ids, self.tokens, strict=True))]
        texts = _token_texts(model, self.continuation_ids)
        continuation = [Token(len(self.ids) + i, t, s)
                        for i, (t, s) in enumerate(zip(self.continuation_ids, texts, strict=True))]
        layers = [LayerReport(rec.layer, repr(rec.mask), heads)
                  for rec, heads in zip(self.records, self.head_stats(), strict=True)]
        return Report(
            model={"name": model.name, "path": str(model.path), "model_type": c.model_type,
                   "layers": c.num_hidden_layers, "heads": c.num_attention_heads,
                   "kv_heads": c.num_key_value_heads, "head_dim": c.head_dim, "vocab_size": c.vocab_size},
            backend=self.scope.backend,
            reference="eager",
            device=str(model.device),
            dtype=str(model.dtype).removeprefix("torch."),
            prompt=self.prompt if isinstance(self.prompt, str) else list(self.ids),
            tokens=tokens,
            continuation=continuation,
            masks=[layer.mask for layer in layers],
            layers=layers,
        )


def _token_texts(model: LoadedModel, ids: list[int]) -> list[str]:
    return model.tokenizer.token_texts(ids) if model.tokenizer else [str(i) for i in ids]
