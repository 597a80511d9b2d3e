"""A Llama-family causal language model, readable top to bottom.

RMSNorm, rotary position embeddings (default, linear and llama3 scaling), grouped-query attention
through a pluggable backend, SwiGLU MLP, and a preallocated KV cache. Module and parameter names
follow Hugging Face's ``LlamaForCausalLM`` (minus the ``model.`` prefix), so checkpoints written by
``save_pretrained`` load with one key rename (see `attnscope.model.loader`).

References: meta-llama ``llama/model.py``, gpt-fast ``model.py``, HF ``modeling_llama.py``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from attnscope.backends import AttendFn
from attnscope.backends.eager import attend as eager_attend
from attnscope.engine import Recorder
from attnscope.masks import MaskSpec, causal, sliding_window
from attnscope.model.compute import greedy, in_float32
from attnscope.model.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # HF's LlamaRMSNorm: x * rsqrt(mean(x²) + eps) in float32, back in x's dtype, times the weight.
        # The mean as sum / n, which is how torch takes a mean on the CPU (bit for bit, tested), in
        # fewer dispatches than F.rms_norm's composite: a decode step is mostly per-op cost
        h = x if x.dtype == torch.float32 else x.float()  # (a no-op .float() still costs a dispatch)
        h = h * h.pow(2).sum(-1, keepdim=True).div_(h.shape[-1]).add_(self.eps).rsqrt_()
        return self.weight * (h if h.dtype == x.dtype else h.to(x.dtype))


def rope_inv_freq(config: ModelConfig) -> torch.Tensor:
    """Inverse frequencies ``[head_dim / 2]`` (float32, CPU) with the config's rope scaling."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, device="cpu").float() / dim))
    scaling = config.rope_scaling or {}
    kind = scaling.get("rope_type", "default")
    if kind == "linear":
        inv_freq = inv_freq / scaling["factor"]
    elif kind == "llama3":
        # Llama 3.1: keep high frequencies, divide low ones by `factor`, interpolate in between.
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        inv_freq = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        inv_freq = torch.where(medium, smoothed, inv_freq)
    return inv_freq


class RotaryEmbedding(nn.Module):
    """cos and sin of the rotation angles of positions 0 .. n-1, computed once into a table that grows
    as longer sequences come: a lookup per forward instead of ~10 ops (a decode step is mostly fixed
    per-op cost), with the same elementwise ops on the same floats. The table's sin has its first
    half negated: `apply_rope` multiplies it by the half that HF's `rotate_half` negates."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.inv_freq = rope_inv_freq(config)  # (D/2,) plain CPU tensor: not a checkpoint entry
        self._tables: dict[tuple, tuple] = {}  # (device, dtype) -> (the inv_freq it was built from, cos, signed sin)

    def forward(
        self, start: int, length: int, positions: torch.Tensor | None, dtype: torch.dtype, device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, signed sin ``[T, D]`` of positions ``start .. start + length - 1``, or ``[B, 1, T, D]`` of
        per-row `positions` ``[B, T]`` when given."""
        if positions is None:
            cos, sin = self._table(start + length, dtype, device)
            return cos[start : start + length], sin[start : start + length]
        cos, sin = self._table(int(positions.max()) + 1 if positions.numel() else 0, dtype, device)
        return cos[positions].unsqueeze(1), sin[positions].unsqueeze(1)  # (B, 1, T, D): broadcast over heads

    def _table(self, end: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin ``[n, D]``, n >= `end`; rebuilt when `inv_freq` is another tensor (replace it,
        as the GGUF loader does, rather than writing into it)."""
        inv_freq = self.inv_freq
        found = self._tables.get((device, dtype))
        if found is None or found[0] is not inv_freq or len(found[1]) < end:
            n = max(end, 2 * len(found[1]) if found is not None else 256)
            with torch.inference_mode(False), torch.no_grad():  # plain tensors, whatever mode the forward runs in
                freqs = torch.arange(n, device=device).float().unsqueeze(-1) * inv_freq.to(device)  # (n, D/2)
                emb = torch.cat((freqs, freqs), dim=-1)  # (n, D)
                sin = emb.sin()
                sin[:, : freqs.shape[-1]].neg_()
                found = self._tables[(device, dtype)] = (inv_freq, emb.cos().to(dtype), sin.to(dtype))
        return found[1], found[2]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate x ``[B, H, T, D]`` by the angles of its positions: HF's ``x·cos + rotate_half(x)·sin``
    with ``rotate_half(x) = cat(-x2, x1)``, computed as ``x·cos + cat(x2, x1)·cat(-sin1, sin2)``: the
    same products bit for bit, since (-a)·b = a·(-b), and ``cat(x2, x1)`` is one `roll`."""
    return x * cos + x.roll(x.shape[-1] // 2, -1) * signed_sin


class KVCache:
    """Preallocated keys and values of every layer, ``[B, Hkv, max_len, D]`` each.

    `update` writes the new tokens' k and v after the `length` already cached and returns views of
    everything cached so far; the model advances `length` once all layers have seen the new tokens
    (`Transformer.forward_token_by_token`, which runs a layer at a time, sets it before each token of
    each layer to the tokens that layer holds, and to the total at the end).
    """

    def __init__(self, config: ModelConfig, batch: int, max_len: int, dtype: torch.dtype, device):
        shape = (batch, config.num_key_value_heads, max_len, config.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.max_len = max_len
        self.length = 0  # tokens cached in every layer (in the layer being run, during a layer-at-a-time pass)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} tokens > capacity {self.max_len}")
        self.k[layer][:, :, self.length : end] = k
        self.v[layer][:, :, self.length : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]  # (B, Hkv, past + T, D)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = config.num_key_value_heads
        self.head_dim = D = config.head_dim
        self.scale = D**-0.5
        self.q_proj = nn.Linear(config.hidden_size, self.n_heads * D, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.hidden_size, self.n_kv_heads * D, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.hidden_size, self.n_kv_heads * D, bias=config.qkv_bias)
        self.o_proj = nn.Linear(self.n_heads * D, config.hidden_size, bias=config.o_bias)
        self.q_norm = RMSNorm(D, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(D, config.rms_norm_eps) if config.qk_norm else None
        # This layer's mask. With a KV cache the scores are (new tokens) x (cache + new tokens):
        # the spec is bottom-right aligned, so new token i at position past + i sees keys <= past + i.
        if config.layer_types[layer] == "sliding_attention":
            assert config.sliding_window is not None  # ModelConfig gives sliding layers a window
            self.mask: MaskSpec = causal() & sliding_window(config.sliding_window)
        else:
            self.mask = causal()

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        attend: AttendFn,
        cache: KVCache | None,
        recorder: Recorder | None,
        mask: MaskSpec,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim)  # (B, T, Hq, D)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, Hkv, D)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, Hkv, D)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # (B, Hkv, past + T, D)
        out, lse = attend(q, k, v, mask, self.scale, need_lse=recorder is not None and recorder.wants_lse)
        if recorder is not None:
            recorder.attention(self.layer, q=q, k=k, v=v, out=out, lse=lse, mask=mask, scale=self.scale)
        out = out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, Hq * D)
        return self.o_proj(out)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        hidden, inner, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(hidden, inner, bias=bias)
        self.up_proj = nn.Linear(hidden, inner, bias=bias)
        self.down_proj = nn.Linear(inner, hidden, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # SwiGLU


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, rope, attend, cache, recorder, mask) -> torch.Tensor:
        x = x + self.attention(x, rope, attend, cache, recorder, mask)
        return x + self.mlp(self.post_attention_layernorm(x))

    def attention(self, x, rope, attend, cache, recorder, mask) -> torch.Tensor:
        """What the block adds to the residual stream x ``[B, T, hidden]`` through attention."""
        return self.self_attn(self.input_layernorm(x), rope, attend, cache, recorder, mask)

    def attention_in_float32(self, x, rope, recorder, mask) -> torch.Tensor:
        """`attention` computed in float32 whatever the weights' dtype: the weights upcast for this call
        (`torch.func.functional_call`), x and the rotary table ``rope`` float32, the eager float32
        reference attention. The exact answer that a low-precision `attention` on the same x rounds."""
        h = in_float32(self.input_layernorm, x.float())
        return in_float32(self.self_attn, h, rope, eager_attend, None, recorder, mask)


class Transformer(nn.Module):
    """The causal LM. ``forward(ids, attend=...)`` runs all positions in parallel (one attention call
    per layer, through the attention function given; the eager reference by default); with a
    `KVCache` it appends the new tokens to the cache, which is how incremental decoding runs."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.rotary_emb = RotaryEmbedding(config)

    @property
    def blocks(self) -> list[Block]:
        """The decoder blocks, in order (``self.layers``, typed)."""
        return [block for block in self.layers if isinstance(block, Block)]

    @property
    def masks(self) -> list[MaskSpec]:
        """The mask spec of each layer."""
        return [block.self_attn.mask for block in self.blocks]

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        w = self.embed_tokens.weight
        return KVCache(self.config, batch, max_len, w.dtype, w.device)

    def forward(
        self,
        ids: torch.Tensor,
        cache: KVCache | None = None,
        recorder: Recorder | None = None,
        attend: AttendFn | None = None,
        mask: MaskSpec | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``[B, T, vocab]`` for token ids ``[B, T]``.

        Args:
            ids: token ids of the new tokens.
            cache: a KV cache; the new tokens follow the `cache.length` tokens it holds.
            recorder: sees every attention call and the residual stream after each block.
            attend: the attention function of every layer (`attnscope.backends`; default: eager).
            mask: a spec combined (``&``) with every layer's own mask, e.g. ``padding(lengths)``.
            positions: rotary positions ``[B, T]`` of padded rows (default: the token indices).
        """
        T = ids.shape[1]
        past = cache.length if cache is not None else 0
        x, rope = self._embed(ids, past, positions)
        attend = attend or eager_attend
        for i in range(len(self.layers)):
            x = self._layer(i, x, rope, attend, cache, recorder, self._layer_mask(i, mask))  # (B, T, hidden)
        if cache is not None:
            cache.length += T
        return self._logits(x)  # (B, T, vocab)

    def forward_token_by_token(
        self,
        ids: torch.Tensor,
        cache: KVCache,
        recorder: Recorder | None = None,
        attend: AttendFn | None = None,
        mask: MaskSpec | None = None,
        positions: torch.Tensor | None = None,
        step: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """`forward_in_pieces` of one token each: what T one-token forwards through `cache` give."""
        pieces = [1] * ids.shape[1]
        return self.forward_in_pieces(ids, cache, pieces, recorder, attend, mask, positions, step)

    def forward_in_pieces(
        self,
        ids: torch.Tensor,
        cache: KVCache,
        pieces: Sequence[int],
        recorder: Recorder | None = None,
        attend: AttendFn | None = None,
        mask: MaskSpec | None = None,
        positions: torch.Tensor | None = None,
        step: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """What one forward per piece through `cache` gives, the i-th of ``pieces[i]`` tokens
        (``forward(ids[:, s:e], cache, ...)`` for each piece s..e-1, a chunk or a single token): the
        same cache and, layer by layer, the same calls shown to `recorder` in piece order, bit for bit,
        since every piece goes through every layer with the same ops on the same tensors; and the
        logits ``[B, T, vocab]``, from the final norm and head run once over every position (per
        position as they are, they differ from one call a piece only by the head matmul's rounding; 40
        one-token calls of a 49k-token vocabulary's head cost a third of a 1024-token forward).

        Run a layer at a time: layer i takes every piece through its cache before layer i+1 starts, so
        one layer's weights and cache stay in the CPU's caches, where one-token forwards stream every
        layer's weights and cache from memory once per token (1.4-1.6x faster on a CPU; a mask that the
        layers of one piece share is looked up once per layer, which measured no slower).
        `step(done, total)` after each piece of each layer, counting tokens × layers."""
        T = ids.shape[1]
        past = cache.length
        starts = [0, *itertools.accumulate(pieces)][:-1]
        chunks = [
            self._embed(ids[:, s : s + n], past + s, None if positions is None else positions[:, s : s + n])
            for s, n in zip(starts, pieces, strict=True)
        ]  # one ((B, n, hidden), rope) a piece: its rotary angles after the past + s positions cached
        xs = [x for x, _ in chunks]
        attend = attend or eager_attend
        n_layers = len(self.layers)
        layer_masks = [self._layer_mask(i, mask) for i in range(n_layers)]
        for i in range(n_layers):
            for p, (s, n) in enumerate(zip(starts, pieces, strict=True)):
                cache.length = past + s  # the tokens this layer has cached before this piece
                xs[p] = self._layer(i, xs[p], chunks[p][1], attend, cache, recorder, layer_masks[i])
                if step is not None:
                    step(i * T + s + n, n_layers * T)
        cache.length = past + T
        return self._logits(torch.cat(xs, dim=1))  # (B, T, vocab)

    def forward_isolated(
        self,
        ids: torch.Tensor,
        cache: KVCache,
        *,
        parallel: Recorder,
        incremental: Recorder,
        reference: Recorder | None = None,
        attend: AttendFn | None = None,
        mask: MaskSpec | None = None,
        positions: torch.Tensor | None = None,
        step: Callable[[int, int], None] | None = None,
        pieces: Sequence[int] | None = None,
    ) -> None:
        """Each layer's attention on the same input, the parallel forward's own input to that layer
        (teacher forcing at every layer), so that a difference seen at layer i is layer i's alone:

        - `parallel`: the layer on all T positions at once, as `forward` runs it;
        - `incremental`: the layer on `pieces` of positions in turn through `cache` (empty: positions
          0 .. T-1 are written to it piece by piece; default: one position a piece): its norm,
          projections, RoPE at the piece's positions, the cache write and the attention over the cache
          all run, as a prefill chunk or a decode step runs them;
        - `reference` (optional): the layer's attention computed in float32 on the same input
          (`Block.attention_in_float32`), the exact answer that both of the others round.

        Layers run one after the other; the input of layer i + 1 is layer i's parallel output.
        `step(done, total)` after each piece of each layer, counting tokens × layers."""
        T = ids.shape[1]
        pieces = [1] * T if pieces is None else list(pieces)
        starts = [0, *itertools.accumulate(pieces)][:-1]
        x, rope = self._embed(ids, 0, positions)  # (B, T, hidden)
        # each piece's rotary angles as a chunk or a decode step gets them: `_embed` after the s tokens cached
        ropes = [
            self._embed(ids[:, s : s + m], s, None if positions is None else positions[:, s : s + m])[1]
            for s, m in zip(starts, pieces, strict=True)
        ]
        rope32 = self.rotary_emb(0, T, positions, torch.float32, ids.device) if reference is not None else None
        attend = attend or eager_attend
        n = len(self.layers)
        for i, block in enumerate(self.blocks):
            layer_mask = self._layer_mask(i, mask)
            for p, (s, m) in enumerate(zip(starts, pieces, strict=True)):
                cache.length = s  # the tokens this layer has cached before this piece
                block.attention(x[:, s : s + m], ropes[p], attend, cache, incremental, layer_mask)
                if step is not None:
                    step(i * T + s + m, n * T)
            if reference is not None:
                block.attention_in_float32(x, rope32, reference, layer_mask)
            x = block(x, rope, attend, None, parallel, layer_mask)  # (B, T, hidden): the next layer's input
        cache.length = T

    def forward_float32(
        self,
        ids: torch.Tensor,
        recorder: Recorder | None = None,
        mask: MaskSpec | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`forward` computed in float32 whatever the weights' dtype, with the eager float32 attention:
        logits ``[B, T, vocab]``. A module at a time (`in_float32`: the embedding, each block, the norm
        and the head upcast for their call), so the float32 weights of one block, never of the whole
        model, exist at once besides the model's own."""
        x = in_float32(self.embed_tokens, ids)  # (B, T, hidden) float32
        rope = self.rotary_emb(0, ids.shape[1], positions, torch.float32, ids.device)
        for i, block in enumerate(self.layers):
            x = in_float32(block, x, rope, eager_attend, None, recorder, self._layer_mask(i, mask))
            if recorder is not None:
                recorder.residual(i, x)
        return in_float32(self.lm_head, in_float32(self.norm, x))

    def _embed(self, ids: torch.Tensor, past: int, positions: torch.Tensor | None):
        """The embeddings ``[B, T, hidden]`` of ids ``[B, T]`` that follow `past` tokens, and the cos and
        signed sin of their positions: ``[T, D]`` each, or ``[B, 1, T, D]`` of per-row `positions`."""
        x = self.embed_tokens(ids)
        return x, self.rotary_emb(past, ids.shape[1], positions, x.dtype, ids.device)

    def _layer_mask(self, i: int, mask: MaskSpec | None) -> MaskSpec:
        own = cast(Block, self.layers[i]).self_attn.mask
        return own if mask is None else own & mask

    def _layer(
        self, i: int, x, rope, attend: AttendFn, cache: KVCache | None, recorder: Recorder | None, mask: MaskSpec
    ) -> torch.Tensor:
        """Block i on x ``[B, T, hidden]``, its output shown to the recorder."""
        x = self.layers[i](x, rope, attend, cache, recorder, mask)
        if recorder is not None:
            recorder.residual(i, x)
        return x

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(x))

    @torch.inference_mode()
    def generate(
        self, ids: torch.Tensor, max_new_tokens: int, eos_token_id=None, attend: AttendFn | None = None
    ) -> torch.Tensor:
        """Greedy continuation ``[B, <= max_new_tokens]`` of ids ``[B, T]``, decoded with the KV cache."""
        cache = self.new_cache(ids.shape[0], ids.shape[1] + max_new_tokens)
        return self.decode(self(ids, cache, attend=attend), cache, max_new_tokens, eos_token_id, attend=attend)

    @torch.inference_mode()
    def decode(
        self,
        logits: torch.Tensor,
        cache: KVCache,
        max_new_tokens: int,
        eos_token_id=None,
        attend: AttendFn | None = None,
        mask: MaskSpec | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Continue greedily from the `logits` of a prefill whose keys and values are in `cache`,
        one token per step (with the prefill's extra `mask` and rotary `positions` ``[B, T]``, if any).
        Returns the new ids ``[B, <= max_new_tokens]``; stops when every row produced `eos_token_id`."""
        eos = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)

        def step(ids: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
            return self(ids, cache, attend=attend, mask=mask, positions=pos)

        return greedy(step, logits, max_new_tokens, eos, positions)
