"""The artifacts the Kubeflow Pipelines UI draws: the run's numbers and reports as KFP's own
`system.*` types, emitted by xfer's Evaluator, Pusher and DataCheck besides TFX's outputs.

The KFP v2 UI draws an artifact by the name of its type in ML Metadata and nothing else
(kubeflow/pipelines frontend/src/components/viewers/MetricsVisualizations.tsx):
`system.Metrics` as a table of scalars (every custom property but display_name),
`system.ClassificationMetrics` as a confusion matrix (custom property `confusionMatrix`:
{"annotationSpecs": [{"displayName"}], "rows": [{"row": [numbers]}]}, as many rows as
specs, each row as long), `system.HTML` and `system.Markdown` by reading the file at the
artifact's URI (`Apis.readFile` on the URI: the URI is the document, not a folder). Each
viewer skips an artifact without a `display_name` custom property; the launcher sets it to
the output's name when the step did not (backend/src/v2/metadata/client.go, RecordArtifact).
TFX's own types (`tfx.ModelEvaluation`, ...) get no viewer, only their URI.

The type name gets there this way: TFX's v2 compiler writes a custom artifact class's
TYPE_NAME (`<namespace>.<Title>`) as the title of the output's instanceSchema
(tfx/orchestration/kubeflow/v2/compiler_utils.py, get_artifact_schema);
pipeline/kfp_spec.py rewrites these four as `schemaTitle` with schemaVersion 0.0.1, what
KFP's own compiler writes for an `Output[Metrics]`; the launcher turns either form into the
schema whose title names the ML Metadata type (backend/src/v2/component/launcher_v2.go,
getArtifactSchema; metadata/client.go, SchemaToArtifactType). The step's metadata reaches
the store from its executor output, which TFX's container entrypoint fills with each output
artifact's properties and custom properties (tfx/orchestration/kubeflow/v2/container/
kubeflow_v2_entrypoint_utils.py, to_runtime_artifact).

TFX's entrypoint finds an output's Python class by that same title, as an import path
(`_retrieve_class_path`): "system.Metrics" is none. `as_tfx_classes` gives the entrypoint
the classes below before it runs (components/kfp_entrypoint.py).

On the local runner the types are ML Metadata types of the same names; `xfer show` and
`xfer ui` keep drawing their own views and pass over these.
"""
from __future__ import annotations

import os
from typing import Optional

from tfx.types.artifact import Artifact

# What KFP's compiler writes for its system types (kfp/dsl/types/artifact_types.py).
KFP_SCHEMA_VERSION = "0.0.1"
DISPLAY_NAME = "display_name"


class Metrics(Artifact):
    """Scalars, one custom property each (accuracy, recall per class)."""
    TYPE_NAME = "system.Metrics"


class ClassificationMetrics(Artifact):
    """A confusion matrix in the custom property `confusionMatrix`."""
    TYPE_NAME = "system.ClassificationMetrics"


class HTML(Artifact):
    """A self-contained HTML page (no script), at the artifact's URI."""
    TYPE_NAME = "system.HTML"


class Markdown(Artifact):
    """A Markdown document, at the artifact's URI."""
    TYPE_NAME = "system.Markdown"


CLASSES = (Metrics, ClassificationMetrics, HTML, Markdown)
BY_TYPE_NAME = {c.TYPE_NAME: c for c in CLASSES}
# The file a document goes into when a runner made a folder at the URI (TFX's local
# runner makes one for every output): the name says its kind to anyone browsing.
FILE_IN_FOLDER = {HTML.TYPE_NAME: "index.html", Markdown.TYPE_NAME: "README.md"}


def class_path(cls) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def document_path(artifact: Artifact) -> str:
    """Where an HTML or Markdown artifact's document goes: the URI itself, which the KFP UI
    reads as the file (on Kubeflow, Vertex and kfp.local nothing exists there before the
    step writes); inside it when a runner already made a folder there (TFX's local runner)."""
    import tensorflow as tf

    if tf.io.gfile.isdir(artifact.uri):
        return os.path.join(artifact.uri, FILE_IN_FOLDER[artifact.type_name])
    return artifact.uri


def write_document(artifact: Artifact, text: str, display_name: str) -> str:
    """The document at `document_path`, written whole (object stores have no rename; a local
    file is written beside and renamed over), with the name the KFP UI titles it by."""
    import tensorflow as tf

    path = document_path(artifact)
    folder = os.path.dirname(path)
    if folder:
        tf.io.gfile.makedirs(folder)
    target = path if "://" in path else f"{path}.tmp"
    try:
        with tf.io.gfile.GFile(target, "w") as f:
            f.write(text)
        if target != path:
            tf.io.gfile.rename(target, path, overwrite=True)
    except BaseException:
        if target != path and tf.io.gfile.exists(target):
            tf.io.gfile.remove(target)
        raise
    artifact.set_string_custom_property(DISPLAY_NAME, display_name)
    return path


def html_page(title: str, views: list) -> str:
    """A whole HTML page of the renderer's views (pipeline/html_views.py), escaped by it;
    the KFP UI shows it in a frame."""
    from markupsafe import escape

    from xfer.pipeline import html_views

    body = html_views.render("notebook.html", title=title, views=views)
    return (f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{escape(title)}</title></head>'
            f"<body>\n{body}\n</body></html>\n")


def fill_metrics(artifact: Artifact, blessing, display_name: str = "accuracy and recall per class") -> dict:
    """Accuracy (and the served model's, when it was evaluated) and each class's recall
    (accuracy within the true class, TFMA's per-label slice), as numeric custom properties:
    what the UI's scalar table and the run comparison list. Returns them."""
    values = {}
    if blessing.candidate is not None:
        values["accuracy"] = blessing.candidate
    if blessing.baseline is not None:
        values["served_model_accuracy"] = blessing.baseline
    for c in blessing.per_class:
        if c.candidate is not None:
            values[f"recall {blessing.class_name(c.label)}"] = c.candidate
    for key, value in values.items():
        artifact.set_float_custom_property(key, float(value))
    artifact.set_string_custom_property(DISPLAY_NAME, display_name)
    return values


def confusion_matrix(evaluation_uri: str):
    """The candidate's confusion matrix on the overall slice from TFMA's plots (rows: true
    class, columns: predicted, at the argmax threshold), or None when TFMA wrote none."""
    import numpy as np
    import tensorflow_model_analysis as tfma

    for plots in tfma.load_plots(evaluation_uri):
        if plots.slice_key.single_slice_keys:
            continue
        for kv in plots.plot_keys_and_values:
            matrices = kv.value.multi_class_confusion_matrix_at_thresholds.matrices
            if kv.key.model_name == "baseline" or not matrices:
                continue
            entries = matrices[0].entries
            n = 1 + max(max(e.actual_class_id, e.predicted_class_id) for e in entries)
            m = np.zeros((n, n), dtype=np.int64)
            for e in entries:
                if e.actual_class_id >= 0 and e.predicted_class_id >= 0:
                    m[e.actual_class_id, e.predicted_class_id] += int(round(e.num_weighted_examples))
            return m
    return None


def fill_confusion_matrix(artifact: Artifact, matrix, class_names: Optional[list[str]],
                          display_name: str = "confusion matrix (eval split)") -> dict:
    """The matrix in the shape the UI validates (MetricsVisualizations.tsx,
    validateConfusionMatrix): one annotation spec per row, every row as long as there are
    rows. Classes past the known names are named by index."""
    n = len(matrix)
    names = [class_names[i] if class_names and i < len(class_names) else str(i) for i in range(n)]
    value = {"annotationSpecs": [{"displayName": name} for name in names],
             "rows": [{"row": [int(v) for v in row]} for row in matrix]}
    artifact.set_json_value_custom_property("confusionMatrix", value)
    artifact.set_string_custom_property(DISPLAY_NAME, display_name)
    return value


def _title(artifact_type) -> str:
    kind = artifact_type.WhichOneof("kind")
    if kind == "schema_title":
        return artifact_type.schema_title
    if kind == "instance_schema":
        import yaml
        return (yaml.safe_load(artifact_type.instance_schema) or {}).get("title", "")
    return ""


def as_tfx_classes(executor_input) -> list[str]:
    """Give each output of a `system.*` type above, in the ExecutorInput, a schema whose
    title is its class's import path, the only form TFX's entrypoint can load a class not
    of its own from. This changes what the container reads, not what KFP records: the
    launcher types the output from the compiled spec. Returns the keys changed."""
    changed = []
    for key, artifacts in executor_input.outputs.artifacts.items():
        for artifact in artifacts.artifacts:
            cls = BY_TYPE_NAME.get(_title(artifact.type))
            if cls is not None:
                artifact.type.Clear()
                artifact.type.instance_schema = f"title: {class_path(cls)}\ntype: object\n"
                changed.append(key)
    return changed


def numbers_only(executor_input) -> list[str]:
    """Drop, from the executor output's system.Metrics artifacts, every metadata key that
    is not a number (TFX's entrypoint tags every output with its `tfx_version`): the UI
    lists every key of a Metrics artifact as a metric. display_name stays. Returns the keys
    dropped, as "output.key"."""
    import tensorflow as tf
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    metrics_keys = [key for key, artifacts in executor_input.outputs.artifacts.items()
                    if any(_title(a.type) == class_path(Metrics) for a in artifacts.artifacts)]
    path = executor_input.outputs.output_file
    if not metrics_keys or not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path) as f:
        output = json_format.Parse(f.read(), pipeline_spec_pb2.ExecutorOutput(), ignore_unknown_fields=True)
    dropped = []
    for key in metrics_keys:
        for artifact in output.artifacts[key].artifacts if key in output.artifacts else []:
            for name, value in list(artifact.metadata.fields.items()):
                if name != DISPLAY_NAME and value.WhichOneof("kind") != "number_value":
                    del artifact.metadata.fields[name]
                    dropped.append(f"{key}.{name}")
    if dropped:
        with tf.io.gfile.GFile(path, "w") as f:
            f.write(json_format.MessageToJson(output))
    return dropped


def kfp_types(spec_outputs: dict) -> dict:
    """{output name: type title} of a compiled component's outputDefinitions.artifacts, for
    the outputs of the types above."""
    found = {}
    for name, definition in spec_outputs.items():
        t = definition.get("artifactType", {})
        title = t.get("schemaTitle") or (_yaml_title(t["instanceSchema"]) if "instanceSchema" in t else "")
        if title in BY_TYPE_NAME:
            found[name] = title
    return found


def _yaml_title(text: str) -> str:
    import yaml
    return (yaml.safe_load(text) or {}).get("title", "")

