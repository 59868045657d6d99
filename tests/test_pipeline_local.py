"""The full local pipeline on the CIFAR-10 subset, driven through the real CLI.

Run 1 executes everything and pushes; run 2 (unchanged) takes everything up to the
Trainer from cache and re-evaluates against run 1's blessed model; run 3 is all
cache; a run with an unreachable threshold blesses nothing and pushes nothing.
"""
import os
import shutil

import numpy as np
import pytest

from conftest import CONFIGS, REPO, read_examples, xfer

pytestmark = pytest.mark.integration

UP_TO_TRAINER = ["ImportExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator",
                 "Transform", "Trainer"]
AFTER_TRAINER = ["Evaluator", "Pusher"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cifar):
    root = tmp_path_factory.mktemp("cifar-run")
    config = ["--config", str(CONFIGS / "cifar_small.yaml"), "--set", f"root={root}",
              "--set", f"data.input_base={cifar}", "--set", f"data.labels_file={cifar / 'labels.txt'}"]
    outputs = [xfer("run", *config).stdout for _ in range(3)]
    failing = xfer("run", *config, "--set", "eval.min_accuracy=1.01",
                   "--set", f"push.destination={root / 'serving-unreachable'}").stdout
    partial = xfer("run", *config, "--from", "Trainer", "--to", "Evaluator").stdout
    broken = xfer("run", *config, "--set", "data.labels_file=/nonexistent/labels.txt", check=False)
    yield {"root": root, "config": config, "outputs": outputs, "failing": failing,
           "partial": partial, "broken": broken}
    shutil.rmtree(root, ignore_errors=True)


def summaries(root):
    from xfer.pipeline.summary import pipeline_runs, open_store, summarize
    db = str(root / "metadata.sqlite")
    ids = [r.name for r in pipeline_runs(open_store(db), "xfer-cifar-test")]
    return [summarize(db, "xfer-cifar-test", run_id) for run_id in ids]


def test_first_run_executes_everything_blesses_and_pushes(runs):
    first = summaries(runs["root"])[0]
    for component in UP_TO_TRAINER + AFTER_TRAINER:
        assert first.states[component] == "executed", first.states
    assert first.blessing.blessed and first.blessing.baseline is None
    assert first.pushed_to and os.path.isdir(first.pushed_to)
    out = runs["outputs"][0]
    assert "BLESSED" in out and "no blessed baseline yet" in out and "pushed to:" in out
    assert "eval accuracy:" in out and "total time:" in out
    for component in UP_TO_TRAINER + AFTER_TRAINER:  # a progress line per step, start and end
        assert f"[xfer] {component} running ..." in out and f"[xfer] {component} done (" in out, component


def test_pushed_model_classifies_raw_png_bytes(runs, cifar):
    import tensorflow as tf

    pushed = summaries(runs["root"])[0].pushed_to
    model = tf.saved_model.load(pushed)
    examples = read_examples(cifar / "test" / "cifar10_test.tfrecord")[:12]
    pngs = [e["image"][0] for e in examples]
    assert all(p.startswith(b"\x89PNG") for p in pngs)
    out = model.signatures["serving_default"](images=tf.constant(pngs))
    probs = out["probabilities"].numpy()
    assert probs.shape == (12, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    labels = (cifar / "labels.txt").read_text().split()
    assert {n.decode() for n in out["class_name"].numpy()} <= set(labels)
    np.testing.assert_array_equal(out["class_id"].numpy(), probs.argmax(axis=1))
    # The tf.Example signature gives the same answer as the raw-bytes one.
    import tensorflow as tf2
    serialized = [tf2.train.Example(features=tf2.train.Features(feature={
        "image": tf2.train.Feature(bytes_list=tf2.train.BytesList(value=[p]))})).SerializeToString()
        for p in pngs]
    by_example = model.signatures["serving_examples"](examples=tf.constant(serialized))
    np.testing.assert_allclose(by_example["probabilities"].numpy(), probs, atol=1e-6)


def test_second_run_is_cached_up_to_the_trainer(runs):
    second = summaries(runs["root"])[1]
    for component in UP_TO_TRAINER:
        assert second.states[component] == "cached", second.states
    # The resolver now returns run 1's blessed model as baseline: a new Evaluator input.
    assert second.states["Evaluator"] == "executed"
    assert second.blessing.baseline is not None


def test_third_run_is_all_cached(runs):
    third = summaries(runs["root"])[2]
    for component in UP_TO_TRAINER + AFTER_TRAINER:
        assert third.states[component] == "cached", third.states
    assert "Trainer                     cached" in runs["outputs"][2]


def test_unreachable_threshold_blesses_nothing_and_pushes_nothing(runs):
    failing = summaries(runs["root"])[3]
    assert failing.states["Trainer"] == "cached"
    assert failing.states["Evaluator"] == "executed"
    assert not failing.blessing.blessed
    assert failing.pushed_to is None
    assert not os.path.exists(runs["root"] / "serving-unreachable") or \
        not os.listdir(runs["root"] / "serving-unreachable")
    out = runs["failing"]
    assert "NOT BLESSED" in out and "eval.min_accuracy" in out and "1.01" in out
    assert "sparse_categorical_accuracy" in out and "pushed: nothing" in out


def test_partial_run_executes_only_the_named_components_and_gives_a_model(runs):
    import tensorflow as tf

    partial = summaries(runs["root"])[4]
    assert partial.states["Trainer"] == "executed" and partial.states["Evaluator"] == "executed"
    assert "Pusher" not in partial.states
    for component in UP_TO_TRAINER[:-1]:
        assert partial.states[component] == "cached", partial.states  # reused, not re-run
    assert "[xfer] Trainer running" in runs["partial"] and "[xfer] Transform running" not in runs["partial"]
    model = tf.saved_model.load(os.path.join(partial.model_uri, "Format-Serving"))
    assert "serving_default" in model.signatures


def test_runs_lists_every_run_with_cached_and_executed_flags(runs):
    out = xfer("runs", *runs["config"]).stdout
    blocks = [b for b in out.split("\n2") if b.strip()]
    assert len(blocks) == 6, out  # four full runs, one partial, one failed
    first, third = blocks[0], blocks[2]
    assert "Trainer                      executed" in first and "blessed" in first
    assert "Trainer                      cached" in third and "Evaluator                    cached" in third
    assert "not blessed" in blocks[3] and "failed" in blocks[5]
    assert len([b for b in xfer("runs", *runs["config"], "--last", "2").stdout.split("\n2")
                if b.strip()]) == 2


def test_show_prints_the_blessing_reason_of_a_failed_threshold(runs):
    run_id = summaries(runs["root"])[3].run_id
    out = xfer("show", *runs["config"], run_id, "Evaluator").stdout
    assert "NOT BLESSED" in out and "sparse_categorical_accuracy" in out and "1.01" in out
    assert "Trainer" not in out.split("Evaluator", 1)[1]  # only the asked component
    full = xfer("show", *runs["config"], run_id).stdout
    assert "train label distribution: 0:" in full and "eval label distribution: 0:" in full
    for view in ("examples", "image_format_histogram: png:128", "presence", "no anomalies",
                 "epoch 2 (fine_tune)", "Total params", "confusion matrix", "top_3_accuracy",
                 "curves.png", "eval_grid.png", "TensorBoard logs"):
        assert view in full, view


def test_failed_component_shows_the_users_error_first(runs):
    broken = runs["broken"]
    assert broken.returncode == 1
    first = broken.stderr.strip().splitlines()[0]
    assert first.startswith("xfer: error in Trainer: data.labels_file"), broken.stderr
    assert "/nonexistent/labels.txt" in first
    log = broken.stderr.split("full trace: ")[1].split()[0]
    assert "Traceback" in open(log).read()
