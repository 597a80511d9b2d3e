"""Type checking with a baseline that only shrinks.

    python .ci/mypy_gate.py            # fails when a file has more mypy errors than its baseline
    python .ci/mypy_gate.py --update   # writes the current counts as the new baseline

Runs mypy over attnscope/ and kernels/ (settings in pyproject.toml) and compares the count of
errors per file with `.ci/mypy-baseline.json`. A file over its count (or a new file with any)
fails; a file under it is reported, so the baseline is lowered in the same change.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / ".ci" / "mypy-baseline.json"
ERROR = re.compile(r"^(?P<file>[^:]+\.py):\d+: error:")


def counts() -> tuple[Counter, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "attnscope", "kernels"], cwd=ROOT, capture_output=True, text=True
    )
    found = Counter(m["file"] for line in proc.stdout.splitlines() if (m := ERROR.match(line)))
    if proc.returncode not in (0, 1) or (proc.returncode == 1 and not found):
        sys.exit(f"mypy did not run: {proc.stderr or proc.stdout}")
    return found, proc.stdout


def main() -> int:
    found, output = counts()
    if "--update" in sys.argv:
        BASELINE.write_text(json.dumps(dict(sorted(found.items())), indent=1) + "\n")
        print(f"baseline: {sum(found.values())} errors in {len(found)} files")
        return 0
    baseline = json.loads(BASELINE.read_text())
    over = {f: (n, baseline.get(f, 0)) for f, n in found.items() if n > baseline.get(f, 0)}
    under = {f: (found.get(f, 0), n) for f, n in baseline.items() if found.get(f, 0) < n}
    for f, (n, base) in sorted(under.items()):
        print(f"{f}: {n} mypy errors, baseline {base}: lower it (python .ci/mypy_gate.py --update)")
    if over:
        print("\n".join(line for line in output.splitlines() if ERROR.match(line) and line.split(":")[0] in over))
        for f, (n, base) in sorted(over.items()):
            print(f"{f}: {n} mypy errors, more than the baseline's {base}")
        return 1
    print(f"mypy: {sum(found.values())} errors, none over the baseline ({sum(baseline.values())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
