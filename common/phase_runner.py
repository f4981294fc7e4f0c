"""Running one phase the one way: checks, the phase folder's lock, the log file, then the phase's ``run``.

Why one entry: ``run.py phase``, the launcher's workers (through ``run.py``)
and the demo all run a phase here, so every run holds the lock that stops two
runs writing the same folder and leaves its log beside its outputs. The phase's
code is imported by name from the registry (``common/phases.py``), so
``common/`` imports no phase.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from typing import Any

from common.benchmarks import get_benchmark
from common.config import PipelineConfig
from common.errors import PipelineError
from common.phases import PhaseSpec, phase

logger = logging.getLogger(__name__)


def load_entry(spec: str) -> Callable[..., Any]:
    """The function ``module:function`` names, imported now."""
    module_name, func_name = spec.split(":")
    module = importlib.import_module(module_name)
    func = getattr(module, func_name, None)
    if func is None:
        raise PipelineError(f"{module_name} is not built yet (see README: which phases exist)")
    return func


def _refuse_early(spec: PhaseSpec, cfg: PipelineConfig) -> None:
    """Refusals that must come before the lock and the log file, so a refused run writes nothing."""
    if spec.generates:  # a generating phase loads --model itself
        from common.modeling.models import check_gated_access

        check_gated_access(cfg.model)
    get_benchmark(cfg.dataset).check_prompt_format(cfg.prompt_format)  # an unknown --dataset, too


def run_phase(key: str, cfg: PipelineConfig) -> Any:
    """Run phase ``key`` (a key or an alias) with ``cfg``, locked and logged; return what the phase's ``run`` returns."""
    from common.datadir import exclusive, mark_data_dir, phase_dir, timestamp
    from common.logging_utils import add_file_log, remove_file_log

    spec = phase(key)
    threads = os.environ.get("PVA_TORCH_THREADS")
    if threads and spec.on_model:
        import torch  # a CPU worker of the launcher: one thread each, or they fight for the cores

        torch.set_num_threads(int(threads))
    _refuse_early(spec, cfg)
    entry = load_entry(spec.entry)
    # The benchmark's own folder (MBPP: the data dir itself): a HumanEval run locks and logs beside its outputs.
    data_dir = get_benchmark(cfg.dataset).data_dir(cfg.data_dir)
    mark_data_dir(cfg.data_dir)  # the user's data directory, also when the outputs go to its humaneval/ folder
    # One run per phase folder; a launcher worker locks its own shard folder (the launcher holds the phase's).
    lock_dir = cfg.shard_dir or phase_dir(data_dir, spec.key)
    with exclusive(lock_dir, f"phase {spec.key}"):
        log_path = phase_dir(data_dir, spec.key) / "logs" / f"phase{spec.key}_{timestamp()}.log"
        handler = add_file_log(log_path)
        try:
            logger.info("phase %s: log file %s", spec.key, log_path)
            return entry(cfg)
        finally:
            remove_file_log(handler)
