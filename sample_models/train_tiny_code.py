"""Train `tiny-code`, attnscope's bundled default sample model, from scratch on a CPU.

    python sample_models/train_tiny_code.py

On 2 idle CPU cores with native bfloat16 (AVX512-BF16 / AMX) a step takes about 0.6 s, so the
default 800 steps and the rest take about 9 minutes. Other processes on the same cores slow it
down a lot (the bundled model took 25 minutes on a busy 2-core machine, load average ~4); there
``OMP_WAIT_POLICY=PASSIVE`` helps, about 2x.

What it does, top to bottom:

1. Data: the Python standard library's own ``*.py`` files (the stdlib of the Python running this
   script), in sorted path order, without tests, idlelib, site-packages and the generated tables of
   ``encodings`` and ``pydoc_data``, capped at 8 MiB. Every 50th file (2%) is held out for validation.
2. Tokenizer: byte-level BPE (the `tokenizers` library), 1024 tokens, one special token
   ``<|endoftext|>`` with id 0, used as both BOS and EOS.
3. Model: a 4-layer Llama (`attnscope.model.Transformer`, grouped-query attention 8/2 heads, tied
   embeddings, about 2.5M parameters), trained with AdamW on random 256-token windows. Every window
   starts with the BOS token, as every prompt does at inference, so position 0 can act as an
   attention sink.
4. Output, in Hugging Face layout (``LlamaForCausalLM.from_pretrained`` reads it): ``config.json``,
   ``generation_config.json``, ``model.safetensors`` (float16), ``tokenizer.json``,
   ``tokenizer_config.json`` and a ``README.md`` model card written from this run's figures.

The run is reproducible for a given Python version (its stdlib is the data), torch build and CPU:
seeds are fixed and nothing is downloaded. Options: ``--out``, ``--steps``, ``--seed``, ``--threads``,
``--autocast``; see ``--help``.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

import attnscope
from attnscope.model import ModelConfig, Transformer
from attnscope.sample_models import training

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "tiny-code"

# data
SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "encodings", "pydoc_data", "__pycache__"}
MAX_BYTES = 8 * 2**20  # cap on the text taken from the stdlib
VAL_EVERY = 50  # every 50th file is a validation file (2%)

# tokenizer
VOCAB_SIZE = 1024
SPECIAL = "<|endoftext|>"  # id 0: BOS and EOS
TOKENIZER_CONFIG = {
    "add_bos_token": True,
    "add_eos_token": False,
    "bos_token": SPECIAL,
    "eos_token": SPECIAL,
    "tokenizer_class": "PreTrainedTokenizerFast",
    "model_max_length": 4096,
    "clean_up_tokenization_spaces": False,
}

# training
SEQ_LEN = 256  # tokens per window (BOS included)
BATCH = 32
# The bundled weights' hyperparameters: any change here changes the weights. tiny-induction's differ
# (see its recipe): beta2 0.95 and weight decay 0.1 are the usual language-model pretraining values.
HP = training.Hyperparameters(lr=3e-3, min_lr=3e-4, warmup=60, weight_decay=0.1, betas=(0.9, 0.95), grad_clip=1.0)
DEFAULT_STEPS = 800  # ~0.6 s per step with bf16 autocast on 2 idle cores: ~8 minutes of training
EVAL_EVERY = 100
EVAL_WINDOWS = 64  # validation windows, fixed for the whole run
DOC_START_PROB = 0.25  # share of windows that begin at the start of a file

SAMPLE_PROMPTS = ["def fibonacci(n):", "import os\n", "class Stack:\n    def __init__(self):"]
SAMPLE_NEW_TOKENS = 48


def model_config() -> ModelConfig:
    return training.llama_config(
        vocab_size=VOCAB_SIZE,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=4096,
        bos_token_id=0,
        eos_token_id=0,
    )


# What `training.save_model` writes here and not in tiny-induction: float16 weights (the default sample
# model ships in the package, so half the size counts; the card gives the float16 validation loss), and an
# EOS token in generation_config.json (BOS and EOS are both <|endoftext|>; code has an end, a copied string
# has not).
SAVED_DTYPE = torch.float16


# ---------------------------------------------------------------------------------------------- data


def collect_files() -> tuple[Path, list[Path], list[Path]]:
    """(stdlib root, training files, validation files): sorted, capped at MAX_BYTES in all."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chosen, total = [], 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if SKIP_DIRS & set(rel.parts[:-1]):
            continue
        size = path.stat().st_size
        if total + size > MAX_BYTES:
            break
        chosen.append(path)
        total += size
    val = chosen[VAL_EVERY // 2 :: VAL_EVERY]
    val_set = set(val)
    train = [p for p in chosen if p not in val_set]
    return root, train, val


def read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


# ----------------------------------------------------------------------------------------- tokenizer


def train_tokenizer(texts: list[str]) -> Tokenizer:
    """Byte-level BPE: every byte is in the base alphabet, so any text round-trips."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=[SPECIAL],  # first special token: id 0
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    assert tok.token_to_id(SPECIAL) == 0
    # BOS in the post-processor too, so tools that read only tokenizer.json also prepend it.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SPECIAL} $A", pair=f"{SPECIAL} $A {SPECIAL} $B:1", special_tokens=[(SPECIAL, 0)]
    )
    return tok


def token_stream(tok: Tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """All documents as one stream ``BOS doc BOS doc ...`` (int64) and the offsets of the BOS tokens."""
    bos = tok.token_to_id(SPECIAL)
    ids, starts = [], []
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        starts.append(len(ids))
        ids.append(bos)
        ids.extend(enc.ids)
    return torch.tensor(ids, dtype=torch.long), torch.tensor(starts, dtype=torch.long)


def sample_windows(stream: torch.Tensor, starts: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """`n` windows of SEQ_LEN + 1 tokens ``[n, SEQ_LEN + 1]``, each beginning with BOS.

    A share DOC_START_PROB begins at the start of a file (where the stream has its BOS); the others
    are BOS followed by the stream at a random offset, so that the model sees every part of a file
    with BOS at position 0, as a prompt has at inference.
    """
    bos = stream[0].item()
    max_start = len(stream) - (SEQ_LEN + 1)
    windows = torch.empty(n, SEQ_LEN + 1, dtype=torch.long)
    at_doc_start = torch.rand(n, generator=gen) < DOC_START_PROB
    for i in range(n):
        if at_doc_start[i]:
            candidates = starts[starts <= max_start]
            s = candidates[torch.randint(len(candidates), (1,), generator=gen)].item()
            windows[i] = stream[s : s + SEQ_LEN + 1]
        else:
            s = torch.randint(max_start + 1, (1,), generator=gen).item()
            windows[i, 0] = bos
            windows[i, 1:] = stream[s : s + SEQ_LEN]
    return windows


# ------------------------------------------------------------------------------------------- model


def bf16_supported() -> bool:
    """Whether this CPU has native bfloat16 matmuls (AVX512-BF16 / AMX), where autocast pays off."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def lm_loss(
    model: Transformer, windows: torch.Tensor, autocast: bool, backend: str = training.TRAIN_BACKEND
) -> torch.Tensor:
    """Mean next-token cross-entropy over windows ``[B, T + 1]``, matmuls in bfloat16 with `autocast`."""
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with ctx:
        logits = training.forward(model, windows[:, :-1], backend)  # (B, T, vocab)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))


@torch.no_grad()
def evaluate(
    model: Transformer, windows: torch.Tensor, autocast: bool, batch: int = BATCH, backend: str = training.TRAIN_BACKEND
) -> float:
    """Mean loss over `windows`, in batches of `batch`."""
    model.eval()
    losses = [
        lm_loss(model, windows[i : i + batch], autocast, backend).item() * len(windows[i : i + batch])
        for i in range(0, len(windows), batch)
    ]
    model.train()
    return sum(losses) / len(windows)


# ------------------------------------------------------------------------------------- model card


def attention_entropy(model, text: str, max_tokens: int = 256) -> list[dict]:
    """Per layer: mean attention entropy over heads and query rows, next to that of uniform causal
    attention over the same rows, and the mean weight on position 0 (the BOS sink)."""
    ids = model.tokenizer.encode(text)[:max_tokens]
    result = attnscope.Scope(model, backend="eager").run(ids)
    T = len(ids)
    uniform = sum(math.log(i + 1) for i in range(T)) / T  # row i attends uniformly to i + 1 keys
    rows = []
    for layer, heads in enumerate(result.head_stats()):
        entropies = [h.entropy for h in heads]
        rows.append(
            {
                "layer": layer,
                "tokens": T,
                "entropy": sum(entropies) / len(entropies),
                "min_head": min(entropies),
                "max_head": max(entropies),
                "uniform": uniform,
                "sink": sum(h.first_token_mass for h in heads) / len(heads),
            }
        )
    return rows


def write_model_card(out: Path, info: dict) -> None:
    c = info["config"]
    n_params = info["n_params"]
    saved = training.dtype_name(SAVED_DTYPE)
    lines = [
        "# tiny-code",
        "",
        f"A {n_params / 1e6:.1f}M-parameter, {c['num_hidden_layers']}-layer Llama with grouped-query attention, "
        "trained from scratch on a CPU on the Python standard library's source code.",
        "",
        "attnscope's default sample model: small enough to ship in the package and to run anywhere, and "
        "trained long enough that its attention is far from uniform (see Attention below) and that it "
        "continues Python code plausibly. It is a toy for looking at attention, not a code assistant.",
        "",
        "## Config",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | `LlamaForCausalLM` (`model_type` {c['model_type']}) |",
        f"| parameters | {n_params:,} (embeddings tied with the LM head) |",
        f"| layers | {c['num_hidden_layers']} |",
        f"| hidden size | {c['hidden_size']} |",
        f"| MLP inner size (SwiGLU) | {c['intermediate_size']} |",
        f"| attention heads (query / key-value) | {c['num_attention_heads']} / {c['num_key_value_heads']} "
        "(grouped-query attention) |",
        f"| head dim | {c['head_dim']} |",
        f"| vocab size | {c['vocab_size']} (byte-level BPE) |",
        f"| positions | RoPE, theta {c['rope_theta']:g}, max_position_embeddings {c['max_position_embeddings']} "
        f"(trained on {SEQ_LEN}) |",
        f"| norm | RMSNorm, eps {c['rms_norm_eps']:g} |",
        f"| BOS / EOS | `{SPECIAL}`, id 0; the tokenizer prepends it |",
        f"| weights | `model.safetensors`, {saved} |",
        "",
        "## Data",
        "",
        f"The `*.py` files of the CPython {info['python']} standard library (`sysconfig.get_paths()"
        '["stdlib"]`) in sorted path order, skipping the directories '
        f"{', '.join(f'`{d}`' for d in sorted(SKIP_DIRS - {'__pycache__'}))} "
        f"(tests, the IDLE app, installed packages, generated codec tables and doc strings), "
        f"capped at {MAX_BYTES / 2**20:.0f} MiB: {info['n_files']} files, {info['n_bytes'] / 2**20:.2f} MiB. "
        f"Every {VAL_EVERY}th file is held out for validation: {info['n_val_files']} files "
        f"({info['val_tokens']:,} tokens), leaving {info['n_train_files']} training files "
        f"({info['train_tokens']:,} tokens, {info['bytes_per_token']:.2f} bytes per token). "
        "The tokenizer was trained on the training files only.",
        "",
        "## Training",
        "",
        f"{info['steps']} steps of AdamW (betas {HP.betas[0]:g}/{HP.betas[1]:g}, weight decay {HP.weight_decay:g} "
        "on matrices), "
        f"batch {BATCH} windows of {SEQ_LEN} tokens ({BATCH * SEQ_LEN:,} tokens per step, "
        f"{info['steps'] * BATCH * SEQ_LEN / 1e6:.1f}M tokens in all, "
        f"{info['steps'] * BATCH * SEQ_LEN / info['train_tokens']:.1f} epochs), learning rate {HP.lr:g} "
        f"with {HP.warmup} warmup steps and cosine decay to {HP.min_lr:g}, gradient clipping at {HP.grad_clip}, "
        f"seed {info['seed']}. Every window begins with BOS: {DOC_START_PROB:.0%} start at the beginning of "
        "a file, the rest are BOS followed by text from a random offset. "
        f"Matmuls ran in {'bfloat16 (autocast; float32 master weights)' if info['autocast'] else 'float32'}; "
        f"weights are stored as {saved}.",
        "",
        f"Time: {info['train_seconds']:.0f} s of training ({info['train_seconds'] / info['steps']:.2f} s per step), "
        f"{info['total_seconds']:.0f} s for the whole script, on {info['cpu']} with "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}; mean 1-minute load average during "
        f"training {info['load']:.1f} on {os.cpu_count()} cores"
        + (f", OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}" if os.environ.get("OMP_WAIT_POLICY") else "")
        + " (a load above the thread count means other processes shared the cores and slowed the run).",
        "",
        f"Validation loss is measured on {EVAL_WINDOWS} fixed windows of the held-out files "
        f"({EVAL_WINDOWS * SEQ_LEN:,} predicted tokens). "
        f"Final train loss {info['final_train_loss']:.3f}, validation loss {info['final_val_loss']:.3f} nats per "
        f"token (perplexity {math.exp(info['final_val_loss']):.1f}); the saved {saved} weights give validation "
        f"loss {info['saved_val_loss']:.3f} in float32. Uniform guessing is ln {VOCAB_SIZE} = "
        f"{math.log(VOCAB_SIZE):.3f}.",
        "",
        "| step | train loss (mean since last row) | validation loss | learning rate |",
        "|---:|---:|---:|---:|",
    ]
    for row in info["log"]:
        lines.append(f"| {row['step']} | {row['train_loss']:.3f} | {row['val_loss']:.3f} | {row['lr']:.2e} |")
    lines += [
        "",
        "## Sample continuations",
        "",
        f'Greedy, {SAMPLE_NEW_TOKENS} new tokens, from `attnscope.Scope(attnscope.load_model("tiny-code"))'
        f".run(prompt, max_new_tokens={SAMPLE_NEW_TOKENS}).continuation` (the prompt is shown first):",
        "",
    ]
    for prompt, continuation in info["samples"]:
        lines += [f"Prompt `{prompt!r}`:", "", "```python", prompt + continuation, "```", ""]
    att = info["attention"]
    lines += [
        "## Attention",
        "",
        f"Mean entropy of the attention rows (nats, over all {c['num_attention_heads']} heads and "
        f"{att[0]['tokens']} query positions) on the first {att[0]['tokens']} tokens of the held-out file "
        f"`{info['attention_file']}`, next to uniform causal attention over the same rows, and the mean "
        "weight on position 0 (BOS, the attention sink). From `Result.head_stats()`.",
        "",
        "| layer | mean entropy | lowest head | highest head | uniform | weight on BOS |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in att:
        lines.append(
            f"| {r['layer']} | {r['entropy']:.2f} | {r['min_head']:.2f} | {r['max_head']:.2f} | "
            f"{r['uniform']:.2f} | {r['sink']:.2f} |"
        )
    lines += [
        "",
        "## License",
        "",
        "The training data is the source code of the CPython standard library, copyright the Python "
        "Software Foundation, distributed under the PSF License Agreement "
        "(https://docs.python.org/3/license.html); the weights are a model trained on it. The "
        "training script is part of attnscope (Apache-2.0).",
        "",
        "## Reproduce",
        "",
        "```",
        "python sample_models/train_tiny_code.py",
        "```",
        "",
        f"Options: `--out DIR` (default `sample_models/tiny-code`), `--steps N` (default {DEFAULT_STEPS}), "
        f"`--seed S` (default 0), `--autocast {{auto,bf16,off}}`. The data is the standard library of the "
        "Python that runs the script, so another Python version gives a slightly different model; "
        "floating-point results also differ between CPUs and torch builds.",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines))


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    cli = training.parser(__doc__.splitlines()[0], DEFAULT_OUT, DEFAULT_STEPS)
    cli.add_argument(
        "--autocast",
        choices=["auto", "bf16", "off"],
        default="auto",
        help="bfloat16 autocast for matmuls; auto: on where the CPU has native bf16",
    )
    args = cli.parse_args(argv)

    run = training.Run(args.seed, args.threads)
    autocast = args.autocast == "bf16" or (args.autocast == "auto" and bf16_supported())
    log = run.log

    # 1. data
    root, train_files, val_files = collect_files()
    train_texts = [read_text(p) for p in train_files]
    val_texts = [read_text(p) for p in val_files]
    n_bytes = sum(p.stat().st_size for p in train_files + val_files)
    log(f"data: {len(train_files)} train + {len(val_files)} validation files, {n_bytes / 2**20:.2f} MiB from {root}")

    # 2. tokenizer
    tok = train_tokenizer(train_texts)
    train_stream, train_starts = token_stream(tok, train_texts)
    val_stream, val_starts = token_stream(tok, val_texts)
    train_bytes = sum(len(t.encode("utf-8")) for t in train_texts)
    log(
        f"tokenizer: vocab {tok.get_vocab_size()}, {len(train_stream):,} train tokens, "
        f"{len(val_stream):,} validation tokens, {train_bytes / len(train_stream):.2f} bytes/token"
    )

    # 3. model and training
    config = model_config()
    model = training.build_model(config)
    n_params = training.count_parameters(model)
    log(f"model: {n_params:,} parameters; autocast bf16: {autocast}; {args.steps} steps of batch {BATCH}x{SEQ_LEN}")
    optimizer = HP.optimizer(model)
    gen = torch.Generator().manual_seed(args.seed)
    val_windows = sample_windows(val_stream, val_starts, EVAL_WINDOWS, torch.Generator().manual_seed(args.seed + 1))

    def batch_loss() -> torch.Tensor:
        return lm_loss(model, sample_windows(train_stream, train_starts, BATCH, gen), autocast)

    history, recent = [], []
    model.train()
    t_train = time.perf_counter()
    for step in range(args.steps):
        loss, lr = training.train_step(model, optimizer, HP, step, args.steps, batch_loss)
        recent.append(loss)
        if step % 10 == 0:
            run.sample_load()
            elapsed = time.perf_counter() - t_train
            log(f"step {step:4d}  loss {loss:.3f}  lr {lr:.2e}  {elapsed / (step + 1):.2f} s/step")
        if (step + 1) % EVAL_EVERY == 0 or step + 1 == args.steps:
            val_loss = evaluate(model, val_windows, autocast)
            history.append({"step": step + 1, "train_loss": sum(recent) / len(recent), "val_loss": val_loss, "lr": lr})
            recent = []
            log(f"step {step + 1:4d}  train {history[-1]['train_loss']:.3f}  validation {val_loss:.3f}")
    train_seconds = time.perf_counter() - t_train

    # 4. save, then reload the saved weights with attnscope for the figures of the model card
    model.eval()
    out = args.out.resolve()
    training.save_model(
        model,
        tok,
        out,
        dtype=SAVED_DTYPE,
        tokenizer_config=TOKENIZER_CONFIG,
        generation={"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id},
    )
    log(f"saved to {out}")
    shipped = training.load_saved(out)
    saved_val_loss = evaluate(shipped.net, val_windows, autocast=False, backend=training.SAVED_BACKEND)
    scope = attnscope.Scope(shipped, backend="eager")
    samples = [(p, scope.run(p, max_new_tokens=SAMPLE_NEW_TOKENS).continuation) for p in SAMPLE_PROMPTS]
    for prompt, continuation in samples:
        log(f"sample {prompt!r} -> {continuation!r}")
    attention_file = next(p for p in val_files if p.stat().st_size > 8000)  # a held-out file, 256 tokens of it
    attention = attention_entropy(shipped, read_text(attention_file))
    for r in attention:
        log(f"layer {r['layer']}: entropy {r['entropy']:.2f} (uniform {r['uniform']:.2f}), BOS weight {r['sink']:.2f}")

    write_model_card(
        out,
        {
            "config": config.to_hf(),
            "n_params": n_params,
            "python": platform.python_version(),
            "n_files": len(train_files) + len(val_files),
            "n_train_files": len(train_files),
            "n_val_files": len(val_files),
            "n_bytes": n_bytes,
            "train_tokens": len(train_stream),
            "val_tokens": len(val_stream),
            "bytes_per_token": train_bytes / len(train_stream),
            "steps": args.steps,
            "seed": args.seed,
            "autocast": autocast,
            "train_seconds": train_seconds,
            "train_minutes": train_seconds / 60,
            "total_seconds": run.elapsed(),
            "cpu": training.cpu_name(),
            "load": run.mean_load(),
            "final_train_loss": history[-1]["train_loss"],
            "final_val_loss": history[-1]["val_loss"],
            "saved_val_loss": saved_val_loss,
            "log": history,
            "samples": samples,
            "attention": attention,
            "attention_file": attention_file.relative_to(root).as_posix(),
        },
    )
    log(f"done: {out} ({training.dir_size(out) / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
