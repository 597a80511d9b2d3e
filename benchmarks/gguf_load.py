"""Peak memory of loading a GGUF file: attnscope against Hugging Face transformers' GGUF loading.

A random Llama-shaped model (untied, so the embedding and the output head are the two largest
tensors) is written as a Hugging Face directory and then as GGUF files of several types
(sample_models/make_gguf.py). Each file is loaded in a fresh process, after a small file of the same type (so that the
libraries' first-use buffers exist before the baseline), by `attnscope.load_model` in float32 and by
``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)``. Memory is the resident anonymous memory
(``RssAnon``, sampled every millisecond while the file loads): peak RSS also counts the libraries'
code pages, which the kernel evicts and faults back in at will on a busy machine (runs differed by
~230 MB that way). Printed: the peak above the baseline, next to the final model's float32 size
and the bound "model + largest tensor" that attnscope's loader keeps below (it dequantizes a band of
rows at a time straight into the parameters); and the ratio of the two loaders, in this run.

    python benchmarks/gguf_load.py [--hidden 1024] [--layers 4] [--vocab 32000] [--types Q8_0 Q4_K F16]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

SCENARIO = r"""
import json, sys, threading, time
from pathlib import Path

def anon_mb():  # resident anonymous memory: the data, not the libraries' code (which the kernel may evict)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024

kind, file, warm = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
import torch
if kind == "hf":
    import transformers
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    def load(f):
        return transformers.AutoModelForCausalLM.from_pretrained(f.parent, gguf_file=f.name, dtype=torch.float32)
else:
    import attnscope
    load = attnscope.load_model
# a small file first: the libraries' first-use buffers are then allocated before the baseline
load(warm)
base = peak = anon_mb()
done = threading.Event()

def sample():
    global peak
    while not done.is_set():
        peak = max(peak, anon_mb())
        time.sleep(0.001)

sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
model = load(file)
done.set()
sampler.join()
print(json.dumps({"base_mb": base, "peak_mb": max(peak, anon_mb())}))
"""


def build(root: Path, hidden: int, layers: int, vocab: int) -> Path:
    """A random model of these sizes in HF layout (config.json, model.safetensors) under `root`."""
    import json as js

    import torch
    from safetensors.torch import save_file

    from attnscope.model import ModelConfig, Transformer
    from attnscope.model.checkpoint import hf_name

    config = ModelConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3 // 256 * 256,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 256,
        max_position_embeddings=2048,
    )
    torch.manual_seed(0)
    net = Transformer(config)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.ones_like(p) if "norm" in name else torch.randn_like(p) * 0.02)
    path = root
    path.mkdir()
    (path / "config.json").write_text(js.dumps(config.to_hf("float32")))
    save_file({hf_name(k): v.contiguous() for k, v in net.state_dict().items()}, str(path / "model.safetensors"))
    sizes = [p.numel() * 4 for p in net.state_dict().values()]
    return path, sum(sizes) / 2**20, max(sizes) / 2**20


def measure(kind: str, file: Path, warm: Path) -> float:
    out = subprocess.run(
        [sys.executable, "-c", SCENARIO, kind, str(file), str(warm)],
        capture_output=True,
        text=True,
        check=True,
        timeout=1800,
    )
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    return figures["peak_mb"] - figures["base_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--types", nargs="+", default=["Q8_0", "Q4_K", "F16"])
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sample_models"))
    from make_gguf import Vocab, write_gguf

    with tempfile.TemporaryDirectory() as tmp:
        src, model_mb, largest_mb = build(Path(tmp) / "model", args.hidden, args.layers, args.vocab)
        vocab = Vocab("gpt2", [f"t{i}" for i in range(args.vocab)], [1] * args.vocab, pre="gpt-2")
        small, _, _ = build(Path(tmp) / "small", 256, 1, 256)
        small_vocab = Vocab("gpt2", [f"t{i}" for i in range(256)], [1] * 256, pre="gpt-2")
        print(
            f"model: {args.layers} layers, hidden {args.hidden}, vocab {args.vocab}: {model_mb:.0f} MB in float32, "
            f"largest tensor {largest_mb:.0f} MB; bound (model + largest tensor) {model_mb + largest_mb:.0f} MB"
        )
        print(
            "| type | file (MB) | attnscope: peak above start (MB) | transformers (MB) | attnscope / bound "
            "| transformers / attnscope |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        for kind in args.types:
            file = write_gguf(src, Path(tmp) / "model" / f"model-{kind}.gguf", kind, vocab=vocab)
            warm = write_gguf(small, Path(tmp) / "small" / f"small-{kind}.gguf", kind, vocab=small_vocab)
            ours, theirs = measure("attnscope", file, warm), measure("hf", file, warm)
            print(
                f"| {kind} | {file.stat().st_size / 2**20:.0f} | {ours:.0f} | {theirs:.0f} | "
                f"{ours / (model_mb + largest_mb):.2f} | {theirs / ours:.2f}× |"
            )
            file.unlink()


if __name__ == "__main__":
    main()
