"""What reaches sbatch: submitit's real batch script for the pipeline's SLURM options (no job is submitted)."""

from __future__ import annotations

import shutil

import pytest

from common.errors import PipelineError
from common.slurm_backend import SlurmOptions, make_executor, parse_extra

pytest.importorskip("submitit")


def test_extra_options_parse_and_refuse_malformed():
    assert parse_extra(["qos=high", "--constraint=a100", "comment=a=b"]) == {"qos": "high", "constraint": "a100", "comment": "a=b"}
    for bad in ("qos", "=x"):
        with pytest.raises(PipelineError, match="KEY=VALUE"):
            parse_extra([bad])


@pytest.mark.skipif(shutil.which("srun") is None, reason="no srun on PATH: submitit builds no SLURM executor here")
def test_every_option_is_written_into_the_batch_script(tmp_path):
    opts = SlurmOptions(partition="gpu", account="lab", time="12:00:00", mem="64G", gpus_per_task=2, cpus_per_task=8,
                        extra={"qos": "high", "constraint": "a100"})
    script = make_executor(tmp_path / "jobs", opts, "pva-test")._make_submission_file_text("python -c pass", "uid")
    for line in ("--partition=gpu", "--account=lab", "--time=12:00:00", "--mem=64G", "--gpus-per-task=2",
                 "--cpus-per-task=8", "--qos=high", "--constraint=a100", "--kill-on-invalid-dep=yes", "--job-name=pva-test"):
        assert f"#SBATCH {line}\n" in script, line
    assert "export PYTHONPATH=" in script  # the job's Python finds this repo whatever its working directory


@pytest.mark.skipif(shutil.which("srun") is None, reason="no srun on PATH: submitit builds no SLURM executor here")
def test_cpu_slices_ask_for_no_gpu_and_a_day_by_default(tmp_path):
    script = make_executor(tmp_path / "jobs", SlurmOptions(), "pva-test")._make_submission_file_text("python -c pass", "uid")
    assert "#SBATCH --time=1-00:00:00\n" in script and "gpus" not in script and "--partition" not in script
