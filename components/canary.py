"""The canary: a staged version must answer raw image bytes, as the Evaluator scored it,
before the Pusher lets it appear.

TFX's answer to "the model loads in TFMA, but does it serve?" is InfraValidator, between
the Evaluator and the Pusher. Here the Pusher does it on the staged copy itself (the very
bytes that become the version), called from its card step (components/pusher.py):

1. Eval images: up to `N_IMAGES` records of the eval split of the checked examples the
   Pusher receives (DataCheck's), at least one of each image format found among the first
   `SCAN_RECORDS`; each image's encoded bytes exactly as stored, which is what a client
   sends (the bytes of the file).
2. The reference: in this process, the staged SavedModel's tf.Example signature that the
   Evaluator called (its eval_config.json: `serving_examples`, or `serving_examples_flips`
   with eval.tta) on those records' serialized tf.Examples: its class_id is the Evaluator's
   top-1 for that image. When the Evaluator scored with TTA but serving_default is one pass
   (serving.tta off), the reference is the one-pass `serving_examples`, and the card says so:
   what is compared must be the function that serves.
3. The probe (components/canary_probe.py), in a fresh `python -I` process that may import
   TensorFlow only (xfer, TFX, TFT, TFMA and Beam are refused by an import hook and checked
   in sys.modules at the end): loads the staged version, calls `serving_default` with each
   image's raw bytes alone, then one request of `max_batch` images (the limit in the
   version's assets.extra/serving.json, the one the model enforces), and times them.
4. Checks, in order; the first that fails refuses the version with one line naming the
   check and the image: the process ran and imported nothing forbidden; serving_default
   has one input `images`, DT_STRING of shape [batch] (what TF Serving's REST layer decodes
   {"b64": ...} into, see docs/serving.md); the declared and the returned outputs are
   exactly export.OUTPUTS with the dtypes in DTYPES and one row per image; each image is classified
   (empty `error`); each image's class_id equals the reference's; the full batch answers
   with max_batch rows and no error.

A refusal raises CanaryRefused inside the staging step, so the staging folder is removed and
no version appears, and the Pusher step fails with the line. Why fail and not "not pushed"
(InfraValidator's NOT_BLESSED, after which TFX's Pusher silently skips): a model TFMA blessed
that does not serve is a broken export, not a worse model; the next run with the same code
would be refused again, and a failed step is what `xfer run`, its result.json and the
Kubeflow UI show with its reason, where "pushed: nothing" would hide it.

Latency (p50 and p99 of the one-image requests and of the full-batch requests, measured in
the probe around the signature call, the first call excluded) goes to the model card.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import tensorflow as tf

N_IMAGES = 16
SCAN_RECORDS = 4096
SINGLE_REPEATS = 32        # one-image requests timed (the N images, then cycled)
BATCH_REPEATS = 3          # full-batch requests timed
PROBE_TIMEOUT_SECONDS = 1800
PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "canary_probe.py")
INPUT_NAME, INPUT_DTYPE = "images", "string"
# The dtype of each output export.OUTPUTS names (docs/serving.md's table); an output with no
# entry here is not documented, and a model returning it is refused until it is.
DTYPES = {"probabilities": "float32", "class_id": "int64", "class_name": "string", "error": "string",
          "abstained": "bool"}
WARMUP_IMAGES = 4


class CanaryRefused(RuntimeError):
    """The staged version failed a canary check; nothing was pushed."""


@dataclass
class EvalImage:
    where: str     # "eval record 12 of Split-eval/data.gz (PNG)"
    format: str
    image: bytes   # the encoded bytes, as a client sends them
    example: bytes  # the serialized tf.Example, as the Evaluator reads it


@dataclass
class Report:
    images: int
    formats: list
    compared: str
    max_batch: int
    single: list = field(default_factory=list)   # seconds
    batch: list = field(default_factory=list)

    def latency(self) -> dict:
        def p(xs, q):
            return float(np.percentile(xs, q)) if xs else None
        return {"single_p50": p(self.single, 50), "single_p99": p(self.single, 99),
                "batch_p50": p(self.batch, 50), "batch_p99": p(self.batch, 99)}


def documented_outputs() -> dict:
    """{output: dtype} serving_default must return: export.OUTPUTS with their dtypes."""
    from xfer.components.export import OUTPUTS

    return {k: DTYPES.get(k, "undocumented") for k in OUTPUTS}


def image_format(data: bytes) -> str:
    """The format by its magic bytes (what the serving guard accepts), else 'other'."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:2] == b"BM":
        return "BMP"
    return "other"


def eval_images(examples_uri: str, image_key: str, n: int = N_IMAGES) -> list[EvalImage]:
    """Up to n eval images, every format seen among the first SCAN_RECORDS represented."""
    from xfer.components.tfrecords import read_records

    files = sorted(tf.io.gfile.glob(os.path.join(examples_uri, "Split-eval", "*")))
    by_format: dict[str, list[EvalImage]] = {}
    scanned = 0
    for path in files:
        for index, raw in enumerate(read_records(path)):
            if scanned >= SCAN_RECORDS:
                break
            scanned += 1
            example = tf.train.Example.FromString(raw)
            values = example.features.feature[image_key].bytes_list.value if image_key in example.features.feature else []
            if not values:
                continue
            fmt = image_format(values[0])
            by_format.setdefault(fmt, []).append(EvalImage(
                f"eval record {index} of {os.path.join('Split-eval', os.path.basename(path))} ({fmt})",
                fmt, values[0], raw))
    chosen, queues = [], [list(v) for _, v in sorted(by_format.items())]
    while len(chosen) < n and any(queues):  # round-robin over the formats
        for q in queues:
            if q and len(chosen) < n:
                chosen.append(q.pop(0))
    if not chosen:
        raise CanaryRefused(f"canary: no eval image under '{image_key}' in {examples_uri}/Split-eval: nothing "
                            f"to send to serving_default; nothing pushed")
    return chosen


def reference_signature(model_dir: str, evaluation_uri: Optional[str]) -> tuple[str, str]:
    """(the tf.Example signature whose answers serving_default must equal, how it was chosen)."""
    from xfer.components.export import SERVING_EXAMPLES, SERVING_JSON, TTA_SIGNATURES

    path = os.path.join(model_dir, SERVING_JSON)
    served_tta = json.loads(tf.io.gfile.GFile(path).read()).get("tta") if tf.io.gfile.exists(path) else False
    twin = TTA_SIGNATURES[served_tta] if served_tta else SERVING_EXAMPLES
    evaluated = None
    if evaluation_uri:
        from xfer.pipeline.blessing import evaluated_signature
        evaluated = evaluated_signature(evaluation_uri)
    if evaluated in (None, twin):
        return twin, f"{twin} on the tf.Examples (the signature the Evaluator called)"
    return twin, (f"{twin} on the tf.Examples: the Evaluator called {evaluated}, but serving_default "
                  f"{'averages flips' if served_tta else 'is one pass'} (serving.tta), so the served function's "
                  f"tf.Example twin is the reference")


def reference(model_dir: str, signature: str, examples: list[bytes]) -> list[tuple[int, str]]:
    """(class_id, error) per example from `signature`, in this process: each record alone
    (an answer does not depend on its batch; one at a time stays within any max_batch)."""
    fn = tf.saved_model.load(model_dir).signatures[signature]
    out = []
    for example in examples:
        got = fn(examples=tf.constant([example]))
        out.append((int(got["class_id"].numpy()[0]), got["error"].numpy()[0].decode()))
    return out


def _max_batch(model_dir: str) -> int:
    from xfer.components.export import SERVING_JSON
    from xfer.components.settings import ServingConfig

    path = os.path.join(model_dir, SERVING_JSON)
    if tf.io.gfile.exists(path):
        return int(json.loads(tf.io.gfile.GFile(path).read())["max_batch"])
    return ServingConfig().max_batch


def run_probe(model_dir: str, images: list[bytes], max_batch: int) -> dict:
    """The probe's result (canary_probe.py), run in a clean `python -I` process on a local copy."""
    work = tempfile.mkdtemp(prefix="xfer-canary-")
    try:
        local = model_dir
        if "://" in model_dir:  # gs://: the probe reads a local copy, as a model server downloads one
            from tfx.utils import io_utils
            local = os.path.join(work, "model")
            io_utils.copy_dir(model_dir, local)
        paths = []
        for k, image in enumerate(images):
            paths.append(os.path.join(work, f"image-{k:03d}"))
            with open(paths[-1], "wb") as f:
                f.write(image)
        request, result = os.path.join(work, "request.json"), os.path.join(work, "result.json")
        with open(request, "w") as f:
            json.dump({"model_dir": local, "images": paths, "max_batch": max_batch,
                       "single_repeats": SINGLE_REPEATS, "batch_repeats": BATCH_REPEATS}, f)
        # Nothing of this process's environment that could put xfer on the path or change TF's
        # behaviour: -I drops PYTHONPATH and user site; the environment is rebuilt from scratch.
        env = {"PATH": os.environ.get("PATH", ""), "HOME": work, "TF_CPP_MIN_LOG_LEVEL": "2",
               "LANG": "C.UTF-8"}
        done = subprocess.run([sys.executable, "-I", PROBE, request, result], env=env, cwd=work,
                              capture_output=True, text=True, timeout=PROBE_TIMEOUT_SECONDS)
        if done.returncode != 0 or not os.path.exists(result):
            last = (done.stderr.strip().splitlines() or ["no output"])[-1][:300]
            raise CanaryRefused(f"canary: the probe process failed (exit {done.returncode}): {last}; nothing pushed")
        with open(result) as f:
            return json.load(f)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check(model_dir: str, examples_uri: str, image_key: str, evaluation_uri: Optional[str],
          n: int = N_IMAGES) -> Report:
    """Runs the canary on the staged version at `model_dir`; raises CanaryRefused."""
    images = eval_images(examples_uri, image_key, n)
    documented = documented_outputs()
    max_batch = _max_batch(model_dir)
    signature, compared = reference_signature(model_dir, evaluation_uri)
    want = reference(model_dir, signature, [i.example for i in images])
    got = run_probe(model_dir, [i.image for i in images], max_batch)

    def refuse(what: str, image: Optional[EvalImage] = None):
        on = f" on {image.where}" if image else ""
        raise CanaryRefused(f"canary refused the model: {what}{on}; nothing pushed")

    if got.get("forbidden_imported") or got.get("forbidden_attempts"):
        refuse(f"imports: the probe process imported {', '.join(got.get('forbidden_attempts') or got['forbidden_imported'])}")
    if got.get("error") and "inputs" not in got:
        refuse(f"load: {got['error']}")
    inputs = got["inputs"]
    if list(inputs) != [INPUT_NAME] or inputs[INPUT_NAME] != {"dtype": INPUT_DTYPE, "shape": [None]}:
        refuse(f"input: serving_default takes {json.dumps(inputs)}, not '{INPUT_NAME}' {INPUT_DTYPE} [batch] "
               f"(the raw image bytes TF Serving decodes b64 into)")
    declared = {k: v["dtype"] for k, v in got["declared_outputs"].items()}
    if declared != documented:
        refuse(f"outputs: serving_default declares {json.dumps(declared)}, documented {json.dumps(documented)}")
    if got.get("error"):
        refuse(f"request: {got['error']}")
    for image, answer, (ref_id, ref_error) in zip(images, got["answers"], want):
        dtypes = {k: v["dtype"] for k, v in answer["outputs"].items()}
        rows = {k: (v["shape"] or [None])[0] for k, v in answer["outputs"].items()}
        if dtypes != documented or set(rows.values()) != {1}:
            refuse(f"outputs: one image gave {json.dumps(dtypes)} with rows {json.dumps(rows)}, documented "
                   f"{json.dumps(documented)} with one row per image", image)
        error = answer["values"]["error"][0]
        if error:
            refuse(f"classified: serving_default answered error '{error}' for its raw bytes", image)
        if ref_error:
            refuse(f"reference: {signature} answered error '{ref_error}' for its tf.Example", image)
        served_id, name = answer["values"]["class_id"][0], answer["values"]["class_name"][0]
        if served_id != ref_id:
            refuse(f"top-1: serving_default on its raw bytes gave class {served_id} ('{name}'), {signature} on "
                   f"its tf.Example (the Evaluator's) gave class {ref_id}", image)
    batch = got["batch"]
    if "failed" in batch:
        refuse(f"max_batch: a request of {max_batch} images (serving.max_batch) failed: {batch['failed']}")
    if set(batch["rows"].values()) != {max_batch} or batch["errors"]:
        refuse(f"max_batch: a request of {max_batch} images gave rows {json.dumps(batch['rows'])} and errors "
               f"{batch['errors']}")
    formats = sorted({i.format for i in images})
    return Report(images=len(images), formats=formats, max_batch=max_batch, single=got["single_seconds"],
                  batch=got["batch_seconds"],
                  compared=(f"top-1 (class_id) of serving_default on each image's raw encoded bytes, in a "
                            f"process with TensorFlow only, equals that of {compared}"))


def card_section(report: Optional[Report], why_not: Optional[str] = None):
    """The model card's section on the canary (components/model_card.py renders it)."""
    from xfer.components.model_card import Section

    documented = documented_outputs()
    s = Section("Serving canary")
    if report is None:
        s.blocks.append(("p", f"Not run: {why_not}."))
        return s
    lat = report.latency()
    s.blocks.append(("p", f"Checked before this version appeared: {report.images} eval image(s) "
                          f"({', '.join(report.formats)}); {report.compared}; outputs "
                          f"{', '.join(f'{k} {v}' for k, v in documented.items())}; one request of "
                          f"{report.max_batch} images (serving.max_batch) answered."))
    ms = lambda v: "-" if v is None else f"{v * 1000:.1f} ms"  # noqa: E731
    s.blocks.append(("table", ("request", "requests timed", "p50", "p99"), [
        ("one image", str(len(report.single)), ms(lat["single_p50"]), ms(lat["single_p99"])),
        (f"{report.max_batch} images", str(len(report.batch)), ms(lat["batch_p50"]), ms(lat["batch_p99"]))]))
    s.blocks.append(("p", "Latency: the signature call in the canary's process on the machine that pushed "
                          "(no network, no model server), the first call excluded."))
    return s


def before_push(version_dir: str, examples_uri: Optional[str], image_key: str,
                evaluation_uri: Optional[str]):
    """The warm-up requests and the canary, on the staged version; the card's section.
    Without the eval examples (a Pusher given none) neither can be made, and the card says so."""
    from xfer.components import serving_warmup

    if not examples_uri:
        return card_section(None, "the Pusher received no eval examples")
    report = check(version_dir, examples_uri, image_key, evaluation_uri)
    images = eval_images(examples_uri, image_key, WARMUP_IMAGES)
    serving_warmup.write(version_dir, [i.image for i in images])
    return card_section(report)
