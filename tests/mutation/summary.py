"""Per-module mutation score from a mutmut run: ``python tests/mutation/summary.py SCRATCH_DIR``.

Score = killed (a test failed, or the mutant hung past mutmut's timeout) / mutants that were run against
tests; "no tests" counts the mutants in functions that none of the listed test files reach.
"""

from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path


def main() -> None:
    work = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    mutmut = Path(sys.executable).with_name("mutmut")
    out = subprocess.run(
        [str(mutmut), "results", "--all", "true"], cwd=work, capture_output=True, text=True, check=False
    ).stdout
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in out.splitlines():
        if ":" not in line:
            continue
        name, status = line.strip().rsplit(":", 1)
        module = name.split(".x_")[0].split(".x\u01c1")[0]
        counts[module][status.strip()] += 1
    print(f"{'module':28} {'mutants':>7} {'killed':>6} {'survived':>8} {'no tests':>8} {'not run':>7}  score")
    for module, c in sorted(counts.items()):
        killed = c["killed"] + c["timeout"]
        run = killed + c["survived"]
        score = f"{killed / run:.0%}" if run else "-"
        total, survived, untested, not_run = sum(c.values()), c["survived"], c["no tests"], c["not checked"]
        print(f"{module:28} {total:7} {killed:6} {survived:8} {untested:8} {not_run:7}  {score}")


if __name__ == "__main__":
    main()
