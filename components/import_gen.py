"""ImportExampleGen's reading, checked at the door and traced to the user's files.

TFX's own executor reads the input with `beam.io.ReadFromTFRecord` and parses each
record with `tf.train.Example.FromString` inside Beam: a file cut short fails with
"Not a valid TFRecord. Fewer than N bytes" and a hex dump, and a record that is not a
tf.Example with a protobuf DecodeError, neither naming the file. This executor reads
each input file on its own (one Beam element per file, so files are still read in
parallel), with the record index and byte offset known, and:

  - a file whose framing is broken (not a TFRecord at all, a length or data CRC that
    does not match, cut short mid-record) or that does not decompress, and
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

import hashlib
import json
import os
from typing import Any, Dict, List

import apache_beam as beam
from tfx.components.example_gen.import_example_gen import executor as tfx_import
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_component_specs

PROVENANCE = "provenance"
PROBLEMS = "door_problems.json"
SHOWN = 10


class RecordsRefused(ValueError):
    """Input files that are not TFRecords of tf.Example; the message names them."""


def fingerprint(raw: bytes) -> str:
    return hashlib.blake2b(raw, digest_size=10).hexdigest()


def compression_of(path: str) -> str:
    return "GZIP" if path.endswith((".gz", ".gzip")) else ""


def _framing_problem(message: str, index: int) -> str:
    """TensorFlow's record-reader error -> what it means for the user's file."""
    first = message.splitlines()[0] if message else ""
    if "truncated record" in first:
        return (f"the file is cut short inside record {index} (after {index} whole record(s)): "
                f"an interrupted copy or write; copy the file again or remove it")
    if "corrupted record at 0" in first:
        return ("is not a TFRecord file (its first bytes are not a record header: a text, image "
                "or other file matched by the split pattern?); remove it or narrow data.splits")
    if "corrupted record" in first:
        return (f"record {index} is corrupted (its length or data checksum does not match, "
                f"{first.strip()}): the file was damaged; write or copy it again")
    if "inflate" in first or "gzip" in first.lower() or "zlib" in first.lower():
        return (f"does not decompress as GZIP ({first.strip()[:120]}): a name ending in .gz is "
                f"read as GZIP; rename it, or compress it with gzip")
    return f"cannot be read after {index} record(s) ({first.strip()[:160]})"


class _ReadFile(beam.DoFn):
    """(path, split pattern) -> each record's bytes, in file order; problems and the
    file's provenance as tagged outputs."""

    def __init__(self, parse_examples: bool, provenance_dir: str):
        self.parse_examples, self.provenance_dir = parse_examples, provenance_dir

    def process(self, path: str):
        import tensorflow as tf

        prints: List[str] = []
        bad_records: List[str] = []
        index = 0
        try:
            dataset = tf.data.TFRecordDataset(path, compression_type=compression_of(path))
            for raw in dataset.as_numpy_iterator():
                if self.parse_examples:
                    try:
                        example = tf.train.Example.FromString(raw)
                        if raw and not example.ListFields():
                            raise ValueError("it parses, but holds no tf.Example fields")
                    except Exception as e:  # noqa: BLE001 - DecodeError, or the check above
                        if len(bad_records) < SHOWN:
                            bad_records.append(f"record {index} ({str(e)[:80]})")
                        else:
                            bad_records.append("")
                        index += 1
                        continue
                prints.append(fingerprint(raw))
                index += 1
                yield raw
        except tf.errors.OpError as e:
            yield beam.pvalue.TaggedOutput("problems", {
                "file": path, "index": index, "reason": _framing_problem(e.message, index)})
        if bad_records:
            shown = [b for b in bad_records if b]
            more = len(bad_records) - len(shown)
            yield beam.pvalue.TaggedOutput("problems", {
                "file": path, "index": None,
                "reason": (f"{len(bad_records)} record(s) are not tf.Example: " + "; ".join(shown)
                           + (f" (and {more} more)" if more else "")
                           + "; write each with tf.train.Example(...).SerializeToString(), or use "
                             "`xfer data import-folder` to make the records from image folders")})
        name = hashlib.sha1(path.encode()).hexdigest()[:16] + ".json"
        with tf.io.gfile.GFile(os.path.join(self.provenance_dir, name), "w") as f:
            json.dump({"file": path, "fingerprints": prints}, f)


def _write_problems(problems: list, path: str) -> None:
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(sorted(problems, key=lambda p: (p["file"], p["index"] or 0)), f, indent=1)


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
            label = split_pattern.replace("/", "_").replace("*", "x")
            read = (pipeline
                    | f"Files[{label}]" >> beam.Create(files)
                    | f"Spread[{label}]" >> beam.Reshuffle()
                    | f"Read[{label}]" >> beam.ParDo(_ReadFile(
                        payload != example_gen_pb2.PayloadFormat.FORMAT_PROTO,
                        state._provenance_dir)).with_outputs("problems", main="records"))
            state._problems.append(read.problems)
            return read.records

        return ImportRecord

    def GenerateExamplesByBeam(self, pipeline: beam.Pipeline, exec_properties: Dict[str, Any]):
        self._problems = []
        splits = super().GenerateExamplesByBeam(pipeline, exec_properties)
        _ = (tuple(self._problems) | "AllProblems" >> beam.Flatten() | "ProblemList" >> beam.combiners.ToList()
             | "WriteProblems" >> beam.Map(_write_problems, self._problems_path))
        return splits

    def Do(self, input_dict: Dict[str, List], output_dict: Dict[str, List],
           exec_properties: Dict[str, Any]) -> None:
        from tfx.dsl.io import fileio

        examples = artifact_utils.get_single_instance(output_dict[standard_component_specs.EXAMPLES_KEY])
        self._provenance_dir = os.path.join(examples.uri, PROVENANCE)
        self._problems_path = os.path.join(examples.uri, PROBLEMS)
        fileio.makedirs(self._provenance_dir)
        super().Do(input_dict, output_dict, exec_properties)
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
