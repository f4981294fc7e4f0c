import pytest

from common.config import PipelineConfig
from common.errors import PipelineError


def test_cli_overrides_env_overrides_defaults(monkeypatch):
    monkeypatch.setenv("PVA_DATA_DIR", "/env/data")
    monkeypatch.setenv("PVA_MBPP_PATH", "/env/mbpp.jsonl")
    cfg = PipelineConfig.from_overrides({"data_dir": "/cli/data", "seed": None, "top_k": 7})
    assert cfg.data_dir == "/cli/data"  # CLI beats env
    assert cfg.mbpp_path == "/env/mbpp.jsonl"  # env beats default
    assert cfg.seed == 42  # None means "not given"
    assert cfg.top_k == 7


def test_round_trip_and_unknown_keys():
    cfg = PipelineConfig(seed=3, temperatures=[0.5])
    again = PipelineConfig.from_dict(cfg.to_dict())
    assert again == cfg
    with pytest.raises(PipelineError, match="unknown config keys: bogus"):
        PipelineConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_default_lists_are_not_shared():
    a, b = PipelineConfig(), PipelineConfig()
    a.temperatures.append(2.0)
    assert b.temperatures == [0.3, 0.6, 0.9, 1.2]
