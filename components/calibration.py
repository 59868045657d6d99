"""Temperature scaling and abstention: probabilities that mean what they say, and a model
that may answer "unknown".

eval.calibrate: temperature. After training, the Trainer calls the served signature on
the eval split, splits the split in two halves by each serialized record's hash (the same
record is always in the same half, whatever the file order), fits one temperature T on
the FIT half (minimum negative log-likelihood) and measures the expected calibration
error (ECE, ECE_BINS equal-width bins of the top probability) before and after on the
other half, never on the examples T was fitted on. The exported signatures then return
softmax(log(p) / T): the model's output is a softmax, and log(p) equals its logits up to
one constant per image, which softmax ignores. T only rescales confidence, so top-1 (and
accuracy) are unchanged.

serving.abstain_below: P. The signatures answer class_name "unknown" and abstained true
when the top probability is below P. The coverage/accuracy table (fraction of the eval
split answered and the accuracy on it, at COVERAGE_AT and the chosen P) is measured by
the exported graph itself, so the card's figure is what serving does on those images.

What the Trainer measures goes into the model run's calibration.json (and the diagram
reliability.png), which the model card reads.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

ECE_BINS = 15
CALIBRATION_JSON = "calibration.json"
RELIABILITY_PNG = "reliability.png"
UNKNOWN = "unknown"
# The thresholds the card's coverage table shows besides the chosen one.
COVERAGE_AT = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
# The temperature is searched in [e^-4, e^4]: far beyond any useful rescaling, and a
# bounded interval keeps a degenerate half (all correct at p = 1) from running off.
LOG_T_RANGE = (-4.0, 4.0)
# Records read per call of the signature while measuring.
BATCH = 64


def in_fit_half(record: bytes) -> bool:
    """Whether a serialized eval record is in the half the temperature is fitted on."""
    return hashlib.sha256(record).digest()[0] % 2 == 0


def logits_of(probabilities: np.ndarray) -> np.ndarray:
    """log(p), p floored at the smallest normal float32 so a 0 stays finite."""
    return np.log(np.maximum(probabilities.astype(np.float64), np.finfo(np.float32).tiny))


def scale(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    z = logits_of(probabilities) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(probabilities: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = logits_of(probabilities) / temperature
    top = z.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(labels)), labels]))


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The T minimizing the mean NLL of softmax(log(p) / T): golden-section search on log T
    (NLL is convex in 1/T, so unimodal in log T), to 1e-5 in log T."""
    lo, hi = LOG_T_RANGE
    g = (np.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(probabilities, labels, np.exp(a)), nll(probabilities, labels, np.exp(b))
    while hi - lo > 1e-5:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(probabilities, labels, np.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(probabilities, labels, np.exp(b))
    return float(np.exp((lo + hi) / 2))


def bins(probabilities: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> list[tuple[int, float, float]]:
    """Per equal-width bin of the top probability ((k/n, (k+1)/n], the first closed):
    (examples, mean confidence, accuracy)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    which = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    out = []
    for k in range(n_bins):
        inside = which == k
        n = int(inside.sum())
        out.append((n, float(confidence[inside].mean()) if n else 0.0, float(correct[inside].mean()) if n else 0.0))
    return out


def ece(probabilities: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error: sum over bins of (bin share) x |accuracy - confidence|."""
    total = len(labels)
    return float(sum(n / total * abs(acc - conf) for n, conf, acc in bins(probabilities, labels, n_bins) if n))


def coverage(top: np.ndarray, correct: np.ndarray, below: float) -> tuple[float, Optional[float]]:
    """(share answered, accuracy on the answered) when images with top probability < below abstain."""
    answered = top >= below
    n = int(answered.sum())
    return n / len(top), (float(correct[answered].mean()) if n else None)


@dataclass
class Report:
    """What calibration.json holds; the model card's source."""
    examples: int                               # eval examples classified (no per-image error)
    calibrate: str = "none"
    temperature: float = 1.0
    fit_examples: int = 0
    measured_examples: int = 0
    ece_bins: int = ECE_BINS
    ece_before: Optional[float] = None          # on the measured half
    ece_after: Optional[float] = None
    nll_before: Optional[float] = None
    nll_after: Optional[float] = None
    abstain_below: Optional[float] = None
    # [threshold, coverage, accuracy on answered or None, chosen]: on the whole eval split,
    # with the exported (calibrated) probabilities.
    coverage: list = field(default_factory=list)
    # The chosen threshold's coverage as the exported graph's `abstained` output gives it.
    served_coverage: Optional[float] = None

    def write(self, model_run_dir: str) -> str:
        import tensorflow as tf

        path = os.path.join(model_run_dir, CALIBRATION_JSON)
        with tf.io.gfile.GFile(path, "w") as f:
            json.dump(asdict(self), f, indent=1)
        return path


def read(model_run_dir: Optional[str]) -> Optional[dict]:
    import tensorflow as tf

    path = os.path.join(model_run_dir or "", CALIBRATION_JSON)
    if not model_run_dir or not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def plot_reliability(before: np.ndarray, after: Optional[np.ndarray], labels: np.ndarray, path: str) -> None:
    """Accuracy against confidence per bin, before and after, with the diagonal; the
    figure's size is fixed (reports._save bounds every PNG)."""
    from xfer.components import reports

    plt = reports._pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="#999", linestyle="--", linewidth=1, label="perfectly calibrated")
    for probs, name, marker in ((before, "as trained", "o"), (after, "temperature-scaled", "s")):
        if probs is None:
            continue
        pts = [(conf, acc) for n, conf, acc in bins(probs, labels) if n]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker,
                label=f"{name} (ECE {ece(probs, labels):.4f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel(f"confidence (top probability; {ECE_BINS} bins)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability on {len(labels)} held-out eval images")
    ax.legend(loc="upper left", fontsize=8)
    reports._save(fig, path)


def scale_tf(probabilities, temperature: float):
    """softmax(log(p) / T) in the serving graph; T = 1 leaves the graph as it was."""
    if temperature == 1.0:
        return probabilities
    import tensorflow as tf

    logits = tf.math.log(tf.maximum(probabilities, float(np.finfo(np.float32).tiny)))
    return tf.nn.softmax(logits / tf.constant(temperature, tf.float32), axis=-1)


def _served(signature, transform_features, eval_files: list[str]):
    """(in the fit half, probabilities, labels, classified, abstained) per eval example
    through `signature`; only each record's half is kept, not the record."""
    import tensorflow as tf

    from xfer.components import inputs
    from xfer.components.transform import LABEL

    halves, probs, labels, ok, abstained = [], [], [], [], []
    for batch in inputs.read_records(eval_files).batch(BATCH):
        out = signature(examples=batch)
        halves += [in_fit_half(bytes(r)) for r in batch.numpy()]
        probs.append(out["probabilities"].numpy())
        labels.append(tf.reshape(transform_features(examples=batch)[LABEL], [-1]).numpy())
        ok.append(out["error"].numpy() == b"")
        abstained.append(out["abstained"].numpy())
    cat = np.concatenate
    return np.array(halves, dtype=bool), cat(probs), cat(labels).astype(np.int64), cat(ok), cat(abstained)


def for_export(build, eval_files: list[str], s, model_run_dir: str) -> tuple[dict, float]:
    """(signatures to export, temperature): `build(T)` makes the signatures with
    temperature T (components/export.py). Without eval.calibrate or serving.abstain_below,
    build(1.0) and nothing measured; else calibration.json (and with a temperature,
    reliability.png) in `model_run_dir`."""
    import time

    import tensorflow as tf

    from xfer.components.export import SERVING_EXAMPLES, TRANSFORM_FEATURES, TTA_SIGNATURES

    sigs = build(1.0)
    if s.calibrate == "none" and s.serving.abstain_below is None:
        return sigs, 1.0
    start = time.perf_counter()
    tf.io.gfile.makedirs(model_run_dir)
    # What serving_default answers: one pass, or the flips' mean when serving.tta is on.
    served = TTA_SIGNATURES[s.serving.tta] if s.serving.tta else SERVING_EXAMPLES
    halves, probs, labels, ok, _ = _served(sigs[served], sigs[TRANSFORM_FEATURES], eval_files)
    report = Report(examples=int(ok.sum()), abstain_below=s.serving.abstain_below)
    temperature = 1.0
    if s.calibrate == "temperature":
        fit, measure = halves & ok, ~halves & ok
        if not fit.any() or not measure.any():
            print(f"[xfer] calibration: not calibrated: the eval split's {report.examples} classified "
                  f"example(s) do not fill both halves (one to fit, one to measure); add eval examples",
                  flush=True)
            report.calibrate = "none (the eval split is too small to hold a half out)"
        else:
            temperature = fit_temperature(probs[fit], labels[fit])
            before, after = probs[measure], scale(probs[measure], temperature)
            report.calibrate, report.temperature = "temperature", temperature
            report.fit_examples, report.measured_examples = int(fit.sum()), int(measure.sum())
            report.ece_before, report.ece_after = ece(before, labels[measure]), ece(after, labels[measure])
            report.nll_before = nll(probs[measure], labels[measure], 1.0)
            report.nll_after = nll(probs[measure], labels[measure], temperature)
            plot_reliability(before, after, labels[measure], os.path.join(model_run_dir, RELIABILITY_PNG))
            print(f"[xfer] calibration: temperature {temperature:.4f} fitted on {report.fit_examples} eval "
                  f"examples; ECE ({ECE_BINS} bins) on the other {report.measured_examples}: "
                  f"{report.ece_before:.4f} before, {report.ece_after:.4f} after", flush=True)
            sigs = build(temperature)
    # Coverage by the graph that is exported: its probabilities and its `abstained`.
    _, final, labels, ok, abstained = _served(sigs[served], sigs[TRANSFORM_FEATURES], eval_files)
    top, correct = final[ok].max(axis=1), final[ok].argmax(axis=1) == labels[ok]
    chosen = s.serving.abstain_below
    for p in sorted(set(COVERAGE_AT) | ({chosen} if chosen is not None else set())):
        share, accuracy = coverage(top, correct, p)
        report.coverage.append([p, share, accuracy, p == chosen])
    if chosen is not None and ok.any():
        report.served_coverage = float(1.0 - abstained[ok].mean())
        print(f"[xfer] abstain below {chosen:g}: the exported model answers {report.served_coverage:.4f} of "
              f"{int(ok.sum())} eval examples", flush=True)
    report.write(model_run_dir)
    print(f"[xfer] calibration and coverage measured in {time.perf_counter() - start:.1f}s", flush=True)
    return sigs, temperature


def card_section(model_run_dir: Optional[str]):
    """The model card's "Calibration and abstention" section, from calibration.json."""
    import tensorflow as tf

    from xfer.components.model_card import Section

    s = Section("Calibration and abstention")
    r = read(model_run_dir)
    if r is None:
        return s  # neither eval.calibrate nor serving.abstain_below: no section
    if r["calibrate"] == "temperature":
        s.blocks.append(("p", f"eval.calibrate: temperature. One temperature T = {r['temperature']:.4f} was fitted "
                              f"(minimum negative log-likelihood) on {r['fit_examples']} eval examples (half of the "
                              f"eval split, chosen by each record's SHA-256) and is applied in every signature: "
                              f"probabilities = softmax(log(p) / T); the class ranking is unchanged. Measured on "
                              f"the other {r['measured_examples']} eval examples, never used to fit T:"))
        s.blocks.append(("table", ("measure (held-out half)", "as trained", "calibrated"), [
            (f"expected calibration error ({r['ece_bins']} equal-width bins of the top probability)",
             f"{r['ece_before']:.4f}", f"{r['ece_after']:.4f}"),
            ("negative log-likelihood", f"{r['nll_before']:.4f}", f"{r['nll_after']:.4f}")]))
        png = os.path.join(model_run_dir, RELIABILITY_PNG)
        if tf.io.gfile.exists(png):
            with tf.io.gfile.GFile(png, "rb") as f:
                s.blocks.append(("img", "Reliability diagram on the held-out half (accuracy against confidence)",
                                 f.read(), png))
    else:
        s.blocks.append(("p", f"eval.calibrate: {r['calibrate']}: the probabilities are the model's softmax."))
    chosen = r.get("abstain_below")
    s.blocks.append(("p", f"Coverage and accuracy on the eval split ({r['examples']} classified examples), with the "
                          f"served probabilities: an image whose top probability is below P is answered "
                          f"'unknown' (serving.abstain_below: P). "
                          + (f"Chosen: P = {chosen:g}; the exported model answers "
                             f"{r['served_coverage']:.4f} of these images." if chosen is not None and
                             r.get("served_coverage") is not None else "serving.abstain_below is not set: "
                             "every image is answered.")))
    s.blocks.append(("table", ("P", "coverage (answered)", "accuracy on answered", ""),
                     [(f"{p:g}", f"{cov:.4f}", "-" if acc is None else f"{acc:.4f}", "chosen" if mine else "")
                      for p, cov, acc, mine in r["coverage"]]))
    return s
