"""Command handlers that ``run.py`` dispatches to: they parse nothing (run.py builds the flags
from the config), call the library in ``common/`` and print what the user reads.

Why out of ``common/``: ``common/`` is library code shared by the phases (it logs and raises);
a command's output format and exit codes belong with the command line.
"""
