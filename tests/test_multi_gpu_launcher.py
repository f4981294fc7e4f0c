"""The launcher with CPU workers: slices, per-worker logs, merge check, failure exit, resume."""

import os
import subprocess
import sys

import pandas as pd
import pytest

import phase0_difficulty
from common.config import PipelineConfig
from tests.artifact_builders import validation_ids_in_positions
from tests.helpers import DEMO_PROBLEMS, REPO_ROOT


def _launch(data, model_dir, *extra):
    cmd = [
        sys.executable, str(REPO_ROOT / "multi_gpu_launcher.py"), "--phase", "1", "--start", "2", "--end", "6",
        "--model", str(model_dir), "--gpus", "2", "--data-dir", str(data), "--mbpp-path", str(DEMO_PROBLEMS),
        "--max-new-tokens", "8", "--batch-size", "3", "--workers", "1", *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=400)


def test_two_cpu_workers_merge_and_resume(tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    phase0_difficulty.run(PipelineConfig(data_dir=str(data), mbpp_path=str(DEMO_PROBLEMS)))
    out = _launch(data, tiny_model_dir)
    assert out.returncode == 0, out.stdout + out.stderr
    merged = sorted((data / "phase1_0").glob("dataset_*.parquet"))
    assert len(merged) == 1
    df = pd.read_parquet(merged[0])
    problems = sorted(int(l.split('"task_id": ')[1].split(",")[0]) for l in DEMO_PROBLEMS.read_text().splitlines())
    assert df["task_id"].tolist() == problems[2:7]
    logs = list((data / "phase1_0" / "logs").glob("launcher_*/worker_*.log"))
    assert len(logs) == 2
    # a rerun keeps the finished slices and merges again
    again = _launch(data, tiny_model_dir)
    assert again.returncode == 0 and again.stdout.count("done earlier (kept)") == 2


def test_failed_worker_exits_nonzero_and_names_it(tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    phase0_difficulty.run(PipelineConfig(data_dir=str(data), mbpp_path=str(DEMO_PROBLEMS)))
    out = _launch(data, tiny_model_dir, "--layers", "0,9")  # layer 9 does not exist: each worker fails
    assert out.returncode != 0
    assert "worker 0" in out.stdout and "FAILED" in out.stdout
    assert not list((data / "phase1_0").glob("dataset_*.parquet"))


def test_phase12_slices_merge_per_temperature(tmp_path, tiny_model_dir):
    import phase0_1_splitting

    data = tmp_path / "data"
    cfg = PipelineConfig(data_dir=str(data), mbpp_path=str(DEMO_PROBLEMS))
    phase0_difficulty.run(cfg)
    phase0_1_splitting.run(cfg)
    cmd = [
        sys.executable, str(REPO_ROOT / "multi_gpu_launcher.py"), "--phase", "1.2", "--start", "0", "--end", "11",
        "--model", str(tiny_model_dir), "--gpus", "2", "--data-dir", str(data), "--mbpp-path", str(DEMO_PROBLEMS),
        "--max-new-tokens", "6", "--batch-size", "4", "--workers", "1", "--temperatures", "0.5,1.0",
        "--samples-per-task", "2",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout + out.stderr
    expected = validation_ids_in_positions(data, 0, 11)  # positions count among all tasks, as in run.py
    assert len(expected) == 4
    for name in ("dataset_temp_0_5.parquet", "dataset_temp_1_0.parquet"):
        df = pd.read_parquet(data / "phase1_2" / name)
        assert len(df) == 8 and set(df["task_id"]) == expected
        assert not df.duplicated(["task_id", "sample_index"]).any()
    assert len(list((data / "phase1_2" / "activations").glob("*_layer_0.npz"))) == 4


def test_misspelt_worker_option_is_named_before_any_worker(tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    out = _launch(data, tiny_model_dir, "--batch-sise", "3")
    assert out.returncode == 2
    assert "unrecognized arguments: --batch-sise 3" in out.stderr and "Traceback" not in out.stderr
    assert not (data / "phase1_0" / "logs").exists()  # no worker was started


def test_slurm_backend_without_submitit_is_one_line_and_writes_nothing(tmp_path, tiny_model_dir):
    """submitit made unimportable (a shadowing package that raises ImportError): refused before anything runs."""
    shadow = tmp_path / "shadow" / "submitit"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named submitit')\n")
    data = tmp_path / "data"
    out = subprocess.run(
        [sys.executable, str(REPO_ROOT / "multi_gpu_launcher.py"), "--phase", "1", "--backend", "slurm",
         "--model", str(tiny_model_dir), "--data-dir", str(data), "--mbpp-path", str(DEMO_PROBLEMS)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(shadow.parent)},
    )
    assert out.returncode == 2
    assert out.stderr.strip() == "error: the SLURM backend needs submitit: pip install submitit==1.5.4"
    assert not data.exists()


GEMMA_STYLE_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def _cache_as_hub_model(model_dir, hf_home, hub_id: str, chat_template: str | None = None) -> None:
    """``model_dir`` placed in an HF cache under ``hub_id``, laid out as huggingface_hub writes it (offline loads find it)."""
    import shutil

    import transformers

    repo = hf_home / "hub" / f"models--{hub_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / "0123456789abcdef"
    shutil.copytree(model_dir, snapshot)
    if chat_template:
        tokenizer = transformers.AutoTokenizer.from_pretrained(snapshot)
        tokenizer.chat_template = chat_template
        tokenizer.save_pretrained(snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef")


@pytest.mark.slow  # two phase 1 runs, three processes: about 40 s on 2 cores
def test_launcher_records_the_presets_hub_id_as_run_py_does(tmp_path, tiny_model_dir):
    """``--model gemma-2-2b-it`` (a preset) through the launcher and through run.py: same model, preset, format."""
    import json

    hf_home = tmp_path / "hf_home"
    _cache_as_hub_model(tiny_model_dir, hf_home, "google/gemma-2-2b-it", GEMMA_STYLE_TEMPLATE)
    env = {**{k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE")},
           "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    common = ["--model", "gemma-2-2b-it", "--layers", "0,1", "--mbpp-path", str(DEMO_PROBLEMS), "--max-new-tokens", "4",
              "--batch-size", "3", "--workers", "1", "--start", "0", "--end", "2"]
    metas = {}
    for how, cmd in (("launcher", [str(REPO_ROOT / "multi_gpu_launcher.py"), "--phase", "1", "--gpus", "1"]),
                     ("run.py", [str(REPO_ROOT / "run.py"), "phase", "1", "--device", "cpu"])):
        data = tmp_path / how
        phase0_difficulty.run(PipelineConfig(data_dir=str(data), mbpp_path=str(DEMO_PROBLEMS)))
        out = subprocess.run([sys.executable, *cmd, *common, "--data-dir", str(data)], capture_output=True, text=True,
                             timeout=400, env=env, cwd=REPO_ROOT)
        assert out.returncode == 0, out.stdout + out.stderr
        (meta_path,) = (data / "phase1_0").glob("dataset_*_metadata.json")
        metas[how] = json.loads(meta_path.read_text())
        prompts = pd.read_parquet(meta_path.with_name(meta_path.name.replace("_metadata.json", ".parquet")))["prompt"]
        assert prompts.str.startswith("<start_of_turn>user\n").all()  # the preset's chat format
    for meta in metas.values():
        assert meta["model"] == "google/gemma-2-2b-it" and meta["model_preset"] == "gemma-2-2b-it"
        assert meta["config"]["model"] == "google/gemma-2-2b-it" and meta["config"]["model_preset"] == "gemma-2-2b-it"
        assert meta["prompt_format"] == "chat"
    assert metas["launcher"]["run"]["settings"] == metas["run.py"]["run"]["settings"]
    assert "launcher" in metas["launcher"] and "launcher" not in metas["run.py"]


def test_humaneval_is_refused_in_one_line_before_anything_is_written(tmp_path, tiny_model_dir):
    """The launcher's task list, settings and folders are MBPP's: a HumanEval run would publish into MBPP's folder."""
    data = tmp_path / "data"
    cmd = [
        sys.executable, str(REPO_ROOT / "multi_gpu_launcher.py"), "--phase", "1.2", "--model", str(tiny_model_dir),
        "--gpus", "1", "--data-dir", str(data), "--dataset", "humaneval",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert [line for line in out.stderr.splitlines() if line.strip()] == [
        "error: multi_gpu_launcher.py runs MBPP only; run --dataset humaneval with run.py phase 1.2"
    ]
    assert not data.exists()


def test_the_row_count_printed_is_the_published_files(tmp_path, tiny_model_dir):
    """A second slice is merged with the first into one dataset: the line gives both counts, the total the file's."""
    data = tmp_path / "data"
    phase0_difficulty.run(PipelineConfig(data_dir=str(data), mbpp_path=str(DEMO_PROBLEMS)))
    assert _launch(data, tiny_model_dir).returncode == 0
    out = _launch(data, tiny_model_dir, "--start", "0", "--end", "1", "--phase", "1.0")  # 1.0: the docs' name of phase 1
    assert out.returncode == 0, out.stdout + out.stderr
    from common.datadir import PHASE1_DATASET

    dataset = PHASE1_DATASET.newest(data)
    assert len(pd.read_parquet(dataset)) == 7
    assert f"merged dataset: 2 rows of this slice -> {dataset} (7 rows in all)" in out.stdout
