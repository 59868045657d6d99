"""The full local pipeline on the CIFAR-10 subset, driven through the real CLI.

Run 1 executes everything and pushes; run 2 (unchanged) takes everything up to the
Trainer from cache and re-evaluates against run 1's blessed model; run 3 is all
cache; a run with an unreachable threshold blesses nothing and pushes nothing. Each
test reads the run a command made (its id in the metadata store), never a position
in the run history.
"""
import os
import re
import shutil

import numpy as np
import pytest

from conftest import CONFIGS, read_examples, xfer

# The module fixture runs several whole pipelines inside the first test's time budget.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

UP_TO_TRAINER = ["ImportExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator",
                 "Transform", "Trainer"]
AFTER_TRAINER = ["Evaluator", "Pusher"]
NAME = "xfer-cifar-test"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cifar):
    root = tmp_path_factory.mktemp("cifar-run")
    config = ["--config", str(CONFIGS / "cifar_small.yaml"), "--set", f"root={root}",
              "--set", f"data.input_base={cifar}", "--set", f"data.labels_file={cifar / 'labels.txt'}"]
    commands = {
        "first": (config, True), "second": (config, True), "third": (config, True),
        "failing": ([*config, "--set", "eval.min_accuracy=1.0",
                     "--set", f"push.destination={root / 'serving-unreachable'}"], True),
        "partial": ([*config, "--from", "Trainer", "--to", "Evaluator"], True),
        # Past the preflight (which does not open weights files): fails in the Trainer.
        "broken": ([*config, "--set", "model.weights=/nonexistent/weights.h5"], False),
    }
    procs, ids = {}, {}
    tmp = root / "tmp"  # the first run's /tmp, to see what it leaves there
    tmp.mkdir()
    for what, (args, check) in commands.items():
        procs[what] = xfer("run", *args, check=check, env={"TMPDIR": str(tmp)} if what == "first" else None)
        ids[what] = newest_run_id(root)
        if what == "first":
            left_in_tmp = sorted(p.name for p in tmp.iterdir())
    yield {"root": root, "config": config, "ids": ids, "broken": procs.pop("broken"),
           "out": {what: p.stdout for what, p in procs.items()}, "left_in_tmp": left_in_tmp}
    shutil.rmtree(root, ignore_errors=True)


def newest_run_id(root) -> str:
    from xfer.pipeline.store import find_run, open_store
    return find_run(open_store(str(root / "metadata.sqlite")), NAME).name


def summary_of(runs, what):
    """The summary of the run that the command `what` made."""
    from xfer.pipeline.summary import summarize
    return summarize(str(runs["root"] / "metadata.sqlite"), NAME, runs["ids"][what])


def state_shown(text: str, component: str) -> str:
    """The state printed beside a component, whatever the column padding."""
    match = re.search(rf"^\s*{component}\s+(\w+)", text, re.M)
    assert match, f"no line for {component} in:\n{text}"
    return match.group(1)


def test_first_run_executes_everything_blesses_and_pushes(runs):
    first = summary_of(runs, "first")
    for component in UP_TO_TRAINER + AFTER_TRAINER:
        assert first.states[component] == "executed", first.states
    assert first.blessing.blessed and first.blessing.baseline is None
    assert first.pushed_to and os.path.isdir(first.pushed_to)
    assert first.pushed_version == "1" and first.pushed_new
    out = runs["out"]["first"]
    assert "BLESSED" in out and "no served model to compare with" in out and "pushed to:" in out
    assert "eval accuracy:" in out and "total time:" in out
    for component in UP_TO_TRAINER + AFTER_TRAINER:  # a progress line per step, start and end
        assert f"[xfer] {component} running ..." in out and f"[xfer] {component} done (" in out, component
    # Nothing left in /tmp: no Prism folder, no sdist of TFX, no autograph module.
    assert runs["left_in_tmp"] == []


def test_pushed_model_classifies_raw_png_bytes(runs, cifar):
    import tensorflow as tf

    pushed = summary_of(runs, "first").pushed_to
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
    from xfer.pipeline.data.records import image_example
    serialized = [image_example(p) for p in pngs]
    by_example = model.signatures["serving_examples"](examples=tf.constant(serialized))
    np.testing.assert_allclose(by_example["probabilities"].numpy(), probs, atol=1e-6)


def test_second_run_is_cached_up_to_the_trainer(runs):
    second = summary_of(runs, "second")
    for component in UP_TO_TRAINER:
        assert second.states[component] == "cached", second.states
    # The resolver now returns run 1's blessed model as baseline: a new Evaluator input.
    assert second.states["Evaluator"] == "executed"
    assert second.blessing.baseline is not None
    assert second.pushed_version == "1" and not second.pushed_new  # the same model: no new version


def test_third_run_is_cached_up_to_the_trainer_and_judged_against_the_served_model(runs):
    third = summary_of(runs, "third")
    for component in UP_TO_TRAINER:
        assert third.states[component] == "cached", third.states
    assert state_shown(runs["out"]["third"], "Trainer") == "cached"
    # The served model is read every run (it may have changed under the same inputs), so
    # the Evaluator judges again; the same model is not pushed twice.
    assert third.states["ServedBaseline"] == "executed" and third.states["Evaluator"] == "executed"
    assert third.blessing.baseline is not None
    assert not third.pushed_new


def test_unreachable_threshold_blesses_nothing_and_pushes_nothing(runs):
    failing = summary_of(runs, "failing")
    assert failing.states["Trainer"] == "cached"
    assert failing.states["Evaluator"] == "executed"
    assert not failing.blessing.blessed and failing.blessing.value_failed
    assert failing.pushed_to is None
    assert not os.path.exists(runs["root"] / "serving-unreachable") or \
        not os.listdir(runs["root"] / "serving-unreachable")
    out = runs["out"]["failing"]
    assert "NOT BLESSED" in out and "eval.min_accuracy" in out and ">= 1.0 " in out
    assert re.search(r"accuracy >= 1.0 \(eval.min_accuracy\) .* FAIL$", out, re.M), out
    assert "sparse_categorical_accuracy" in out and "pushed: nothing" in out


def test_partial_run_executes_only_the_named_components_and_gives_a_model(runs):
    import tensorflow as tf

    partial = summary_of(runs, "partial")
    assert partial.states["Trainer"] == "executed" and partial.states["Evaluator"] == "executed"
    assert "Pusher" not in partial.states
    for component in UP_TO_TRAINER[:-1]:
        assert partial.states[component] == "cached", partial.states  # reused, not re-run
    out = runs["out"]["partial"]
    assert "[xfer] Trainer running" in out and "[xfer] Transform running" not in out
    model = tf.saved_model.load(os.path.join(partial.model_uri, "Format-Serving"))
    assert "serving_default" in model.signatures


def test_runs_lists_every_run_with_cached_and_executed_flags(runs):
    out = xfer("runs", *runs["config"]).stdout
    ids = runs["ids"]
    blocks = {}  # run id -> its header and component lines
    for line in out.splitlines():
        if not line.startswith(" "):
            blocks[line.split()[0]] = []
        blocks[next(reversed(blocks))].append(line)
    assert list(blocks) == list(ids.values()), out  # oldest first: four full, one partial, one failed
    text = {what: "\n".join(blocks[run_id]) for what, run_id in ids.items()}
    assert state_shown(text["first"], "Trainer") == "executed" and " blessed " in text["first"]
    assert state_shown(text["third"], "Trainer") == "cached"
    assert state_shown(text["third"], "Evaluator") == "executed"
    assert "not blessed" in text["failing"] and " failed " in text["broken"]
    last_two = xfer("runs", *runs["config"], "--last", "2").stdout
    assert [line.split()[0] for line in last_two.splitlines() if not line.startswith(" ")] == \
        [ids["partial"], ids["broken"]]


def test_show_prints_the_blessing_reason_of_a_failed_threshold(runs):
    run_id = runs["ids"]["failing"]
    out = xfer("show", *runs["config"], run_id, "Evaluator").stdout
    assert "NOT BLESSED" in out and "sparse_categorical_accuracy" in out and "value threshold lower bound 1" in out
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
    assert first.startswith("xfer: error in Trainer: model.weights"), broken.stderr
    assert "/nonexistent/weights.h5" in first
    log = broken.stderr.split("full trace: ")[1].split()[0]
    assert "Traceback" in open(log).read()
