"""The `nan` check names a NaN where it starts: q, k or v of a layer before its scores (for k and v the
kv head and the query heads that read it), the position of a NaN token embedding, and a NaN made
after the attention at its later stage; never a padding position. On both engines (native and hf),
in the parallel forward and token by token through the KV cache."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from support.models import build_architecture, random_model

import attnscope
from attnscope.backends import register_backend
from attnscope.backends.eager import attend as eager_attend
from attnscope.engine import token_by_token
from attnscope.inspector.capture import Capture
from attnscope.inspector.checks import nan_check
from attnscope.inspector.run import Run

pytestmark = pytest.mark.usefixtures("single_thread")

PROMPT = [(7 * i + 3) % 90 + 4 for i in range(16)]  # distinct ids, none of them padding (0)
D, G = 16, 2  # both engines' test models: hidden 64, 4 query heads / 2 kv heads
LAYER = 1  # where the faults go (the hf test model has 2 layers, the native one 4)


@dataclass
class Model:
    engine: object  # what attnscope.Scope takes
    attention: Callable[[int], torch.nn.Module]  # layer -> its attention module (q_proj, k_proj, v_proj, o_proj)
    mlp: Callable[[int], torch.nn.Module]
    embedding: torch.nn.Embedding


def make(kind: str) -> Model:
    if kind == "native":
        model = random_model(layers=4, vocab=96, hidden=64, max_positions=128)
        net = model.net
        return Model(model, lambda i: net.layers[i].self_attn, lambda i: net.layers[i].mlp, net.embed_tokens)
    hf_model = build_architecture("llama")
    inner = hf_model.model
    return Model(
        attnscope.from_transformers(hf_model),
        lambda i: inner.layers[i].self_attn,
        lambda i: inner.layers[i].mlp,
        inner.embed_tokens,
    )


ENGINES = ["native", "hf"]


def nan_of(model: Model, prompt=PROMPT, backend: str = "eager"):
    result = attnscope.Scope(model.engine, backend=backend).run(prompt, checks="nan")
    return result.checks[0], result


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    ("proj", "row", "where"),
    [
        ("q_proj", 3 * D + 2, {"stage": "q", "head": 3}),
        ("k_proj", 1 * D + 3, {"stage": "k", "head": 2, "kv_head": 1, "query_heads": [2, 3]}),
        ("v_proj", 0 * D + 5, {"stage": "v", "head": 0, "kv_head": 0, "query_heads": [0, 1]}),
    ],
)
def test_a_nan_projection_weight_is_named_at_its_tensor(engine, proj, row, where):
    model = make(engine)
    with torch.no_grad():
        getattr(model.attention(LAYER), proj).weight[row, 7] = float("nan")
    check, _ = nan_of(model)
    assert not check.passed
    stage = where["stage"]
    expected = {"layer": LAYER, **where, "position": 0, "batch": 0, "tensors": [stage]}
    assert check.where == expected
    if stage == "q":
        assert check.message == f"first NaN/Inf: layer {LAYER}, q of query head 3, position 0"
    else:
        kv, heads = where["kv_head"], where["query_heads"]
        assert check.message == (
            f"first NaN/Inf: layer {LAYER}, {stage} of kv head {kv} (read by query heads {heads[0]}–{heads[1]}), "
            "position 0"
        )
    assert check.figures["nonfinite_counts"][stage] > 0


@pytest.mark.parametrize("engine", ENGINES)
def test_a_nan_token_embedding_is_named_at_its_position(engine):
    model = make(engine)
    with torch.no_grad():
        model.embedding.weight[PROMPT[6]] = float("nan")
    check, _ = nan_of(model)
    assert check.where == {"layer": 0, "stage": "q", "head": 0, "position": 6, "batch": 0, "tensors": ["q", "k", "v"]}
    assert check.message == "first NaN/Inf: layer 0, q of query head 0, position 6 (k and v are non-finite there too)"


def _poison_output(q, k, v, mask, scale, *, need_lse=True):
    out, lse = eager_attend(q, k, v, mask, scale, need_lse=need_lse)
    out[0, 1, 4, 0] = float("nan")  # query head 1, row 4: after the scores and weights
    return out, lse


def _poison_lse(q, k, v, mask, scale, *, need_lse=True):
    out, lse = eager_attend(q, k, v, mask, scale)
    lse[0, 2, 3] = float("nan")  # the weights recomputed from it are NaN; scores and output finite
    return out, lse


register_backend("test-nan-output", _poison_output)
register_backend("test-nan-lse", _poison_lse)


def _huge(attention) -> None:  # q and k finite (~1e20), their products beyond float32's range
    attention.q_proj.weight.mul_(1e20)
    attention.k_proj.weight.mul_(1e20)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    ("fault", "backend", "where"),
    [
        ("huge q and k", "eager", {"layer": LAYER, "stage": "scores", "position": 0}),
        ("lse", "test-nan-lse", {"layer": 0, "stage": "weights", "head": 2, "position": 3}),
        ("output", "test-nan-output", {"layer": 0, "stage": "output", "head": 1, "position": 4}),
        ("o_proj", "eager", {"layer": LAYER, "stage": "residual", "head": None, "position": 0}),
        ("mlp", "eager", {"layer": LAYER, "stage": "residual", "head": None, "position": 0}),
    ],
)
def test_a_nan_made_after_q_k_v_is_named_at_its_later_stage(engine, fault, backend, where):
    model = make(engine)
    with torch.no_grad():
        if fault == "huge q and k":
            _huge(model.attention(LAYER))
        elif fault == "o_proj":
            model.attention(LAYER).o_proj.weight[5, 9] = float("nan")
        elif fault == "mlp":
            model.mlp(LAYER).down_proj.weight[5, 9] = float("nan")
    check, _ = nan_of(model, backend=backend)
    assert not check.passed
    assert {k: check.where[k] for k in where} == where
    assert "kv_head" not in check.where and "tensors" not in check.where
    assert check.message.startswith(f"first NaN/Inf: layer {where['layer']}, ")


def _poisoned(model: Model, positions: Callable[[torch.Tensor], torch.Tensor], proj: str = "q_proj"):
    """A forward hook on layer 0's `proj` that makes its output NaN at `positions(output)` (a bool [B, T])."""

    def hook(module, args, output):
        output[positions(output)] = float("nan")  # every value of those tokens

    return getattr(model.attention(0), proj).register_forward_hook(hook)


@pytest.mark.parametrize("engine", ENGINES)
def test_padding_positions_are_not_counted(engine):
    """A batch padded on the left: q NaN at the padding positions of its short row is no finding (a
    padding row has no key: its output is 0, nothing reaches a real token); q NaN at that row's first
    real token is named there, in batch row 1."""
    model = make(engine)
    prompts = [PROMPT, PROMPT[:10]]  # row 1: 6 padding positions, then 10 tokens
    padding = torch.zeros(2, len(PROMPT), dtype=torch.bool)
    padding[1, :6] = True

    hook = _poisoned(model, lambda out: padding.to(out.device))
    try:
        check, result = nan_of(model, prompts)
    finally:
        hook.remove()
    assert bool(torch.isnan(result.run.records[0].q[1, :, :6]).all())  # there, and not counted
    assert check.passed, check.message
    assert sum(check.figures["nonfinite_counts"].values()) == 0

    first_real = torch.zeros_like(padding)
    first_real[1, 6] = True
    hook = _poisoned(model, lambda out: first_real.to(out.device))
    try:
        check, _ = nan_of(model, prompts)
    finally:
        hook.remove()
    assert check.where == {"layer": 0, "stage": "q", "head": 0, "position": 6, "batch": 1, "tensors": ["q"]}
    assert check.message == "first NaN/Inf: layer 0, q of query head 0, position 6, batch row 1"


@pytest.mark.parametrize("engine", ENGINES)
def test_a_padding_value_that_reaches_a_real_row_is_named_there(engine):
    """v NaN at the padding positions of a padded row: a masked key's weight 0 times NaN is NaN, so the
    row's real outputs are NaN. Named at the first real output, saying where it came from."""
    model = make(engine)
    padding = torch.zeros(2, len(PROMPT), dtype=torch.bool)
    padding[1, :6] = True
    hook = _poisoned(model, lambda out: padding.to(out.device), "v_proj")
    try:
        check, _ = nan_of(model, [PROMPT, PROMPT[:10]])
    finally:
        hook.remove()
    expected = {"layer": 0, "stage": "output", "head": 0, "position": 6, "batch": 1, "padding_nonfinite": ["v"]}
    assert check.where == expected
    assert check.message == (
        "first NaN/Inf: layer 0, attention output of query head 0, position 6, batch row 1 "
        "(v is non-finite at this row's padding positions)"
    )


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    ("fault", "where"),
    [
        ("k_proj", {"layer": LAYER, "stage": "k", "head": 2, "kv_head": 1, "query_heads": [2, 3], "position": 0}),
        ("embedding", {"layer": 0, "stage": "q", "head": 0, "position": 9, "tensors": ["q", "k", "v"]}),
    ],
)
def test_token_by_token_records_name_the_same_origin(engine, fault, where):
    """Records gathered a token at a time through the KV cache (q joined over the steps, k and v the
    cache's) name the same first place as the parallel forward's."""
    model = make(engine)
    with torch.no_grad():
        if fault == "k_proj":
            model.attention(LAYER).k_proj.weight[D + 3, 7] = float("nan")
        else:
            model.embedding.weight[PROMPT[9]] = float("nan")
    check, result = nan_of(model)
    parallel = result.run
    B, T = parallel.inputs.shape
    capture = Capture(append=True)
    with torch.inference_mode():
        cache = parallel.model.new_cache(B, T)
        logits = token_by_token(parallel.model, parallel.inputs.ids, parallel.attend, cache=cache, recorder=capture)
    records = capture.layers()
    assert records[0].q.shape[2] == T == records[0].k.shape[2]
    incremental = nan_check(Run(parallel.model, parallel.backend, parallel.attend, parallel.inputs, records, logits))
    assert {k: check.where[k] for k in where} == where
    assert incremental.where == check.where and incremental.message == check.message
