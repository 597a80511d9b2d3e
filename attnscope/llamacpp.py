"""The ``llama.cpp`` engine: a GGUF file run inside llama.cpp itself, watched through its eval callback.

llama-cpp-python (the ``llamacpp`` extra, pinned to `PINNED`) loads the file with llama.cpp's own
loader, tokenizer and kernels. A context is created with flash attention off (flash attention never
materializes the probabilities) and with ``cb_eval``, the mechanism of llama.cpp's ``eval-callback``
example: the graph scheduler asks the callback, node by node, whether it wants to see that node
("ask" phase: only the nodes recorded are asked for, each ask splits the graph), then calls it again
once the node is computed, when its data is copied out (it is gone after the callback returns).
Names are not unique (``Qcur-3`` names the MUL_MAT, the RESHAPE and the ROPE nodes), so captures are
keyed by name and op. Per layer i:

- ``Qcur-i`` / ``Kcur-i`` (ROPE): q ``[D, Hq, T]`` and k ``[D, Hkv, T]`` after RoPE (and q/k norms);
- ``Vcur-i`` (the last node of that name): v ``[D, Hkv, T]``;
- ``kq-i``: the scores q·k ``[cells, T, Hq]`` before scale and mask; ``kq_soft_max-i``: the
  probabilities (its op parameters hold the scale); ``kqv_out-i``: the attention output
  ``[Hq·D, T]``; ``l_out-i``: the block's output ``[hidden, T]``.

What a record holds. q and k are mapped to Hugging Face's order: with llama.cpp's NORM rotary mode
(the ``llama`` architecture, whose converter permutes the q/k weight rows) dimension 2i is HF's i and
2i+1 is HF's i + D/2; in NEOX mode (qwen2, qwen3) the order is HF's already. The scores are invariant
under that permutation. k and v are kept as the KV cache stores them (rounded to the cache's type)
and joined with what earlier calls put in the cache; q is rounded as the kq product reads it (to the
cache's type: llama.cpp converts the f32 q to f16 for a matmul with an f16 cache). The lse is
recomputed from llama.cpp's own numbers: lse = scale·kq[j] − log p[j] at each row's most probable
cell j, so any probability recomputed later as exp(q·k·scale − lse) is llama.cpp's (~1e-6).

The engine's dtype is the KV cache's type, chosen by ``dtype``: float32 (F32 cache: q·k, the softmax
and p·v all in float32), float16 (llama.cpp's default F16 cache) or bfloat16.

How the `attnscope.engine.Engine` protocol is honoured. llama.cpp's attention kernel cannot be
replaced: ``forward`` records what llama.cpp computed, and `attend` must be `OWN_ATTENTION`, the
marker `attnscope.Scope` passes for this engine (``--backend auto``; any other backend is refused in
one line). attnscope's backends take part only as the reference: ``backend_vs_reference`` runs the
eager float32 attention on llama.cpp's own q, k, v against llama.cpp's output. The KV cache is
llama.cpp's own (`LlamaCppCache` names the tokens it holds): ``full_vs_incremental`` decodes a token
(or `LlamaCppEngine.chunk` tokens) at a time through it, against llama.cpp's own batch. One prompt at
a time: no padded batches.

Layout checks at run time. The Python bindings do not describe ``struct ggml_tensor``; `_Tensor`
does, as ggml.h of the pinned release has it. On the first node seen, its name, element count and op
are read both through the struct and through ggml's functions (``ggml_get_name``,
``ggml_nelements``, ``ggml_op_name``); ``llama_context_params`` is checked by its defaults (the
flash-attention and cache-type fields hold llama.cpp's known defaults). A mismatch is one line
naming the installed version and the pinned one.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnscope import masks
from attnscope.engine import Layout
from attnscope.errors import ConfigError, LoadError, UnsupportedFeature, UserError
from attnscope.masks import MaskSpec
from attnscope.model.compute import greedy

PINNED = "0.3.36"
INSTALL = (
    f'pip install "attnscope[llamacpp]" (llama-cpp-python=={PINNED}, built from source: ~30 min on 2 cores; '
    'trim it with CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF")'
)
# general.architecture values whose per-layer node names (build_attn's Qcur/Kcur/Vcur, kq, kq_soft_max,
# kqv_out, l_out) are mapped; mistral GGUF files are written as llama
ARCHITECTURES = ("llama", "qwen2", "qwen3")
ENGINE = "llama.cpp"
# the ggml types of the KV cache for each dtype (ggml.h's enum ggml_type)
GGML_TYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 30}
GGML_F32 = 0
ROPE_NEOX = 2  # GGML_ROPE_TYPE_NEOX, a bit of the ROPE node's mode (op_params[2])


def OWN_ATTENTION(q, k, v, mask, scale, *, need_lse=True, softcap=None, sinks=None):
    """The attend function of the llama.cpp engine: a marker, never called (llama.cpp's kernel computes
    the attention); `attnscope.Scope` passes it to the engine."""
    raise UnsupportedFeature("the llama.cpp engine computes attention with llama.cpp's own kernel")


class _Tensor(ctypes.Structure):
    """``struct ggml_tensor`` of ggml.h in llama-cpp-python `PINNED` (GGML_MAX_DIMS 4, GGML_MAX_OP_PARAMS
    64, GGML_MAX_SRC 10, GGML_MAX_NAME 64); checked against ggml's accessors at run time."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),  # elements per dimension, ne[0] the fastest
        ("nb", ctypes.c_size_t * 4),  # strides in bytes
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * 16),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * 10),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * 64),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


@dataclass
class _Lib:
    """llama-cpp-python's low-level module and the ggml functions it does not bind."""

    llama: Any  # llama_cpp.llama_cpp
    version: str
    ggml: Any  # libggml-base, with the argument and result types set below

    @classmethod
    def load(cls) -> _Lib:
        try:
            import llama_cpp
            from llama_cpp import llama_cpp as low
        except ImportError:
            raise UserError(f"the llama.cpp engine needs llama-cpp-python: {INSTALL}") from None
        lib_dir = Path(low.__file__).parent / "lib"
        candidates = sorted(lib_dir.glob("libggml-base.*")) or sorted(lib_dir.glob("ggml-base.*"))
        if not candidates:
            raise LoadError(f"llama-cpp-python {llama_cpp.__version__}: no ggml-base library in {lib_dir}")
        ggml = ctypes.CDLL(str(candidates[0]))
        for name, res, args in (
            ("ggml_get_name", ctypes.c_char_p, [ctypes.c_void_p]),
            ("ggml_op_name", ctypes.c_char_p, [ctypes.c_int]),
            ("ggml_nelements", ctypes.c_int64, [ctypes.c_void_p]),
            ("ggml_nbytes", ctypes.c_size_t, [ctypes.c_void_p]),
            ("ggml_backend_buffer_is_host", ctypes.c_bool, [ctypes.c_void_p]),
            ("ggml_backend_tensor_get", None, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]),
        ):
            fn = getattr(ggml, name)
            fn.restype, fn.argtypes = res, args
        return cls(low, str(llama_cpp.__version__), ggml)

    def layout_error(self, what: str) -> LoadError:
        return LoadError(
            f"llama-cpp-python {self.version}: {what} is not laid out as attnscope reads it "
            f"(attnscope reads llama-cpp-python {PINNED}: {INSTALL})"
        )

    def check_context_params(self, params) -> None:
        """``llama_context_params``' fields where attnscope writes them, by llama.cpp's defaults."""
        expected = (-1, 1, 1, False, -1.0, True)  # flash attention AUTO, F16 caches, no callback, yarn, offload_kqv
        found = (
            params.flash_attn_type,
            params.type_k,
            params.type_v,
            bool(params.cb_eval),
            params.yarn_ext_factor,
            params.offload_kqv,
        )
        if found != expected:
            raise self.layout_error("llama_context_params")

    def check_tensor(self, address: int, t: _Tensor) -> None:
        """`_Tensor` against ggml's own accessors on one node."""
        name = self.ggml.ggml_get_name(address)
        op = self.ggml.ggml_op_name(t.op)
        if name != t.name or self.ggml.ggml_nelements(address) != int(np.prod(list(t.ne))) or not op:
            raise self.layout_error("struct ggml_tensor")


def _read(lib: _Lib, address: int, t: _Tensor) -> np.ndarray:
    """A float32 node's data as numpy ``[ne3, ne2, ne1, ne0]`` (a copy, made inside the callback)."""
    if t.type != GGML_F32:
        raise LoadError(f"llama.cpp node {t.name.decode()} has ggml type {t.type}, attnscope reads float32 nodes")
    shape = tuple(int(n) for n in reversed(t.ne))
    strides = tuple(int(s) for s in reversed(t.nb))
    extent = 4 + sum((n - 1) * s for n, s in zip(shape, strides, strict=True))
    if t.buffer and lib.ggml.ggml_backend_buffer_is_host(t.buffer):
        flat = np.ctypeslib.as_array((ctypes.c_uint8 * extent).from_address(t.data))
    else:  # device memory: ggml copies it (contiguous nodes only)
        nbytes = lib.ggml.ggml_nbytes(address)
        if nbytes != extent:
            raise LoadError(f"llama.cpp node {t.name.decode()} is a strided view on a device: attnscope cannot read it")
        flat = np.empty(nbytes, dtype=np.uint8)
        lib.ggml.ggml_backend_tensor_get(address, flat.ctypes.data, 0, nbytes)
    return np.lib.stride_tricks.as_strided(flat.view(np.float32), shape, strides).copy()


# the nodes recorded per layer: name prefix -> the op it must have ("" for the last node of that name)
_NODES = {
    "Qcur": "ROPE",
    "Kcur": "ROPE",
    "Vcur": "",
    "kq": "MUL_MAT",
    "kq_soft_max": "SOFT_MAX",
    "kqv_out": "",
    "l_out": "",
}


@dataclass
class _Capture:
    """What one llama_decode's callback copied out: (prefix, layer) -> (array, op params)."""

    probabilities: bool = False  # keep kq_soft_max itself (tests, and views that want llama.cpp's own)
    nodes: dict[tuple[str, int], tuple[np.ndarray, tuple[int, ...]]] = field(default_factory=dict)
    error: BaseException | None = None


def _node(name: str) -> tuple[str, int] | None:
    """("Qcur", 3) of "Qcur-3"; None for a name that is not a recorded per-layer node."""
    prefix, _, layer = name.rpartition("-")
    if prefix in _NODES and layer.isdigit():
        return prefix, int(layer)
    return None


@dataclass
class LlamaCppCache:
    """A KV cache of the llama.cpp engine: the tokens llama.cpp's own cache holds for it (the engine's
    context holds one cache's tokens at a time and refills it when another is used), and the k and v
    of every layer as recorded ``[1, Hkv, S, D]`` (when a recorder watched the calls)."""

    max_len: int
    tokens: list[int] = field(default_factory=list)
    k: dict[int, torch.Tensor] = field(default_factory=dict)
    v: dict[int, torch.Tensor] = field(default_factory=dict)


class LlamaCppTokenizer:
    """llama.cpp's tokenizer of the file (``llama_tokenize``: special tokens added as the file says, and
    parsed in the text as llama.cpp's tools parse them)."""

    def __init__(self, lib: _Lib, vocab, n_tokens: int):
        self._lib, self._vocab, self._n = lib, vocab, n_tokens

    @property
    def vocab_size(self) -> int:
        return self._n

    def encode(self, text: str) -> list[int]:
        low = self._lib.llama
        data = text.encode("utf-8")
        size = len(data) + 8
        out = (low.llama_token * size)()
        n = low.llama_tokenize(self._vocab, data, len(data), out, size, True, True)
        if n < 0:
            size = -n
            out = (low.llama_token * size)()
            n = low.llama_tokenize(self._vocab, data, len(data), out, size, True, True)
        return list(out[:n])

    def _piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(256)
        n = self._lib.llama.llama_token_to_piece(self._vocab, token, buf, 256, 0, True)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._lib.llama.llama_token_to_piece(self._vocab, token, buf, -n, 0, True)
        return buf.raw[:n]

    def decode(self, ids: list[int]) -> str:
        return b"".join(self._piece(int(i)) for i in ids).decode("utf-8", errors="replace")

    def token_texts(self, ids: list[int]) -> list[str]:
        return [self._piece(int(i)).decode("utf-8", errors="replace") for i in ids]


class LlamaCppEngine:
    """The llama.cpp engine (`attnscope.engine.Engine`; see the module docstring)."""

    engine = ENGINE
    # llama.cpp picks kernels by batch size and rounds the activations of quantized matmuls to 8 bits:
    # a token's results may depend on how many tokens were computed with it
    batch_invariant = False
    own_attention = staticmethod(OWN_ATTENTION)  # what `attnscope.Scope` passes as `attend`

    def __init__(self, path: Path, dtype: torch.dtype = torch.float32, *, threads: int | None = None):
        if dtype not in GGML_TYPES:
            raise UserError(f"the llama.cpp engine's KV cache cannot be {dtype}")
        self.path = path
        self.name = path.name.removesuffix(".gguf")
        self.chunk = 1  # tokens per llama_decode of the incremental pass (`forward_token_by_token`)
        self._dtype = dtype
        self._threads = threads or torch.get_num_threads()
        self._lib = lib = _Lib.load()
        low = lib.llama
        self._quiet = low.llama_log_callback(lambda level, text, data: None)  # kept referenced
        low.llama_log_set(self._quiet, None)
        low.llama_backend_init()
        params = low.llama_model_default_params()
        self._model = low.llama_model_load_from_file(str(path).encode(), params)
        if not self._model:
            raise LoadError(f"{path}: llama.cpp cannot load it")
        arch = self._meta("general.architecture") or "?"
        if arch not in ARCHITECTURES:
            raise ConfigError(
                f"{path}: the llama.cpp engine has no per-layer node names mapped for GGUF architecture "
                f"{arch!r} (mapped: {', '.join(ARCHITECTURES)}); the hf engine may read it (--engine hf)"
            )
        vocab = low.llama_model_get_vocab(self._model)
        n_heads = low.llama_model_n_head(self._model)
        head_dim = int(self._meta(f"{arch}.attention.key_length") or low.llama_model_n_embd(self._model) // n_heads)
        bos = low.llama_vocab_bos(vocab)
        eos = [t for t in (low.llama_vocab_eos(vocab), low.llama_vocab_eot(vocab)) if t >= 0]
        self._layout = Layout(
            model_type=arch,
            n_layers=low.llama_model_n_layer(self._model),
            n_heads=n_heads,
            n_kv_heads=low.llama_model_n_head_kv(self._model),
            head_dim=head_dim,
            vocab_size=low.llama_vocab_n_tokens(vocab),
            max_positions=low.llama_model_n_ctx_train(self._model),
            bos_token_id=bos if bos >= 0 and self._meta("tokenizer.ggml.add_bos_token") != "false" else None,
            eos_token_ids=tuple(dict.fromkeys(eos)),
        )
        self.tokenizer = LlamaCppTokenizer(lib, vocab, self._layout.vocab_size)
        self._ctx = None
        self._n_ctx = 0
        self._holder: LlamaCppCache | None = None  # the cache whose tokens the context's memory holds
        self._capture: _Capture | None = None
        self._checked = False
        self._callback = low.ggml_backend_sched_eval_callback(self._on_node)  # kept referenced

    # ---- the Engine protocol ---------------------------------------------------------------------

    @property
    def layout(self) -> Layout:
        return self._layout

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")  # what the records are on; llama.cpp runs where it was built to

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def layer_masks(self) -> list[MaskSpec]:
        return [masks.causal() for _ in range(self._layout.n_layers)]

    def new_cache(self, batch: int, max_len: int) -> LlamaCppCache:
        _one_row(batch)
        return LlamaCppCache(max_len)

    def forward(
        self,
        ids: torch.Tensor,
        attend=OWN_ATTENTION,
        *,
        cache: LlamaCppCache | None = None,
        recorder=None,
        mask: MaskSpec | None = None,
        positions: torch.Tensor | None = None,
        probabilities: bool = False,
    ) -> torch.Tensor:
        """Logits ``[1, T, vocab]`` of ids ``[1, T]`` decoded by llama.cpp after what `cache` holds, every
        layer shown to `recorder`; with `probabilities`, ``self.last_probabilities`` keeps llama.cpp's
        own ``[Hq, T, Sk]`` per layer (tests)."""
        if attend is not OWN_ATTENTION:
            raise UnsupportedFeature(
                "the llama.cpp engine computes attention with llama.cpp's own kernel: attnscope's backends "
                "cannot replace it (they are its reference: backend_vs_reference); use --backend auto"
            )
        _one_row(ids.shape[0])
        if mask is not None or positions is not None:
            raise UnsupportedFeature("the llama.cpp engine runs one prompt at a time (no padded batches)")
        tokens = [int(i) for i in ids[0].tolist()]
        past = self._prepare(cache, len(tokens))
        capture = _Capture(probabilities) if recorder is not None or probabilities else None
        logits = self._decode(tokens, past, capture)
        if cache is not None:
            cache.tokens.extend(tokens)
        if capture is not None:
            self._record(capture, len(tokens), past, cache, recorder)
        return logits[None]  # (1, T, vocab)

    def forward_token_by_token(
        self, ids: torch.Tensor, attend=OWN_ATTENTION, *, cache, recorder=None, mask=None, positions=None, step=None
    ) -> torch.Tensor:
        """`attnscope.engine.token_by_token` through llama.cpp's cache, `chunk` tokens per llama_decode."""
        T, n, size = ids.shape[1], self._layout.n_layers, max(1, self.chunk)
        logits = []
        for start in range(0, T, size):
            logits.append(self.forward(ids[:, start : start + size], attend, cache=cache, recorder=recorder))
            if step is not None:
                step(min(T, start + size) * n, T * n)
        return torch.cat(logits, dim=1)

    def decode(self, logits, cache, attend, max_new_tokens, *, mask=None, positions=None) -> torch.Tensor:
        def one(ids, pos):
            return self.forward(ids, attend, cache=cache)

        return greedy(one, logits, max_new_tokens, self._layout.eos_token_ids)

    def __repr__(self) -> str:
        lay = self._layout
        return (
            f"LlamaCppEngine({self.name!r}, {lay.model_type}, layers={lay.n_layers}, heads={lay.n_heads}/"
            f"{lay.n_kv_heads}, kv cache={str(self._dtype).removeprefix('torch.')})"
        )

    # ---- llama.cpp -------------------------------------------------------------------------------

    def _meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(256)
        n = self._lib.llama.llama_model_meta_val_str(self._model, key.encode(), buf, 256)
        return None if n < 0 else buf.value.decode("utf-8", errors="replace")

    def _context(self, n_ctx: int):
        """The context, recreated with room for `n_ctx` tokens when it has less (its memory is then empty)."""
        if self._ctx is not None and n_ctx <= self._n_ctx:
            return self._ctx
        low = self._lib.llama
        if self._ctx is not None:
            low.llama_free(self._ctx)
            self._ctx, self._holder = None, None
        size = max(256, -(-n_ctx // 256) * 256)
        params = low.llama_context_default_params()
        self._lib.check_context_params(params)
        params.n_ctx = params.n_batch = params.n_ubatch = size  # a prompt is one graph
        params.n_threads = params.n_threads_batch = self._threads
        params.flash_attn_type = low.LLAMA_FLASH_ATTN_TYPE_DISABLED  # keeps kq_soft_max in the graph
        params.type_k = params.type_v = GGML_TYPES[self._dtype]
        params.cb_eval = self._callback
        params.no_perf = True
        ctx = low.llama_init_from_model(self._model, params)
        if not ctx:
            raise LoadError(f"{self.path}: llama.cpp cannot create a context of {size} tokens")
        self._ctx, self._n_ctx = ctx, size
        return ctx

    def _prepare(self, cache: LlamaCppCache | None, new: int) -> int:
        """The context's memory made to hold `cache`'s tokens (empty for no cache); returns their count."""
        held = [] if cache is None else cache.tokens
        need = len(held) + new
        if need > self._layout.max_positions:
            raise UserError(f"{need} tokens exceed the model's {self._layout.max_positions} positions")
        ctx = self._context(max(need, cache.max_len if cache is not None else 0))
        if cache is None or self._holder is not cache:
            self._lib.llama.llama_memory_clear(self._lib.llama.llama_get_memory(ctx), True)
            self._holder = None
            if held:
                self._decode(held, 0, None)  # refill llama.cpp's cache with what this one holds
        self._holder = cache
        return len(held)

    def _decode(self, tokens: list[int], past: int, capture: _Capture | None) -> torch.Tensor:
        """One llama_decode of `tokens` at positions past.., every row's logits ``[T, vocab]``."""
        low, T = self._lib.llama, len(tokens)
        batch = low.llama_batch_init(T, 0, 1)
        try:
            for i, token in enumerate(tokens):
                batch.token[i] = token
                batch.pos[i] = past + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = True  # every row's output: the last layer keeps only the rows asked for
            batch.n_tokens = T
            self._capture = capture
            try:
                status = low.llama_decode(self._ctx, batch)
            finally:
                self._capture = None
            if capture is not None and capture.error is not None:
                raise capture.error
            if status != 0:
                raise UserError(f"llama.cpp's llama_decode failed (status {status}) on {T} tokens after {past}")
            vocab = self._layout.vocab_size
            logits = np.ctypeslib.as_array(low.llama_get_logits(self._ctx), shape=(T * vocab,))
            return torch.from_numpy(logits.reshape(T, vocab).copy())
        finally:
            low.llama_batch_free(batch)

    def _on_node(self, address: int, ask: bool, _user) -> bool:
        """The eval callback: in the ask phase, whether a node is recorded; after, its data copied out.
        No exception may cross into C: one is kept and raised after llama_decode (and the graph stops)."""
        capture = self._capture
        if capture is None:
            return False if ask else True
        try:
            t = _Tensor.from_address(address)
            if not self._checked:
                self._lib.check_tensor(address, t)
                self._checked = True
            key = _node(t.name.decode("utf-8", errors="replace"))
            if key is None:
                return False if ask else True
            wanted = _NODES[key[0]]
            op = self._lib.ggml.ggml_op_name(t.op).decode()
            if wanted and op != wanted:
                return False if ask else True
            if ask:
                return True
            capture.nodes[key] = (_read(self._lib, address, t), tuple(t.op_params))
            return True
        except BaseException as exc:  # noqa: BLE001  (kept, raised after llama_decode returns)
            capture.error = exc
            return False

    def _record(self, capture: _Capture, T: int, past: int, cache: LlamaCppCache | None, recorder) -> None:
        """Every layer's record from the nodes captured, shown to `recorder` in layer order."""
        lay = self._layout
        Hq, Hkv, D = lay.n_heads, lay.n_kv_heads, lay.head_dim
        nodes = capture.nodes
        self.last_probabilities: list[torch.Tensor] = []
        for layer in range(lay.n_layers):
            missing = [p for p in _NODES if (p, layer) not in nodes]
            if missing:
                raise ConfigError(
                    f"{self.path}: llama.cpp's graph has no {', '.join(missing)} node for layer {layer} "
                    f"(the llama.cpp engine maps {', '.join(ARCHITECTURES)}; flash attention must be off)"
                )
            q_raw, rope = nodes[("Qcur", layer)]
            k_raw, _ = nodes[("Kcur", layer)]
            v_raw, _ = nodes[("Vcur", layer)]
            if rope[1] != D:
                raise ConfigError(f"{self.path}: layer {layer} rotates {rope[1]} of {D} dimensions (partial rotary)")
            order = _hf_order if not rope[2] & ROPE_NEOX else _as_is
            q = order(_heads(q_raw, T, Hq, D))  # (1, Hq, T, D)
            k_new = order(_heads(k_raw, T, Hkv, D))  # (1, Hkv, T, D)
            v_new = _heads(v_raw.reshape(T, Hkv, D), T, Hkv, D)
            kv_dtype = self._dtype
            k_new, v_new = k_new.to(kv_dtype), v_new.to(kv_dtype)  # as llama.cpp's cache stores them
            if cache is not None and past:
                k = torch.cat([cache.k[layer], k_new], 2) if layer in cache.k else k_new
                v = torch.cat([cache.v[layer], v_new], 2) if layer in cache.v else v_new
            else:
                k, v = k_new, v_new
            if cache is not None:
                cache.k[layer], cache.v[layer] = k, v
            soft, soft_params = nodes[("kq_soft_max", layer)]
            scale, max_bias = _float(soft_params[0]), _float(soft_params[1])
            if max_bias:
                raise ConfigError(f"{self.path}: layer {layer} adds an ALiBi bias, which attnscope does not read")
            Sk = past + T
            probs = torch.from_numpy(soft[0, :, :, :Sk])  # (Hq, T, Sk): cell i is position i
            scores = torch.from_numpy(nodes[("kq", layer)][0][0, :, :, :Sk])  # (Hq, T, Sk)
            best = probs.argmax(-1, keepdim=True)  # (Hq, T, 1) the most probable cell: the most exact log
            lse = (scores.gather(-1, best) * scale - probs.gather(-1, best).log()).squeeze(-1)  # (Hq, T)
            out = torch.from_numpy(nodes[("kqv_out", layer)][0].reshape(T, Hq, D)).transpose(0, 1)[None]
            if capture.probabilities:
                self.last_probabilities.append(probs.clone())
            if recorder is None:
                continue
            recorder.attention(
                layer,
                q=q.to(kv_dtype),  # the kq product reads q in the cache's type
                k=k,
                v=v,
                out=out.contiguous(),
                lse=lse[None].contiguous(),
                mask=masks.causal(),
                scale=scale,
            )
            residual = nodes[("l_out", layer)][0]
            recorder.residual(layer, torch.from_numpy(residual.reshape(T, -1))[None])


def _one_row(batch: int) -> None:
    if batch != 1:
        raise UnsupportedFeature(f"the llama.cpp engine runs one prompt at a time, got a batch of {batch}")


def _heads(x: np.ndarray, T: int, H: int, D: int) -> torch.Tensor:
    """A node ``[.., T, H, D]`` (ggml's ne = [D, H, T]) as ``[1, H, T, D]``."""
    return torch.from_numpy(np.ascontiguousarray(x.reshape(T, H, D))).transpose(0, 1)[None].contiguous()


def _hf_order(x: torch.Tensor) -> torch.Tensor:
    """llama.cpp's interleaved rotary order (pairs 2i, 2i+1) as Hugging Face's (halves i, i + D/2)."""
    return torch.cat([x[..., 0::2], x[..., 1::2]], -1).contiguous()


def _as_is(x: torch.Tensor) -> torch.Tensor:
    return x


def _float(bits: int) -> float:
    """An int32 op parameter's bits as the float ggml stored there."""
    return struct.unpack("<f", struct.pack("<i", bits))[0]


def load(path: Path, dtype: torch.dtype, device: torch.device) -> LlamaCppEngine:
    """A GGUF file in llama.cpp (`LlamaCppEngine`), its KV cache of type `dtype`; records on the CPU."""
    if device.type != "cpu":
        raise UserError("the llama.cpp engine keeps its records on the CPU: use --device cpu")
    return LlamaCppEngine(path, dtype)
