"""The canary's client: loads a staged SavedModel and calls `serving_default` as a model
server's client would, in a process that has TensorFlow and nothing of xfer or TFX.

Run by components/canary.py as `python -I canary_probe.py REQUEST.json RESULT.json`
(-I: no PYTHONPATH, no user site, not even this file's folder on sys.path), so the
model must load and answer from what is inside the SavedModel alone, as in TF Serving.
Importing xfer, TFX or their libraries is refused outright (a meta-path finder below),
and the modules loaded at the end are checked again and reported.

Only the standard library, NumPy and TensorFlow: this file imports nothing else.

REQUEST.json: {"model_dir", "images": [file paths], "max_batch", "single_repeats",
"batch_repeats"}. RESULT.json: the signature's input and outputs as declared, each image's
answer alone (its outputs' names, dtypes, shapes and values), the full-batch request's
outcome, latencies in seconds, and the forbidden modules seen.
"""
import importlib.abc
import json
import sys
import time

FORBIDDEN = ("xfer", "tfx", "tfx_bsl", "tensorflow_transform", "tensorflow_model_analysis", "ml_metadata",
             "apache_beam")


class _Forbid(importlib.abc.MetaPathFinder):
    """Refuses the import of anything a model server does not have."""
    attempts: list = []

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN:
            self.attempts.append(name)
            raise ImportError(f"canary probe: '{name}' may not be imported: the served model must load "
                              f"with TensorFlow alone")
        return None


sys.meta_path.insert(0, _Forbid())

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def _spec(tensor_spec) -> dict:
    shape = tensor_spec.shape
    return {"dtype": tensor_spec.dtype.name, "shape": None if shape.rank is None else shape.as_list()}


def _answer(out: dict) -> dict:
    def value(v):
        v = v.numpy()
        return [x.decode("utf-8", "replace") if isinstance(x, bytes) else x for x in v.tolist()]
    return {"outputs": {k: {"dtype": v.dtype.name, "shape": v.shape.as_list()} for k, v in out.items()},
            "values": {k: value(v) for k, v in out.items()}}


def _reason(e: Exception) -> str:
    """One line of an exception: TensorFlow's "Graph execution error:" says nothing; the
    failed assertion's message (serving.max_batch) does."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    said = next((line for line in lines if line.startswith("assertion failed")), None)
    said = said or next((line for line in lines if not line.endswith(":")), lines[0] if lines else "")
    return f"{type(e).__name__}: {said[:300]}"


def probe(request: dict) -> dict:
    model = tf.saved_model.load(request["model_dir"])
    if "serving_default" not in model.signatures:
        return {"error": f"no serving_default signature (it has: {', '.join(sorted(model.signatures)) or 'none'})"}
    fn = model.signatures["serving_default"]
    args, kwargs = fn.structured_input_signature
    result = {"inputs": {k: _spec(v) for k, v in kwargs.items()},
              "declared_outputs": {k: _spec(v) for k, v in fn.structured_outputs.items()}}
    if len(kwargs) != 1 or args:
        result["error"] = f"serving_default takes {len(kwargs)} named input(s) and {len(args)} positional; want one"
        return result
    (name,) = kwargs
    images = []
    for path in request["images"]:
        with open(path, "rb") as f:
            images.append(f.read())

    def call(batch):
        return fn(**{name: tf.constant(batch, dtype=tf.string)})

    call(images[:1])  # the first call traces and allocates: not a request's latency
    answers, single = [], []
    for image in images:
        started = time.perf_counter()
        out = call([image])
        single.append(time.perf_counter() - started)
        answers.append(_answer(out))
    while len(single) < request["single_repeats"]:
        image = images[len(single) % len(images)]
        started = time.perf_counter()
        call([image])
        single.append(time.perf_counter() - started)
    result["answers"] = answers
    result["single_seconds"] = single

    full = [images[i % len(images)] for i in range(request["max_batch"])]
    batch_seconds = []
    try:
        for _ in range(request["batch_repeats"]):
            started = time.perf_counter()
            out = call(full)
            batch_seconds.append(time.perf_counter() - started)
        got = _answer(out)
        result["batch"] = {"size": len(full), "rows": {k: v["shape"][0] if v["shape"] else None
                                                       for k, v in got["outputs"].items()},
                           "errors": sorted({e for e in got["values"].get("error", []) if e})}
    except Exception as e:  # noqa: BLE001 - reported as the check that failed
        result["batch"] = {"size": len(full), "failed": _reason(e)}
    result["batch_seconds"] = batch_seconds
    return result


def main(argv) -> int:
    with open(argv[1]) as f:
        request = json.load(f)
    try:
        result = probe(request)
    except Exception as e:  # noqa: BLE001 - the model did not load or a one-image request failed
        result = {"error": _reason(e)}
    result["forbidden_imported"] = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
    result["forbidden_attempts"] = list(_Forbid.attempts)
    result["numpy"] = np.__version__
    result["tensorflow"] = tf.__version__
    with open(argv[2], "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
