"""Working without the Hugging Face hub: find out once, quickly, and let every library know.

Why: offline, ``datasets`` and ``huggingface_hub`` retry every request with
back-off (1, 2, 4, 8, 8 s) and log each retry, so a missing ``--mbpp-path``
took 25 to 47 s and 22 to 46 lines before its one useful line. One TCP
connect to the hub's host, with a short timeout, tells the same thing in
milliseconds (a few seconds at most). When it fails the process switches to
the libraries' own offline mode (``HF_HUB_OFFLINE=1``): a cached model or
dataset is still used, anything else fails at once, and the pipeline's
loaders turn that failure into one line naming what was asked for and the
local flag (``--mbpp-path``, ``--humaneval-path``, ``--corpus``, a local
model folder). Child processes (the sweep's steps, launcher workers) inherit
the setting through the environment and do not probe again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from collections.abc import Iterator
from urllib.parse import urlparse

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0
_TRUE = {"1", "ON", "YES", "TRUE"}


def offline_requested() -> bool:
    """Whether the user (or a parent process) already set the libraries' offline mode."""
    return any(os.environ.get(name, "").upper() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_address() -> tuple[str, int]:
    """Host and port of the hub this process would use (``HF_ENDPOINT``, default huggingface.co:443)."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (80 if url.scheme == "http" else 443)
    return url.hostname or "huggingface.co", port


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """One TCP connection to the hub's host (name lookup included): True when it opens within ``timeout``."""
    host, port = hub_address()
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)  # getaddrinfo has no timeout of its own; a blocked resolver still ends
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
    finally:
        socket.setdefaulttimeout(previous)


# The module-level offline flags the libraries read at import time.
_FLAGS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("huggingface_hub.constants", ("HF_HUB_OFFLINE",)),
    ("datasets.config", ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")),
)


def set_offline() -> None:
    """Switch ``huggingface_hub``, ``datasets`` and ``transformers`` to offline mode for this process and its children.

    The libraries read the variable when first imported; those already
    imported get their module-level flag set too.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    for module_name, names in _FLAGS:
        module = sys.modules.get(module_name)
        for name in names if module is not None else ():
            setattr(module, name, True)


@contextlib.contextmanager
def offline_if_unreachable() -> Iterator[bool]:
    """:func:`go_offline_if_unreachable` for the block, then everything as it was.

    Why restore: ``run.main`` is also called inside other processes (tests, a
    notebook); the offline switch must not outlive the command that made it.
    """
    saved_env = os.environ.get("HF_HUB_OFFLINE")
    before = {m: {n: getattr(sys.modules[m], n) for n in names if hasattr(sys.modules[m], n)}
              for m, names in _FLAGS if m in sys.modules}
    try:
        yield go_offline_if_unreachable()
    finally:
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env
        for module_name, names in _FLAGS:
            module = sys.modules.get(module_name)
            for name in names if module is not None else ():
                # a module imported inside the block gets what it would have read from the restored environment
                setattr(module, name, before.get(module_name, {}).get(name, offline_requested()))


def go_offline_if_unreachable() -> bool:
    """Probe the hub once unless offline mode is already set; switch to offline mode when it cannot be reached.

    Returns True when the process works offline (asked for, or found out).
    """
    if offline_requested():
        return True
    if hub_reachable():
        return False
    host, port = hub_address()
    logger.debug("the Hugging Face hub (%s:%d) cannot be reached: working offline (HF_HUB_OFFLINE=1)", host, port)
    set_offline()
    return True
