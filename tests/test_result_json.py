"""result.json for every run that started a step: drifted kinds with their distances
(warn and fail alike), a run killed mid-step (written by the next run, status
interrupted), a run that failed after its first step (status failed, the error line);
and `--from` after a failed upstream step, named before TFX registers an empty run.

The functions are driven directly on ML Metadata stores laid out as TFX lays them out
(pipeline, pipeline_run and node contexts; executions with their states; input and
output events), in tmp_path. tests/test_spans.py and tests/test_run_faults.py check the
same files after real runs."""
import json
import os
import time

import pytest

import xfer.components  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2 as pb

from settings_helpers import make_config
from xfer.components.data_check import DRIFT, compare_spans
from xfer.components.import_gen import SPAN_STATS
from xfer.pipeline import interrupted, summary
from xfer.pipeline.config import ConfigError

E = pb.Execution

# The newest span's labels moved 0.4 (0.5 -> 0.9 for label 0), formats 0.5; sizes not at all.
SPAN_STATS_SKEWED = {
    "newest": 2, "previous": 1, "window": [2],
    "spans": {"1": {"records": 100, "label": {"0": 50, "1": 50}, "format": {"png": 100}, "size": {"32-63": 100}},
              "2": {"records": 100, "label": {"0": 90, "1": 10}, "format": {"png": 50, "jpeg": 50},
                    "size": {"32-63": 100}}}}
THRESHOLDS = {"label_linf": 0.2, "format_linf": 0.6, "size_linf": 0.2}
EXPECTED_DRIFT = [{"kind": "label", "key": "data.drift.label_linf", "distance": 0.4, "limit": 0.2}]


class Store:
    """A writable ML Metadata store with TFX's context types, for one pipeline."""

    def __init__(self, path, pipeline="xfer"):
        cfg = pb.ConnectionConfig()
        cfg.sqlite.filename_uri = str(path)
        cfg.sqlite.connection_mode = pb.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
        self.s, self.name = metadata_store.MetadataStore(cfg), pipeline
        self.types = {n: self.s.put_context_type(pb.ContextType(name=n)) for n in ("pipeline", "pipeline_run", "node")}
        self.examples = self.s.put_artifact_type(pb.ArtifactType(name="Examples"))
        self.pipeline = self._context("pipeline", pipeline)
        self.nodes = {}

    def _context(self, kind, name):
        return self.s.put_contexts([pb.Context(type_id=self.types[kind], name=name)])[0]

    def run(self, run_id):
        run = self._context("pipeline_run", run_id)
        self.s.put_parent_contexts([pb.ParentContext(child_id=run, parent_id=self.pipeline)])
        return run

    def step(self, run, node, state, props=None, inputs=(), outputs=()):
        """An execution of `node` in `run`; inputs/outputs: Examples artifact folders."""
        type_id = self.s.put_execution_type(pb.ExecutionType(name=f"tfx.{node}"))
        ex = E(type_id=type_id, last_known_state=state)
        for k, v in (props or {}).items():
            ex.custom_properties[k].string_value = v
        if node not in self.nodes:
            self.nodes[node] = self._context("node", f"{self.name}.{node}")
        [eid] = self.s.put_executions([ex])
        events = []
        for kind, uris in ((pb.Event.INPUT, inputs), (pb.Event.OUTPUT, outputs)):
            for uri in uris:
                [aid] = self.s.put_artifacts([pb.Artifact(type_id=self.examples, uri=str(uri), state=pb.Artifact.LIVE)])
                events.append(pb.Event(artifact_id=aid, execution_id=eid, type=kind))
        if events:
            self.s.put_events(events)
        self.s.put_attributions_and_associations(
            [], [pb.Association(context_id=c, execution_id=eid) for c in (run, self.nodes[node])])
        return eid

    def execution(self, eid):
        return self.s.get_executions_by_id([eid])[0]


def _write(folder, name, content):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "w") as f:
        json.dump(content, f)
    return folder


# --- drifted kinds ------------------------------------------------------------------------

def test_drifted_kinds_under_warn_are_read_from_the_gate_s_own_drift_json(tmp_path):
    st = Store(tmp_path / "m.sqlite")
    run = st.run("r1")
    compared = compare_spans(SPAN_STATS_SKEWED, THRESHOLDS)
    checked = _write(tmp_path / "checked", DRIFT, compared)
    eid = st.step(run, "DataCheck", E.COMPLETE, {"drift": json.dumps(THRESHOLDS)}, outputs=[checked])
    assert summary.drifted_kinds(st.s, st.execution(eid)) == EXPECTED_DRIFT
    # Not a count: the format mix moved 0.5 but its limit is 0.6, so it is not listed.
    assert [k["kind"] for k in compared["kinds"] if k["linf"] > 0] == ["label", "format"]


def test_drifted_kinds_under_fail_are_the_same_comparison_of_what_datacheck_read(tmp_path):
    """Under data.on_anomaly: fail the gate raises and TFX removes its output; the kinds
    come from the span statistics DataCheck read and the thresholds it was given."""
    st = Store(tmp_path / "m.sqlite")
    run = st.run("r1")
    examples = _write(tmp_path / "examples", SPAN_STATS, SPAN_STATS_SKEWED)
    eid = st.step(run, "DataCheck", E.FAILED, {"drift": json.dumps(THRESHOLDS)}, inputs=[examples],
                  outputs=[tmp_path / "removed-by-tfx"])
    assert summary.drifted_kinds(st.s, st.execution(eid)) == EXPECTED_DRIFT
    first = _write(tmp_path / "first", SPAN_STATS, {**SPAN_STATS_SKEWED, "previous": None})
    eid = st.step(run, "DataCheck", E.FAILED, {"drift": json.dumps(THRESHOLDS)}, inputs=[first])
    assert summary.drifted_kinds(st.s, st.execution(eid)) is None  # the first span: nothing compared


def test_result_lists_drifted_kinds_and_a_failed_run_s_error(tmp_path):
    s = summary.RunSummary(run_id="r1", states={"DataCheck": "failed"}, drifted=EXPECTED_DRIFT)
    out = summary.result(s, make_config().eval, error="span 2 drifted from span 1")
    assert out["drifted_kinds"] == EXPECTED_DRIFT and out["status"] == "failed"
    assert out["error"] == "span 2 drifted from span 1" and out["not_pushed_because"] == "the run failed"
    assert json.loads(json.dumps(out)) == out  # as written to result.json


# --- runs that never wrote their own -----------------------------------------------------

def test_the_run_that_finds_a_killed_run_writes_its_result(tmp_path):
    config = make_config(root=str(tmp_path / "root"))
    os.makedirs(config.root)
    st = Store(config.metadata_path, config.name)
    run_name = "2026-01-01T10:00:00.000001"
    run = st.run(run_name)
    st.step(run, "ImportExampleGen", E.COMPLETE)
    st.step(run, "Trainer", E.RUNNING)
    lines = interrupted.clean_up(config)
    path = os.path.join(summary.report_folder(config.root, run_name), "result.json")
    assert f"wrote {path} for the interrupted run {run_name}" in lines, lines
    with open(path) as f:
        result = json.load(f)
    assert result["status"] == "interrupted" and result["run_id"] == run_name
    assert result["steps"] == {"ImportExampleGen": "executed", "Trainer": "interrupted"}
    assert result["error"].startswith("interrupted in Trainer: the run's process ended before the step finished")
    assert result["not_pushed_because"] == "the run was interrupted" and result["blessed"] is None
    assert not [p for p in os.listdir(os.path.dirname(path)) if p.endswith(".tmp")]
    assert interrupted.clean_up(config) == []  # once: the next run finds nothing to do


def test_a_run_that_fails_after_its_first_step_gets_a_result_and_one_that_never_started_none(tmp_path):
    from xfer.pipeline.cli import _save_failed_result

    config = make_config(root=str(tmp_path / "root"))
    os.makedirs(config.root)
    st = Store(config.metadata_path, config.name)
    started = time.time()
    run = st.run("2026-01-02T10:00:00.000001")
    st.step(run, "ImportExampleGen", E.COMPLETE)
    st.step(run, "StatisticsGen", E.FAILED)
    _save_failed_result(config, ConfigError("data.image_key: 'img' is in none of the records"), started)
    with open(os.path.join(summary.report_folder(config.root, "2026-01-02T10:00:00.000001"), "result.json")) as f:
        result = json.load(f)
    assert result["status"] == "failed" and result["error"] == "data.image_key: 'img' is in none of the records"
    assert result["steps"] == {"ImportExampleGen": "executed", "StatisticsGen": "failed"}
    # A later invocation that fails before any step (a preflight error) writes nothing.
    later = tmp_path / "root" / "reports"
    before = sorted(p.name for p in later.iterdir())
    _save_failed_result(config, ConfigError("preflight found 1 problem(s)"), time.time() + 60)
    assert sorted(p.name for p in later.iterdir()) == before


# --- --from after a failed upstream step -------------------------------------------------

def test_from_after_a_failed_upstream_step_names_it_before_any_run_is_registered(tmp_path):
    from tfx.proto.orchestration import pipeline_pb2

    from xfer.pipeline.pipeline import create_pipeline
    from xfer.pipeline.runners import pipeline_ir, require_upstream

    config = make_config(root=str(tmp_path / "root"))
    os.makedirs(config.root)
    ir = pipeline_ir(create_pipeline(config))
    order = [n.pipeline_node.node_info.id for n in ir.nodes]
    st = Store(config.metadata_path, config.name)
    run = st.run("2026-01-03T10:00:00.000001")
    for node in order[:order.index("Trainer")]:
        st.step(run, node, E.COMPLETE)
    st.step(run, "Trainer", E.FAILED)

    def options(node):
        o = pipeline_pb2.RunOptions()
        o.partial_run.from_nodes.append(node)
        o.partial_run.snapshot_settings.latest_pipeline_run_strategy.SetInParent()
        return o

    with pytest.raises(ConfigError) as e:
        require_upstream(config, ir, options("ServedBaseline"))
    message = str(e.value)
    assert message == (
        "--from ServedBaseline takes the steps before it from the latest run (2026-01-03T10:00:00.000001), but "
        "Trainer did not succeed in it (Trainer: failed there). Run the whole pipeline (without --from), "
        "or start at that step: --from Trainer"), message
    require_upstream(config, ir, options("Trainer"))  # its upstream succeeded: nothing to say
    runs = summary.mlmd.pipeline_runs(summary.mlmd.open_store(config.metadata_path), config.name)
    assert [r.name for r in runs] == ["2026-01-03T10:00:00.000001"]  # no empty run left for the next --from
