"""The calibration bench runs the project's own tests on simulated studies and prints one parseable line each.

Small --n-sim here (fixed seeds, so the numbers are reproducible); the bounds are loose because 30 studies
estimate a 5% rate only roughly. The full-size run (1,000 studies) is in docs/results/calibration.md.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^(\w+) false_positive_rate ([0-9.]+) coverage_or_power ([0-9.]+) n_sim (\d+)$")
EXPECTED = {"phase2_family_p", "auroc_interval", "mcnemar", "coverage_interval", "beyond_confounds_gain",
            "auroc_interval_sparse", "auroc_interval_small_class", "auroc_interval_sparse_sampled"}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.calibration", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})


def test_bench_prints_one_sane_line_per_test():
    out = _run("--n-sim", "30", "--seed", "3")
    assert out.returncode == 0, out.stderr
    rows = {}
    for line in out.stdout.strip().splitlines():
        match = LINE.match(line)
        assert match, line
        name, fpr, power, n = match.group(1), float(match.group(2)), float(match.group(3)), int(match.group(4))
        rows[name] = (fpr, power)
        assert n == 30
    assert EXPECTED <= set(rows)
    for name, (fpr, power) in rows.items():
        assert 0.0 <= fpr <= 0.2, (name, fpr)  # nominal 0.05: 30 studies put more than 6 false positives at < 1%
        assert power > fpr, (name, fpr, power)  # every planted effect is one the test can see
    # An entry's seed comes from its name: run alone, it prints the line it printed among the others.
    alone = _run("--n-sim", "30", "--seed", "3", "--only", "auroc_interval_small_class")
    line = next(x for x in out.stdout.splitlines() if x.startswith("auroc_interval_small_class "))
    assert alone.returncode == 0 and alone.stdout.strip() == line


def test_bad_n_sim_is_one_line_and_exit_2():
    out = _run("--n-sim", "0")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().count("\n") == 0 and "--n-sim must be >= 1" in out.stderr
    unknown = _run("--only", "nonsense")
    assert unknown.returncode == 2 and "unknown test(s) nonsense" in unknown.stderr
