"""Readable views of a run's artifacts, for `xfer show`: statistics, schema, anomalies,
the transform's output, training curves, TFMA metrics and the blessing, the push."""
from __future__ import annotations

import json
import os
from typing import Optional

from xfer.pipeline import store as mlmd
from xfer.pipeline.blessing import read_blessing


def _splits(uri: str) -> list[str]:
    import tensorflow as tf
    return sorted(d.rstrip("/") for d in tf.io.gfile.listdir(uri) if d.startswith("Split-"))


def view_statistics(uri: str) -> list[str]:
    import tensorflow_data_validation as tfdv

    lines = []
    for split in _splits(uri):
        stats = tfdv.load_stats_binary(os.path.join(uri, split, "FeatureStats.pb"))
        for ds in stats.datasets:
            lines.append(f"  {split.removeprefix('Split-')}: {ds.num_examples} examples")
            for f in ds.features:
                name = f.path.step[0] if f.path.step else f.name
                common = (f.num_stats or f.string_stats or f.bytes_stats).common_stats
                missing = common.num_missing
                if f.HasField("num_stats"):
                    desc = f"min {f.num_stats.min:g}, max {f.num_stats.max:g}, mean {f.num_stats.mean:.3g}"
                elif f.HasField("bytes_stats"):
                    desc = (f"bytes: avg {f.bytes_stats.avg_num_bytes:.0f}, "
                            f"min {f.bytes_stats.min_num_bytes:.0f}, max {f.bytes_stats.max_num_bytes:.0f}")
                elif f.HasField("string_stats"):
                    top = [v for v in f.string_stats.top_values[:10] if v.value != "__BYTES_VALUE__"]
                    desc = f"{f.string_stats.unique} unique"
                    if top:
                        desc += "; top " + ", ".join(f"{v.value}:{int(v.frequency)}" for v in top)
                    else:
                        desc += f" binary values, avg {f.string_stats.avg_length:.0f} bytes"
                else:
                    desc = ""
                lines.append(f"    {name}: {desc}; missing {missing}")
                for cs in f.custom_stats:  # TFDV image-domain stats, when enabled
                    if cs.HasField("rank_histogram"):
                        vals = ", ".join(f"{b.label}:{int(b.sample_count)}" for b in cs.rank_histogram.buckets)
                        lines.append(f"      {cs.name}: {vals}")
                    elif cs.HasField("num"):
                        lines.append(f"      {cs.name}: {cs.num:g}")
    return lines


LABEL_SCAN_LIMIT = 100_000


def label_distribution(examples_uri: str, label_key: str) -> list[str]:
    """Examples per label value in each split, read from the examples themselves (TFDV's
    numeric statistics give only a range and a mean for an integer label)."""
    import collections

    import tensorflow as tf

    lines = []
    for split in _splits(examples_uri):
        files = tf.io.gfile.glob(os.path.join(examples_uri, split, "*"))
        # Our own steps' output, written after the door's framing check (tfrecords.read_records): trusted.
        ds = tf.data.TFRecordDataset(files, compression_type="GZIP").take(LABEL_SCAN_LIMIT).batch(1024)
        first = next(iter(ds.unbatch().take(1)), None)
        if first is None:
            lines.append(f"  {split.removeprefix('Split-')}: no examples")
            continue
        feature = tf.train.Example.FromString(first.numpy()).features.feature.get(label_key)
        dtype = tf.string if feature is not None and feature.WhichOneof("kind") == "bytes_list" else tf.int64
        counts: collections.Counter = collections.Counter()
        for batch in ds:
            parsed = tf.io.parse_example(batch, {label_key: tf.io.VarLenFeature(dtype)})
            values = parsed[label_key].values.numpy().tolist()
            counts.update(v.decode(errors="replace") if isinstance(v, bytes) else v for v in values)
        total = sum(counts.values())
        capped = f" (first {LABEL_SCAN_LIMIT:,} examples)" if total >= LABEL_SCAN_LIMIT else ""
        dist = ", ".join(f"{k}:{v}" for k, v in sorted(counts.items()))
        lines.append(f"  {split.removeprefix('Split-')} label distribution{capped}: {dist}")
    return lines


def view_schema(uri: str) -> list[str]:
    from tfx.utils import io_utils
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = io_utils.parse_pbtxt_file(os.path.join(uri, "schema.pbtxt"), schema_pb2.Schema())
    lines = []
    for f in schema.feature:
        shape = list(d.size for d in f.shape.dim) if f.HasField("shape") else "variable"
        lines.append(f"  {f.name}: {schema_pb2.FeatureType.Name(f.type)}, shape {shape}, "
                     f"presence min_fraction {f.presence.min_fraction:g}")
    return lines


def view_anomalies(uri: str) -> list[str]:
    from xfer.components.data_check import read_anomalies

    lines = []
    for split, found in read_anomalies(uri).items():
        if not found:
            lines.append(f"  {split}: no anomalies")
        for feature, info in found.items():
            lines.append(f"  {split}: {feature}: {info.short_description} ({info.description})")
    return lines


def view_transform(uri: str) -> list[str]:
    import tensorflow_transform as tft

    spec = tft.TFTransformOutput(uri).transformed_feature_spec()
    return [f"  {k}: {v}" for k, v in sorted(spec.items())]


def view_model_run(uri: str) -> list[str]:
    import tensorflow as tf

    path = os.path.join(uri, "history.json")
    if not tf.io.gfile.exists(path):
        return ["  (no training history recorded)"]
    report = json.loads(tf.io.gfile.GFile(path).read())
    lines = [f"  classes: {', '.join(report['class_names'])}"]
    epoch = 0
    for phase, h in report["history"].items():
        for i in range(len(next(iter(h.values()), []))):
            epoch += 1
            vals = "  ".join(f"{k} {h[k][i]:.4f}" for k in sorted(h))
            lines.append(f"  epoch {epoch} ({phase}): {vals}")
    from xfer.components.reports import PNGS

    for name in (*PNGS, "logs"):
        if tf.io.gfile.exists(os.path.join(uri, name)):
            what = "TensorBoard logs" if name == "logs" else "plot"
            lines.append(f"  {what}: {os.path.join(uri, name)}")
    summary = os.path.join(uri, "model_summary.txt")
    if tf.io.gfile.exists(summary):
        lines.append("  model:")
        lines += ["    " + line for line in tf.io.gfile.GFile(summary).read().splitlines()]
    return lines


def _slice_value(key) -> str:
    value = getattr(key, key.WhichOneof("kind"))
    return value.decode() if isinstance(value, bytes) else str(value)


def confusion_lines(uri: str) -> list[str]:
    """The candidate's confusion matrix on the overall slice, with per-class precision/recall."""
    from xfer.components.kfp_artifacts import confusion_matrix  # the one reader of TFMA's matrix

    m = confusion_matrix(uri)
    if m is None:
        return []
    lines = ["  confusion matrix (rows: true class, columns: predicted):"]
    lines += ["    " + " ".join(f"{v:5d}" for v in row) + f"   class {i}: precision "
              f"{m[i, i] / max(1, m[:, i].sum()):.3f} recall {m[i, i] / max(1, m[i].sum()):.3f}"
              for i, row in enumerate(m)]
    return lines


def view_evaluation(uri: str, blessed: Optional[bool], ev) -> list[str]:
    import tensorflow_model_analysis as tfma

    lines = []
    for m in tfma.load_metrics(uri):
        where = ", ".join(f"{k.column}={_slice_value(k)}" for k in m.slice_key.single_slice_keys) or "overall"
        for kv in m.metric_keys_and_values:
            model = kv.key.model_name or "candidate"
            diff = " (change vs baseline)" if kv.key.is_diff else ""
            lines.append(f"  [{where}] {model} {kv.key.name}{diff}: {kv.value.double_value.value:.4f}")
    lines += confusion_lines(uri)
    b = read_blessing(uri, bool(blessed))
    # The same words as the run's summary.
    lines.append("  " + b.headline(ev))
    if b.tta_line(ev):
        lines.append("  " + b.tta_line(ev))
    return lines


def run_artifacts(metadata_path: str, pipeline_name: str, run_id: Optional[str]) -> tuple[str, dict]:
    """(run id, {component: [(artifact type name, artifact)]}) for a run's outputs;
    run_id 'latest' (or None) is the newest run."""
    store = mlmd.open_store(metadata_path)
    run = mlmd.find_run(store, pipeline_name, run_id)
    out: dict[str, list] = {}
    for node, ex in mlmd.step_executions(store, run, pipeline_name):
        out.setdefault(node, []).extend(mlmd.output_artifacts(store, ex.id))
    return run.name, out


def view_checked(uri: str, bad_records) -> list[str]:
    """DataCheck's output: records kept per split and label, and the bad records skipped,
    named by the user's file and record index."""
    import json

    import tensorflow as tf

    from xfer.components.data_check import read_label_counts

    lines = []
    try:
        for split, labels in read_label_counts(uri).items():
            lines.append(f"  {split}: {sum(labels.values())} records kept; per label: "
                         + ", ".join(f"{k}:{v}" for k, v in labels.items()))
    except Exception:  # noqa: BLE001 - an output from before the counts were kept
        pass
    from xfer.components.data_check import DRIFT, describe, drift_line
    drift_path = os.path.join(uri, DRIFT)
    if tf.io.gfile.exists(drift_path):
        compared = json.loads(tf.io.gfile.GFile(drift_path).read())
        if compared["previous"] is None:
            lines.append(f"  drift: span {compared['newest']} is the first span; nothing to compare with")
        else:
            lines.append(f"  drift, span {compared['newest']} vs span {compared['previous']}:")
            lines += [f"    {'DRIFTED ' if k['drifted'] else ''}{drift_line(k, compared['previous'], compared['newest'])}"
                      for k in compared["kinds"]]
    path = os.path.join(uri, "bad_records.json")
    if bad_records and tf.io.gfile.exists(path):
        bad = json.loads(tf.io.gfile.GFile(path).read())
        lines.append(f"  bad records skipped (data.on_bad_image: skip): {len(bad)}, all in {path}")
        lines += [f"    {describe(b)}" for b in bad[:10]]
        if len(bad) > 10:
            lines.append(f"    ... and {len(bad) - 10} more")
    else:
        lines.append("  bad records skipped: 0")
    return lines


VIEWS = {"ExampleStatistics": view_statistics, "Schema": view_schema,
         "ExampleAnomalies": view_anomalies, "TransformGraph": view_transform,
         "ModelRun": view_model_run}


def format_show(metadata_path: str, pipeline_name: str, run_id: str, ev,
                component: Optional[str] = None, label_key: str = "label") -> str:
    """`ev`: the eval config, whose thresholds the blessing line names."""
    run_id, artifacts = run_artifacts(metadata_path, pipeline_name, run_id)
    if component and component not in artifacts:
        raise LookupError(f"run '{run_id}' has no component '{component}'; it has: "
                          f"{', '.join(artifacts)}")
    lines = [f"run {run_id}"]
    for node, arts in artifacts.items():
        if component and node != component:
            continue
        lines.append(f"{node}")
        blessed = next((bool(mlmd.custom_property(a, "blessed")) for t, a in arts
                        if t == "ModelBlessing" and mlmd.custom_property(a, "blessed") is not None), None)
        for type_name, a in arts:
            lines.append(f"  {type_name}: {a.uri}")
            if type_name == "Examples" and (mlmd.custom_property(a, "spans") or mlmd.custom_property(a, "span")):
                spans = mlmd.custom_property(a, "spans") or str(mlmd.custom_property(a, "span"))
                lines.append(f"    spans: {spans.replace(',', ', ')}")
            if type_name == "Examples" and node == "ImportExampleGen":
                lines += ["  " + line for line in label_distribution(a.uri, label_key)]
            elif type_name == "Examples" and node == "DataCheck":
                lines += ["  " + line for line in view_checked(a.uri, mlmd.custom_property(a, "bad_records"))]
            elif type_name in VIEWS:
                lines += ["  " + line for line in VIEWS[type_name](a.uri)]
            elif type_name == "ModelEvaluation":
                lines += ["  " + line for line in view_evaluation(a.uri, blessed, ev)]
            elif type_name == "PushedModel":
                lines.append(f"    pushed to {mlmd.custom_property(a, 'pushed_destination')}"
                             if mlmd.custom_property(a, "pushed") else "    nothing pushed (model not blessed)")
                if mlmd.custom_property(a, "model_card"):
                    card = mlmd.custom_property(a, "model_card")
                    lines.append(f"    model card: {card}")
                    lines.append(f"    model card (HTML, plots inlined): {os.path.join(os.path.dirname(card), 'model_card.html')}")
    return "\n".join(lines)
