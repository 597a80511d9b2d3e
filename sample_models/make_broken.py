"""Make deliberately broken copies of `tiny-code`, for trying out (and testing) ``attnscope check``.

    python sample_models/make_broken.py          # reads sample_models/tiny-code, writes sample_models/broken/

Each variant is a full Hugging Face model directory (config, weights, tokenizer) with one planted
fault and a ``README.md`` saying what was changed and what ``attnscope check`` reports about it. They
live in ``sample_models/broken/``, one level down, so ``attnscope models`` does not list them; run
them by path:

    attnscope check -m sample_models/broken/nan-k-proj --prompt "def fibonacci(n):" --checks nan
    attnscope check -m sample_models/broken/fp16-overflow --prompt "def fibonacci(n):" --checks nan --dtype float16

- ``nan-k-proj``: one element of layer 2's ``k_proj`` weight is NaN. Every key of the key-value
  head that element feeds is NaN, so the ``nan`` check fails at layer 2, naming ``k`` of that kv
  head (and the query heads that read it) at position 0, before any score, in every dtype.
- ``fp16-overflow``: layer 1's ``post_attention_layernorm`` weight is multiplied by a power of two
  chosen here by measurement: the smallest one at which float16 overflows on every probe prompt,
  times `MARGIN`. The MLP of layer 1 then produces values beyond float16's range (65504), so a
  float16 run has Inf/NaN in layer 1's residual stream, while float32 (and bfloat16, whose range is
  that of float32) stays finite: the ``nan`` check fails in float16 only.

The script verifies what it claims (through attnscope's API, as ``attnscope check`` runs it) and
stops with an error if a variant does not behave as described. Options: ``--src``, ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import attnscope

HERE = Path(__file__).resolve().parent
DEFAULT_SRC = HERE / "tiny-code"
DEFAULT_OUT = HERE / "broken"
COPIED = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")

CHECK_PROMPT = "def fibonacci(n):"  # the prompt of the commands in the model cards
PROBE_PROMPTS = [  # fp16-overflow must overflow on all of these
    CHECK_PROMPT,
    "import os\n",
    "class Stack:\n    def __init__(self):\n        self.items = []",
    "x",
    "for i in range(10):\n    print(i)",
    "Hello, world! This is not Python at all.",
]

# nan-k-proj
NAN_LAYER = 2
NAN_TENSOR = f"model.layers.{NAN_LAYER}.self_attn.k_proj.weight"
NAN_ELEMENT = (37, 101)  # (output row, input column); row 37 belongs to kv head 37 // head_dim

# fp16-overflow
OVERFLOW_LAYER = 1
OVERFLOW_TENSOR = f"model.layers.{OVERFLOW_LAYER}.post_attention_layernorm.weight"
SCALES = [2.0**i for i in range(1, 13)]  # candidate scales: 2 .. 4096 (exact in float16)
MARGIN = 4.0  # the scale used is MARGIN times the smallest one that overflows on every probe prompt


def nan_report(model_dir: Path, dtype: str, prompts: list[str], backend: str = "sdpa") -> list:
    """The `nan` check of each prompt on the model in `model_dir` loaded in `dtype` (as `attnscope check
    --checks nan` runs it: default backend sdpa)."""
    scope = attnscope.Scope(attnscope.load_model(model_dir, dtype=dtype), backend=backend)
    return [scope.run(p, checks=["nan"]).checks[0] for p in prompts]


def smallest_overflowing_scale(src: Path) -> float:
    """The smallest scale in SCALES at which float16 overflows on every probe prompt."""
    model = attnscope.load_model(src, dtype="float16")
    scope = attnscope.Scope(model, backend="sdpa")
    weight = model.net.layers[OVERFLOW_LAYER].post_attention_layernorm.weight
    original = weight.detach().clone()
    for scale in SCALES:
        with torch.no_grad():
            weight.copy_(original * scale)  # a power of two: exact in float16
        failing = [not scope.run(p, checks=["nan"]).checks[0].passed for p in PROBE_PROMPTS]
        print(f"  scale {scale:6g}: float16 overflows on {sum(failing)}/{len(failing)} probe prompts")
        if all(failing):
            return scale
    raise SystemExit(f"no scale up to {SCALES[-1]:g} makes float16 overflow on every probe prompt")


def write_variant(src: Path, out: Path, tensors: dict[str, torch.Tensor]) -> None:
    """A fresh model directory: `src`'s config and tokenizer files and these weights."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in COPIED:
        if (src / name).is_file():
            shutil.copyfile(src / name, out / name)
    save_file(
        {k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"), metadata={"format": "pt"}
    )
    (out / "model.safetensors").chmod(0o644)  # safetensors creates it owner-only


def describe(check) -> str:
    return f"{'passed' if check.passed else 'FAILED'}: {check.message}"


def counts(check) -> str:
    return ", ".join(f"{k} {v}" for k, v in check.figures["nonfinite_counts"].items())


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise SystemExit(f"make_broken: {what}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC, help="the model to break (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    src, out = args.src.resolve(), args.out.resolve()
    tensors = load_file(str(src / "model.safetensors"))
    config = json.loads((src / "config.json").read_text())
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    groups = config["num_attention_heads"] // config["num_key_value_heads"]
    rel = lambda p: p.relative_to(HERE.parent) if p.is_relative_to(HERE.parent) else p
    cmd = lambda d, dtype="": (
        f"attnscope check -m {rel(d)} --prompt {json.dumps(CHECK_PROMPT)} --checks nan"
        + (f" --dtype {dtype}" if dtype else "")
    )

    # 1. nan-k-proj -----------------------------------------------------------------------------
    nan_dir = out / "nan-k-proj"
    broken = dict(tensors)
    weight = tensors[NAN_TENSOR].clone()
    row, col = NAN_ELEMENT
    weight[row, col] = float("nan")
    broken[NAN_TENSOR] = weight
    kv_head = row // head_dim
    write_variant(src, nan_dir, broken)  # the model card follows, with the check's findings
    findings = {dtype: nan_report(nan_dir, dtype, [CHECK_PROMPT])[0] for dtype in ("float32", "float16")}
    findings["eager"] = nan_report(nan_dir, "float32", [CHECK_PROMPT], backend="eager")[0]
    for dtype, check in findings.items():
        print(f"nan-k-proj, {dtype}: {describe(check)}; counts {check.figures['nonfinite_counts']}")
        expect(
            not check.passed
            and (check.where["layer"], check.where["stage"], check.where.get("kv_head")) == (NAN_LAYER, "k", kv_head)
            and check.where["position"] == 0,
            f"nan-k-proj in {dtype}: expected a failure at layer {NAN_LAYER}, k of kv head {kv_head}, position 0; "
            f"got {check.message}",
        )
    check = findings["float32"]
    (nan_dir / "README.md").write_text(
        "\n".join(
            [
                "# nan-k-proj",
                "",
                f"A copy of tiny-code with one NaN planted in layer {NAN_LAYER}'s `k_proj` weight, so that "
                f"`attnscope check --checks nan` fails at layer {NAN_LAYER}, naming the NaN keys of kv head "
                f"{kv_head} where they are made, before any attention score.",
                "",
                "## What was changed",
                "",
                f"`{NAN_TENSOR}[{row}, {col}]` (shape {list(tensors[NAN_TENSOR].shape)}) is NaN; every other tensor "
                "and "
                f"file is tiny-code's. Row {row} is dimension {row % head_dim} of key-value head {kv_head} (head dim "
                f"{head_dim}), so every key of that head is NaN in that dimension (and, after RoPE, in the dimension "
                f"rotated with it), and every attention score of the query heads that read it "
                f"({kv_head * groups}..{(kv_head + 1) * groups - 1}, grouped-query attention) is NaN at every "
                "position. "
                f"Layers 0..{NAN_LAYER - 1} are untouched and finite.",
                "",
                "## What `attnscope check` reports",
                "",
                "```",
                cmd(nan_dir),
                "```",
                "",
                f'exits with status 1; the `nan` check fails with "{check.message}" '
                f'(the same in float16: "{findings["float16"].message}"): `k` is the first stage of layer '
                f"{NAN_LAYER} with a NaN (the check looks at q, k and v before the scores they give), and the "
                "query heads are those that read that kv head. Non-finite counts by stage: " + counts(check) + ".",
                "",
                "Downstream of the scores the backends differ: with `--backend eager` the NaN spreads to the attention "
                "output, the residual stream and the logits (" + counts(findings["eager"]) + "), while torch's CPU "
                "SDPA kernel (`is_causal=True`) returns zeros for query rows whose scores are NaN, so with the sdpa "
                "backend on a CPU the model's outputs stay finite and only k and the recomputed scores and weights "
                "show the NaN. The `nan` check names the same first place either way, because it reads the recorded k "
                "itself; `--checks backend_vs_reference` also fails for sdpa (NaN against 0).",
                "",
                "Regenerate with `python sample_models/make_broken.py` (reads `sample_models/tiny-code`).",
            ]
        )
        + "\n"
    )

    # 2. fp16-overflow --------------------------------------------------------------------------
    print(f"fp16-overflow: scaling {OVERFLOW_TENSOR}")
    smallest = smallest_overflowing_scale(src)
    scale = smallest * MARGIN
    over_dir = out / "fp16-overflow"
    broken = dict(tensors)
    original = tensors[OVERFLOW_TENSOR]
    broken[OVERFLOW_TENSOR] = (original.float() * scale).to(original.dtype)
    expect(bool(torch.isfinite(broken[OVERFLOW_TENSOR]).all()), f"scale {scale:g} overflows the stored weight")
    write_variant(src, over_dir, broken)
    fp16 = nan_report(over_dir, "float16", PROBE_PROMPTS)
    fp32 = nan_report(over_dir, "float32", PROBE_PROMPTS)
    bf16 = nan_report(over_dir, "bfloat16", PROBE_PROMPTS)
    for prompt, c16, c32, cbf in zip(PROBE_PROMPTS, fp16, fp32, bf16, strict=True):
        print(
            f"  {prompt[:30]!r:34} float16 {describe(c16)} | float32 {'passed' if c32.passed else 'FAILED'} "
            f"| bfloat16 {'passed' if cbf.passed else 'FAILED'}"
        )
        expect(
            not c16.passed and c16.where["layer"] == OVERFLOW_LAYER,
            f"fp16-overflow: float16 should fail at layer {OVERFLOW_LAYER} on {prompt!r}; got {c16.message}",
        )
        expect(c32.passed, f"fp16-overflow: float32 should pass on {prompt!r}; got {c32.message}")
    check16, check32 = fp16[0], fp32[0]
    with torch.no_grad():  # how far float32 goes: the largest activation in layer OVERFLOW_LAYER's MLP
        model = attnscope.load_model(over_dir, dtype="float32")
        mlp = model.net.layers[OVERFLOW_LAYER].mlp
        seen = {}
        hooks = [
            mlp.down_proj.register_forward_hook(lambda m, i, o: seen.update(inner=i[0].abs().max(), out=o.abs().max()))
        ]
        model.net(torch.tensor([model.tokenizer.encode(CHECK_PROMPT)]))
        for h in hooks:
            h.remove()
    (over_dir / "README.md").write_text(
        "\n".join(
            [
                "# fp16-overflow",
                "",
                f"A copy of tiny-code whose layer {OVERFLOW_LAYER} `post_attention_layernorm` weight is scaled by "
                f"{scale:g}, "
                f"so that a float16 run overflows to Inf/NaN in layer {OVERFLOW_LAYER} while float32 stays finite.",
                "",
                "## What was changed",
                "",
                f"`{OVERFLOW_TENSOR}` is multiplied by {scale:g} (a power of two, so exact in the stored float16); "
                "every "
                "other tensor and file is tiny-code's. The scale was chosen by measurement "
                f"(`sample_models/make_broken.py`): {smallest:g} is the smallest power of two at which float16 "
                "overflows "
                f"on every one of {len(PROBE_PROMPTS)} probe prompts, and {MARGIN:g} times that leaves a margin for "
                "other "
                "prompts. The RMSNorm before layer "
                f"{OVERFLOW_LAYER}'s MLP now outputs values {scale:g} times larger, and the SwiGLU product "
                "`silu(gate) * up` grows with the square of that: on the prompt below its largest value is "
                f"{float(seen['inner']):.3g} in float32 (the MLP output {float(seen['out']):.3g}), far beyond "
                "float16's "
                "largest finite value, 65504. float32 and bfloat16 have a range up to about 3.4e38 and stay finite; "
                "the next layer's RMSNorm rescales the inflated residual stream (the predictions are of course no "
                "longer tiny-code's).",
                "",
                "## What `attnscope check` reports",
                "",
                "```",
                cmd(over_dir, "float16"),
                "```",
                "",
                f'exits with status 1; the `nan` check fails with "{check16.message}" (non-finite counts by stage: '
                + counts(check16)
                + ").",
                "",
                "```",
                cmd(over_dir, "float32"),
                "```",
                "",
                f'exits with status 0: "{check32.message}" (bfloat16 passes too).',
                "",
                "Regenerate with `python sample_models/make_broken.py` (reads `sample_models/tiny-code`).",
            ]
        )
        + "\n"
    )
    print(f"fp16-overflow: scale {scale:g}; float16 {describe(check16)}; float32 {describe(check32)}")
    print(f"done: {rel(nan_dir)}, {rel(over_dir)}")


if __name__ == "__main__":
    main()
