"""Train `tiny-induction`, a 2-layer Llama that copies repeated sequences with an induction circuit.

    python sample_models/train_tiny_induction.py   # about 2 minutes on 2 idle CPU cores

The classic smallest model with an induction head (Olsson et al., "In-context Learning and Induction
Heads", 2022): trained on ``BOS R R``, a random token string R followed by itself, it can only
predict the second copy by finding the earlier occurrence of the current token and copying the
token that came after it. Two attention layers are the minimum for that: a *previous-token* head in
layer 0 writes "the token before me" into each position, and an *induction* head in layer 1 matches
the current token against those and attends to the position right after the earlier occurrence.

What it does, top to bottom:

1. Data, generated on the fly: ``<bos> R R`` for R of 10..60 tokens drawn uniformly, with
   replacement, from the 60 ordinary tokens (ids 4..63), padded with ``<pad>`` to 121 tokens. R
   often contains a token twice, so copying the second copy exactly needs more than one token of
   context; the model learns that on its own. The loss is taken on the predictable tokens only: the
   second copy minus its first token (whose position depends on the unknown length of R).
2. Tokenizer: 64 tokens, ``<bos>`` ``<pad>`` ``<unk>`` ``<sep>`` (ids 0..3), then the 60 characters
   ``a-z``, ``A-Z`` and ``0-7`` (ids 4..63) as WordLevel tokens. Every character is one token and
   whitespace is ignored, so ``"abcdabcd"`` and ``"a b c d a b c d"`` encode the same. The
   tokenizer prepends ``<bos>``.
3. Model: `attnscope.model.Transformer` (backend sdpa), a Llama with 2 layers, hidden size 64,
   4 query heads sharing 2 key-value heads (grouped-query attention), head dim 16, SwiGLU MLP of 128,
   tied embeddings. AdamW with warmup and cosine decay for a fixed number of steps. The copying
   accuracy jumps from chance to above 95% within a few hundred steps, when the induction circuit
   forms (the classic phase change); the remaining steps sharpen the heads.
4. Output, in Hugging Face layout (``LlamaForCausalLM.from_pretrained`` reads it), in
   ``sample_models/tiny-induction/``: ``config.json``, ``generation_config.json``,
   ``model.safetensors`` (float32), ``tokenizer.json``, ``tokenizer_config.json`` and a ``README.md``
   model card with this run's figures: the copying accuracy on fresh sequences and the role of every
   head from `attnscope.Scope.head_roles`. The script exits with status 1 if the copying
   accuracy is below 95% or if `head_roles` does not find a previous-token head in layer 0 and an
   induction head in layer 1.

Seeds are fixed and nothing is downloaded; floating-point results may differ between CPUs and torch
builds. Options: ``--out``, ``--steps``, ``--seed``, ``--threads``, ``--help``.
"""

from __future__ import annotations

import os
import string
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

import attnscope
from attnscope.inspector.heads import REPEAT_LENGTH, THRESHOLDS, repeated_sequence
from attnscope.model import ModelConfig, Transformer
from attnscope.model.native import LoadedModel
from attnscope.sample_models import training

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "tiny-induction"

# tokens
SPECIALS = ["<bos>", "<pad>", "<unk>", "<sep>"]  # ids 0..3
BOS, PAD = 0, 1
CHARS = list(string.ascii_lowercase + string.ascii_uppercase + string.digits[:8])  # ids 4..63
VOCAB_SIZE = len(SPECIALS) + len(CHARS)  # 64
TOKENIZER_CONFIG = {
    "add_bos_token": True,
    "add_eos_token": False,
    "bos_token": "<bos>",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "tokenizer_class": "PreTrainedTokenizerFast",
    "model_max_length": 256,
    "clean_up_tokenization_spaces": False,
}

# data
MIN_LEN, MAX_LEN = 10, 60  # length of the random string R
SEQ_LEN = 1 + 2 * MAX_LEN  # BOS + R + R, padded: 121 tokens

# training
BATCH = 32
# The bundled weights' hyperparameters: any change here changes the weights. They are not tiny-code's:
# beta2 0.98 (there 0.95), weight decay 0.01 (there 0.1), 100 warmup steps (there 60) and a cosine down
# to 1e-4 (there 3e-4).
HP = training.Hyperparameters(lr=3e-3, min_lr=1e-4, warmup=100, weight_decay=0.01, betas=(0.9, 0.98), grad_clip=1.0)
DEFAULT_STEPS = 1500  # ~60 ms per step on 2 idle cores
REQUIRED_ACCURACY = 0.95  # on fresh sequences, or the script fails
EVAL_EVERY = 100
EVAL_SEQUENCES = 512  # fixed validation batch
TEST_SEQUENCES = 2048  # fresh sequences for the accuracy reported in the model card


def model_config() -> ModelConfig:
    return training.llama_config(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        bos_token_id=BOS,
        eos_token_id=None,
    )


# What `training.save_model` writes here and not in tiny-code: float32 weights (the model is small enough
# that size does not matter, and the saved weights are exactly the trained ones), and a
# generation_config.json without an EOS token (a copied string has no end of its own) but with the pad
# token and greedy decoding.
SAVED_DTYPE = torch.float32
GENERATION = {"bos_token_id": BOS, "pad_token_id": PAD, "do_sample": False}


# ---------------------------------------------------------------------------------------------- data


def make_batch(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` sequences ``<bos> R R <pad>...`` ``[n, SEQ_LEN]`` and the copy mask ``[n, SEQ_LEN]``: True at
    the positions whose token is predictable (second copy, without its first token)."""
    lengths = torch.randint(MIN_LEN, MAX_LEN + 1, (n,), generator=gen)
    rand = torch.randint(len(SPECIALS), VOCAB_SIZE, (n, MAX_LEN), generator=gen)
    ids = torch.full((n, SEQ_LEN), PAD, dtype=torch.long)
    ids[:, 0] = BOS
    copy = torch.zeros(n, SEQ_LEN, dtype=torch.bool)
    for i, length in enumerate(lengths.tolist()):
        r = rand[i, :length]
        ids[i, 1 : 1 + length] = r
        ids[i, 1 + length : 1 + 2 * length] = r
        copy[i, 2 + length : 1 + 2 * length] = True
    return ids, copy


def copy_loss(model: Transformer, ids: torch.Tensor, copy: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the next-token predictions of the predictable tokens."""
    logits = training.forward(model, ids[:, :-1])  # (B, T - 1, vocab): position t predicts token t + 1
    targets = ids[:, 1:].masked_fill(~copy[:, 1:], -100)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


@torch.no_grad()
def evaluate(
    model: Transformer, ids: torch.Tensor, copy: torch.Tensor, batch: int = 256, backend: str = training.TRAIN_BACKEND
) -> dict:
    """Greedy next-token prediction of the predictable tokens: per sequence, how many are right
    (``right [n]``) out of how many (``total [n]``), and the summed cross-entropy (``loss_sum``)."""
    was_training = model.training
    model.eval()
    right, total, loss_sum = [], [], 0.0
    for i in range(0, len(ids), batch):
        x, m = ids[i : i + batch], copy[i : i + batch, 1:]
        logits = training.forward(model, x[:, :-1], backend)  # (b, T - 1, vocab)
        target = x[:, 1:]
        right.append(((logits.argmax(-1) == target) & m).sum(1))
        total.append(m.sum(1))
        loss_sum += float(F.cross_entropy(logits[m], target[m], reduction="sum"))
    model.train(was_training)
    return {"right": torch.cat(right), "total": torch.cat(total), "loss_sum": loss_sum}


def copy_accuracy(model: Transformer, ids: torch.Tensor, copy: torch.Tensor) -> float:
    """Share of the predictable tokens of the second copy that greedy next-token prediction gets right."""
    e = evaluate(model, ids, copy)
    return int(e["right"].sum()) / int(e["total"].sum())


# ----------------------------------------------------------------------------------------- tokenizer


def build_tokenizer() -> Tokenizer:
    """WordLevel over the 64 tokens; whitespace is dropped, then every character is one token."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.add_special_tokens(SPECIALS)  # already in the vocabulary: they keep ids 0..3
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Split(Regex("."), behavior="isolated"),
        ]
    )
    tok.decoder = decoders.Fuse()  # decode without separators: "abcd"
    # BOS in the post-processor too, so tools that read only tokenizer.json also prepend it.
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <sep> $B:1", special_tokens=[("<bos>", BOS), ("<sep>", 3)]
    )
    assert tok.get_vocab_size() == VOCAB_SIZE, tok.get_vocab_size()
    assert tok.encode("abcdabcd").ids == tok.encode("a b c d a b c d").ids == [0, 4, 5, 6, 7, 4, 5, 6, 7]
    return tok


# ------------------------------------------------------------------------------------- measurements


def circuit_scores(model: Transformer) -> tuple[float, float]:
    """(best previous-token score in layer 0, best induction score in layer 1) of `head_roles`."""
    roles = training.head_roles_of(LoadedModel(model, None, "training", DEFAULT_OUT))
    return max(h.scores["previous_token"] for h in roles[0]), max(h.scores["induction"] for h in roles[1])


def offset_weights(model, max_offset: int = 3) -> list[list[float]]:
    """Layer 0, per head: mean weight on the key `offset` positions back (0..max_offset), then on BOS,
    over the rows of `head_roles`' repeated sequence that have such a key."""
    result = attnscope.Scope(model).run(repeated_sequence(VOCAB_SIZE, REPEAT_LENGTH, BOS))
    rec = result.records[0]
    return [
        [float(rec.weights_at(h, d)[d:].mean()) for d in range(max_offset + 1)]
        + [float(rec.stats.first_token_mass[0, h, 1:].mean())]
        for h in range(rec.q.shape[1])
    ]


def ngram_copy_accuracy(ids: torch.Tensor, copy: torch.Tensor, n: int) -> float:
    """Accuracy of copying by the last `n` tokens alone: predict the most frequent token that followed
    the earlier occurrences of those `n` tokens (wrong where they did not occur before). A baseline for
    how much context the model's induction heads use."""
    right = total = 0
    for seq, mask in zip(ids.tolist(), copy.tolist(), strict=True):
        for t in range(len(seq) - 1):
            if not mask[t + 1]:
                continue
            context = seq[t - n + 1 : t + 1]
            counts: dict[int, int] = {}
            for j in range(n, t + 1):
                if seq[j - n : j] == context:
                    counts[seq[j]] = counts.get(seq[j], 0) + 1
            right += bool(counts) and max(counts, key=counts.get) == seq[t + 1]
            total += 1
    return right / total


def accuracy_by_length(e: dict, ids: torch.Tensor) -> list[tuple[str, float, int]]:
    """(length range of R, copying accuracy, sequences) for a few ranges of R's length, from the
    per-sequence counts of `evaluate`."""
    lengths = (ids[:, 1:] != PAD).sum(1) // 2  # (n,): tokens after BOS = 2 |R|
    rows = []
    for lo, hi in ((10, 20), (21, 40), (41, 60)):
        sel = (lengths >= lo) & (lengths <= hi)
        rows.append((f"{lo}..{hi}", int(e["right"][sel].sum()) / int(e["total"][sel].sum()), int(sel.sum())))
    return rows


def roles_table(roles) -> tuple[list[str], list[str]]:
    """Markdown rows of every head's scores, and the sentences naming the heads that have a role."""
    rows, named = [], []
    for layer in roles:
        for h in layer:
            s = h.scores
            rows.append(
                f"| {h.layer} | {h.head} | {h.kv_head} | {s['previous_token']:.2f} | {s['induction']:.2f} | "
                f"{s['sink']:.2f} | {s['local']:.2f} | {s['broad']:.2f} | {h.role or '-'} |"
            )
            if h.role:
                named.append(f"layer {h.layer} head {h.head}: {h.role}")
    return rows, named


# ----------------------------------------------------------------------------------------- model card


def write_model_card(out: Path, info: dict) -> None:
    c = info["config"]
    lines = [
        "# tiny-induction",
        "",
        f"A {info['n_params'] / 1e3:.0f}k-parameter, 2-layer Llama trained to copy repeated random strings: "
        "a previous-token head in layer 0 feeding induction heads in layer 1.",
        "",
        'The smallest model with the induction circuit of Olsson et al., "In-context Learning and Induction '
        'Heads" (2022), for looking at it with attnscope: '
        '`attnscope run -m tiny-induction -p "abcdefgh abcdefgh"`. Every character is one token and '
        "whitespace is ignored, so that prompt is `<bos> a b c d e f g h a b c d e f g h`.",
        "",
        "## Config",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | `LlamaForCausalLM` (`model_type` {c['model_type']}) |",
        f"| parameters | {info['n_params']:,} (embeddings tied with the LM head) |",
        f"| layers | {c['num_hidden_layers']} |",
        f"| hidden size | {c['hidden_size']} |",
        f"| MLP inner size (SwiGLU) | {c['intermediate_size']} |",
        f"| attention heads (query / key-value) | {c['num_attention_heads']} / {c['num_key_value_heads']} "
        "(grouped-query attention: query heads 0, 1 read kv head 0; 2, 3 read kv head 1) |",
        f"| head dim | {c['head_dim']} |",
        f"| vocab size | {c['vocab_size']}: `<bos>` `<pad>` `<unk>` `<sep>` (ids 0..3), then `a`-`z`, `A`-`Z`, "
        "`0`-`7` (ids 4..63), one character per token, whitespace ignored |",
        f"| positions | RoPE, theta {c['rope_theta']:g}, max_position_embeddings {c['max_position_embeddings']} "
        f"(trained on {SEQ_LEN}) |",
        f"| norm | RMSNorm, eps {c['rms_norm_eps']:g} |",
        "| BOS | `<bos>`, id 0; the tokenizer prepends it |",
        f"| weights | `model.safetensors`, {training.dtype_name(SAVED_DTYPE)} |",
        "",
        "## Data",
        "",
        f"Generated on the fly: `<bos> R R`, where R is {MIN_LEN}..{MAX_LEN} tokens (length uniform) drawn "
        f"uniformly with replacement from the {len(CHARS)} ordinary tokens, padded with `<pad>` to {SEQ_LEN} "
        "tokens. R often holds some token twice (more than half of the 10-token strings do, and practically "
        "every 60-token one), so exact copying needs more than the current token to find the right earlier "
        "occurrence. The loss is the "
        "cross-entropy of the predictable tokens only: the second copy without its first token "
        "(the length of R is not known in advance, so where the second copy starts is not predictable).",
        "",
        "## Training",
        "",
        f"{info['steps']} steps of AdamW (betas {HP.betas[0]:g}/{HP.betas[1]:g}, weight decay {HP.weight_decay:g} "
        f"on matrices), batch {BATCH} sequences, learning rate {HP.lr:g} with {HP.warmup} warmup steps and cosine "
        f"decay to {HP.min_lr:g} over the {info['steps']} steps, gradient clipping at {HP.grad_clip}, "
        f"seed {info['seed']}, float32; "
        f"{info['steps'] * BATCH:,} sequences in all. The validation copying accuracy ({EVAL_SEQUENCES} fixed "
        f"sequences, every {EVAL_EVERY} steps) first passed 95% at step {info['first_95']}: the phase change "
        "where the previous-token and induction heads appear together (best layer-0 previous_token and best "
        "layer-1 induction score of `head_roles` in the last two columns).",
        "",
        f"Time: {info['train_seconds']:.0f} s of training ({info['train_seconds'] / info['steps'] * 1000:.0f} ms per "
        f"step), {info['total_seconds']:.0f} s for the whole script, on {info['cpu']} with {info['threads']} threads, "
        f"torch {torch.__version__}; mean 1-minute load average during training {info['load']:.1f} on "
        f"{os.cpu_count()} cores (above the thread count: other processes shared the cores).",
        "",
        "| step | train loss (mean since last row) | validation copying accuracy | learning rate | "
        "layer 0 previous_token | layer 1 induction |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in info["log"]:
        lines.append(
            f"| {row['step']} | {row['train_loss']:.4f} | {row['val_acc']:.2%} | {row['lr']:.2e} | "
            f"{row['prev']:.2f} | {row['induction']:.2f} |"
        )
    lines += [
        "",
        "## In-context copying accuracy",
        "",
        f"Greedy next-token prediction of the second copy (without its first token) on {TEST_SEQUENCES:,} fresh "
        f"sequences (seed {info['seed'] + 2}, never seen in training), with the saved weights loaded by "
        f"`attnscope.load_model`: **{info['test_acc']:.2%}** of {info['test_tokens']:,} tokens "
        f"(loss {info['test_loss']:.4f} nats per token). Chance is 1/{len(CHARS)} = {1 / len(CHARS):.1%}.",
        "",
        "| length of R | accuracy | sequences |",
        "|---|---:|---:|",
    ]
    for span, acc, n in info["by_length"]:
        lines.append(f"| {span} | {acc:.2%} | {n} |")
    b1, b2 = info["baselines"]
    lines += [
        "",
        "For comparison, on the same tokens: copying by the current token alone (predicting the most frequent "
        f"token that followed its earlier occurrences) gets {b1:.1%} right, copying by the last two tokens "
        f"{b2:.1%}."
        + (
            " The model does better than both, so its induction heads match on more than the current token."
            if info["test_acc"] > max(b1, b2)
            else ""
        ),
    ]
    rows, named = info["roles"]
    lines += [
        "",
        f"The prompt `{info['demo_prompt']}` continues greedily with `{info['demo_continuation']}`.",
        "",
        "## Head roles",
        "",
        "Scores of every head from `attnscope.Scope("
        'attnscope.load_model("tiny-induction")).head_roles()`: on `<bos>` + a random string of '
        f"{REPEAT_LENGTH} tokens repeated twice (seed 0), the mean weight on the previous token, on the token "
        "after the current token's earlier occurrence (induction, second copy only), on `<bos>` (sink), on the "
        "last four tokens (local), and the normalized entropy (broad). A head's role is its highest score "
        "over its threshold (" + ", ".join(f"{r} {t:g}" for r, t in THRESHOLDS.items()) + ").",
        "",
        "| layer | head | kv head | previous_token | induction | sink | local | broad | role |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        *rows,
        "",
        "Roles: " + ("; ".join(named) if named else "none") + ".",
        "",
        "Where the layer-0 heads look, on the same sequence (mean weight on the key d positions back, and on `<bos>`):",
        "",
        "| layer 0 head | d = 0 (itself) | d = 1 (previous) | d = 2 | d = 3 | `<bos>` |",
        "|---:|---:|---:|---:|---:|---:|",
        *[f"| {h} | " + " | ".join(f"{w:.2f}" for w in ws) + " |" for h, ws in enumerate(info["offsets"])],
        "",
        "The layer-0 heads are positional (the tokens are random, so there is nothing else to go by). The "
        "previous-token head looks mostly one token back; the others spread their weight over the current "
        "token and one to three tokens back, so that each position also carries some of the tokens before "
        "its predecessor: longer context, which the layer-1 heads can use to pick the right earlier occurrence "
        "of a token that appears more than once (see the baselines under the accuracy above).",
        "",
        "## Reproduce",
        "",
        "```",
        "python sample_models/train_tiny_induction.py",
        "```",
        "",
        f"Options: `--out DIR` (default `sample_models/tiny-induction`), `--steps N` (default "
        f"{DEFAULT_STEPS}), `--seed S` (default 0), `--threads N` (default 2). Seeds are fixed and nothing is "
        "downloaded; "
        "floating-point results may differ between CPUs and torch builds.",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines))


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    args = training.parser(__doc__.splitlines()[0], DEFAULT_OUT, DEFAULT_STEPS).parse_args(argv)

    run = training.Run(args.seed, args.threads)
    log = run.log

    tok = build_tokenizer()
    config = model_config()
    model = training.build_model(config)
    n_params = training.count_parameters(model)
    log(f"model: {n_params:,} parameters; {args.steps} steps of batch {BATCH}x{SEQ_LEN}")
    optimizer = HP.optimizer(model)
    gen = torch.Generator().manual_seed(args.seed)
    val_ids, val_copy = make_batch(EVAL_SEQUENCES, torch.Generator().manual_seed(args.seed + 1))

    def batch_loss() -> torch.Tensor:
        return copy_loss(model, *make_batch(BATCH, gen))

    history, recent = [], []
    model.train()
    t_train = time.perf_counter()
    for step in range(args.steps):
        loss, lr = training.train_step(model, optimizer, HP, step, args.steps, batch_loss)
        recent.append(loss)
        if (step + 1) % EVAL_EVERY == 0 or step + 1 == args.steps:
            run.sample_load()
            acc = copy_accuracy(model, val_ids, val_copy)
            prev, induction = circuit_scores(model)
            history.append(
                {
                    "step": step + 1,
                    "train_loss": sum(recent) / len(recent),
                    "val_acc": acc,
                    "lr": lr,
                    "prev": prev,
                    "induction": induction,
                }
            )
            recent = []
            elapsed = time.perf_counter() - t_train
            log(
                f"step {step + 1:5d}  loss {history[-1]['train_loss']:.4f}  copy accuracy {acc:.2%}  "
                f"prev {prev:.2f}  induction {induction:.2f}  lr {lr:.2e}  {elapsed / (step + 1) * 1000:.0f} ms/step"
            )
    train_seconds = time.perf_counter() - t_train

    # save, then measure the saved weights through attnscope, as a user would load them
    model.eval()
    out = args.out.resolve()
    training.save_model(model, tok, out, dtype=SAVED_DTYPE, generation=GENERATION, tokenizer_config=TOKENIZER_CONFIG)
    log(f"saved to {out}")
    shipped = training.load_saved(out)
    test_ids, test_copy = make_batch(TEST_SEQUENCES, torch.Generator().manual_seed(args.seed + 2))
    test = evaluate(shipped.net, test_ids, test_copy, backend=training.SAVED_BACKEND)
    test_tokens = int(test["total"].sum())
    test_acc = int(test["right"].sum()) / test_tokens
    test_loss = test["loss_sum"] / test_tokens
    by_length = accuracy_by_length(test, test_ids)
    baselines = [ngram_copy_accuracy(test_ids, test_copy, n) for n in (1, 2)]
    log(
        f"copying accuracy on {TEST_SEQUENCES} fresh sequences: {test_acc:.2%} (loss {test_loss:.4f}); "
        + ", ".join(f"|R| {s}: {a:.2%}" for s, a, _ in by_length)
        + f"; copying by the last token alone {baselines[0]:.2%}, by the last two {baselines[1]:.2%}"
    )
    roles = training.head_roles_of(shipped)
    for layer in roles:
        for h in layer:
            log(
                f"layer {h.layer} head {h.head}: {h.role or '-':15s} "
                + " ".join(f"{k} {v:.2f}" for k, v in h.scores.items())
            )
    offsets = offset_weights(shipped)
    demo_prompt = "abcdefgh abcd"
    demo_continuation = attnscope.Scope(shipped).run(demo_prompt, max_new_tokens=4).continuation
    log(f"demo {demo_prompt!r} -> {demo_continuation!r}")

    write_model_card(
        out,
        {
            "config": config.to_hf(),
            "n_params": n_params,
            "steps": args.steps,
            "first_95": next((r["step"] for r in history if r["val_acc"] >= 0.95), None),
            "seed": args.seed,
            "threads": torch.get_num_threads(),
            "train_seconds": train_seconds,
            "total_seconds": run.elapsed(),
            "cpu": training.cpu_name(),
            "load": run.mean_load(),
            "log": history,
            "test_acc": test_acc,
            "test_loss": test_loss,
            "test_tokens": test_tokens,
            "by_length": by_length,
            "baselines": baselines,
            "roles": roles_table(roles),
            "offsets": offsets,
            "demo_prompt": demo_prompt,
            "demo_continuation": demo_continuation,
        },
    )
    log(f"done: {out} ({training.dir_size(out) / 2**20:.2f} MiB)")

    problems = []
    if test_acc < REQUIRED_ACCURACY:
        problems.append(f"copying accuracy {test_acc:.2%} < {REQUIRED_ACCURACY:.0%}")
    if not any(h.role == "previous_token" for h in roles[0]):
        problems.append("no previous_token head in layer 0")
    if not any(h.role == "induction" for h in roles[1]):
        problems.append("no induction head in layer 1")
    if problems:
        raise SystemExit("train_tiny_induction: " + "; ".join(problems) + " (train longer: --steps)")


if __name__ == "__main__":
    main()
