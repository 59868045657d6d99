"""ImportExampleGen's reading, checked at the door and traced to the user's files.

TFX's own executor reads the input with `beam.io.ReadFromTFRecord` and parses each
record with `tf.train.Example.FromString` inside Beam: a file cut short fails with
"Not a valid TFRecord. Fewer than N bytes" and a hex dump, and a record that is not a
tf.Example with a protobuf DecodeError, neither naming the file. This executor reads
each input file on its own (one Beam element per file, so files are still read in
parallel) with `tfrecords.read_records`, plain Python that checks each record's length
before reading it (TensorFlow's reader segfaults on a header claiming 1 TiB), and:

  - a file whose framing is broken (not a TFRecord at all, a length or data CRC that
    does not match, a length beyond the file's end or above MAX_RECORD_BYTES, cut short
    mid-record) or that does not decompress, and
  - a record that does not parse as a tf.Example,

are collected, the step fails after the Beam pass, and the message names each file
(as the user wrote its path), the record index, the byte offset and the fix. Nothing
is dropped silently: these are refused, never skipped (a broken file has lost an
unknown number of records; `data.on_bad_image: skip` is for bad images and labels).

Every record is passed on as the user's bytes, unchanged (TFX re-serializes parsed
protos), and its fingerprint is kept with its source: `provenance/*.json` under the
output artifact, one file per input file, listing the fingerprints in file order.
DataCheck uses them to name a bad record by the user's file and index instead of this
step's internal copy. (With no `data.splits`, the hash split is keyed on those bytes,
as TFX keys FORMAT_PROTO records.)
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
from typing import Any, Dict, List, Optional

import apache_beam as beam
from tfx.components.example_gen import write_split as tfx_write_split
from tfx.components.example_gen.import_example_gen import executor as tfx_import
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_component_specs

from xfer.components.tfrecords import (FramingError, compression_of, fingerprint, label_text,  # noqa: F401 (re-exported)
                                         read_records)

PROVENANCE = "provenance"
PROBLEMS = "door_problems.json"
SPAN_STATS = "span_stats.json"
SPANS_PROPERTY = "spans"  # "2,3": the spans of the train split (the window), on the Examples artifact
SHOWN = 10
SPAN_TOKEN = re.compile(r"\{SPAN(?::(\d+))?\}")


def _glob_regex(part: str) -> str:
    """A glob (within path segments, as tf.io.gfile.glob reads it) as a regex."""
    out = []
    for ch in part:
        out.append("[^/]*" if ch == "*" else "[^/]" if ch == "?" else re.escape(ch))
    return "".join(out)


def list_spans(input_base: str, pattern: str) -> Dict[int, str]:
    """Every span present for a split pattern holding {SPAN}: span number -> the pattern
    with that span's digits in place (as written in the paths, zero padding kept)."""
    import tensorflow as tf

    m = SPAN_TOKEN.search(pattern)
    if m is None:
        return {}
    before, after = pattern[:m.start()], pattern[m.end():]
    digits = r"(\d+)" if m.group(1) is None else r"(\d{%s})" % m.group(1)
    rx = re.compile(_glob_regex(before) + digits + "(?=" + _glob_regex(after) + "$)")
    spans: Dict[int, str] = {}
    for path in tf.io.gfile.glob(os.path.join(input_base, before + "*" + after)):
        rel = os.path.relpath(path, input_base)
        found = rx.match(rel)
        if found:
            spans.setdefault(int(found.group(1)), before + found.group(1) + after)
    return spans


def _span_folder(pattern: str) -> str:
    """The part of a split pattern up to the path segment holding {SPAN} (span-{SPAN})."""
    m = SPAN_TOKEN.search(pattern)
    segments = pattern.split("/")
    return "/".join(segments[:pattern[:m.start()].count("/") + 1])


def span_problems(input_base: str, splits: Dict[str, str]) -> List[str]:
    """What TFX's span resolution would refuse with a bare message, as one line each
    naming the folder, the span and the split, and the fix: a path matched by a {SPAN}
    pattern whose span part is not a number ("Cannot find span number from ... based on
    <regex>"), and a split whose newest span is older than another's ("Latest span should
    be the same for each split")."""
    import tensorflow as tf

    problems, newest = [], {}
    for split, pattern in splits.items():
        m = SPAN_TOKEN.search(pattern)
        if m is None:
            continue
        # {VERSION} (and any glob) matches anything in a segment, as in TFX's glob.
        before, after = (re.sub(r"\{VERSION(?::\d+)?\}", "*", p) for p in (pattern[:m.start()], pattern[m.end():]))
        width = m.group(1)
        rx = re.compile(_glob_regex(before) + ("(.{%s})" % width if width else "(.*)") + _glob_regex(after) + "$")
        stray = {}  # folder -> what stands where the span number should
        for path in tf.io.gfile.glob(os.path.join(input_base, before + ("?" * int(width) if width else "*") + after)):
            rel = os.path.relpath(path, input_base)
            found = rx.match(rel)
            if found and not found.group(1).isdigit():
                stray.setdefault("/".join(rel.split("/")[:before.count("/") + 1]), found.group(1))
        spans = list_spans(input_base, pattern)
        for folder, part in sorted(stray.items()):
            free = _span_folder(pattern).replace(m.group(0), str(max(spans, default=0) + 1).zfill(int(width or 0)))
            problems.append(
                f"data.splits.{split}: '{folder}' in {input_base} matches '{pattern}', but "
                f"'{part}' where {{SPAN}} stands is not a span number (digits only); rename it to "
                f"a span (e.g. {free}) or move it out of {input_base}")
        if spans and not stray:
            newest[split] = max(spans), spans
    if len(newest) > 1:
        top = max(n for n, _ in newest.values())
        has_top = next(s for s, (n, _) in newest.items() if n == top)
        resolved, m = newest[has_top][1][top], SPAN_TOKEN.search(splits[has_top])
        digits = resolved[m.start():m.start() + len(resolved) - len(splits[has_top]) + len(m.group(0))]
        folder = _span_folder(splits[has_top]).replace(m.group(0), digits)
        for split, (n, _) in newest.items():
            if n < top:
                missing = SPAN_TOKEN.sub(digits, splits[split], count=1)
                problems.append(
                    f"data.splits.{split}: span {top} has no '{split}' files: nothing in {input_base} matches "
                    f"'{missing}' (split '{has_top}' has span {top}; '{split}' ends at span {n}). Every "
                    f"split reads the newest span, so add span {top}'s {split} files under {folder}, or move "
                    f"{folder} out of {input_base} until it is complete")
    return problems


def longer_side_bucket(width: int, height: int) -> str:
    """Sizes in power-of-two buckets of the longer side: '<32', '32-63', ..., '>=4096'."""
    side = max(width, height)
    if side < 32:
        return "<32"
    if side >= 4096:
        return ">=4096"
    low = 1 << (side.bit_length() - 1)
    return f"{low}-{2 * low - 1}"


def record_stats(example, image_key: str, label_key: str) -> tuple:
    """(label, format, size bucket) of a tf.Example, from the image header only."""
    from PIL import Image

    f = example.features.feature
    v = f[label_key] if label_key in f else None
    label = label_text(v) if v is not None and (v.int64_list.value or v.bytes_list.value) else "-"
    fmt, size = "none", "none"
    if image_key in f and f[image_key].bytes_list.value:
        try:
            with Image.open(io.BytesIO(f[image_key].bytes_list.value[0])) as img:  # the header only
                fmt, size = (img.format or "unknown").lower(), longer_side_bucket(*img.size)
        except Exception:  # noqa: BLE001 - not an image: DataCheck names it
            fmt, size = "unreadable", "unreadable"
    return label, fmt, size


class RecordsRefused(ValueError):
    """Input files that are not TFRecords of tf.Example; the message names them."""


class _ReadFile(beam.DoFn):
    """(path, split pattern) -> each record's bytes, in file order; problems and the
    file's provenance as tagged outputs."""

    def __init__(self, parse_examples: bool, provenance_dir: str, image_key: str = "image",
                 label_key: str = "label", records: bool = True):
        self.parse_examples, self.provenance_dir = parse_examples, provenance_dir
        self.image_key, self.label_key, self.records = image_key, label_key, records

    def process(self, item):
        import tensorflow as tf

        path, span = item  # span: for the drift statistics (None: none kept)

        prints: List[str] = []
        not_examples, shown = 0, []  # records that are not tf.Example: how many, the first SHOWN
        index = 0
        try:
            for raw in read_records(path):
                if self.parse_examples:
                    try:
                        example = tf.train.Example.FromString(raw)
                        if raw and not example.ListFields():
                            raise ValueError("it parses, but holds no tf.Example fields")
                    except Exception as e:  # noqa: BLE001 - DecodeError, or the check above
                        not_examples += 1
                        if len(shown) < SHOWN:
                            shown.append(f"record {index} ({str(e)[:80]})")
                        index += 1
                        continue
                    if span is not None:
                        yield beam.pvalue.TaggedOutput(
                            "stats", (span,) + record_stats(example, self.image_key, self.label_key))
                index += 1
                if self.records:
                    prints.append(fingerprint(raw))
                    yield raw
        except FramingError as e:  # names the record, its byte offset and the fix
            yield beam.pvalue.TaggedOutput("problems", {"file": path, "index": e.index, "reason": e.reason})
        except OSError as e:
            yield beam.pvalue.TaggedOutput("problems", {
                "file": path, "index": index, "reason": f"cannot be read ({e.strerror or e}) after {index} "
                                                        f"record(s); check the file's permissions"})
        if not_examples:
            more = not_examples - len(shown)
            yield beam.pvalue.TaggedOutput("problems", {
                "file": path, "index": None,
                "reason": (f"{not_examples} record(s) are not tf.Example: " + "; ".join(shown)
                           + (f" (and {more} more)" if more else "")
                           + "; write each with tf.train.Example(...).SerializeToString(), or use "
                             "`xfer data import-folder` to make the records from image folders")})
        if self.records:
            name = hashlib.sha1(path.encode()).hexdigest()[:16] + ".json"
            with tf.io.gfile.GFile(os.path.join(self.provenance_dir, name), "w") as f:
                json.dump({"file": path, "fingerprints": prints}, f)


def _write_span_stats(counts: list, path: str, info: dict) -> None:
    """{"newest", "previous", "window", "spans": {span: {"records", "label", "format", "size"}}}."""
    import tensorflow as tf

    spans: Dict[str, dict] = {}
    for (span, label, fmt, size), n in counts:
        entry = spans.setdefault(str(span), {"records": 0, "label": {}, "format": {}, "size": {}})
        entry["records"] += n
        for kind, key in (("label", label), ("format", fmt), ("size", size)):
            entry[kind][key] = entry[kind].get(key, 0) + n
    for entry in spans.values():
        for kind in ("label", "format", "size"):
            entry[kind] = dict(sorted(entry[kind].items(), key=lambda kv: (len(kv[0]), kv[0])))
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump({**info, "spans": dict(sorted(spans.items(), key=lambda kv: int(kv[0])))}, f, indent=1)


def read_span_stats(examples_uri: str) -> Optional[dict]:
    import tensorflow as tf

    path = os.path.join(examples_uri, SPAN_STATS)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def _custom_config(exec_properties: Dict[str, Any]) -> dict:
    """The example_gen_pb2.CustomConfig (JSON in exec_properties) holding a Struct."""
    from google.protobuf import json_format, struct_pb2
    from tfx.utils import proto_utils

    raw = exec_properties.get("custom_config")
    if not raw:
        return {}
    custom = example_gen_pb2.CustomConfig()
    proto_utils.json_to_proto(raw, custom)
    values = struct_pb2.Struct()
    if not custom.custom_config.Unpack(values):
        return {}
    return json_format.MessageToDict(values)


def _write_problems(problems: list, path: str) -> None:
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(sorted(problems, key=lambda p: (p["file"], p["index"] or 0)), f, indent=1)


def streams(beam_pipeline_args: List[str]) -> bool:
    """Whether the splits are written as they are read. TFX writes each split after a
    `Reshuffle` (tfx/components/example_gen/write_split.py, "TODO(jyzhao): make shuffle
    optional"); Beam's local runners (DirectRunner, FnApiRunner, in a container on
    Kubeflow too) hold a shuffled collection whole in memory, so this step's peak memory
    grew with the data (bench/scale.py: 1.0 GB at 2,000 images, 1.8 GB at 100,000).
    Nothing downstream needs that shuffle (the Trainer shuffles with its seeded buffer),
    so under those runners the records stream from the read to the files; a distributed
    runner (Dataflow, Flink, Spark) shuffles on disk and keeps TFX's write."""
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    runner = PipelineOptions(beam_pipeline_args).view_as(StandardOptions).runner or "DirectRunner"
    name = runner if isinstance(runner, str) else type(runner).__name__
    return name.split(".")[-1] in ("DirectRunner", "FnApiRunner", "BundleBasedDirectRunner",
                                   "SwitchingDirectRunner", "PrismRunner")


@beam.ptransform_fn
def _WriteSplitStreaming(records: beam.PCollection, output_split_path: str, output_format: str,
                         exec_properties: Optional[Dict[str, Any]] = None) -> beam.pvalue.PDone:
    """TFX's WriteSplit (same files, same names), without the shuffle before the write."""
    del output_format, exec_properties
    return (records
            | "MaybeSerialize" >> beam.ParDo(tfx_write_split.MaybeSerialize())
            | "Write" >> beam.io.WriteToTFRecord(
                os.path.join(output_split_path, tfx_write_split.DEFAULT_FILE_NAME), file_name_suffix=".gz"))


@contextlib.contextmanager
def _writing_as_read():
    """TFX's Do calls `write_split.WriteSplit` by module attribute: for this Do only, that
    is the streaming write."""
    original = tfx_write_split.WriteSplit
    tfx_write_split.WriteSplit = _WriteSplitStreaming
    try:
        yield
    finally:
        tfx_write_split.WriteSplit = original


class Executor(tfx_import.Executor):
    """ImportExampleGen with the checks above; otherwise TFX's (splits, spans, output)."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        state = self

        @beam.ptransform_fn
        def ImportRecord(pipeline: beam.Pipeline, exec_properties: Dict[str, Any], split_pattern: str):
            from tfx.dsl.io import fileio

            payload = exec_properties.get(standard_component_specs.OUTPUT_DATA_FORMAT_KEY)
            if payload not in (None, example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE,
                               example_gen_pb2.PayloadFormat.FORMAT_PROTO):
                # Parquet and SequenceExample: TFX's own reading.
                return pipeline | tfx_import.Executor.GetInputSourceToExamplePTransform(state)(
                    exec_properties, split_pattern)
            pattern = os.path.join(exec_properties[standard_component_specs.INPUT_BASE_KEY], split_pattern)
            files = sorted(f for f in fileio.glob(pattern) if not fileio.isdir(f))
            if not files:
                raise RecordsRefused(f"no input files match {pattern}; fix data.input_base or data.splits")
            items = [(f, None) for f in files]
            if split_pattern == state._train_pattern and state._window:
                # The window: the train split from the newest N spans, each file with its span.
                items = []
                for span in state._window:
                    matched = sorted(f for f in fileio.glob(os.path.join(
                        exec_properties[standard_component_specs.INPUT_BASE_KEY], state._span_patterns[span]))
                        if not fileio.isdir(f))
                    items += [(f, span) for f in matched]
            label = split_pattern.replace("/", "_").replace("*", "x")
            cfg = state._config
            read = (pipeline
                    | f"Files[{label}]" >> beam.Create(items)
                    | f"Spread[{label}]" >> beam.Reshuffle()
                    | f"Read[{label}]" >> beam.ParDo(_ReadFile(
                        payload != example_gen_pb2.PayloadFormat.FORMAT_PROTO,
                        state._provenance_dir, cfg.get("image_key", "image"), cfg.get("label_key", "label"),
                    )).with_outputs("problems", "stats", main="records"))
            state._problems.append(read.problems)
            state._stats.append(read.stats)
            return read.records

        return ImportRecord

    def _plan_window(self, exec_properties: Dict[str, Any]) -> None:
        """The spans of the train split to read (the window) and the previous span (the
        drift check's reference), from the pattern with {SPAN} as configured."""
        from tfx.proto import example_gen_pb2 as pb
        from tfx.utils import proto_utils

        self._config = _custom_config(exec_properties)
        self._window, self._span_patterns, self._previous, self._train_pattern = [], {}, None, None
        resolved = pb.Input()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY], resolved)
        train = next((sp for sp in resolved.splits if sp.name == "train"), None)
        configured = self._config.get("train_pattern")
        if train is None or not configured or not SPAN_TOKEN.search(configured):
            return
        self._train_pattern = train.pattern
        newest = int(exec_properties.get("span") or 0)
        spans = list_spans(exec_properties[standard_component_specs.INPUT_BASE_KEY], configured)
        present = sorted(k for k in spans if k <= newest)
        want = int(self._config.get("window", 1))
        self._window = present[-want:]
        self._span_patterns = spans
        self._previous = present[-2] if len(present) >= 2 else None
        if len(self._window) < want:
            print(f"[xfer] data.spans.window is {want} but only {len(present)} span(s) exist up to span "
                  f"{newest} ({', '.join(map(str, present))}): training on them", flush=True)
        elif want > 1:
            print(f"[xfer] train split from spans {', '.join(map(str, self._window))} (data.spans.window "
                  f"{want}); eval from span {newest}", flush=True)

    def GenerateExamplesByBeam(self, pipeline: beam.Pipeline, exec_properties: Dict[str, Any]):
        self._problems, self._stats = [], []
        self._plan_window(exec_properties)
        splits = super().GenerateExamplesByBeam(pipeline, exec_properties)
        if self._previous is not None and self._previous not in self._window:
            # The previous span, read for its statistics only (the drift check's reference).
            from tfx.dsl.io import fileio
            base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
            files = sorted(f for f in fileio.glob(os.path.join(base, self._span_patterns[self._previous]))
                           if not fileio.isdir(f))
            reference = (pipeline | "ReferenceFiles" >> beam.Create([(f, self._previous) for f in files])
                         | "ReadReference" >> beam.ParDo(_ReadFile(
                             True, self._provenance_dir, self._config.get("image_key", "image"),
                             self._config.get("label_key", "label"), records=False)).with_outputs(
                             "problems", "stats", main="records"))
            self._problems.append(reference.problems)
            self._stats.append(reference.stats)
        _ = (tuple(self._problems) | "AllProblems" >> beam.Flatten() | "ProblemList" >> beam.combiners.ToList()
             | "WriteProblems" >> beam.Map(_write_problems, self._problems_path))
        if self._window:
            info = {"newest": self._window[-1], "previous": self._previous, "window": self._window}
            _ = (tuple(self._stats) | "AllStats" >> beam.Flatten() | "CountStats" >> beam.combiners.Count.PerElement()
                 | "StatsList" >> beam.combiners.ToList()
                 | "WriteStats" >> beam.Map(_write_span_stats, self._span_stats_path, info))
        return splits

    def Do(self, input_dict: Dict[str, List], output_dict: Dict[str, List],
           exec_properties: Dict[str, Any]) -> None:
        from tfx.dsl.io import fileio

        examples = artifact_utils.get_single_instance(output_dict[standard_component_specs.EXAMPLES_KEY])
        self._provenance_dir = os.path.join(examples.uri, PROVENANCE)
        self._problems_path = os.path.join(examples.uri, PROBLEMS)
        self._span_stats_path = os.path.join(examples.uri, SPAN_STATS)
        fileio.makedirs(self._provenance_dir)
        parquet = exec_properties.get(standard_component_specs.OUTPUT_DATA_FORMAT_KEY) == \
            example_gen_pb2.PayloadFormat.FORMAT_PARQUET
        with _writing_as_read() if streams(self._beam_pipeline_args) and not parquet else contextlib.nullcontext():
            super().Do(input_dict, output_dict, exec_properties)
        if self._window:
            examples.set_string_custom_property(SPANS_PROPERTY, ",".join(map(str, self._window)))
        with fileio.open(self._problems_path) as f:
            problems = json.load(f)
        if problems:
            for entry in fileio.listdir(examples.uri):  # nothing half-made is left behind
                fileio.rmtree(os.path.join(examples.uri, entry)) if fileio.isdir(
                    os.path.join(examples.uri, entry)) else fileio.remove(os.path.join(examples.uri, entry))
            lines = [f"{p['file']}: {p['reason']}" for p in problems[:SHOWN]]
            more = f" (and {len(problems) - SHOWN} more file problem(s))" if len(problems) > SHOWN else ""
            raise RecordsRefused(
                f"{len(problems)} input file problem(s); the data must be TFRecord files of tf.Example: "
                + " | ".join(lines) + more)


def read_provenance(examples_uri: str) -> Dict[str, tuple]:
    """fingerprint -> (user's file, record index), from ImportExampleGen's provenance;
    {} for an artifact made without it."""
    import tensorflow as tf

    folder = os.path.join(examples_uri, PROVENANCE)
    found: Dict[str, tuple] = {}
    if not tf.io.gfile.isdir(folder):
        return found
    for name in sorted(tf.io.gfile.listdir(folder)):
        with tf.io.gfile.GFile(os.path.join(folder, name)) as f:
            entry = json.load(f)
        for index, fp in enumerate(entry["fingerprints"]):
            found.setdefault(fp, (entry["file"], index))
    return found
