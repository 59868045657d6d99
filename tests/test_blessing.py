"""The blessing report's pass and FAIL are TFMA's verdicts: TFMA's own validator judges
the accuracies under the eval config the pipeline gives the Evaluator, its result is
written as the Evaluator writes it, and the report reads it back from there."""
import xfer.components  # noqa: F401
import tensorflow as tf
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.evaluators import metrics_validator
from tensorflow_model_analysis.metrics import metric_types
from tensorflow_model_analysis.writers import metrics_plots_and_validations_writer as tfma_writer

from settings_helpers import make_config
from xfer.pipeline.blessing import ACCURACY, read_blessing
from xfer.pipeline.pipeline import eval_config


def _key(model: str, diff: bool = False):
    return metric_types.MetricKey(name=ACCURACY, model_name=model, is_diff=diff)


def evaluate(folder, ev: dict, candidate: float, baseline=None, classes=None, class_names=None):
    """(Blessing, eval settings) for these accuracies, as TFMA judges them. `classes`:
    {label slice value: (examples, candidate accuracy, baseline accuracy or None)}, the
    Evaluator's slices on the true label."""
    config = make_config(eval=ev)
    # What TFX's Evaluator does before validating: name the models, drop the change
    # threshold when there is no baseline.
    spec = tfma.utils.update_eval_config_with_defaults(
        eval_config(config), has_baseline=baseline is not None, rubber_stamp=True)
    if baseline is None:
        metrics = {_key(""): candidate}
    else:
        metrics = {_key("candidate"): candidate, _key("baseline"): baseline,
                   _key("candidate", diff=True): candidate - baseline}
    sliced = [((), metrics)]
    for label, (examples, cand, base) in (classes or {}).items():
        if baseline is None:
            m = {_key(""): cand, _count(""): examples}
        else:
            m = {_key("candidate"): cand, _count("candidate"): examples, _count("baseline"): examples,
                 _key("baseline"): base, _key("candidate", diff=True): cand - base}
        sliced.append(((("label", label),), m))
    # TFMA validates every slice; the thresholds name the overall slice only.
    validation = metrics_validator.validate_metrics(sliced[0], spec)
    for other in sliced[1:]:
        validation.metric_validations_per_slice.extend(
            metrics_validator.validate_metrics(other, spec).metric_validations_per_slice)
    with tf.io.TFRecordWriter(str(folder / "metrics-00000-of-00001.tfrecord")) as w:
        for slice_metrics in sliced:
            w.write(tfma_writer.convert_slice_metrics_to_proto(slice_metrics, None).SerializeToString())
    with tf.io.TFRecordWriter(str(folder / "validations.tfrecord")) as w:
        w.write(validation.SerializeToString())
    blessed = not any(s.failures for s in validation.metric_validations_per_slice)
    return read_blessing(str(folder), blessed, class_names), config.eval


def _count(model: str):
    return metric_types.MetricKey(name="example_count", model_name=model)


def row(lines: list[str], config_key: str) -> str:
    return next(line for line in lines if f"{config_key})" in line)


def test_first_run_keeps_the_tables_layout(tmp_path):
    b, ev = evaluate(tmp_path, {"min_accuracy": 0.8, "max_drop": 0.02}, candidate=0.9353)
    assert b.blessed and not b.value_failed and not b.change_failed
    assert b.report(ev) == [
        '  threshold                                                  candidate  baseline  result',
        '  accuracy >= 0.8 (eval.min_accuracy)                        0.9353     -         pass',
        '  accuracy drop <= 0.02 vs the served model (eval.max_drop)  0.9353     none      not applied: no served model to compare with']
    assert b.headline(ev) == ("BLESSED: every threshold passed (no served model to compare with: "
                              "judged on value thresholds alone)")


def test_value_threshold_fails_when_tfma_fails_it(tmp_path):
    b, ev = evaluate(tmp_path, {"min_accuracy": 0.8, "max_drop": 0.02}, candidate=0.7, baseline=0.71)
    assert not b.blessed and b.value_failed and not b.change_failed
    lines = b.report(ev)
    assert row(lines, "eval.min_accuracy").split()[-1] == "FAIL"
    assert row(lines, "eval.max_drop").split()[-3:] == ["pass", "(change", "-0.0100)"]
    assert b.headline(ev).startswith("NOT BLESSED: sparse_categorical_accuracy = 0.7000 violates "
                                     "value threshold lower bound 0.8")


def test_change_threshold_at_its_edge_is_tfmas_call(tmp_path):
    # 0.88 - 0.9 is a hair below -0.02 in floating point: TFMA fails it. A report with
    # its own tolerance would have printed pass beside a model that was not blessed.
    b, ev = evaluate(tmp_path, {"min_accuracy": 0.8, "max_drop": 0.02}, candidate=0.88, baseline=0.9)
    assert not b.blessed and b.change_failed and not b.value_failed
    lines = b.report(ev)
    assert row(lines, "eval.min_accuracy").split()[-1] == "pass"
    assert row(lines, "eval.max_drop").split()[-3:] == ["FAIL", "(change", "-0.0200)"]
    assert "sparse_categorical_accuracy change = -0.0200 violates change threshold absolute -0.02" \
        in b.headline(ev)


def test_absolute_and_relative_drops_are_one_threshold_with_one_row(tmp_path):
    ev = {"min_accuracy": None, "max_drop": 0.1, "max_drop_relative": 0.01}
    b, ev = evaluate(tmp_path, ev, candidate=0.85, baseline=0.9)  # -0.05: absolute passes, relative fails
    assert not b.blessed and b.change_failed
    lines = b.report(ev)
    assert len(lines) == 3  # header, the one change threshold, TFMA's reason
    assert lines[1].startswith("  accuracy drop <= 0.1 and relative drop <= 0.01 vs the served model "
                               "(eval.max_drop, eval.max_drop_relative)")
    assert lines[1].split()[-3:] == ["FAIL", "(change", "-0.0500)"]
    assert lines[2].startswith("  TFMA: sparse_categorical_accuracy change = -0.0500 violates change "
                               "threshold absolute -0.1 and relative -0.01")
    good, ev = evaluate(tmp_path, {**ev.model_dump(), "max_drop_relative": 0.1}, candidate=0.85, baseline=0.9)
    assert good.blessed and good.report(ev)[1].split()[-3:] == ["pass", "(change", "-0.0500)"]


def test_per_class_recall_rows_after_the_thresholds(tmp_path):
    """Class 1's recall fell 0.25 against the served model, beyond max_drop 0.02; class 2's
    is 0: both LOW, and the model is still blessed on its overall accuracy, as TFMA judged."""
    classes = {0: (40, 0.95, 0.90), 1: (30, 0.60, 0.85), 2: (5, 0.0, 0.0)}
    b, ev = evaluate(tmp_path, {"min_accuracy": 0.8, "max_drop": 0.02}, candidate=0.9, baseline=0.89,
                     classes=classes, class_names=["cat", "dog", "bird"])
    assert b.blessed and not b.failures
    assert [(c.label, c.examples, c.candidate, c.baseline) for c in b.per_class] == [
        (0, 40, 0.95, 0.90), (1, 30, 0.60, 0.85), (2, 5, 0.0, 0.0)]
    lines = b.report(ev)
    assert lines[:3] == [
        '  threshold                                                  candidate  baseline  result',
        '  accuracy >= 0.8 (eval.min_accuracy)                        0.9000     -         pass',
        '  accuracy drop <= 0.02 vs the served model (eval.max_drop)  0.9000     0.8900    pass (change +0.0100)']
    assert lines[3:] == [
        '  recall per true class (informational: the thresholds above judge overall accuracy)',
        '  class  examples  candidate  baseline',
        '  cat    40        0.9500     0.9000',
        '  dog    30        0.6000     0.8500    LOW',
        '  bird   5         0.0000     0.0000    LOW',
        "  LOW: recall 0, or more than eval.max_drop (0.02) below the served model's"]
    assert b.headline(ev) == "BLESSED: every threshold passed"


def test_per_class_rows_on_a_first_run_show_indexes_without_names(tmp_path):
    classes = {3: (12, 0.25, None), 10: (9, 0.0, None), 1: (10, 0.7, None)}
    b, ev = evaluate(tmp_path, {"min_accuracy": 0.1, "max_drop": 0.02}, candidate=0.5, classes=classes)
    assert b.blessed
    lines = b.report(ev)
    assert lines[3:] == [
        '  recall per true class (informational: the thresholds above judge overall accuracy)',
        '  class  examples  candidate  baseline',
        '  1      10        0.7000     -',
        '  3      12        0.2500     -',
        '  10     9         0.0000     -         LOW',
        "  LOW: recall 0, or more than eval.max_drop (0.02) below the served model's"]
