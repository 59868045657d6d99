"""The artifacts the Kubeflow Pipelines UI draws (components/kfp_artifacts.py), filled by the
Evaluator, the Pusher and DataCheck from real TFMA output and real step outputs, and read
back as TFX's container entrypoint writes them into the executor output, which is what
KFP stores in ML Metadata and the UI reads.

The shapes checked are the frontend's (kubeflow/pipelines
frontend/src/components/viewers/MetricsVisualizations.tsx): every viewer needs a
`display_name` string; system.Metrics lists every other key as a metric; the confusion
matrix must pass `validateConfusionMatrix` (annotationSpecs as long as rows, every row as
long as rows, numbers); HTML and Markdown are read from the file at the artifact's URI.
"""
import json
import os

import xfer.components  # noqa: F401
import pytest
import tensorflow as tf
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2
from tensorflow_model_analysis.proto import metrics_for_slice_pb2
from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_entrypoint_utils as tfx_entry_utils
from tfx.types import standard_artifacts

from settings_helpers import make_config
from test_blessing import evaluate
from xfer.components import kfp_artifacts
from xfer.components.evaluator import fill_kfp_views as fill_evaluator_views
from xfer.components.pusher import Executor as PusherExecutor

HOSTILE = "<img src=x onerror=alert(1)>"
NAMES = ["cat", HOSTILE, "bird"]
MATRIX = [[38, 2, 0], [10, 18, 2], [1, 4, 0]]


def stored_metadata(artifact) -> dict:
    """The artifact's metadata as TFX's entrypoint writes it into the executor output
    (to_runtime_artifact), after the version tag it gives every output."""
    from tfx.orchestration.portable import outputs_utils

    outputs_utils.tag_output_artifacts_with_version({"x": [artifact]})
    runtime = tfx_entry_utils.to_runtime_artifact(artifact, {})
    return json_format.MessageToDict(runtime)["metadata"]


def ui_accepts_confusion_matrix(matrix: dict) -> None:
    """validateConfusionMatrix (MetricsVisualizations.tsx), as a Python check."""
    assert set(matrix) == {"annotationSpecs", "rows"}
    assert all(isinstance(s["displayName"], str) for s in matrix["annotationSpecs"])
    height = len(matrix["rows"])
    assert len(matrix["annotationSpecs"]) == height
    for r in matrix["rows"]:
        assert len(r["row"]) == height and all(isinstance(v, (int, float)) for v in r["row"])


def _write_plots(folder, matrix) -> None:
    """TFMA's plots file with the overall slice's multi-class confusion matrix, as the
    Evaluator's MultiClassConfusionMatrixPlot writes it (threshold 0: the argmax)."""
    plots = metrics_for_slice_pb2.PlotsForSlice()
    kv = plots.plot_keys_and_values.add()
    kv.key.name = "multi_class_confusion_matrix_plot"
    m = kv.value.multi_class_confusion_matrix_at_thresholds.matrices.add()
    m.threshold = 0.0
    for actual, row in enumerate(matrix):
        for predicted, n in enumerate(row):
            if n:
                m.entries.add(actual_class_id=actual, predicted_class_id=predicted, num_weighted_examples=n)
    with tf.io.TFRecordWriter(str(folder / "plots-00000-of-00001.tfrecord")) as w:
        w.write(plots.SerializeToString())


@pytest.fixture
def evaluated(tmp_path):
    """A real TFMA evaluation folder (metrics, validation, plots) and a model whose
    export names the classes, as the Evaluator's and the Trainer's outputs."""
    evaluation = tmp_path / "evaluation"
    evaluation.mkdir()
    classes = {0: (40, 0.95, 0.90), 1: (30, 0.60, 0.85), 2: (5, 0.0, 0.0)}
    _, ev = evaluate(evaluation, {"min_accuracy": 0.8, "max_drop": 0.02}, candidate=0.9, baseline=0.89,
                     classes=classes)
    _write_plots(evaluation, MATRIX)
    labels = tmp_path / "model" / "Format-Serving" / "assets.extra" / "labels.txt"
    labels.parent.mkdir(parents=True)
    labels.write_text("\n".join(NAMES) + "\n")
    model = standard_artifacts.Model()
    model.uri = str(tmp_path / "model")
    ev_artifact = standard_artifacts.ModelEvaluation()
    ev_artifact.uri = str(evaluation)
    return model, ev_artifact, ev


def test_evaluator_fills_metrics_and_confusion_matrix_in_the_uis_shapes(evaluated, tmp_path):
    model, evaluation, _ = evaluated
    blessing = standard_artifacts.ModelBlessing()
    blessing.set_int_custom_property("blessed", 1)
    metrics, matrix = kfp_artifacts.Metrics(), kfp_artifacts.ClassificationMetrics()
    fill_evaluator_views({"model": [model]}, {"evaluation": [evaluation], "blessing": [blessing],
                                              "metrics": [metrics], "confusion_matrix": [matrix]})

    stored = stored_metadata(metrics)
    assert stored.pop("display_name") == "accuracy and recall per class"
    stored.pop("tfx_version")  # a string: the entrypoint drops it (test below)
    assert stored == {"accuracy": 0.9, "served_model_accuracy": 0.89, "recall cat": 0.95,
                      f"recall {HOSTILE}": 0.6, "recall bird": 0.0}

    stored = stored_metadata(matrix)
    assert stored["display_name"] == "confusion matrix (eval split)"
    ui_accepts_confusion_matrix(stored["confusionMatrix"])
    assert [s["displayName"] for s in stored["confusionMatrix"]["annotationSpecs"]] == NAMES
    assert [r["row"] for r in stored["confusionMatrix"]["rows"]] == MATRIX


def test_a_matrix_wider_than_the_known_names_names_the_rest_by_index():
    artifact = kfp_artifacts.ClassificationMetrics()
    value = kfp_artifacts.fill_confusion_matrix(artifact, [[1, 0], [0, 1]], ["only"])
    assert [s["displayName"] for s in value["annotationSpecs"]] == ["only", "1"]
    ui_accepts_confusion_matrix(value)


def _pusher_outputs(tmp_path, where: str):
    """The Pusher's outputs with URIs as a runner gives them: 'kfp' nothing there yet (the
    KFP launcher, kfp.local), 'local' a folder made for each (TFX's local runner)."""
    outputs = {"pushed_model": standard_artifacts.PushedModel(), "blessing_report": kfp_artifacts.HTML(),
               "model_card": kfp_artifacts.Markdown()}
    for key, artifact in outputs.items():
        artifact.uri = str(tmp_path / where / "Pusher" / key)
        if where == "local":
            os.makedirs(artifact.uri)
    return {k: [v] for k, v in outputs.items()}


@pytest.mark.parametrize("where", ["kfp", "local"])
def test_pusher_writes_the_blessing_report_and_card_when_nothing_is_pushed(evaluated, tmp_path, where):
    model, evaluation, _ = evaluated
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = str(tmp_path / "blessing")
    os.makedirs(blessing.uri)
    tf.io.gfile.GFile(os.path.join(blessing.uri, "NOT_BLESSED"), "w").write("")
    blessing.set_int_custom_property("blessed", 0)
    settings = make_config().pusher_settings("test")
    outputs = _pusher_outputs(tmp_path, where)
    PusherExecutor().Do({"model": [model], "model_blessing": [blessing], "evaluation": [evaluation]}, outputs, {
        "custom_config": settings.model_dump_json(),
        "push_destination": json.dumps({"filesystem": {"base_directory": str(tmp_path / "serving")}})})

    assert not (tmp_path / "serving").exists()
    report, card = outputs["blessing_report"][0], outputs["model_card"][0]
    suffix = {"kfp": "", "local": "/index.html"}[where]
    assert kfp_artifacts.document_path(report) == report.uri + suffix
    page = open(kfp_artifacts.document_path(report)).read()
    assert page.startswith("<!doctype html>") and "Blessing report" in page
    assert HOSTILE not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<script" not in page
    text = open(kfp_artifacts.document_path(card)).read()
    assert text.startswith("# Model card") and "not blessed" in text
    assert stored_metadata(report)["display_name"] == "blessing report"
    assert stored_metadata(card)["display_name"] == "model card"
    assert not [p for p in (tmp_path / where).rglob("*.tmp")]


def test_pusher_card_output_is_the_pushed_versions_card(tmp_path):
    from xfer.components.pusher import fill_kfp_views as fill_pusher_views

    card_file = tmp_path / "serving" / "1" / "MODEL_CARD.md"
    card_file.parent.mkdir(parents=True)
    card_file.write_text("# Model card: version 1\n\nclasses: cat, dog\n")
    outputs = _pusher_outputs(tmp_path, "kfp")
    fill_pusher_views({}, outputs, make_config().pusher_settings("test"), blessed=True, card_path=str(card_file))
    assert open(outputs["model_card"][0].uri).read() == card_file.read_text()
    assert "no evaluation reached this step" in open(outputs["blessing_report"][0].uri).read()


def test_data_check_report_is_escaped_html_of_its_outcome_and_drift(tmp_path):
    from xfer.components.data_check import DRIFT, LABEL_COUNTS, write_report

    checked = standard_artifacts.Examples()
    checked.uri = str(tmp_path / "checked")
    os.makedirs(checked.uri)
    (tmp_path / "checked" / LABEL_COUNTS).write_text(json.dumps({"eval": {"0": 5}, "train": {"0": 7, HOSTILE: 3}}))
    kinds = [{"kind": "label", "title": "label distribution", "key": "data.drift.label_linf", "threshold": 0.1,
              "linf": 0.3, "most_moved": HOSTILE, "old_share": 0.1, "new_share": 0.4,
              "old": {HOSTILE: 0.1}, "new": {HOSTILE: 0.4}, "drifted": True}]
    (tmp_path / "checked" / DRIFT).write_text(json.dumps({"newest": 2, "previous": 1, "kinds": kinds}))
    bad = [{"split": "train", "file": f"/data/{HOSTILE}.tfrecord", "index": 4, "id": None,
            "reason": "image does not decode (Invalid PNG)", "fingerprint": "x"}]
    (tmp_path / "checked" / "bad_records.json").write_text(json.dumps(bad))
    checked.set_int_custom_property("bad_records", 1)
    report = kfp_artifacts.HTML()
    report.uri = str(tmp_path / "kfp" / "DataCheck" / "report")  # nothing there: the KFP launcher's URI

    path = write_report(report, checked)
    assert path == report.uri
    page = open(path).read()
    assert HOSTILE not in page and "<script" not in page
    assert page.count("&lt;img src=x onerror=alert(1)&gt;") >= 3  # the label, the drift, the file
    assert "train: 10 records kept" in page and "span 2 vs span 1" in page and "record 4" in page
    assert stored_metadata(report)["display_name"].startswith("DataCheck")


def _executor_input(tmp_path, outputs: dict) -> pipeline_spec_pb2.ExecutorInput:
    """An ExecutorInput whose outputs have the types of the compiled spec (schemaTitle
    system.*, as pipeline/kfp_spec.py writes them)."""
    ei = pipeline_spec_pb2.ExecutorInput()
    ei.outputs.output_file = str(tmp_path / "executor_output.json")
    for key, title in outputs.items():
        a = ei.outputs.artifacts[key].artifacts.add()
        a.name, a.uri = f"projects/p/artifacts/{key}", str(tmp_path / key)
        a.type.schema_title, a.type.schema_version = title, kfp_artifacts.KFP_SCHEMA_VERSION
    return ei


def test_the_entrypoint_loads_system_types_as_xfers_classes_and_keeps_metrics_numeric(tmp_path):
    """TFX's entrypoint imports an output's class from its type title: 'system.Metrics' is
    no import path. After as_tfx_classes it parses into the classes that fill them; after
    the run, a Metrics artifact keeps numbers (and its display_name) only."""
    ei = _executor_input(tmp_path, {"metrics": "system.Metrics", "confusion_matrix": "system.ClassificationMetrics",
                                    "report": "system.HTML", "card": "system.Markdown"})
    with pytest.raises(ImportError):
        tfx_entry_utils.parse_raw_artifact_dict(ei.outputs.artifacts, {})
    assert sorted(kfp_artifacts.as_tfx_classes(ei)) == ["card", "confusion_matrix", "metrics", "report"]
    parsed = tfx_entry_utils.parse_raw_artifact_dict(ei.outputs.artifacts, {})
    assert {k: type(v[0]) for k, v in parsed.items()} == {
        "metrics": kfp_artifacts.Metrics, "confusion_matrix": kfp_artifacts.ClassificationMetrics,
        "report": kfp_artifacts.HTML, "card": kfp_artifacts.Markdown}

    parsed["metrics"][0].set_float_custom_property("accuracy", 0.5)
    parsed["metrics"][0].set_string_custom_property("display_name", "accuracy")
    from tfx.orchestration.portable import outputs_utils
    outputs_utils.tag_output_artifacts_with_version(parsed)
    output = pipeline_spec_pb2.ExecutorOutput()
    for k, v in tfx_entry_utils.translate_executor_output(parsed, {}).items():
        output.artifacts[k].CopyFrom(v)
    (tmp_path / "executor_output.json").write_text(json_format.MessageToJson(output))

    assert kfp_artifacts.numbers_only(ei) == ["metrics.tfx_version"]
    written = json.loads((tmp_path / "executor_output.json").read_text())
    assert written["artifacts"]["metrics"]["artifacts"][0]["metadata"] == {"accuracy": 0.5, "display_name": "accuracy"}
    # Other types keep their metadata as TFX wrote it.
    assert "tfx_version" in written["artifacts"]["report"]["artifacts"][0]["metadata"]


def test_a_type_title_of_another_kind_is_left_to_tfx(tmp_path):
    ei = _executor_input(tmp_path, {"examples": "tfx.Examples"})
    assert kfp_artifacts.as_tfx_classes(ei) == []
    assert ei.outputs.artifacts["examples"].artifacts[0].type.schema_title == "tfx.Examples"


def test_compile_refuses_a_ui_type_not_in_kfps_form():
    """`xfer compile` writes nothing that breaks a rule of pipeline/kfp_spec.py; a system.*
    output left as TFX writes it (instanceSchema, no schemaVersion) is one."""
    from xfer.pipeline import kfp_spec

    outputs = {"metrics": {"artifactType": {"instanceSchema": "title: system.Metrics\ntype: object\n"}}}
    spec = {"components": {"comp-evaluator": {"outputDefinitions": {"artifacts": outputs}}}}
    found = [v for v in kfp_spec.violations(spec) if "output metrics" in v]
    assert len(found) == 1 and "schemaTitle system.Metrics with schemaVersion 0.0.1" in found[0]
    kfp_spec.make_conformant({**spec, "deploymentSpec": {"executors": {}}, "root": {"dag": {"tasks": {}}}})
    assert outputs["metrics"]["artifactType"] == {"schemaTitle": "system.Metrics", "schemaVersion": "0.0.1"}
    assert not [v for v in kfp_spec.violations(spec) if "output metrics" in v]
