"""The benchmarks: one module each (``mbpp.py``, ``humaneval.py``), one registry, one lookup.

Why a registry of module names rather than of objects: ``common.config``
reads the names for ``--dataset``'s choices, and it must not import pandas
and every benchmark's code to do so. :func:`get_benchmark` imports the
module when a benchmark is used. Adding a benchmark: docs/benchmarks.md.
"""

from __future__ import annotations

import importlib

from common.benchmarks.base import Benchmark, refuse_unknown

# One place listing the benchmarks: --dataset value -> module defining ``BENCHMARK``. MBPP first (the default).
BENCHMARKS: dict[str, str] = {
    "mbpp": "common.benchmarks.mbpp",
    "humaneval": "common.benchmarks.humaneval",
}

__all__ = ["BENCHMARKS", "Benchmark", "get_benchmark"]


def get_benchmark(name: str) -> Benchmark:
    """The benchmark ``--dataset name`` means; one line for a name no module is registered under."""
    if name not in BENCHMARKS:
        raise refuse_unknown(name, list(BENCHMARKS))
    bench = importlib.import_module(BENCHMARKS[name]).BENCHMARK
    assert isinstance(bench, Benchmark) and bench.name == name, f"{BENCHMARKS[name]}.BENCHMARK is not {name!r}"
    return bench
