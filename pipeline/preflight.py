"""Preflight: everything that can be checked before the first step runs, in seconds.

A config or data mistake found by a step costs every step before it (hours on real
data): a fine-tune layer that does not exist is found after phase 1, a label outside
labels.txt after five training steps. Here they are found from the config, the first
records of each split (and the first record of every file) and the backbone's layer
names, before anything runs; each problem is one paragraph naming the key, file or
record and the fix. `xfer run --check` runs this alone.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from typing import Optional

from xfer.components.settings import Config
from xfer.pipeline.config import ConfigError, class_count

SAMPLE = 256           # records read per split
FIRST_RECORD_FILES = 1000  # files per split whose first record is read, beyond the sample
PLACEHOLDER = "YOUR_"  # the shipped templates' placeholders (gcr.io/YOUR_PROJECT, gs://YOUR_BUCKET)


class PreflightFailed(ConfigError):
    """The config cannot run; the message lists every problem found."""


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        return "\n".join([f"  - {p}" for p in self.problems] + [f"  note: {n}" for n in self.notes])


def placeholders(config: Config) -> list[str]:
    """Keys still holding a template placeholder."""
    found = []

    def walk(value, key):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else k)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{key}[{i}]")
        elif isinstance(value, str) and PLACEHOLDER in value:
            found.append(f"{key}: '{value}' is the template's placeholder; set it to your own "
                         f"(e.g. --set {key.split('[')[0]}=...)")
    walk(config.model_dump(mode="json"), "")
    return found


def _split_files(config: Config) -> dict[str, list[str]]:
    """Split -> files, with {SPAN}/{VERSION} resolved to the newest as ImportExampleGen does."""
    import tensorflow as tf
    from tfx.components.example_gen import utils
    from tfx.proto import example_gen_pb2

    base = config.data_dir
    if not config.data.splits:
        return {"all": sorted(tf.io.gfile.glob(os.path.join(base, config.data.pattern)))}
    splits = [example_gen_pb2.Input.Split(name=n, pattern=p) for n, p in config.data.splits.items()]
    utils.calculate_splits_fingerprint_span_and_version(base, splits)  # resolves patterns in place
    return {s.name: sorted(tf.io.gfile.glob(os.path.join(base, s.pattern))) for s in splits}


def _sample(files: list[str], limit: int) -> tuple[list, bool, list[str]]:
    """Up to `limit` parsed tf.Examples from `files`, whether the files hold more, and one
    line per broken file naming the record, its byte offset, what is wrong and the fix.
    Reading goes on past a broken file, and at least the first record of every file is
    read (of the first FIRST_RECORD_FILES), so each broken file among them is named, not
    only the first. Records are read by tfrecords.read_records, which checks a record's
    length before reading it: TensorFlow's reader segfaults on a length of 1 TiB."""
    import tensorflow as tf
    from google.protobuf.message import DecodeError

    from xfer.components.tfrecords import FramingError, compression_of, read_records

    out, broken = [], []
    for number, path in enumerate(files):
        want = max(limit + 1 - len(out), 1)
        if want == 1 and number >= FIRST_RECORD_FILES:
            break
        index, offset = 0, 0
        records = read_records(path)
        try:
            for raw in records:
                try:
                    example = tf.train.Example.FromString(raw)
                except DecodeError as e:
                    of = " of the decompressed data" if compression_of(path) else ""
                    broken.append(f"cannot read {path} record {index} at byte {offset}{of}: not a tf.Example "
                                  f"({str(e)[:80]}); write each record with tf.train.Example(...)"
                                  f".SerializeToString(), or remove the file")
                    break
                if len(out) <= limit:
                    out.append(example)
                index, offset = index + 1, offset + len(raw) + 16  # 12-byte header, 4-byte data CRC
                if index >= want:
                    break
        except FramingError as e:
            broken.append(f"cannot read {path} {e.located}")
        except OSError as e:
            broken.append(f"cannot read {path}: {e.strerror or e}; check the file's permissions")
        finally:
            records.close()
    return out[:limit], len(out) > limit, broken


def _on_tpu(config: Config) -> bool:
    return config.train.strategy == "tpu" or bool(config.train.tpu)


def check_data(config: Config, report: Report, classes: Optional[int]) -> None:
    d, batch = config.data, config.train.batch_size
    from xfer.components.import_gen import span_problems

    spans = span_problems(config.data_dir, d.splits) if d.splits else []
    if spans:  # TFX's span resolution would only say "Cannot find span number ..."
        report.problems += spans
        return
    try:
        files = _split_files(config)
    except Exception as e:  # noqa: BLE001 - TFX's span resolution names the pattern
        report.problems.append(f"data.splits: {e}")
        return
    for split, paths in files.items():
        where = f"split '{split}' ({os.path.join(config.data_dir, d.splits.get(split, d.pattern))})"
        if not paths:
            report.problems.append(f"{where}: no files match; fix data.input_base or data.splits")
            continue
        examples, more, broken = _sample(paths, max(SAMPLE, batch))
        report.problems += [f"{where}: {line}" for line in broken]  # each broken file, one line each
        if broken and not examples:
            continue
        if not examples:
            report.problems.append(f"{where}: the files hold no records")
            continue
        keys = set(examples[0].features.feature)
        for key, setting in ((d.image_key, "data.image_key"), (d.label_key, "data.label_key")):
            if not any(key in e.features.feature for e in examples):
                report.problems.append(
                    f"{setting}: '{key}' is in none of the first {len(examples)} records of {where}; "
                    f"their features are: {', '.join(sorted(keys))}. Set {setting} to one of them")
        if split in ("train", "all") and not more and len(examples) < batch:
            if _on_tpu(config):
                report.problems.append(
                    f"{where}: {len(examples)} examples, fewer than train.batch_size {batch}; a TPU "
                    f"needs whole batches: lower train.batch_size to {len(examples)} or less, or add data")
            else:
                report.notes.append(f"{where}: {len(examples)} examples, fewer than train.batch_size "
                                    f"{batch}: each epoch is one partial batch")
        if classes:
            for i, e in enumerate(examples):
                f = e.features.feature.get(d.label_key)
                values = list(f.int64_list.value) if f is not None else []
                if f is not None and f.WhichOneof("kind") == "bytes_list":
                    break  # string labels get a vocabulary: no range to check
                bad = [v for v in values if not 0 <= v < classes]
                if f is not None and (len(values) != 1 or bad):
                    report.problems.append(
                        f"{where}: record {i} has label {values} but labels run from 0 to {classes - 1} "
                        f"({d.labels_file or 'data.num_classes'}); fix the record or the labels")
                    break


def check_model(config: Config, report: Report) -> None:
    fine = config.train.fine_tune
    if not (fine.enabled and fine.epochs and fine.from_layer):
        return
    from xfer.components.backbones import build_base

    m = config.model
    base = build_base(m.backbone, m.image_size, "none", m.alpha)
    names = [layer.name for layer in base.layers]
    if fine.from_layer not in names:
        weighted = [layer.name for layer in base.layers if layer.weights]
        close = difflib.get_close_matches(fine.from_layer, names, n=3)
        report.problems.append(
            f"train.fine_tune.from_layer: '{fine.from_layer}' is not a layer of {m.backbone}"
            + (f" (did you mean {', '.join(close)}?)" if close else "")
            + f"; its top layers with weights, where fine-tuning usually starts: "
              f"{', '.join(weighted[-12:])} ({len(weighted)} in all)")


def check_writable(config: Config, report: Report) -> None:
    for key, path in (("root", config.root), ("push.destination", config.push.destination)):
        if "://" in path:
            continue
        existing = path
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
            report.problems.append(f"{key}: '{path}' cannot be written ({existing} is "
                                   f"{'not a folder' if not os.path.isdir(existing) else 'not writable'})")


def run(config: Config) -> Report:
    report = Report()
    report.problems += placeholders(config)
    classes = None
    try:
        classes = class_count(config)
    except (ValueError, FileNotFoundError) as e:
        report.problems.append(str(e))
    if classes is not None and config.eval.top_k >= classes:
        report.problems.append(f"eval.top_k: {config.eval.top_k} is not below the {classes} classes, so "
                               f"top-{config.eval.top_k} accuracy would always be 1.0; set it to "
                               f"{max(2, classes - 1)} or less")
    check_writable(config, report)
    check_data(config, report, classes)
    check_model(config, report)
    return report


def require(config: Config) -> Report:
    """Run the preflight; raise PreflightFailed naming every problem."""
    report = run(config)
    if report.problems:
        raise PreflightFailed(f"preflight found {len(report.problems)} problem(s) before any step ran:\n"
                              + report.text())
    return report
