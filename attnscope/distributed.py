"""Beyond one process: `torch.distributed` for check suites spread over ranks and tensor-parallel models.

Two uses, one module:

- **A check suite over ranks** (`Share`): ``torchrun --nproc-per-node N -m attnscope check ...`` (or
  ``attnscope check --ranks N``, which starts the N processes itself: `launch`) gives rank r the
  items r, r + N, r + 2N, ... of the single-process order of work (prompt-major, then backend); rank 0
  gathers every rank's reports (``gather_object``: the reports, a few KiB each, never a tensor) and
  puts them back in that order, so its JSON, JUnit and exit code are those of one process. On GPUs
  each rank runs on its own device (``cuda:LOCAL_RANK``, NCCL); elsewhere on the CPU (gloo).
- **Tensor parallel** (`HeadShards`): a transformers model loaded with ``tp_plan="auto"`` runs each
  attention layer on each rank's local heads. Which global heads a rank holds is read from the plan:
  the q and k projections must be ``colwise`` (their weights `DTensor`s sharded on the output rows),
  and the rows a rank holds, divided by the head dim, are its heads. A split that cuts a head or
  gives the ranks different numbers of heads is refused (`UnsupportedFeature`): it would not compute
  attention at all. What a layer records (q, k, v, the output, the lse; per layer
  ``(2·Hq + 2·Hkv)·T·D + Hq·T`` values, as each rank holds ``1/N`` of them) is ``all_gather``-ed in
  the attention call and put in the model's head order before the recorder sees it, so every rank
  holds the whole `Result` (every rank runs the same checks, whose extra forwards are collective
  operations). The residual stream after a block is already whole on every rank (the row-wise
  output projection sums it over the ranks).

References: torch.distributed's ``gather_object`` / ``all_gather``, transformers' tensor-parallel
plans (``transformers.integrations.tensor_parallel``).
"""

from __future__ import annotations

import fnmatch
import os
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from attnscope.errors import UnsupportedFeature, UserError

T = TypeVar("T")

# ---- a check suite over ranks --------------------------------------------------------------------------


@dataclass(frozen=True)
class Share:
    """This process's share of a suite: rank `rank` of `world` (world 1: all of it)."""

    rank: int = 0
    world: int = 1

    @property
    def root(self) -> bool:
        """Whether this rank writes the report (rank 0)."""
        return self.rank == 0

    def mine(self, index: int) -> bool:
        """Whether item `index` of the work, in the single-process order, is this rank's."""
        return index % self.world == self.rank

    def device(self, device: str) -> str:
        """The device this rank runs on: its own GPU (``cuda:LOCAL_RANK``) when `device` asks for one (or
        ``auto``) and GPUs exist, else `device`."""
        if self.world == 1 or device not in ("auto", "cuda") or not torch.cuda.is_available():
            return device
        return f"cuda:{int(os.environ.get('LOCAL_RANK', self.rank)) % torch.cuda.device_count()}"

    def gather(self, mine: list[T]) -> list[T]:
        """On rank 0, every rank's items back in the single-process order (rank r held items r, r + N,
        ...); [] on the other ranks. A collective: every rank calls it."""
        if self.world == 1:
            return mine
        import torch.distributed as dist

        parts: list[list[T]] | None = [[] for _ in range(self.world)] if self.root else None
        dist.gather_object(mine, parts, dst=0)
        return [] if parts is None else interleave(parts)

    def close(self) -> None:
        """Leave the process group (every rank, after the last collective)."""
        import torch.distributed as dist

        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def share_from_env() -> Share:
    """This process's `Share` as a launcher set it (``RANK``, ``WORLD_SIZE``: torchrun or `launch`),
    joining the process group (NCCL with GPUs, else gloo); the whole suite when not launched so."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Share()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Share(dist.get_rank(), dist.get_world_size())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_main(rank: int, world: int, port: int, target: Callable[..., Any], kwargs: dict) -> None:
    """One launched rank: the environment torchrun would set, then `target(**kwargs)`; its exit code is
    what `target` exits with (a ``typer.Exit``'s code, a ``SystemExit``'s), 0 when it returns. Torch's
    threads are left as a single process would have them (``OMP_NUM_THREADS`` or the cores): a
    float32 sum split over a different number of threads rounds differently, and the report must be
    the single process's, bit for bit."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    try:
        target(**kwargs)
    except SystemExit as exc:
        sys.exit(exc.code)
    except Exception as exc:  # click's and typer's exits carry an exit_code
        code = getattr(exc, "exit_code", None)
        if code is None:
            raise
        sys.exit(code)
    sys.exit(0)


def launch(world: int, target: Callable[..., Any], kwargs: dict) -> int:
    """`target(**kwargs)` in `world` new processes (rank 0 .. world-1, spawned, gloo or NCCL) and the
    exit code of the suite: rank 0's, unless another rank failed first (then that rank's, and the
    others are stopped). `target` must be importable (a module-level function)."""
    if world < 1:
        raise UserError(f"the number of processes must be >= 1, got {world}")
    import multiprocessing
    from multiprocessing.connection import wait

    context = multiprocessing.get_context("spawn")
    port = _free_port()
    procs = [context.Process(target=_rank_main, args=(r, world, port, target, kwargs)) for r in range(world)]
    for p in procs:
        p.start()
    code = None
    try:
        running = list(procs)
        while running:
            wait([p.sentinel for p in running])
            for p in [p for p in running if p.exitcode is not None]:
                running.remove(p)
                if p.exitcode != 0 and p is not procs[0] and code is None:
                    code = p.exitcode  # a rank failed: rank 0 would wait for it forever
                    for other in running:
                        other.terminate()
    finally:
        for p in procs:
            p.join()
    if code is None:
        code = procs[0].exitcode
    return 1 if code is None or code < 0 else code


# ---- tensor parallel: which global heads a rank holds ---------------------------------------------------


@dataclass(frozen=True)
class HeadShards:
    """The heads each rank holds, per layer, read from a model's tensor-parallel plan."""

    rank: int
    world: int
    group: Any  # the process group of the plan's device mesh
    q_first: tuple[tuple[int, ...], ...]  # [layer][rank]: the first global query head the rank holds
    kv_first: tuple[tuple[int, ...], ...]  # [layer][rank]: the first global kv head
    q_local: int  # query heads per rank
    kv_local: int  # kv heads per rank

    def rank_of(self, layer: int, head: int, kv: bool = False) -> int:
        """The rank that holds global (query, or kv when `kv`) head `head` of `layer`."""
        firsts, size = (self.kv_first, self.kv_local) if kv else (self.q_first, self.q_local)
        return next(r for r, first in enumerate(firsts[layer]) if first <= head < first + size)

    def whole(self, layer: int, x: torch.Tensor, kv: bool = False, dim: int = 1) -> torch.Tensor:
        """This rank's heads of `x` (heads on `dim`) gathered from every rank, in the model's order."""
        import torch.distributed as dist

        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.world)]
        dist.all_gather(parts, x, group=self.group)
        firsts = (self.kv_first if kv else self.q_first)[layer]
        order = sorted(range(self.world), key=lambda r: firsts[r])
        return torch.cat([parts[r] for r in order], dim=dim)

    def gathering(self, recorder: Any) -> GatheringRecorder:
        """`recorder`, shown every attention call with all heads (`GatheringRecorder`)."""
        return GatheringRecorder(recorder, self)

    def held_by(self, where: dict[str, Any]) -> int | None:
        """The rank that holds the head a check's `where` names (its kv head when it names one)."""
        if where.get("layer") is None or where.get("head") is None:
            return None
        if where.get("kv_head") is not None:
            return self.rank_of(where["layer"], where["kv_head"], kv=True)
        return self.rank_of(where["layer"], where["head"])


class GatheringRecorder:
    """A `attnscope.engine.Recorder` in front of another: each attention call's local heads gathered
    from every rank into the model's heads before the other sees them; the residual as it is (whole
    on every rank)."""

    def __init__(self, inner: Any, shards: HeadShards):
        self.inner = inner
        self.shards = shards
        self.wants_lse = inner.wants_lse

    def attention(self, layer: int, *, q, k, v, out, lse, mask, scale, softcap=None, sinks=None) -> None:
        whole = self.shards.whole
        self.inner.attention(
            layer,
            q=whole(layer, q),  # (B, Hq, Sq, D)
            k=whole(layer, k, kv=True),  # (B, Hkv, Sk, D)
            v=whole(layer, v, kv=True),
            out=whole(layer, out),
            lse=None if lse is None else whole(layer, lse),  # (B, Hq, Sq)
            mask=mask,
            scale=scale,
            softcap=softcap,
            sinks=None if sinks is None else whole(layer, sinks, dim=0),  # (Hq,)
        )

    def residual(self, layer: int, hidden: torch.Tensor) -> None:
        self.inner.residual(layer, hidden)


def _plan_style(plan: dict[str, str], name: str) -> str | None:
    """The plan's entry for module `name` (plan keys use ``*`` for a layer number)."""
    for pattern, style in plan.items():
        if fnmatch.fnmatchcase(name, pattern):
            return style
    return None


def head_shards(model, n_layers: int, n_heads: int, n_kv_heads: int, head_dim: int) -> HeadShards | None:
    """The `HeadShards` of a transformers model loaded with a tensor-parallel plan (``tp_plan``); None
    for a model that is not sharded. An `UnsupportedFeature` when the plan does not shard q and k by
    whole heads, evenly (see the module docstring)."""
    size = int(getattr(model, "tp_size", None) or 1)
    if size <= 1:
        return None
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    plan = dict(getattr(model, "tp_plan", None) or getattr(model, "_tp_plan", None) or {})
    for heads, kind in ((n_heads, "query"), (n_kv_heads, "key/value")):
        if heads % size:
            raise UnsupportedFeature(
                f"tensor parallel over {size} ranks splits {heads} {kind} heads unevenly: attnscope needs "
                f"every rank to hold whole heads, the same number of them (use a number of ranks that divides {heads})"
            )
    firsts: dict[str, list[int]] = {"q_proj": [-1] * n_layers, "k_proj": [-1] * n_layers}
    group = None
    for name, module in model.named_modules():
        layer = getattr(module, "layer_idx", None)
        if layer is None or not all(hasattr(module, p) for p in firsts):
            continue
        for proj in firsts:
            full = f"{name}.{proj}"
            weight = getattr(module, proj).weight
            style = _plan_style(plan, full)
            if style != "colwise" or not isinstance(weight, DTensor):
                raise UnsupportedFeature(
                    f"the tensor-parallel plan shards {full} as {style!r}: attnscope reads a rank's heads "
                    "from a colwise q/k projection only"
                )
            shape, offset = compute_local_shape_and_global_offset(weight.shape, weight.device_mesh, weight.placements)
            expected = (n_heads if proj == "q_proj" else n_kv_heads) // size * head_dim
            if shape[0] != expected or offset[0] % head_dim:
                raise UnsupportedFeature(
                    f"the tensor-parallel plan gives this rank rows {offset[0]}..{offset[0] + shape[0] - 1} of "
                    f"{full}: not {expected // head_dim} whole heads"
                )
            firsts[proj][int(layer)] = offset[0] // head_dim
            group = weight.device_mesh.get_group()
    if -1 in firsts["q_proj"] or -1 in firsts["k_proj"]:
        raise UnsupportedFeature("attnscope found no q_proj/k_proj in some attention layer of the sharded model")
    import torch.distributed as dist

    everyone: list[Any] = [None] * size
    dist.all_gather_object(everyone, (firsts["q_proj"], firsts["k_proj"]), group=group)
    return HeadShards(
        rank=dist.get_rank(group),
        world=size,
        group=group,
        q_first=tuple(tuple(everyone[r][0][i] for r in range(size)) for i in range(n_layers)),
        kv_first=tuple(tuple(everyone[r][1][i] for r in range(size)) for i in range(n_layers)),
        q_local=n_heads // size,
        kv_local=n_kv_heads // size,
    )


def interleave(parts: Sequence[list[T]]) -> list[T]:
    """Items dealt round-robin to `len(parts)` ranks, back in their first order."""
    total = sum(len(p) for p in parts)
    return [parts[i % len(parts)][i // len(parts)] for i in range(total)]
