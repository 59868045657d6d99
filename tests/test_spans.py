"""Scheduled data: a window of spans, and the drift gate between spans. Real
pipelines up to DataCheck on spans cut from the CIFAR subset's real images."""
import json

import pytest

import xfer.components  # noqa: F401
import tensorflow as tf

from conftest import CONFIGS, xfer
from xfer.components.data_check import compare_spans
from xfer.components.import_gen import list_spans, longer_side_bucket
from xfer.pipeline.data.records import image_example


def _span(cifar, dst, split, start, count, keep_label=None):
    src = cifar / ("train/cifar10_train.tfrecord" if split == "train" else "test/cifar10_test.tfrecord")
    dst.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with tf.io.TFRecordWriter(str(dst)) as w:
        for i, raw in enumerate(tf.data.TFRecordDataset(str(src)).as_numpy_iterator()):
            f = tf.train.Example.FromString(raw).features.feature
            label = f["label"].int64_list.value[0]
            if i < start or (keep_label is not None and not keep_label(label)):
                continue
            w.write(image_example(f["image"].bytes_list.value[0], label, id=f["id"].bytes_list.value[0]))
            n += 1
            if n == count:
                break
    return n


def _config(root, data, cifar, *extra):
    return ["--config", str(CONFIGS / "cifar_small.yaml"), "--set", f"root={root}",
            "--set", f"data.input_base={data}", "--set", f"data.labels_file={cifar / 'labels.txt'}",
            "--set", "data.splits={train: 'span-{SPAN}/train/*', eval: 'span-{SPAN}/eval/*'}", *extra]


def _result(out):
    with open(out.split("run result: ")[1].split()[0]) as f:
        return json.load(f)


def test_list_spans_reads_span_numbers_and_padding(tmp_path):
    for name in ("span-01/train/a.tfrecord", "span-02/train/a.tfrecord", "span-10/train/b.tfrecord",
                 "span-xx/train/a.tfrecord", "span-03/eval/a.tfrecord"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert list_spans(str(tmp_path), "span-{SPAN}/train/*") == {
        1: "span-01/train/*", 2: "span-02/train/*", 10: "span-10/train/*"}
    assert list_spans(str(tmp_path), "span-{SPAN:2}/train/a.*") == {1: "span-01/train/a.*", 2: "span-02/train/a.*"}
    assert longer_side_bucket(31, 5) == "<32" and longer_side_bucket(32, 5) == "32-63"
    assert longer_side_bucket(20, 4000) == "2048-4095" and longer_side_bucket(5000, 1) == ">=4096"


def _touch(root, *names):
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")


SPLITS = {"train": "span-{SPAN}/train/*", "eval": "span-{SPAN}/eval/*"}


def test_a_stray_folder_and_a_span_missing_a_split_are_named_with_the_fix(tmp_path):
    from xfer.components.import_gen import span_problems

    stray = tmp_path / "stray"
    _touch(stray, "span-1/train/a", "span-1/eval/a", "span-2/train/a", "span-2/eval/a", "span-2a/train/a")
    assert span_problems(str(stray), SPLITS) == [
        f"data.splits.train: 'span-2a' in {stray} matches 'span-{{SPAN}}/train/*', but '2a' where {{SPAN}} "
        f"stands is not a span number (digits only); rename it to a span (e.g. span-3) or move it out of {stray}"]
    half = tmp_path / "half"
    _touch(half, "span-01/train/a", "span-01/eval/a", "span-02/train/a")
    assert span_problems(str(half), SPLITS) == [
        f"data.splits.eval: span 2 has no 'eval' files: nothing in {half} matches 'span-02/eval/*' (split "
        f"'train' has span 2; 'eval' ends at span 1). Every split reads the newest span, so add span 2's eval "
        f"files under span-02, or move span-02 out of {half} until it is complete"]
    _touch(half, "span-02/eval/a")
    assert span_problems(str(half), SPLITS) == [] and span_problems(str(half), {"train": "span-{SPAN:2}/train/*"}) == []
    assert span_problems(str(half), {"train": "train/*", "eval": "eval/*"}) == []  # no {SPAN}: nothing to say


def test_the_preflight_names_span_problems_before_any_step(tmp_path, cifar):
    """What TFX would say as "Cannot find span number from .../span-2a/train/a.tfrecord based on
    .../span-(?P<span>.*)/train/[^\\/]*" and "Latest span should be the same for each split"."""
    from settings_helpers import make_config
    from xfer.pipeline import preflight

    data = tmp_path / "data"
    for span in (1, 2):
        _span(cifar, data / f"span-{span}" / "train" / "a.tfrecord", "train", 0, 8)
    _span(cifar, data / "span-1" / "eval" / "a.tfrecord", "eval", 0, 8)
    _span(cifar, data / "span-x" / "eval" / "a.tfrecord", "eval", 0, 8)
    config = make_config({"input_base": str(data), "splits": SPLITS, "labels_file": str(cifar / "labels.txt")},
                         root=str(tmp_path / "root"))
    problems = preflight.run(config).problems
    assert problems == [
        f"data.splits.eval: 'span-x' in {data} matches 'span-{{SPAN}}/eval/*', but 'x' where {{SPAN}} stands is "
        f"not a span number (digits only); rename it to a span (e.g. span-2) or move it out of {data}"], problems
    (data / "span-x" / "eval" / "a.tfrecord").unlink()
    (data / "span-x" / "eval").rmdir()
    problems = preflight.run(config).problems
    assert len(problems) == 1 and problems[0].startswith(
        "data.splits.eval: span 2 has no 'eval' files: nothing in "), problems
    assert not (tmp_path / "root").exists()


def test_compare_spans_is_the_l_infinity_distance_of_shares():
    spans = {"1": {"label": {"0": 50, "1": 50}, "format": {"png": 100}, "size": {"32-63": 100}},
             "2": {"label": {"0": 90, "1": 10}, "format": {"png": 50, "jpeg": 50}, "size": {"32-63": 100}}}
    out = compare_spans({"newest": 2, "previous": 1, "spans": spans},
                        {"label_linf": 0.2, "format_linf": 0.6, "size_linf": None})
    label, fmt, size = out["kinds"]
    assert (label["linf"], label["drifted"], label["most_moved"]) == (0.4, True, "0")
    assert (fmt["linf"], fmt["drifted"]) == (0.5, False) and (size["linf"], size["drifted"]) == (0.0, False)
    assert compare_spans({"newest": 1, "previous": None, "spans": {"1": spans["1"]}}, {})["kinds"] == []


@pytest.mark.integration
def test_a_window_of_two_spans_trains_on_both_and_evaluates_on_the_newest(tmp_path, cifar):
    data = tmp_path / "spans"
    for span in (1, 2, 3):
        _span(cifar, data / f"span-{span}" / "train" / "a.tfrecord", "train", 40 * (span - 1), 40)
        _span(cifar, data / f"span-{span}" / "eval" / "a.tfrecord", "eval", 40 * (span - 1), 40 - 8 * span)
    config = _config(tmp_path / "root", data, cifar, "--set", "data.spans.window=2")
    # The whole pipeline, evaluated with TTA: its pushed version's model card is checked below.
    out = xfer("run", *config, "--set", "eval.tta=flips").stdout
    assert "train split from spans 2, 3 (data.spans.window 2); eval from span 3" in out, out
    result = _result(out)
    assert result["spans"] == [2, 3] and result["examples"] == {"eval": 16, "train": 80}, result
    card = tmp_path / "root" / "serving" / "1" / "MODEL_CARD.md"
    assert f"model card: {card} (and model_card.html)" in out, out
    assert result["pushed"]["model_card"] == str(card)
    _check_card(tmp_path / "root", card, cifar)
    runs = xfer("runs", *config).stdout
    assert "span 2,3 " in runs.splitlines()[0], runs
    shown = xfer("show", *config, "latest", "ImportExampleGen").stdout
    assert "spans: 2, 3" in shown, shown
    # A window wider than the spans present trains on what exists, and says so.
    wide = xfer("run", *_config(tmp_path / "root2", data, cifar, "--set", "data.spans.window=5"),
                "--to", "DataCheck").stdout
    assert "data.spans.window is 5 but only 3 span(s) exist up to span 3 (1, 2, 3): training on them" in wide
    assert _result(wide)["examples"] == {"eval": 16, "train": 120}


def _table(md: str, header_start: str) -> list[list[str]]:
    """The rows of the Markdown table whose header row starts with `header_start`."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header_start} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def _check_card(root, card, cifar):
    """The card against the metadata store and the artifacts, read here without the card's
    code: the spans on the Examples artifacts, the records in DataCheck's output counted
    one by one, TFMA's metrics, the run id and the Trainer's model."""
    import base64

    import tensorflow_model_analysis as tfma

    from xfer.pipeline.store import custom_property, find_run, open_store, output_artifacts, step_executions

    store = open_store(str(root / "metadata.sqlite"))
    run = find_run(store, "xfer-cifar-test")
    outputs = {node: dict(output_artifacts(store, ex.id)) for node, ex in step_executions(store, run, "xfer-cifar-test")}
    checked, evaluation = outputs["DataCheck"]["Examples"], outputs["Evaluator"]["ModelEvaluation"]
    assert custom_property(checked, "spans") == custom_property(outputs["ImportExampleGen"]["Examples"], "spans") == "2,3"
    pushed = outputs["Pusher"]["PushedModel"]
    assert custom_property(pushed, "model_card") == str(card)
    md = card.read_text()

    assert "Spans: train split from spans 2, 3; eval split from span 3." in md, md
    names = (cifar / "labels.txt").read_text().split()
    assert _table(md, "class id") == [[str(k), n] for k, n in enumerate(names)]
    counts = {}
    for split in ("train", "eval"):
        files = tf.io.gfile.glob(f"{checked.uri}/Split-{split}/*")
        for raw in tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator():
            label = tf.train.Example.FromString(raw).features.feature["label"].int64_list.value[0]
            counts.setdefault(split, {}).setdefault(label, 0)
            counts[split][label] += 1
    rows = {r[0]: r[1:] for r in _table(md, "class | train | eval")}
    assert rows.pop("total") == ["80", "16"]
    for k, name in enumerate(names):
        got = rows[f"{name} ({k})"]
        assert got == [str(counts["train"].get(k, 0)), str(counts["eval"].get(k, 0))], (name, got)
    assert _table(md, "span") == [["2", "40", "png 40", "32-63 px: 40"], ["3", "40", "png 40", "32-63 px: 40"]]

    overall = {}
    per_class = {}
    for m in tfma.load_metrics(evaluation.uri):
        keys = m.slice_key.single_slice_keys
        values = {kv.key.name: kv.value.double_value.value for kv in m.metric_keys_and_values if not kv.key.is_diff}
        if not keys:
            overall = values
        else:
            per_class[int(keys[0].int64_value or keys[0].float_value)] = values
    metrics = {r[0]: r[1] for r in _table(md, "metric")}
    assert metrics["accuracy"] == f"{overall['sparse_categorical_accuracy']:.4f}"
    assert metrics["top-3 accuracy"] == f"{overall['top_3_accuracy']:.4f}"
    assert metrics["loss (cross-entropy)"] == f"{overall['loss']:.4f}"
    assert metrics["examples"] == "16"
    recall = {r[0]: r for r in _table(md, "class | eval examples")}
    assert {names[k] for k in per_class} == set(recall)
    for k, values in per_class.items():
        row = recall[names[k]]
        assert row[1] == str(int(values["example_count"])) and row[2] == f"{values['sparse_categorical_accuracy']:.4f}"
        assert (row[4] == "LOW") == (values["sparse_categorical_accuracy"] == 0.0 or values[
            "sparse_categorical_accuracy"] < overall["sparse_categorical_accuracy"] - 0.1), row
    # TFMA called the TTA signature (the eval config it wrote beside its metrics).
    assert '"signatureName": "serving_examples_flips"' in open(f"{evaluation.uri}/eval_config.json").read()
    assert "evaluated with test-time augmentation (serving_examples_flips" in md
    missing = [n for k, n in enumerate(names) if not counts["eval"].get(k)]
    assert f"Not evaluated (no eval example): {', '.join(missing)}" in md

    assert f"| run id | {run.name} |" in md
    assert f"| Trainer model | {outputs['Trainer']['Model'].uri} |" in md
    assert "| phase | epochs run |" in md and "| transfer (base frozen) | 1 of 1 | adam 0.001 |" in md
    assert "Backbone mobilenet_v2 (alpha 0.35), weights none, 32 px input" in md
    html = (card.parent / "model_card.html").read_text()
    curves = open(f"{outputs['Trainer']['ModelRun'].uri}/curves.png", "rb").read()
    assert f"data:image/png;base64,{base64.b64encode(curves).decode()}" in html
    assert html.count("data:image/png;base64,") == 3
    shown = xfer("show", "--config", str(CONFIGS / "cifar_small.yaml"), "--set", f"root={root}",
                 "latest", "Pusher").stdout
    assert f"model card: {card}" in shown and "model_card.html" in shown, shown


def test_a_skewed_span_stops_the_run_under_fail_and_warns_under_warn(tmp_path, cifar):
    data = tmp_path / "spans"
    for span in (1, 2):
        _span(cifar, data / f"span-{span}" / "eval" / "a.tfrecord", "eval", 0, 32)
    _span(cifar, data / "span-1" / "train" / "a.tfrecord", "train", 0, 64)
    _span(cifar, data / "span-2" / "train" / "a.tfrecord", "train", 0, 40, keep_label=lambda l: l < 2)
    config = _config(tmp_path / "root", data, cifar)
    proc = xfer("run", *config, "--to", "DataCheck", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    err = proc.stderr
    assert err.startswith("xfer: error in DataCheck: span 2 drifted from span 1 and data.on_anomaly is fail: "
                          "label distribution: L-infinity "), err
    assert "over data.drift.label_linf 0.2;" in err and "span 1 {0: " in err and "span 2 {0: " in err, err
    assert "image format mix" not in err and "Traceback" not in err  # same formats and sizes: no drift there
    failed = _result(proc.stdout)  # the run failed in DataCheck: its result.json says why, and which kinds
    label = failed["drifted_kinds"]
    assert [(k["kind"], k["key"], k["limit"]) for k in label] == [("label", "data.drift.label_linf", 0.2)], failed
    assert f"L-infinity {label[0]['distance']:.3f} over data.drift.label_linf 0.2" in err
    assert failed["status"] == "failed" and failed["error"].startswith("span 2 drifted from span 1"), failed
    warned = xfer("run", *config, "--set", "data.on_anomaly=warn", "--to", "DataCheck").stdout
    assert "[xfer] drift (data.on_anomaly: warn, continuing): label distribution: L-infinity" in warned, warned
    assert "drift: 1 kind(s) over the data.drift thresholds, trained anyway (data.on_anomaly: warn)" in warned
    assert _result(warned)["drifted_kinds"] == label  # the same kinds and distances under warn
    shown = xfer("show", *config, "latest", "DataCheck").stdout
    assert "drift, span 2 vs span 1:" in shown and "label distribution: L-infinity" in shown, shown
    assert "image format mix: L-infinity 0.000 within data.drift.format_linf 0.2" in shown, shown


def test_window_without_span_in_the_pattern_is_a_config_error(tmp_path, cifar):
    proc = xfer("run", "--config", str(CONFIGS / "cifar_small.yaml"), "--set", f"root={tmp_path}",
                "--set", "data.spans.window=3", "--check", check=False)
    assert proc.returncode == 2
    assert "data.spans.window is 3 but" in proc.stderr, proc.stderr
