"""The one exception type that reaches the user as a single line.

Why: docs/design.md section 7 asks that bad input gives one clear line and a non-zero
exit, never a traceback. Library code raises ``PipelineError`` with a message
that says what is wrong and what to do; ``run.py`` prints it and exits 2.
"""


class PipelineError(Exception):
    """A user-facing error: bad input, missing earlier-phase output, unreachable hub."""
