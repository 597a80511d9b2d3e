"""torch.distributed: a check suite spread over ranks, and a tensor-parallel model (attnscope.distributed).

Every test launches its own 2 processes (gloo on the CPU) with a time limit: ``attnscope check
--ranks 2``, ``torchrun -m attnscope check`` and tests/support/tp_worker.py under torchrun. References:
the same suite in one process (the report, the JUnit XML and the summary must be the same), and the
same model unsharded (every layer and head's attention and the logits).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.models import ARCHITECTURE_COMMON, build_architecture, random_hf_model
from typer.testing import CliRunner

from attnscope.cli import app
from attnscope.distributed import Share, interleave

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 240  # seconds per launched suite
PROMPTS = "def add(a, b):\nimport os\nclass Foo:\n"


def attnscope_cli(*args: str, cwd: Path, torchrun: bool = False) -> subprocess.CompletedProcess:
    """``attnscope ARGS`` (under torchrun with 2 ranks when `torchrun`), one torch thread per process."""
    launcher = ["-m", "torch.distributed.run", "--nproc-per-node", "2", "-m"] if torchrun else ["-m"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *launcher, "attnscope", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=LIMIT
    )


def without_cache_counts(path: Path) -> dict:
    """A report set's JSON without ``mask_cache``: the hits of the process's dense-mask cache, which
    depend on what that process ran before."""
    found = json.loads(path.read_text())
    for report in found["reports"]:
        report.pop("mask_cache")
    return found


def test_work_is_dealt_round_robin_and_put_back_in_order():
    work = list(range(7))
    shares = [[i for i in work if Share(r, 2).mine(i)] for r in range(2)]
    assert shares == [[0, 2, 4, 6], [1, 3, 5]]
    assert interleave(shares) == work
    assert Share().gather(work) == work


@pytest.mark.parametrize("torchrun", [False, True], ids=["ranks", "torchrun"])
def test_a_suite_over_two_ranks_reports_what_one_process_does(tmp_path, torchrun):
    (tmp_path / "prompts.txt").write_text(PROMPTS)
    common = ["check", "--prompts", "prompts.txt", "-b", "eager", "-b", "sdpa", "--quiet"]
    one = attnscope_cli(*common, "--json", "one.json", "--junit", "one.xml", cwd=tmp_path)
    ranks = [] if torchrun else ["--ranks", "2"]
    two = attnscope_cli(*common, *ranks, "--json", "two.json", "--junit", "two.xml", cwd=tmp_path, torchrun=torchrun)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    assert len(json.loads((tmp_path / "one.json").read_text())["reports"]) == 6  # 3 prompts × 2 backends
    assert without_cache_counts(tmp_path / "two.json") == without_cache_counts(tmp_path / "one.json")
    assert (tmp_path / "two.xml").read_text() == (tmp_path / "one.xml").read_text()
    assert two.stdout == one.stdout  # the summary, from rank 0 only


def test_ranks_must_be_positive():
    result = CliRunner().invoke(app, ["check", "-p", "x", "--ranks", "0"])
    assert result.exit_code == 2
    assert "--ranks must be >= 1" in result.output


def test_tensor_parallel_model_gives_the_unsharded_result(tmp_path):
    build_architecture("llama").save_pretrained(tmp_path / "llama")  # 4 query / 2 kv heads, 2 layers
    uneven = {**ARCHITECTURE_COMMON, "hidden_size": 96, "num_attention_heads": 6, "num_key_value_heads": 3}
    random_hf_model("LlamaConfig", "LlamaForCausalLM", uneven, 0, lambda name, p: None).save_pretrained(
        tmp_path / "uneven"
    )
    worker = ROOT / "tests" / "support" / "tp_worker.py"
    out = tmp_path / "out.json"
    args = [str(tmp_path / "llama"), str(out), str(tmp_path / "uneven")]
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", str(worker), *args],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=LIMIT,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    found = json.loads(out.read_text())
    assert found["world"] == 2
    assert len(found["attention_max"]) == 2 and all(len(heads) == 4 for heads in found["attention_max"])
    assert max(max(heads) for heads in found["attention_max"]) <= 1e-5  # every layer, every head
    assert found["logits_max"] <= 1e-4
    assert found["continuations"][0] == found["continuations"][1]
    for rank in found["ranks"]:  # every rank holds the whole Result
        assert all(shape == [1, 4, 24, 16, 1, 2, 24, 16] for shape in rank["shapes"])  # q: 4 heads, k: 2
        assert [c["name"] for c in rank["checks"] if c["passed"]] == found["whole_passed"]
        assert len(found["whole_passed"]) == len(rank["checks"]) == 5
        nan = rank["nan"]
        assert nan["planted_head"] == 2  # rank 1 holds query heads 2 and 3
        assert not nan["passed"]
        assert nan["where"]["layer"] == 1 and nan["where"]["stage"] == "q"
        assert nan["where"]["head"] == 2 and nan["where"]["rank"] == 1
        assert nan["message"] == "first NaN/Inf: layer 1, q of query head 2, position 0, on rank 1"
        assert nan["uneven"].startswith("UnsupportedFeature: tensor parallel over 2 ranks splits 3 key/value heads")
