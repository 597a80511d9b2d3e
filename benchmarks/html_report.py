"""The interactive HTML report (`attnscope --html`) at long prompts: its file size, the time to build
it, and the time a headless Chromium takes to first render it (navigation start to the page's own
"rendered" mark: the data inflated, the overview, the checks and the default head's maps drawn).

The model is the 30-layer configuration of benchmarks/run_e2e.py's row 3 (hidden 576, 9 query / 3 kv
heads, head_dim 64), with random weights (std 0.02; a small vocabulary and tiny-code's tokenizer, as
the report does not depend on them), run at 512, 2048 and 4096 tokens with the nan and masked_rows
checks (a report's size does not depend on which checks ran, beyond the two per-position strips of
the comparing ones). Goals at 4096 tokens: <= 5 MB, <= 2 s to render.

BertViz and CircuitsVis are not measured here: neither is a dependency, and both need their
scripts from a CDN (this machine has no network). Issue 33 gives their figures, measured on a
30-layer model: BertViz's head view of one layer at 512 tokens 66 MB / 163 s, CircuitsVis's
attention patterns at 512 tokens 34.5 MB / 259 s.

    python benchmarks/html_report.py [--tokens 512 2048 4096] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the headless Chromium client of the tests


def model_135m_class():
    from attnscope.model import ModelConfig, Transformer
    from attnscope.model.native import LoadedModel
    from attnscope.model.tokenizer import Tokenizer

    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=1024,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        max_position_embeddings=4096,
    )
    net = Transformer(config).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.fill_(1.0) if "norm" in name else p.copy_(torch.randn_like(p) * 0.02)
    tiny = ROOT / "sample_models" / "tiny-code"
    return LoadedModel(net, Tokenizer(tiny), "random-30x9", tiny)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[512, 2048, 4096])
    parser.add_argument("--out", type=Path, default=None, help="keep the reports here")
    args = parser.parse_args()
    from support.browser import Browser, chromium

    import attnscope
    from attnscope.htmlview import result_page

    model = model_135m_class()
    out = args.out or Path(tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    print(f"{'tokens':>6} {'run s':>7} {'build s':>8} {'size MB':>8} {'render ms':>10}  (30 layers × 9 heads)")
    for n in args.tokens:
        ids = torch.randint(4, 1024, (n,), generator=torch.Generator().manual_seed(n)).tolist()
        start = time.perf_counter()
        result = attnscope.Scope(model, backend="sdpa").run(ids, max_new_tokens=0, checks="nan,masked_rows")
        ran = time.perf_counter() - start
        start = time.perf_counter()
        page = result_page(result)
        built = time.perf_counter() - start
        path = out / f"report-{n}.html"
        path.write_text(page, encoding="utf-8")
        size = path.stat().st_size / 1e6
        render = "no chromium"
        if chromium() is not None:
            times = []
            for _ in range(3):
                with Browser() as browser:
                    times.append(browser.open(path))
                    errors = browser.errors()
                    assert not errors, errors
            render = f"{sorted(times)[1]:10.0f}"
        print(f"{n:>6} {ran:7.1f} {built:8.1f} {size:8.2f} {render:>10}", flush=True)


if __name__ == "__main__":
    main()
