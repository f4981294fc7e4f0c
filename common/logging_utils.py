"""Logging to the console and to a log file beside a phase's outputs.

Why a file too: runs go on for hours over SSH; when the session drops, the log
file is what the researcher reads the next morning.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(verbose: bool = False) -> None:
    """Console logging for the CLI (library code only ever calls ``getLogger``)."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not any(getattr(h, "_pva_console", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        handler._pva_console = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    for noisy in ("urllib3", "httpx", "filelock", "huggingface_hub", "datasets", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def add_file_log(path: str | Path) -> logging.Handler:
    """Also log to ``path``; returns the handler so the caller can remove it."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    return handler


def remove_file_log(handler: logging.Handler) -> None:
    logging.getLogger().removeHandler(handler)
    handler.close()
