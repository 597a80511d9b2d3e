"""Full-sequence (prefill) forward against incremental decoding through the KV cache.

The same logits must come out whether the tokens go through the model all at once, one at a time,
or in chunks; eager and sdpa must agree; greedy `generate` must equal the argmax of repeated full
forwards without a cache. Also run on every bundled sample model.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
from support.models import SEQ_LEN
from support.samples import COMMITTED_SAMPLES

import attnscope
from attnscope.backends import get_backend
from attnscope.inspector.capture import Capture
from attnscope.model.loader import sample_models

pytestmark = pytest.mark.usefixtures("single_thread")

BACKENDS = ["eager", "sdpa"]
TOL = dict(atol=1e-5, rtol=0)


def full_logits(net, ids, backend="eager", recorder=None):
    with torch.inference_mode():
        return net(ids, attend=get_backend(backend), recorder=recorder)


def chunked_logits(net, ids, chunks, backend="eager", recorder=None):
    """Logits of `ids` fed through one KV cache in pieces of the given sizes."""
    T = ids.shape[1]
    assert sum(chunks) == T
    cache = net.new_cache(ids.shape[0], T)
    attend = get_backend(backend)
    out, start = [], 0
    with torch.inference_mode():
        for size in chunks:
            out.append(net(ids[:, start : start + size], cache, recorder=recorder, attend=attend))
            start += size
            assert cache.length == start
    return torch.cat(out, dim=1)


def token_by_token_logits(net, ids, backend="eager", recorder=None):
    return chunked_logits(net, ids, [1] * ids.shape[1], backend, recorder)


@pytest.mark.parametrize("backend", BACKENDS)
def test_full_equals_token_by_token(tiny, zoo, backend):
    net = zoo.loaded(tiny.name).net
    ids = tiny.ids(SEQ_LEN)
    full = full_logits(net, ids, backend)
    torch.testing.assert_close(token_by_token_logits(net, ids, backend), full, **TOL)


def test_full_equals_token_by_token_literal_loop(tiny, zoo):
    """The loop of the docs, written out: one new cache, one token per call."""
    net = zoo.loaded(tiny.name).net
    ids = tiny.ids(SEQ_LEN)
    T = ids.shape[1]
    with torch.inference_mode():
        full = net(ids)
        cache = net.new_cache(1, T)
        steps = [net(ids[:, i : i + 1], cache) for i in range(T)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, **TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunked_prefill_equals_full(tiny, zoo, backend):
    net = zoo.loaded(tiny.name).net
    ids = tiny.ids(SEQ_LEN)
    chunks = [20] + [7] * 4  # 20 + 28 = 48; every chunk after the first sees a cache
    full = full_logits(net, ids, backend)
    torch.testing.assert_close(chunked_logits(net, ids, chunks, backend), full, **TOL)
    # chunks smaller and larger than the sliding window of 8, and a single-token chunk
    torch.testing.assert_close(chunked_logits(net, ids, [1, 3, 9, 2, 16, 17], backend), full, **TOL)


class StepRecorder:
    """Keeps what every attention call saw, one dict per forward call (layer -> keyword arguments)."""

    wants_lse = True

    def __init__(self):
        self.steps: list[dict[int, dict]] = []

    def attention(self, layer, **kw):
        if layer == 0:
            self.steps.append({})
        self.steps[-1][layer] = kw

    __call__ = attention

    def residual(self, layer, hidden):
        pass


def test_incremental_records_match_full_records(tiny, zoo):
    """The attention output and lse of each decode step equal the matching row of the full forward."""
    net = zoo.loaded(tiny.name).net
    ids = tiny.ids(SEQ_LEN)
    full = Capture()
    full_logits(net, ids, recorder=full)
    recorder = StepRecorder()
    token_by_token_logits(net, ids, recorder=recorder)
    steps = recorder.steps
    assert len(steps) == SEQ_LEN
    for i, step in enumerate(steps):
        for layer, rec in full.records.items():
            assert step[layer]["q"].shape[2] == 1 and step[layer]["k"].shape[2] == i + 1
            torch.testing.assert_close(step[layer]["out"][:, :, 0], rec.out[:, :, i], **TOL)
            torch.testing.assert_close(step[layer]["lse"][:, :, 0], rec.lse[:, :, i], **TOL)
            assert repr(step[layer]["mask"]) == repr(rec.mask)


def test_joined_records_keep_each_field_in_its_place(tiny, zoo):
    """An append capture's joined records (the token-by-token pass) keep the residual's NaN counts
    as ``residual_nonfinite`` ``[B, T]`` and the lse's source as ``lse_source``."""
    net = zoo.loaded(tiny.name).net
    ids = tiny.ids(6)
    capture = Capture(append=True)
    token_by_token_logits(net, ids, backend="sdpa", recorder=capture)
    for rec in capture.layers():
        assert rec.residual is None
        assert rec.residual_nonfinite is not None and tuple(rec.residual_nonfinite.shape) == (1, 6)
        assert isinstance(rec.lse_source, str) and rec.lse_source


def test_eager_and_sdpa_agree(tiny, zoo):
    net = zoo.loaded(tiny.name).net
    ids = tiny.ids(SEQ_LEN)
    eager, sdpa = Capture(), Capture()
    logits_eager = full_logits(net, ids, "eager", eager)
    logits_sdpa = full_logits(net, ids, "sdpa", sdpa)
    torch.testing.assert_close(logits_sdpa, logits_eager, **TOL)
    assert eager.records.keys() == sdpa.records.keys() == set(range(net.config.num_hidden_layers))
    for layer in eager.records:
        torch.testing.assert_close(sdpa.records[layer].out, eager.records[layer].out, **TOL)
        torch.testing.assert_close(sdpa.records[layer].lse, eager.records[layer].lse, **TOL)


def test_eager_and_sdpa_agree_incrementally(tiny, zoo):
    net = zoo.loaded(tiny.name).net
    ids = tiny.ids(SEQ_LEN)
    chunks = [20, 7, 7, 7, 7]
    torch.testing.assert_close(
        chunked_logits(net, ids, chunks, "sdpa"), chunked_logits(net, ids, chunks, "eager"), **TOL
    )


def test_batched_forward_equals_single(zoo):
    net = zoo.loaded("qwen2-sliding").net
    ids = torch.cat([zoo["qwen2-sliding"].ids(24, seed=s) for s in (1, 2, 3)])
    batched = full_logits(net, ids)
    for b in range(3):
        torch.testing.assert_close(batched[b : b + 1], full_logits(net, ids[b : b + 1]), **TOL)
    torch.testing.assert_close(chunked_logits(net, ids, [10, 1, 13], "sdpa"), batched, **TOL)


def greedy_without_cache(net, ids, n):
    seq = ids
    with torch.inference_mode():
        for _ in range(n):
            nxt = net(seq)[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    return seq[:, ids.shape[1] :]


@pytest.mark.parametrize("backend", BACKENDS)
def test_generate_equals_argmax_of_full_forwards(tiny, zoo, backend):
    net = zoo.loaded(tiny.name).net
    ids = tiny.ids(12, seed=5)
    expected = greedy_without_cache(net, ids, 8)
    got = net.generate(ids, max_new_tokens=8, attend=get_backend(backend))
    assert got.shape == (1, 8)
    assert torch.equal(got, expected)


def test_generate_stops_at_eos(zoo):
    net = zoo.loaded("llama-gqa").net
    ids = zoo["llama-gqa"].ids(12, seed=5)
    expected = greedy_without_cache(net, ids, 8)
    eos = int(expected[0, 2])
    stop = int((expected[0] == eos).nonzero()[0])  # first occurrence, at or before index 2
    got = net.generate(ids, max_new_tokens=8, eos_token_id=eos)
    assert torch.equal(got, expected[:, : stop + 1])
    assert net.generate(ids, max_new_tokens=0).shape == (1, 0)


def test_scope_continuation_equals_generate(zoo):
    model = zoo.loaded("mistral-sliding")
    ids = zoo["mistral-sliding"].ids(12, seed=5)
    expected = greedy_without_cache(model.net, ids, 6)
    for backend in BACKENDS:
        result = attnscope.Scope(model, backend=backend).run(ids[0].tolist(), max_new_tokens=6)
        cont = result.continuation_ids
        if model.config.eos_token_id is not None and len(cont) < 6:
            assert cont[-1] == model.config.eos_token_id
        assert cont == expected[0, : len(cont)].tolist()


def test_cache_overflow_raises(zoo):
    net = zoo.loaded("llama-gqa").net
    cache = net.new_cache(1, 4)
    with torch.inference_mode(), pytest.raises(ValueError, match="overflow"):
        net(zoo["llama-gqa"].ids(5), cache)


# the healthy ones: every committed one (missing, the `samples` fixture fails the test) and any other found
SAMPLE_MODELS = sorted(name for name in {*COMMITTED_SAMPLES, *sample_models()} if not name.startswith("broken/"))


@pytest.mark.parametrize("sample", SAMPLE_MODELS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_sample_model_full_equals_incremental(sample, backend, samples):
    model = attnscope.load_model(sample)
    net = model.net
    T = min(40, net.config.max_position_embeddings)
    ids = torch.randint(0, net.config.vocab_size, (1, T), generator=torch.Generator().manual_seed(0))
    full = full_logits(net, ids, backend)
    assert torch.isfinite(full).all()
    # Trained logits reach ~20-40 in magnitude and trained attention is sharp, so float32 rounding
    # differences between the two paths grow with the logits: the 1e-5 bound is scaled by the largest
    # logit (as HF scales its low-precision tolerances by the output magnitude).
    scale = max(1.0, float(full.abs().max()))
    tol = {"atol": 1e-5 * scale, "rtol": 1e-5}
    torch.testing.assert_close(token_by_token_logits(net, ids, backend), full, **tol)
    torch.testing.assert_close(chunked_logits(net, ids, [T // 2, T - T // 2], backend), full, **tol)


@pytest.mark.parametrize("engine", ["native", "hf"])
def test_reruns_that_compare_outputs_skip_the_lse(tiny, zoo, engine):
    """The token-by-token pass and the causality reruns compare attention outputs only: their
    records hold no lse and the backend is told it need not compute one; the run's own forward
    asks for it."""
    from attnscope.inspector.run import Inputs, Run

    model = zoo.loaded(tiny.name) if engine == "native" else attnscope.load_model(tiny.path, engine="hf")
    sdpa = get_backend("sdpa")
    asked = []

    def attend(*args, need_lse=True, **kwargs):
        asked.append(need_lse)
        return sdpa(*args, need_lse=need_lse, **kwargs)

    inputs = Inputs.pad(tiny.ids(12).tolist(), "left", "cpu")
    with torch.inference_mode():
        run = Run.forward(model, "sdpa", attend, inputs)
        assert asked and all(asked) and all(rec.lse is not None for rec in run.records)
        asked.clear()
        records, _ = run.incremental()
        assert len(asked) == 12 * len(records) and not any(asked) and all(rec.lse is None for rec in records)
        asked.clear()
        records = run.rerun(inputs.ids)
        assert asked and not any(asked) and all(rec.lse is None for rec in records)


class CallLog:
    """Every call a forward shows its recorder: (kind, layer) -> the calls' arguments, in order."""

    wants_lse = False  # as the full_vs_incremental check asks

    def __init__(self):
        self.calls: dict[tuple[str, int], list[dict]] = {}

    def attention(self, layer, **kw):
        self.calls.setdefault(("attention", layer), []).append(kw)

    def residual(self, layer, hidden):
        self.calls.setdefault(("residual", layer), []).append({"hidden": hidden})


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and a.stride() == b.stride() and torch.equal(a, b)
    return repr(a) == repr(b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("side", [None, "left", "right"])
@pytest.mark.parametrize("past", [0, 7])
def test_layer_by_layer_is_one_token_forwards_bit_for_bit(zoo, backend, side, past):
    """The native engine takes a prompt through its cache token by token a layer at a time: the
    cache and every call its recorder sees are those of T one-token forwards, bit for bit, and the
    logits up to the rounding of the head's one matmul over every position (a model with
    sliding-window layers; padded rows with their mask and rotary positions; an empty cache and one
    that holds a prefill)."""
    from attnscope.engine import one_piece_at_a_time
    from attnscope.inspector.run import Inputs

    engine = zoo.loaded("mistral-sliding")
    rows = [zoo["mistral-sliding"].ids(past + 20, seed=s)[0].tolist() for s in (1, 2)]
    inputs = Inputs.pad([rows[0]] if side is None else [rows[0], rows[1][: past + 13]], side or "right", "cpu")
    B, total = inputs.shape
    T = total - past
    ids, positions = inputs.ids[:, past:], None if inputs.positions is None else inputs.positions[:, past:]
    attend = get_backend(backend)
    results = {}
    for how in ("layer by layer", "one token at a time"):
        cache, log, steps = engine.new_cache(B, total), CallLog(), []
        pieces = [1] * T
        run = (
            partial(engine.forward_in_pieces, pieces=pieces)
            if how == "layer by layer"
            else partial(one_piece_at_a_time, engine, pieces=pieces)
        )
        with torch.inference_mode():
            if past:
                engine.forward(
                    inputs.ids[:, :past],
                    attend,
                    cache=cache,
                    mask=inputs.padding,
                    positions=None if inputs.positions is None else inputs.positions[:, :past],
                )
            logits = run(
                ids,
                attend,
                cache=cache,
                recorder=log,
                mask=inputs.padding,
                positions=positions,
                step=lambda done, total, seen=steps: seen.append((done, total)),
            )
        results[how] = logits, cache, log, steps
    (logits, cache, log, steps), (logits_1, cache_1, log_1, steps_1) = results.values()
    n = engine.layout.n_layers
    assert steps == [(i, n * T) for i in range(1, n * T + 1)] and steps_1 == [(t * n, n * T) for t in range(1, T + 1)]
    torch.testing.assert_close(logits, logits_1)  # the head runs once over every position: its matmul's rounding
    assert cache.length == cache_1.length == total
    assert all(torch.equal(a, b) for a, b in zip(cache.k + cache.v, cache_1.k + cache_1.v, strict=True))
    assert log.calls.keys() == log_1.calls.keys() and len(log.calls) == 2 * n
    for key, calls in log.calls.items():
        assert len(calls) == len(log_1.calls[key]) == T
        for t, (call, call_1) in enumerate(zip(calls, log_1.calls[key], strict=True)):
            assert call.keys() == call_1.keys()
            assert all(same(call[name], call_1[name]) for name in call), (key, t)


def test_an_engine_without_an_order_of_its_own_runs_one_token_forwards(zoo):
    """`token_by_token` (what `full_vs_incremental` runs) on an engine that implements the protocol
    without the optional `forward_token_by_token`: T one-token forwards in token order, with the
    logits of the native engine's layer-at-a-time pass (up to its head's rounding)."""
    from attnscope.engine import token_by_token

    native = zoo.loaded("mistral-sliding")
    widths = []

    class Plain:
        layout = native.layout

        def new_cache(self, batch, max_len):
            return native.new_cache(batch, max_len)

        def forward(self, ids, attend, **kwargs):
            widths.append(ids.shape[1])
            return native.forward(ids, attend, **kwargs)

    class Order:
        wants_lse = False

        def __init__(self):
            self.layers = []

        def attention(self, layer, **kw):
            self.layers.append(layer)

        def residual(self, layer, hidden):
            pass

    ids = zoo["mistral-sliding"].ids(20)
    attend = get_backend("sdpa")
    n = native.layout.n_layers
    plain_order, native_order = Order(), Order()
    with torch.inference_mode():
        plain = token_by_token(Plain(), ids, attend, cache=native.new_cache(1, 20), recorder=plain_order)
        ours = token_by_token(native, ids, attend, cache=native.new_cache(1, 20), recorder=native_order)
    assert widths == [1] * 20 and plain_order.layers == list(range(n)) * 20
    assert native_order.layers == [i for i in range(n) for _ in range(20)]  # the native engine's own order
    torch.testing.assert_close(plain, ours)  # the native pass runs the head once: its matmul's rounding


# ---- incremental modes: chunked prefill, then one token at a time ----------------------------------


@pytest.mark.parametrize("T", [1, 5, 32, 33, 39, 48, 103, 317, 4096, 100_000])
def test_the_default_mode_covers_every_position_once_in_a_bounded_number_of_calls(T):
    from attnscope.inspector.incremental import parse_mode

    plan = parse_mode("default").plan(T)
    assert sum(plan.pieces) == T and plan.tail == min(32, T)
    assert len(plan.pieces) <= 8 + 32  # whatever T
    assert list(plan.chunks[:2]) == [7, 64][: len(plan.chunks)] or plan.prefilled < 71
    rest = plan.chunks[2:-1]  # the equal chunks after 7 and 64 (the last may be shorter)
    assert all(size == rest[0] and size % 2 == 1 and size % 7 for size in rest)
    figures = plan.as_dict()
    covered = [p for first, last in figures["chunks"] for p in range(first, last + 1)]
    if figures["one_token_at_a_time"]:
        first, last = figures["one_token_at_a_time"]
        covered += range(first, last + 1)
    assert covered == list(range(T))


def test_modes_parse_and_refuse_bad_specs():
    from attnscope.errors import UserError
    from attnscope.inspector.incremental import parse_mode

    assert parse_mode("chunks:16,64").plan(200).chunks == (16, 64, 16, 64, 16, 24)
    assert parse_mode("chunks:1").name == "tokens" and parse_mode(None).name == "default"
    assert parse_mode("tokens").plan(3).pieces == [1, 1, 1]
    for bad in ("chunk:4", "chunks:", "chunks:0", "chunks:4,x", "fast"):
        with pytest.raises(UserError):
            parse_mode(bad)


@pytest.mark.parametrize("side", [None, "left", "right"])
def test_pieces_a_layer_at_a_time_are_piece_forwards_bit_for_bit(zoo, side):
    """The native engine's chunked pass (a layer at a time) gives the cache and records of one forward
    a piece, bit for bit, padded rows included, and their logits up to the head's rounding."""
    from attnscope.engine import in_pieces, one_piece_at_a_time
    from attnscope.inspector.run import Inputs

    engine = zoo.loaded("mistral-sliding")
    rows = [zoo["mistral-sliding"].ids(40, seed=s)[0].tolist() for s in (1, 2)]
    inputs = Inputs.pad([rows[0]] if side is None else [rows[0], rows[1][:23]], side or "right", "cpu")
    B, T = inputs.shape
    pieces = [7, 11, 3, 1, 1, 17]
    attend = get_backend("sdpa")
    results = []
    for run in (in_pieces, one_piece_at_a_time):
        cache, log = engine.new_cache(B, T), CallLog()
        with torch.inference_mode():
            logits = run(
                engine,
                inputs.ids,
                attend,
                pieces=pieces,
                cache=cache,
                recorder=log,
                mask=inputs.padding,
                positions=inputs.positions,
            )
        results.append((logits, cache, log))
    (logits, cache, log), (logits_1, cache_1, log_1) = results
    torch.testing.assert_close(logits, logits_1)  # the head runs once over every position: its matmul's rounding
    assert cache.length == cache_1.length == T
    assert all(torch.equal(a, b) for a, b in zip(cache.k + cache.v, cache_1.k + cache_1.v, strict=True))
    for key, calls in log.calls.items():
        assert [
            c["hidden" if key[0] == "residual" else "out"].shape[-2 if key[0] == "attention" else 1] for c in calls
        ] == pieces
        assert all(same(c[k], c1[k]) for c, c1 in zip(calls, log_1.calls[key], strict=True) for k in c)
    with torch.inference_mode():
        torch.testing.assert_close(
            logits,
            engine.forward(inputs.ids, attend, mask=inputs.padding, positions=inputs.positions),
            atol=1e-5,
            rtol=0,
        )


@pytest.mark.parametrize("engine", ["native", "hf"])
@pytest.mark.parametrize("mode", ["default", "chunks:5,3", "tokens"])
def test_every_mode_passes_a_correct_padded_batch_on_both_engines(tiny, zoo, engine, mode):
    """A correct model passes full_vs_incremental in every mode, on a left-padded batch whose longer row
    runs past the default's one-token tail (chunks meet the cache), through each engine's own cache."""
    model = zoo.loaded(tiny.name) if engine == "native" else attnscope.load_model(tiny.path, engine="hf")
    rows = [tiny.ids(48, seed=1)[0].tolist(), tiny.ids(30, seed=2)[0].tolist()]
    check = attnscope.Scope(model, backend="sdpa").run(rows, checks="full_vs_incremental", incremental=mode).checks[0]
    assert check.passed, check.message
    assert check.figures["incremental"]["mode"] == mode
    if mode == "default":
        assert check.figures["incremental"]["chunks"] == [[0, 6], [7, 15]]
        assert check.figures["incremental"]["one_token_at_a_time"] == [16, 47]
