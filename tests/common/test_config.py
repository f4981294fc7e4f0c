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


def test_unknown_override_keys_are_refused():
    with pytest.raises(PipelineError, match="unknown config keys: top_kk"):
        PipelineConfig.from_overrides({"top_kk": 3})


def test_every_field_is_an_option_with_help_and_scope():
    from common.config import option_fields

    for f in option_fields():
        assert f.metadata["help"], f.name
        assert f.metadata["scope"] or f.metadata["help"].startswith("(derived"), f.name


def test_options_page_flag_table_is_the_generated_one():
    """docs/options.md, --help and the code cannot disagree: the page's table is generated from the fields."""
    from common.config import options_markdown
    from tests.helpers import REPO_ROOT

    page = (REPO_ROOT / "docs" / "options.md").read_text()
    table = page.split("<!-- options:start -->\n", 1)[1].split("<!-- options:end -->", 1)[0]
    assert table == options_markdown(), (
        "docs/options.md flag table is stale: paste `python3 run.py options` between its markers"
    )


def test_phases_2_and_3_use_phase1s_model(tmp_path):
    from common.config import DEFAULT_MODEL, model_of_phase1

    assert model_of_phase1(DEFAULT_MODEL, "/models/tiny")[0] == "/models/tiny"  # default means Phase 1's
    assert model_of_phase1("/models/tiny", "/models/tiny")[0] == "/models/tiny"
    assert model_of_phase1("org/other", None)[0] == "org/other"  # nothing recorded: as given
    (tmp_path / "m").mkdir()
    assert model_of_phase1(str(tmp_path / "m" / ".." / "m"), str(tmp_path / "m"))[0]  # same folder, two spellings
    with pytest.raises(PipelineError, match="not the model that produced the Phase 1 activations"):
        model_of_phase1("org/other", "/models/tiny")
