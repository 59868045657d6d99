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
    yield {"root": root, "outputs": outputs, "failing": failing}
    shutil.rmtree(root, ignore_errors=True)


def summaries(root):
    from pipeline.summary import pipeline_runs, open_store, summarize
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
