"""DataCheck: the gate between validation and training.

It stops the run when ExampleValidator found anomalies and `data.on_anomaly` is
`fail` (with each anomaly in one readable line), and it decodes every example's image,
so that a record that would crash Transform, the Trainer or the Evaluator with a
TensorFlow stack trace deep in Beam is named here instead, by split, file, record
index and id. Before decoding, each image's size is read from its header by the serving
guard's reader (components/image_header.py): one above `data.max_pixels` is a bad image
and is never decoded (a 1.2 MB PNG can say 20000x20000: 1.2 GB decoded here, gigabytes
more in every later step), so no step after this one sees it. `data.on_bad_image: fail`
stops the run; `skip` drops those records, counts them, and lists them in
bad_records.json beside the checked examples that every later step reads. It runs on Beam, so it scales out on Dataflow like the rest.
"""

import json
import os

import apache_beam as beam
from tfx.dsl.component.experimental.annotations import (BeamComponentParameter, InputArtifact,
                                                        OutputArtifact, Parameter)
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from xfer.components.import_gen import SPAN_STATS, SPANS_PROPERTY, read_provenance, read_span_stats
from xfer.components.kfp_artifacts import HTML
from xfer.components.labels import label_value_problem
from xfer.components.settings import DataConfig
from xfer.components.tfrecords import compression_of, fingerprint, label_text

ID_KEYS = ("id", "filename")
SHOWN = 10
DEFAULT_MAX_PIXELS = DataConfig.model_fields["max_pixels"].default
TOO_LARGE = "image too large: "  # how the reason for an image above data.max_pixels begins


class DataCheckFailed(ValueError):
    """Bad data and a config that says stop; the message names the fix."""


def read_anomalies(anomalies_uri: str) -> dict:
    """ExampleValidator's findings: {split: {feature: AnomalyInfo}}, splits and features
    sorted; a split without anomalies maps to {}."""
    import tensorflow as tf
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    found = {}
    for split_dir in sorted(tf.io.gfile.listdir(anomalies_uri)):
        path = os.path.join(anomalies_uri, split_dir.rstrip("/"), "SchemaDiff.pb")
        if not tf.io.gfile.exists(path):
            continue
        anomalies = anomalies_pb2.Anomalies()
        anomalies.ParseFromString(tf.io.gfile.GFile(path, "rb").read())
        split = split_dir.rstrip("/").removeprefix("Split-")
        found[split] = dict(sorted(anomalies.anomaly_info.items()))
    return found


def anomaly_lines(anomalies_uri: str) -> list[str]:
    return [f"split {split}, feature '{feature}': {info.short_description} ({info.description})"
            for split, by_feature in read_anomalies(anomalies_uri).items()
            for feature, info in by_feature.items()]


def op_error_text(message: str) -> str:
    """The decoder's own words from a TensorFlow op error:
    "{{function_node ...}} Invalid PNG. ...\n [[{{node ...}}]] [Op:...]" -> "Invalid PNG. ..."."""
    lines = [line for line in message.splitlines() if line.strip()] or [message]
    at = next((i for i, line in enumerate(lines) if "[[{{node" in line), None)
    line = (lines[at].split("[[{{node")[0].strip() or lines[at - 1]) if at else lines[0]
    return line.split("}}")[-1].split("[Op:")[0].strip()


# Records whose images are decoded together (in parallel, in tf.data): at most this
# many, and at most this many bytes, so a file of camera photos is not held whole.
CHUNK_RECORDS, CHUNK_BYTES = 256, 64 << 20


class _Check(beam.DoFn):
    """(file, split) -> every record, tagged good or bad, with its index in the file."""

    def __init__(self, image_key: str, label_key: str, num_classes: int, image_size: int = 0,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        self.image_key, self.label_key, self.num_classes = image_key, label_key, num_classes
        self.image_size, self.max_pixels = image_size, max_pixels
        self._reason_alone = self._judge_chunk = None

    def setup(self):
        import tensorflow as tf

        from xfer.components.decode import decode_pixels, tiny
        from xfer.components.image_guard import single_batch
        from xfer.components.image_header import jpeg_size, sizes, too_large

        # Each image is decoded as training and serving will decode it (at reduced scale
        # for a large JPEG: the same entropy decoding, a fraction of the cost); with no
        # model size given, at full size.
        size, max_pixels = self.image_size, self.max_pixels

        def shape(e):
            return tf.shape(decode_pixels(e, size) if size > 0 else
                            tf.io.decode_image(e, channels=3, expand_animations=False))

        def judge(encoded, fmt, width, height, frames, walked):
            """(reason, decoded shape) of one image: reason '' when it decodes, the serving
            guard's "too large: ..." when its header says it is above data.max_pixels; raises
            when it does not decode. A decoder allocates what the header says (a 1 MB PNG
            can say 20000x20000, 1.2 GB), so one above the limit is never decoded: a 1x1 PNG
            is decoded in its place."""
            width, height = jpeg_size(encoded, fmt, width, height)
            over = width * height * frames > max_pixels
            decoded = shape(tf.where(over, tiny("png"), encoded))
            return tf.where(over, too_large(width, height, frames, walked, fmt, "data.max_pixels", max_pixels),
                            ""), decoded

        def reason_alone(image: bytes) -> str:
            # Alone and eagerly, for the decoder's message (a traced function's error can
            # come as "Graph execution error" and a traceback).
            header = sizes(tf.constant([image]))
            return judge(tf.constant(image), *(t[0] for t in header))[0].numpy().decode()

        self._reason_alone = reason_alone

        # A chunk of images judged in parallel in tf.data, in one traced call: their sizes
        # read from the headers together, then each decoded unless too large. An image
        # that fails is dropped there (its index missing from the result) and judged
        # again alone (reason_alone) for its error message.
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def judged(images):
            header = sizes(images)
            dataset = (tf.data.Dataset.from_tensor_slices((tf.range(tf.size(images)), images) + tuple(header))
                       .map(lambda i, *image: (i,) + judge(*image), num_parallel_calls=tf.data.AUTOTUNE,
                            deterministic=False)
                       .ignore_errors().map(lambda i, reason, _: (i, reason)))
            return single_batch(dataset, (tf.constant(-1), tf.constant("")), CHUNK_RECORDS + 1)

        def judge_chunk(images: list) -> dict:
            index, reason = judged(tf.constant(images))
            return dict(zip(index.numpy().tolist(), (r.decode() for r in reason.numpy())))

        self._judge_chunk = judge_chunk

    def _label_problem(self, features) -> str:
        """Why the record's label cannot train, or '' (string labels get a vocabulary
        in Transform, so each value must be a usable class name: components/labels.py)."""
        if self.label_key not in features:
            return f"no label: feature '{self.label_key}' is missing"
        f = features[self.label_key]
        values = list(f.int64_list.value) or list(f.bytes_list.value)
        if len(values) != 1:
            return f"label '{self.label_key}' has {len(values)} values, not 1"
        if f.int64_list.value and self.num_classes and not 0 <= values[0] < self.num_classes:
            return (f"label {values[0]} is outside the {self.num_classes} classes (0 to "
                    f"{self.num_classes - 1}) of data.labels_file / data.num_classes")
        if f.bytes_list.value:
            return label_value_problem(values[0])
        return ""

    def process(self, item):
        import tensorflow as tf

        path, split = item
        # Read in batches: a Python step per record costs more than checking one.
        batches = tf.data.TFRecordDataset(path, compression_type=compression_of(path)).batch(64)
        pending, pending_bytes = [], 0
        for index, raw in enumerate(raw for batch in batches.as_numpy_iterator() for raw in batch):
            reason, ident, features, image = None, None, None, None
            try:
                features = tf.train.Example.FromString(raw).features.feature
                for key in ID_KEYS:
                    if key in features and features[key].bytes_list.value:
                        ident = features[key].bytes_list.value[0].decode("utf-8", "replace")
                        break
                values = features[self.image_key].bytes_list.value if self.image_key in features else []
                if len(values) != 1:
                    reason = f"feature '{self.image_key}' has {len(values)} values, not 1"
                else:
                    image = values[0]
            except Exception as e:  # noqa: BLE001 - a record that is not even a tf.Example
                reason = f"not a tf.Example: {e}"
            pending.append((index, raw, ident, features, image, reason))
            pending_bytes += len(raw)
            if len(pending) >= CHUNK_RECORDS or pending_bytes >= CHUNK_BYTES:
                yield from self._judge(path, split, pending)
                pending, pending_bytes = [], 0
        yield from self._judge(path, split, pending)

    def _judge(self, path: str, split: str, records: list):
        """Judge a chunk's images together (sizes from their headers, then decoded unless too
        large), then tag each record good or bad, in file order."""
        import tensorflow as tf

        with_image = [r for r in records if r[4] is not None]
        judged = self._judge_chunk([r[4] for r in with_image]) if with_image else {}
        verdicts = {r[0]: judged.get(k) for k, r in enumerate(with_image)}  # None: it failed in the chunk
        for index, raw, ident, features, image, reason in records:
            if index in verdicts:
                too_large = verdicts[index]
                if too_large is None:
                    try:
                        too_large = self._reason_alone(image)
                    except tf.errors.OpError as e:
                        reason = f"image does not decode ({op_error_text(e.message)})"
                if too_large:
                    reason = f"image {too_large}; from its header, not decoded"
            if reason is None:
                reason = self._label_problem(features) or None
            if reason:
                bad = {"split": split, "file": path, "index": index, "id": ident, "reason": reason,
                       "fingerprint": fingerprint(raw)}
                missing = [k for k in (self.image_key, self.label_key) if features is not None and k not in features]
                if missing:  # to say so in one line when no record of the split has the key
                    bad["missing"], bad["features"] = missing, sorted(features)
                yield beam.pvalue.TaggedOutput("bad", bad)
            else:
                yield split, raw, label_text(features[self.label_key])


LABEL_COUNTS = "label_counts.json"


def _write_json_counts(counts: list, path: str) -> None:
    """{split: {label: count}} of the good records, labels as strings, sorted."""
    import tensorflow as tf

    by_split: dict = {}
    for (split, label), n in counts:
        by_split.setdefault(split, {})[label] = n
    ordered = {split: dict(sorted(labels.items(), key=lambda kv: (len(kv[0]), kv[0])))
               for split, labels in sorted(by_split.items())}
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps(ordered, indent=1))


def read_label_counts(checked_examples_uri: str) -> dict:
    """DataCheck's per-split, per-label counts of the records every later step reads:
    {split: {label (str): count}}."""
    import tensorflow as tf

    with tf.io.gfile.GFile(os.path.join(checked_examples_uri, LABEL_COUNTS)) as f:
        return json.load(f)


def _write_json(bad: list, path: str) -> None:
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps(sorted(bad, key=lambda b: (b["split"], b["file"], b["index"])), indent=1))


def records_kept(checked_examples_uri: str) -> dict:
    """{split: records kept}, from the label counts."""
    return {split: sum(labels.values()) for split, labels in read_label_counts(checked_examples_uri).items()}


def describe(bad: dict) -> str:
    ident = f", id {bad['id']}" if bad["id"] else ""
    where = (f"{bad['source']} record {bad['source_index']}" if bad.get("source")
             else f"{os.path.basename(bad['file'])} record {bad['index']}")
    return f"split {bad['split']}, {where}{ident}: {bad['reason']}"


def _trace_to_source(bad: list, examples_uri: str) -> None:
    """Name each bad record by the user's file and record index (ImportExampleGen's
    provenance), besides this step's input copy."""
    if not bad:
        return
    sources = read_provenance(examples_uri)
    for b in bad:
        if b["fingerprint"] in sources:
            b["source"], b["source_index"] = sources[b["fingerprint"]]


DRIFT = "drift.json"
DRIFT_KINDS = (("label", "label_linf", "label distribution"), ("format", "format_linf", "image format mix"),
               ("size", "size_linf", "image size (longer side)"))


def _shares(counts: dict) -> dict:
    total = sum(counts.values()) or 1
    return {k: v / total for k, v in counts.items()}


def _fmt_shares(shares: dict) -> str:
    return "{" + ", ".join(f"{k}: {v:.2f}" for k, v in shares.items()) + "}"


def compare_spans(stats: dict, thresholds: dict) -> dict:
    """The newest span's train split against the previous span's: per kind, the L-infinity
    distance between the two distributions (the largest change of one share), the value
    that moved most, both distributions, and whether it is over data.drift's threshold."""
    newest, previous = stats["newest"], stats.get("previous")
    out = {"newest": newest, "previous": previous, "kinds": []}
    if previous is None or str(previous) not in stats["spans"] or str(newest) not in stats["spans"]:
        return out
    new, old = stats["spans"][str(newest)], stats["spans"][str(previous)]
    for kind, key, title in DRIFT_KINDS:
        p, q = _shares(new[kind]), _shares(old[kind])
        keys = sorted(set(p) | set(q), key=lambda k: (len(k), k))
        worst = max(keys, key=lambda k: abs(p.get(k, 0.0) - q.get(k, 0.0)))
        distance = abs(p.get(worst, 0.0) - q.get(worst, 0.0))
        limit = thresholds.get(key)
        out["kinds"].append({
            "kind": kind, "title": title, "key": f"data.drift.{key}", "threshold": limit,
            "linf": round(distance, 4), "most_moved": worst,
            "old_share": round(q.get(worst, 0.0), 4), "new_share": round(p.get(worst, 0.0), 4),
            "old": {k: round(q.get(k, 0.0), 4) for k in keys}, "new": {k: round(p.get(k, 0.0), 4) for k in keys},
            "drifted": limit is not None and distance > limit})
    return out


def drift_line(k: dict, previous, newest) -> str:
    over = (f"over data.drift.{k['key'].split('.')[-1]} {k['threshold']:g}" if k["drifted"] else
            "within " + (f"{k['key']} {k['threshold']:g}" if k["threshold"] is not None else "(not checked)"))
    return (f"{k['title']}: L-infinity {k['linf']:.3f} {over}; '{k['most_moved']}' "
            f"{k['old_share']:.2f} in span {previous} -> {k['new_share']:.2f} in span {newest}; "
            f"span {previous} {_fmt_shares(k['old'])}, span {newest} {_fmt_shares(k['new'])}")


def _raise_if_a_key_is_absent(bad: list, good: dict, splits: list, image_key: str, label_key: str) -> None:
    """A key that no record of a split has is a config mistake, not bad records: one line."""
    for split in splits:
        if good.get(split):
            continue
        of_split = [b for b in bad if b["split"] == split]
        for key, setting in ((image_key, "data.image_key"), (label_key, "data.label_key")):
            if of_split and all(key in b.get("missing", ()) for b in of_split):
                present = sorted({f for b in of_split for f in b.get("features", ())})
                raise DataCheckFailed(
                    f"{setting}: '{key}' is in none of the {len(of_split)} records of split {split}; "
                    f"their features are: {', '.join(present) or 'none'}. Set {setting} to one of them")


def _shrink_hint(bad: list, max_pixels: int) -> str:
    """The fix for images above data.max_pixels, when there are any."""
    if not any(b["reason"].startswith(TOO_LARGE) for b in bad):
        return ""
    return (f"; its --max-side N stores images shrunk to N pixels on their longer side, under "
            f"data.max_pixels ({max_pixels}); or raise data.max_pixels if images that large are meant")


@component(use_beam=True)
def DataCheck(
    examples: InputArtifact[standard_artifacts.Examples],
    anomalies: InputArtifact[standard_artifacts.ExampleAnomalies],
    checked_examples: OutputArtifact[standard_artifacts.Examples],
    report: OutputArtifact[HTML],
    image_key: Parameter[str],
    label_key: Parameter[str],
    num_classes: Parameter[int],
    on_anomaly: Parameter[str],
    on_bad_image: Parameter[str],
    max_bad_fraction: Parameter[float],
    drift: Parameter[str] = "{}",
    image_size: Parameter[int] = 0,
    max_pixels: Parameter[int] = DEFAULT_MAX_PIXELS,
    beam_pipeline: BeamComponentParameter[beam.Pipeline] = None,
) -> None:
    import tensorflow as tf
    from tfx.types import artifact_utils

    found = anomaly_lines(anomalies.uri)
    if found and on_anomaly == "fail":
        raise DataCheckFailed(
            f"ExampleValidator found {len(found)} anomal{'y' if len(found) == 1 else 'ies'} "
            f"and data.on_anomaly is fail: " + "; ".join(found) +
            ". Fix the data, or the schema (data.schema_path), or set data.on_anomaly: warn "
            "to train anyway (`xfer show latest ExampleValidator` lists them)")
    for line in found:
        print(f"[xfer] anomaly (data.on_anomaly: warn, continuing): {line}", flush=True)

    # On Kubeflow the output folder is not made for the step (on an object store there are
    # no folders); locally TFX makes it. Everything below writes into it.
    tf.io.gfile.makedirs(checked_examples.uri)
    stats = read_span_stats(examples.uri)
    if stats is not None:
        # Kept with the checked examples too: what later steps (the model card) read of the data.
        with tf.io.gfile.GFile(os.path.join(checked_examples.uri, SPAN_STATS), "w") as f:
            f.write(json.dumps(stats, indent=1))
        compared = compare_spans(stats, json.loads(drift))
        with tf.io.gfile.GFile(os.path.join(checked_examples.uri, DRIFT), "w") as f:
            f.write(json.dumps(compared, indent=1))
        drifted = [drift_line(k, compared["previous"], compared["newest"]) for k in compared["kinds"] if k["drifted"]]
        checked_examples.set_int_custom_property("drifted", len(drifted))
        if drifted and on_anomaly == "fail":
            raise DataCheckFailed(
                f"span {compared['newest']} drifted from span {compared['previous']} and data.on_anomaly is "
                f"fail: " + " | ".join(drifted) + ". If the new data is right, raise the threshold (data.drift) "
                "or set data.on_anomaly: warn; otherwise fix the span")
        for line in drifted:
            print(f"[xfer] drift (data.on_anomaly: warn, continuing): {line}", flush=True)
        if compared["previous"] is None:
            print(f"[xfer] drift: span {compared['newest']} is the first span; nothing to compare with", flush=True)

    splits = artifact_utils.decode_split_names(examples.split_names)
    files = [(f, split) for split in splits
             for f in sorted(tf.io.gfile.glob(os.path.join(examples.uri, f"Split-{split}", "*")))]
    bad_path = os.path.join(checked_examples.uri, "bad_records.json")
    counts_path = os.path.join(checked_examples.uri, LABEL_COUNTS)
    with beam_pipeline as p:
        checked = (p | "Files" >> beam.Create(files) | "Reshuffle" >> beam.Reshuffle()
                   | "Check" >> beam.ParDo(_Check(image_key, label_key, num_classes, image_size, max_pixels))
                   .with_outputs("bad", main="good"))
        _ = (checked.good | "Labels" >> beam.Map(lambda kv: (kv[0], kv[2]))
             | "PerLabel" >> beam.combiners.Count.PerElement()
             | "AllCounts" >> beam.combiners.ToList() | "WriteCounts" >> beam.Map(_write_json_counts, counts_path))
        for split in splits:
            _ = (checked.good
                 | f"Only{split}" >> beam.Filter(lambda kv, s=split: kv[0] == s)
                 | f"Raw{split}" >> beam.Map(lambda kv: kv[1])
                 | f"Write{split}" >> beam.io.WriteToTFRecord(
                     os.path.join(checked_examples.uri, f"Split-{split}", "data"),
                     file_name_suffix=".gz"))
        _ = (checked.bad | "AllBad" >> beam.combiners.ToList()
             | "WriteBad" >> beam.Map(_write_json, bad_path))
    bad = json.loads(tf.io.gfile.GFile(bad_path).read())
    _trace_to_source(bad, examples.uri)
    if bad:
        _write_json(bad, bad_path)
    checked_examples.split_names = examples.split_names
    # Downstream readers (Transform, TFMA) read the payload format; spans stay visible.
    for name in ("payload_format", "file_format", "input_fingerprint"):
        if examples.has_custom_property(name):
            checked_examples.set_string_custom_property(name, examples.get_string_custom_property(name))
    for name in ("span", "version"):
        if examples.has_custom_property(name):
            checked_examples.set_int_custom_property(name, examples.get_int_custom_property(name))
    if examples.has_custom_property(SPANS_PROPERTY):
        checked_examples.set_string_custom_property(SPANS_PROPERTY, examples.get_string_custom_property(SPANS_PROPERTY))
    checked_examples.set_int_custom_property("bad_records", len(bad))
    shown = "; ".join(describe(b) for b in bad[:SHOWN]) + (
        f" (and {len(bad) - SHOWN} more)" if len(bad) > SHOWN else "")
    good = records_kept(checked_examples.uri)
    _raise_if_a_key_is_absent(bad, good, splits, image_key, label_key)
    if bad and on_bad_image == "fail":
        raise DataCheckFailed(
            f"{len(bad)} bad record(s) (an image that does not decode or is above data.max_pixels, or a "
            f"label that cannot train) and data.on_bad_image is fail: {shown}. Fix or remove them (xfer "
            f"data import-folder re-encodes what TensorFlow cannot read{_shrink_hint(bad, max_pixels)}), or "
            f"set data.on_bad_image: skip to drop and count them")
    for split in splits:
        dropped = sum(1 for b in bad if b["split"] == split)
        total = dropped + good.get(split, 0)
        if dropped and dropped > max_bad_fraction * total:
            raise DataCheckFailed(
                f"split {split}: {dropped} of {total} records are bad ({dropped / total:.1%}), more than "
                f"data.max_bad_fraction {max_bad_fraction:g} allows to skip: {shown}. Fix the data, or "
                f"raise data.max_bad_fraction if dropping them is right")
    if bad:
        print(f"[xfer] skipped {len(bad)} bad record(s) (data.on_bad_image: skip): {shown}; "
              f"all listed in {bad_path}", flush=True)
    write_report(report, checked_examples)


def write_report(report, checked_examples) -> str:
    """DataCheck's outcome as one page, for the Kubeflow UI's HTML viewer (a system.HTML
    output: components/kfp_artifacts.py): records kept per split and label, the drift
    comparison between spans, the bad records skipped by the user's file and index; the
    same view `xfer ui` draws (pipeline/html_views.py, checked_view)."""
    from xfer.components import kfp_artifacts
    from xfer.pipeline import html_views

    page = kfp_artifacts.html_page("DataCheck", [html_views.checked_view(checked_examples.mlmd_artifact)])
    return kfp_artifacts.write_document(report, page, "DataCheck: records kept, drift, bad records")
