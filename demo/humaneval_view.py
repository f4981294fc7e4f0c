"""The demo's second problem set: its own problems rewritten in HumanEval's format.

Why: the demo must run the transfer path (latents, probes, thresholds and
coefficients chosen on the MBPP-format problems, applied unchanged to a second
benchmark) without the hub. The same problems in HumanEval's format (a
signature and a docstring to complete, one ``check(candidate)`` function) ask
whether what was learnt on one prompt format still reads correctness under
another. The demo model is trained on its seen problems in both formats
(``demo/training.py``, ``humaneval_format``): measured at the test size (seed
42) it solves the 60 seen problems and none of the 40 unseen ones in either
format, so the transfer table has both classes. (Trained on MBPP's format
only, it solved none of them: it wrote MBPP's "Your code should pass these
tests:" line and stopped.) Because the problems are the same, the demo's
transfer numbers say nothing about transfer across problem content, only
across prompt format.
"""

from __future__ import annotations

import ast
import gzip
import json
from pathlib import Path
from typing import Any

import pandas as pd

from common.errors import PipelineError
from common.sandbox.labelling import entry_point


class _RenameEntry(ast.NodeTransformer):
    def __init__(self, name: str) -> None:
        self.name = name

    def visit_Name(self, node: ast.Name) -> ast.AST:
        return ast.copy_location(ast.Name(id="candidate", ctx=node.ctx), node) if node.id == self.name else node


def humaneval_row(problem: dict[str, Any]) -> dict[str, str]:
    """One MBPP-format problem as a HumanEval-format row (prompt up to the body, body as the solution)."""
    tests = list(problem["test_list"])
    name = entry_point(tests, problem["test_setup_code"])
    code = str(problem["code"]).replace("\r\n", "\n")
    function = next(
        (n for n in ast.parse(code).body if isinstance(n, ast.FunctionDef) and n.name == name), None
    )
    if name is None or function is None:
        raise PipelineError(f"demo problem {problem['task_id']}: no top-level function called by its asserts")
    lines = code.split("\n")
    body_start = function.body[0].lineno - 1
    indent = lines[body_start][: len(lines[body_start]) - len(lines[body_start].lstrip())]
    prompt = "\n".join(lines[:body_start]) + f'\n{indent}"""{problem["text"]}\n{indent}"""\n'
    checks = [ast.unparse(_RenameEntry(name).visit(ast.parse(t.strip()))) for t in tests]
    test = (problem["test_setup_code"] or "") + "\n\ndef check(candidate):\n" + "".join(f"    {c}\n" for c in checks)
    return {
        "task_id": f"Demo/{int(problem['task_id'])}",
        "prompt": prompt,
        "canonical_solution": "\n".join(lines[body_start:]) + "\n",
        "test": test,
        "entry_point": name,
    }


def write_humaneval_view(problems: pd.DataFrame, path: Path) -> Path:
    """Write every problem in HumanEval's format as a gzipped jsonl that ``--humaneval-path`` reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as handle:
        for problem in problems.to_dict("records"):
            handle.write(json.dumps(humaneval_row(problem)) + "\n")
    tmp.replace(path)
    return path
