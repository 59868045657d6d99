"""Beam arguments are parsed with Beam's own PipelineOptions before anything runs: a flag
Beam does not know (which Beam drops with a warning and runs without), a bad value, or a
Dataflow job lacking what Dataflow needs, fails with one line naming it
(pipeline/beam_args.py)."""
import pytest

from conftest import xfer
from test_compile import KUBEFLOW
from xfer.pipeline import beam_args
from xfer.pipeline.config import ConfigError

DATAFLOW = ["--runner=DataflowRunner", "--project=p1", "--region=us-central1", "--temp_location=gs://b/tmp",
            "--sdk_container_image=registry.example.com/xfer:1", "--experiments=use_runner_v2"]


def _refused(args, key="beam_pipeline_args", dataflow=False) -> str:
    with pytest.raises(ConfigError) as e:
        (beam_args.check_dataflow if dataflow else beam_args.parse)(args, key)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_the_shipped_defaults_and_dataflow_args_parse_into_beams_views():
    from apache_beam.options.pipeline_options import GoogleCloudOptions, WorkerOptions

    beam_args.parse(["--direct_running_mode=in_memory"], "beam_pipeline_args")
    beam_args.parse(["--direct_running_mode=multi_processing", "--direct_num_workers=0"], "beam_pipeline_args")
    beam_args.check_dataflow(DATAFLOW + ["--max_num_workers=20", "--machine_type=n1-standard-4"])
    options = beam_args.parse(DATAFLOW + ["--max_num_workers", "20"], "kubeflow.dataflow")  # value as next arg
    assert options.view_as(WorkerOptions).max_num_workers == 20
    assert options.view_as(GoogleCloudOptions).region == "us-central1"


@pytest.mark.parametrize("flag, message", [
    ("--max_num_worker=3", "--max_num_worker is not a Beam pipeline option (did you mean --max_num_workers?); "
                           "Beam would drop it and run without it"),
    ("--regon=europe-west4", "--regon is not a Beam pipeline option (did you mean --region?)"),
    ("--direct_running_mode=multi_process", "argument --direct_running_mode: invalid choice: 'multi_process'"),
    ("--direct_num_workers=two", "argument --direct_num_workers: invalid int value: 'two'"),
    ("direct_num_workers=2", "'direct_num_workers=2' is not a --flag=value"),
])
def test_a_typo_or_bad_value_is_refused_naming_the_flag(flag, message):
    refused = _refused(["--direct_running_mode=in_memory", flag])
    assert refused.startswith("beam_pipeline_args: ") and message in refused, refused


@pytest.mark.parametrize("args, message", [
    ([a for a in DATAFLOW if not a.startswith("--temp_location")] + ["--temp_location=/tmp/beam"],
     "kubeflow.dataflow.temp_location: '/tmp/beam'; Dataflow's temporary files go to a gs:// folder"),
    ([a for a in DATAFLOW if not a.startswith("--region")], "kubeflow.dataflow.region: empty; Dataflow needs the region"),
    ([a for a in DATAFLOW if not a.startswith("--sdk_container_image")], "kubeflow.dataflow: no worker image"),
    (DATAFLOW + ["--max_num_workers=0"], "kubeflow.dataflow.max_num_workers: 0; 1 or more"),
    (DATAFLOW + ["--requirements_file=requirements.txt"], "kubeflow.dataflow: --requirements_file with kubeflow.image"),
    (DATAFLOW + ["--num_worker=3"], "kubeflow.dataflow: --num_worker is not a Beam pipeline option (did you mean --num_workers?)"),
])
def test_a_dataflow_job_without_what_dataflow_needs_is_refused(args, message):
    assert message in _refused(args, "kubeflow.dataflow", dataflow=True)


def test_a_typo_in_beam_pipeline_args_fails_the_compile_with_one_line(tmp_path):
    out = tmp_path / "pipeline.yaml"
    proc = xfer("compile", *KUBEFLOW, "--out", str(out),
                "--set", "kubeflow.dataflow={project: p1, region: us-central1, temp_location: gs://b/tmp}",
                "--set", "beam_pipeline_args=[--experiments=use_runner_v2, --max_num_worker=3]",
                check=False, env={"XDG_STATE_HOME": str(tmp_path / "state")})
    assert proc.returncode == 2, proc.stderr
    assert [l for l in proc.stderr.splitlines() if l.startswith("xfer:")] == [
        "xfer: config error: beam_pipeline_args: --max_num_worker is not a Beam pipeline option (did you mean "
        "--max_num_workers?); Beam would drop it and run without it"], proc.stderr
    assert not out.exists() and not (tmp_path / "state").exists()


def test_a_typo_in_beam_pipeline_args_stops_a_local_run_before_it_starts(tmp_path):
    proc = xfer("run", "--check", "--config", "local", "--set", f"root={tmp_path / 'root'}",
                "--set", "beam_pipeline_args=[--direct_running_mode=in_memory, --direct_num_worker=2]",
                check=False, env={"XDG_STATE_HOME": str(tmp_path / "state")})
    assert proc.returncode == 2, proc.stderr
    assert "xfer: config error: beam_pipeline_args: --direct_num_worker is not a Beam pipeline option " \
           "(did you mean --direct_num_workers?)" in proc.stderr, proc.stderr
    assert not (tmp_path / "root").exists()  # refused before the data or anything else is written
