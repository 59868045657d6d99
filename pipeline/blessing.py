"""The blessing and its report, read from the Evaluator's TFMA output.

Pass or FAIL of each threshold is TFMA's verdict (its validation result), never
recomputed here: a second copy of the rule, with its own tolerance, could call a
model that TFMA refused a pass. The values shown come from TFMA's metrics.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

ACCURACY = "sparse_categorical_accuracy"
EXAMPLE_COUNT = "example_count"
NOT_APPLIED = "not applied: no served model to compare with"
# The Evaluator's slice on the true label (pipeline.eval_config): Transform's feature name.
LABEL_SLICE = "label"
LOW = "LOW"
ONE_PASS_SIGNATURE = "serving_examples"  # components/export.py's SERVING_EXAMPLES


@dataclass
class ClassRecall:
    """One true class's slice: accuracy within a true class is that class's recall."""
    label: Union[int, str]  # the slice value: a class index, or a string label
    examples: Optional[int]
    candidate: Optional[float]
    baseline: Optional[float]

    def low(self, ev) -> bool:
        """Recall 0, or below the baseline's by more than a drop threshold (informational)."""
        if self.candidate is None:
            return False
        if self.candidate == 0.0:
            return True
        if self.baseline is None:
            return False
        drop = self.baseline - self.candidate
        return ((ev.max_drop is not None and drop > ev.max_drop)
                or (ev.max_drop_relative is not None and drop > ev.max_drop_relative * self.baseline))


@dataclass
class Blessing:
    blessed: bool
    candidate: Optional[float]
    baseline: Optional[float]
    failures: list[str] = field(default_factory=list)  # TFMA's, one readable line each
    value_failed: bool = False   # TFMA failed accuracy on its value threshold
    change_failed: bool = False  # TFMA failed accuracy's change vs the baseline
    per_class: list[ClassRecall] = field(default_factory=list)  # by class index
    class_names: Optional[list[str]] = None  # line i names class i, when known
    signature: Optional[str] = None  # the signature TFMA called (its eval_config.json)
    metrics: dict = field(default_factory=dict)  # overall slice: {model: {metric name: value}}

    def tta_line(self, ev) -> Optional[str]:
        """How the models were evaluated, when eval.tta is set or TTA was used."""
        tta = bool(self.signature) and self.signature != ONE_PASS_SIGNATURE
        if tta:
            return (f"evaluated with test-time augmentation ({self.signature}: the mean of the softmax "
                    f"on each image and its horizontal mirror)"
                    + (", candidate and served model alike" if self.baseline is not None else ""))
        if getattr(ev, "tta", False) and self.signature:
            return (f"eval.tta: {ev.tta} set aside this run: the served model predates it (no TTA "
                    f"signature), so both models were evaluated in one pass")
        return None

    def class_name(self, label: Union[int, str]) -> str:
        names = self.class_names
        if isinstance(label, int) and names and 0 <= label < len(names):
            return names[label]
        return str(label)

    def report(self, ev) -> list[str]:
        """The blessing report: each threshold of `ev` (the eval config), the candidate's
        and the baseline's values, pass or FAIL; then the recall per true class."""
        return self.threshold_lines(ev) + self._per_class_lines(ev)

    def threshold_lines(self, ev) -> list[str]:
        """The report's thresholds: each one's candidate and baseline values, pass or FAIL,
        TFMA's failures and how the models were evaluated (TTA)."""
        rows = [("threshold", "candidate", "baseline", "result")]
        if ev.min_accuracy is not None:
            rows.append((f"accuracy >= {ev.min_accuracy} (eval.min_accuracy)", _fmt(self.candidate), "-",
                         _verdict(self.value_failed)))
        change = _change_row(ev)
        if change is not None:
            if self.baseline is None:
                rows.append((change, _fmt(self.candidate), "none", NOT_APPLIED))
            else:
                delta = (self.candidate or 0.0) - self.baseline
                rows.append((change, _fmt(self.candidate), _fmt(self.baseline),
                             f"{_verdict(self.change_failed)} (change {delta:+.4f})"))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = ["  " + "  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows]
        if self.failures:
            lines.append("  TFMA: " + "; ".join(self.failures))
        tta = self.tta_line(ev)
        if tta:
            lines.append("  " + tta)
        return lines

    def _per_class_lines(self, ev) -> list[str]:
        """Recall per true class, candidate and baseline; LOW marks a class at 0 or that
        dropped by more than the drop threshold. Informational: the thresholds judge the
        overall slice only."""
        if not self.per_class:
            return []
        rows = [("class", "examples", "candidate", "baseline")]
        marks = [""]
        for c in self.per_class:
            rows.append((self.class_name(c.label), "-" if c.examples is None else str(c.examples),
                         _fmt(c.candidate), _fmt(c.baseline)))
            marks.append(LOW if c.low(ev) else "")
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  recall per true class (informational: the thresholds above judge overall accuracy)"]
        lines += [("  " + "  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + m).rstrip()
                  for r, m in zip(rows, marks)]
        if any(marks):
            drops = [f"more than {k} ({v:g}{' of it' if k.endswith('relative') else ''}) below the "
                     f"served model's" for k, v in (("eval.max_drop", ev.max_drop),
                                                     ("eval.max_drop_relative", ev.max_drop_relative))
                     if v is not None]
            lines.append(f"  {LOW}: recall 0" + "".join(f", or {d}" for d in drops))
        return lines

    def headline(self, ev) -> str:
        first = self.baseline is None and _change_row(ev) is not None
        if self.blessed and first and ev.min_accuracy is None:
            # The Evaluator blesses this case (components/evaluator.py): with no model served,
            # a change threshold has nothing to compare with, and no value threshold is set.
            return ("BLESSED: nothing to fail: no value threshold (eval.min_accuracy) and no served "
                    "model to compare with; the change threshold applies from the next run")
        if self.blessed:
            text = "BLESSED: every threshold passed"
        else:
            text = "NOT BLESSED: " + ("; ".join(self.failures) or "a threshold failed")
        if first:
            text += " (no served model to compare with: judged on value thresholds alone)"
        return text


def _change_row(ev) -> Optional[str]:
    """The change threshold's row name. Absolute and relative drops are one TFMA change
    threshold (pipeline.eval_config), judged together, so they share one row."""
    parts, keys = [], []
    if ev.max_drop is not None:
        parts.append(f"accuracy drop <= {ev.max_drop}")
        keys.append("eval.max_drop")
    if ev.max_drop_relative is not None:
        parts.append(f"relative drop <= {ev.max_drop_relative}")
        keys.append("eval.max_drop_relative")
    return f"{' and '.join(parts)} vs the served model ({', '.join(keys)})" if parts else None


def _fmt(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.4f}"


def _verdict(failed: bool) -> str:
    return "FAIL" if failed else "pass"


def blessing_from(metrics, validation, blessed: bool) -> Blessing:
    """A Blessing from TFMA's MetricsForSlice records and its ValidationResult."""
    metrics = list(metrics)
    candidate = baseline = None
    per_class: dict = {}
    for slice_metrics in metrics:
        keys = slice_metrics.slice_key.single_slice_keys
        if keys:
            if len(keys) == 1 and keys[0].column == LABEL_SLICE:
                _add_class(per_class, keys[0], slice_metrics.metric_keys_and_values)
            continue
        for kv in slice_metrics.metric_keys_and_values:
            if kv.key.name != ACCURACY or kv.key.is_diff:
                continue
            value = kv.value.double_value.value
            if kv.key.model_name == "baseline":
                baseline = value
            else:
                candidate = value
    b = Blessing(blessed=blessed, candidate=candidate, baseline=baseline,
                 per_class=[per_class[k] for k in sorted(per_class, key=lambda v: (isinstance(v, str), v))],
                 metrics=overall_metrics(metrics))
    for per_slice in validation.metric_validations_per_slice:
        for f in per_slice.failures:
            b.failures.append(f"{f.metric_key.name}{' change' if f.metric_key.is_diff else ''} = "
                              f"{f.metric_value.double_value.value:.4f} violates "
                              f"{_threshold_text(f.metric_threshold)}")
            if f.metric_key.name == ACCURACY:
                if f.metric_key.is_diff:
                    b.change_failed = True
                else:
                    b.value_failed = True
    return b


def _add_class(per_class: dict, key, metric_keys_and_values) -> None:
    kind = key.WhichOneof("kind")
    value = getattr(key, kind)
    if kind == "bytes_value":
        value = value.decode("utf-8", "replace")
    elif kind == "float_value":
        value = int(value) if float(value).is_integer() else str(value)
    c = per_class.setdefault(value, ClassRecall(label=value, examples=None, candidate=None, baseline=None))
    for kv in metric_keys_and_values:
        if kv.key.is_diff:
            continue
        v = kv.value.double_value.value
        if kv.key.name == ACCURACY:
            if kv.key.model_name == "baseline":
                c.baseline = v
            else:
                c.candidate = v
        elif kv.key.name == EXAMPLE_COUNT and (kv.key.model_name != "baseline" or c.examples is None):
            c.examples = int(round(v))


def overall_metrics(metrics) -> dict:
    """{model ("candidate" or "baseline"): {metric name: value}} of the overall slice
    (changes vs the baseline left out)."""
    out: dict = {}
    for slice_metrics in metrics:
        if slice_metrics.slice_key.single_slice_keys:
            continue
        for kv in slice_metrics.metric_keys_and_values:
            if kv.key.is_diff or not kv.value.HasField("double_value"):
                continue
            out.setdefault(kv.key.model_name or "candidate", {})[kv.key.name] = kv.value.double_value.value
    return out


def evaluated_signature(evaluation_uri: str) -> Optional[str]:
    """The signature TFMA called for the candidate, from the eval config it wrote."""
    from tensorflow_model_analysis.writers import eval_config_writer

    try:
        config = eval_config_writer.load_eval_run(evaluation_uri)[0]
    except Exception:  # noqa: BLE001 - an output without it: nothing to say
        return None
    if config is None:
        return None
    specs = [s for s in config.model_specs if not s.is_baseline] or list(config.model_specs)
    return specs[0].signature_name if specs else None


def read_blessing(evaluation_uri: str, blessed: bool, class_names: Optional[list[str]] = None) -> Blessing:
    import tensorflow_model_analysis as tfma

    b = blessing_from(tfma.load_metrics(evaluation_uri), tfma.load_validation_result(evaluation_uri),
                      blessed)
    b.class_names = class_names
    b.signature = evaluated_signature(evaluation_uri)
    return b


def _threshold_text(threshold) -> str:
    if threshold.HasField("value_threshold"):
        v = threshold.value_threshold
        parts = ([f"lower bound {v.lower_bound.value:g}"] if v.HasField("lower_bound") else []) + \
                ([f"upper bound {v.upper_bound.value:g}"] if v.HasField("upper_bound") else [])
        return "value threshold " + " and ".join(parts)
    c = threshold.change_threshold
    parts = ([f"absolute {c.absolute.value:+g}"] if c.HasField("absolute") else []) + \
            ([f"relative {c.relative.value:+g}"] if c.HasField("relative") else [])
    return "change threshold " + " and ".join(parts) + " (higher is better)"
