"""McCabe cyclomatic complexity of a program (radon), the pipeline's measure of difficulty."""

from __future__ import annotations

from radon.visitors import ComplexityVisitor


def cyclomatic_complexity(code: str) -> int:
    """McCabe complexity of a whole program: its decision points plus one.

    radon's ``total_complexity`` counts the branches of the module body and of
    every function and method once, so a helper function without branches does
    not make a solution look harder.

    MBPP solutions mostly use CRLF line endings (972 of 974): they are normalised
    to ``\\n`` first so radon parses them like Python itself would run them.
    """
    source = code.replace("\r\n", "\n").replace("\r", "\n")
    return int(ComplexityVisitor.from_code(source).total_complexity)
