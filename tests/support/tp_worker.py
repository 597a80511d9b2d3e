"""One rank of tests/test_distributed.py's tensor-parallel test (launched by torch.distributed.run).

``python -m torch.distributed.run --nproc-per-node 2 tp_worker.py MODEL_DIR OUT_JSON UNEVEN_DIR``: the model
directory loaded whole and with ``tp_plan="auto"``, both run through attnscope with the eager backend
on the same ids; rank 0 writes what the test asserts to OUT_JSON: the largest differences of every
layer and head's attention and of the logits, the checks of the sharded run, what every rank's
`Result` holds, the `nan` check after a NaN is planted in rank 1's shard of layer 1's q projection,
and what wrapping UNEVEN_DIR (heads that 2 ranks split unevenly) raises.
"""

from __future__ import annotations

import json
import sys
import warnings

import torch
import torch.distributed as dist

import attnscope


def main(model_dir: str, out: str, uneven_dir: str) -> None:
    import transformers

    warnings.filterwarnings("ignore")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(1)
    load = transformers.AutoModelForCausalLM.from_pretrained
    whole = attnscope.Scope(attnscope.from_transformers(load(model_dir, dtype=torch.float32).eval()), backend="sdpa")
    net = load(model_dir, dtype=torch.float32, tp_plan="auto").eval()
    engine = attnscope.from_transformers(net)
    sharded = attnscope.Scope(engine, backend="sdpa")
    rank = dist.get_rank()
    ids = [(7 * i + 3) % 97 + 3 for i in range(24)]
    a, b = (s.run(ids, max_new_tokens=4, checks="all") for s in (whole, sharded))
    lay = engine.layout
    attention = [
        [float((a.attention(layer, h) - b.attention(layer, h)).abs().max()) for h in range(lay.n_heads)]
        for layer in range(lay.n_layers)
    ]
    checks = [{"name": c.name, "passed": c.passed, "message": c.message} for c in b.report().checks]
    shapes = [list(rec.q.shape) + list(rec.k.shape) for rec in b.run.records]
    continuations = [a.continuation_ids, b.continuation_ids]
    whole_checks = [c.name for c in a.report().checks if c.passed]

    # a NaN in rank 1's shard: layer 1's q projection, row 0 of its local weight (its first head)
    layer = 1
    weight = net.model.layers[layer].self_attn.q_proj.weight
    if rank == 1:
        with torch.no_grad():
            weight.to_local()[0, 0] = float("nan")
    nan = sharded.run(ids, checks=["nan"]).report().checks[0]
    found = {"passed": nan.passed, "where": nan.where, "message": nan.message, "planted_head": None}
    planted = [engine.shards.q_first[layer][1]] if engine.shards is not None else [None]
    found["planted_head"] = planted[0]
    try:  # 6 query / 3 kv heads over 2 ranks: refused, naming why
        attnscope.from_transformers(load(uneven_dir, dtype=torch.float32, tp_plan="auto").eval())
        found["uneven"] = "accepted"
    except Exception as exc:
        found["uneven"] = f"{type(exc).__name__}: {exc}"
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, {"shapes": shapes, "checks": checks, "nan": found})
    if rank == 0:
        figures = {
            "world": dist.get_world_size(),
            "attention_max": attention,
            "logits_max": float((a.logits - b.logits).abs().max()),
            "continuations": continuations,
            "whole_passed": whole_checks,
            "ranks": everyone,
            "n_heads": lay.n_heads,
            "n_kv_heads": lay.n_kv_heads,
        }
        with open(out, "w") as f:
            json.dump(figures, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
