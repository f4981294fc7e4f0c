"""Each phase's metadata records its wall time and peak memory (resident set, which counts torch's tensors)."""

from __future__ import annotations

import torch

from common.config import PipelineConfig
from common.datadir import RunClock, build_metadata

MB = 2**20


def test_peak_memory_counts_a_torch_tensor_and_restarts_with_each_phase():
    clock = RunClock()
    tensor = torch.ones(300 * MB // 4, dtype=torch.float32)  # 300 MB, every page written
    del tensor
    meta = build_metadata("3", PipelineConfig(), clock)
    assert meta["peak_rss_mb"] >= 300, meta["peak_rss_mb"]
    assert meta["wall_time_s"] >= 0 and "peak_rss_children_mb" not in meta
    assert meta["cuda_peak_allocated_mb"] is None or meta["cuda_peak_allocated_mb"] >= 0
    if meta["peak_rss_scope"] == "since the phase started":  # Linux: the next phase starts a fresh peak
        later = build_metadata("3", PipelineConfig(), RunClock())
        assert later["peak_rss_mb"] <= meta["peak_rss_mb"] - 250, (later["peak_rss_mb"], meta["peak_rss_mb"])
    else:
        assert meta["peak_rss_scope"] == "since the process started"
