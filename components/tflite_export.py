"""push.tflite: the pushed model as a TFLite file for devices, float32, float16 or int8, and
proof that it answers as the SavedModel does.

The file's contract is the one the float32 export always had: one decoded, resized RGB
image [1, size, size, 3] (decode and resize on the device, as components/decode.py does)
and class probabilities out; the backbone's normalization is inside. Per kind:

- float32: input float32 pixels in [0, 255], output float32 probabilities.
- float16: the same tensors; weights stored as float16 (about half the size), computed in
  float32 on CPUs.
- int8: full integer quantization (every op int8), calibrated on REPRESENTATIVE_IMAGES
  train images; input uint8 pixels and output uint8 probabilities. The input's
  quantization is pinned to scale 1, zero point 0 (pixel value = the uint8, two
  pinning images in the representative set span 0..255), so a device feeds its decoded
  RGB bytes as they are; the output's scale and zero point are in the file
  (output_details' quantization), and top-1 is the argmax of the uint8s.

The Pusher runs the file on every eval example DataCheck kept (through the model's own
transform_features signature, so pixels are the ones the SavedModel saw) and compares its
top-1 with the SavedModel's serving_examples. The agreement and the file size go into
assets.extra/tflite.json, which the model card reads; below push.tflite_min_agreement the
file is not written and the version is pushed without it.

TFLite has no calibration temperature or abstain threshold inside: T does not move top-1,
and both are in assets.extra/serving.json for a device to apply (docs/serving.md).
"""
from __future__ import annotations

import json
import os
import time
from typing import Iterator, Optional

import numpy as np
import tensorflow as tf

REPORT = os.path.join("assets.extra", "tflite.json")
# Train images the int8 converter measures activation ranges on: the first ones of the
# split, in file order (deterministic), enough for the ranges to settle.
REPRESENTATIVE_IMAGES = 200
BATCH = 64


class NoImages(ValueError):
    """int8 asked for, but no train images reached the Pusher to calibrate on."""


def _records(examples_uri: str, split: str) -> tf.data.Dataset:
    from xfer.components import inputs

    return inputs.read_records([os.path.join(examples_uri, f"Split-{split}", "*")])


def _pixels(model, records: tf.data.Dataset) -> Iterator[tuple[np.ndarray, tf.Tensor]]:
    """(float32 [n, size, size, 3] pixels, serialized batch) through the SavedModel's
    transform_features: the images exactly as the SavedModel decodes them."""
    from xfer.components.export import TRANSFORM_FEATURES
    from xfer.components.transform import IMAGE

    for batch in records.batch(BATCH):
        yield model.signatures[TRANSFORM_FEATURES](examples=batch)[IMAGE].numpy(), batch


def representative(model, examples_uri: str, size: int):
    """The converter's representative dataset: two pinning images (all 0, all 255), so
    the uint8 input is the pixel value itself, then the first train images."""
    def gen():
        for value in (0.0, 255.0):
            yield [np.full([1, size, size, 3], value, np.float32)]
        seen = 0
        for pixels, _ in _pixels(model, _records(examples_uri, "train").take(REPRESENTATIVE_IMAGES)):
            for image in pixels:
                seen += 1
                yield [image[None].astype(np.float32)]
        if not seen:
            raise NoImages(f"push.tflite: int8: no train image under {examples_uri}/Split-train to calibrate on")
    return gen


def convert(keras_model: tf.keras.Model, kind: str, representative_dataset=None) -> bytes:
    size = keras_model.input_shape[1]
    predict = tf.function(lambda image: keras_model(image, training=False))
    concrete = predict.get_concrete_function(tf.TensorSpec([1, size, size, 3], tf.float32, name="image"))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], keras_model)
    if kind == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif kind == "int8":
        if representative_dataset is None:
            raise NoImages("push.tflite: int8 needs train images to calibrate on, and the Pusher received no "
                           "examples (pass DataCheck's examples to the Pusher, or use float16)")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    elif kind != "float32":
        raise ValueError(f"push.tflite: unknown kind {kind!r} (float32, float16 or int8)")
    return converter.convert()


class Runner:
    """One TFLite file, one image at a time, float pixels in and float probabilities out."""

    def __init__(self, content: bytes):
        self.interpreter = tf.lite.Interpreter(model_content=content)
        self.interpreter.allocate_tensors()
        self.inp = self.interpreter.get_input_details()[0]
        self.out = self.interpreter.get_output_details()[0]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        x = image[None]
        if self.inp["dtype"] != np.float32:
            scale, zero = self.inp["quantization"]
            info = np.iinfo(self.inp["dtype"])
            x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(self.inp["dtype"])
        self.interpreter.set_tensor(self.inp["index"], x)
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self.out["index"])[0]
        if self.out["dtype"] != np.float32:
            scale, zero = self.out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return y


def agreement(content: bytes, model, examples_uri: str) -> tuple[float, int]:
    """(share of eval examples whose TFLite top-1 equals the SavedModel's, examples compared):
    every eval example the SavedModel classifies (no per-image error)."""
    from xfer.components.export import SERVING_EXAMPLES

    run = Runner(content)
    same = total = 0
    for pixels, batch in _pixels(model, _records(examples_uri, "eval")):
        out = model.signatures[SERVING_EXAMPLES](examples=batch)
        want, ok = out["probabilities"].numpy().argmax(axis=1), out["error"].numpy() == b""
        for image, w, good in zip(pixels, want, ok):
            if good:
                total += 1
                same += int(np.argmax(run(image)) == w)
    return (same / total if total else 0.0), total


def write(model_path: str, version_dir: str, kind: str = "float32", examples_uri: Optional[str] = None,
          min_agreement: Optional[float] = None) -> Optional[str]:
    """assets.extra/model.tflite in `version_dir` (and tflite.json, what was measured), or
    only tflite.json when the file's agreement is below `min_agreement`. Returns the
    file's path, or None when it was not written."""
    # backbones registers CaffeNormalization, which Keras needs to revive VGG and ResNet
    # models; keras_setup keeps AutoGraph out of tf_keras while tracing.
    from absl import logging

    from xfer.components import backbones, export, keras_setup  # noqa: F401

    start = time.perf_counter()
    keras_model = tf.keras.models.load_model(model_path, compile=False)
    saved = tf.saved_model.load(model_path) if examples_uri else None
    rep = representative(saved, examples_uri, keras_model.input_shape[1]) if saved is not None else None
    content = convert(keras_model, kind, rep)
    report = {"kind": kind, "bytes": len(content), "min_agreement": min_agreement,
              "input": ("uint8 [1, size, size, 3] RGB pixels (scale 1, zero point 0)" if kind == "int8"
                        else "float32 [1, size, size, 3] RGB pixels in [0, 255]"),
              "output": "uint8 probabilities (dequantize with the file's output scale and zero point)"
                        if kind == "int8" else "float32 probabilities"}
    if saved is not None:
        report["agreement"], report["examples"] = agreement(content, saved, examples_uri)
    written = saved is None or min_agreement is None or report["agreement"] >= min_agreement
    report["written"] = written
    path = os.path.join(version_dir, "assets.extra", export.TFLITE_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    if written:
        with tf.io.gfile.GFile(path, "wb") as f:
            f.write(content)
    else:
        report["why"] = (f"push.tflite: {kind}: model.tflite not written: its top-1 agrees with the SavedModel's "
                         f"on {report['agreement']:.4f} of {report['examples']} eval examples, below "
                         f"push.tflite_min_agreement {min_agreement:g}; the SavedModel is pushed without it "
                         f"(try float16 or float32, or lower push.tflite_min_agreement)")
        logging.warning(report["why"])
        print(f"[xfer] {report['why']}", flush=True)
    report["seconds"] = round(time.perf_counter() - start, 1)
    with tf.io.gfile.GFile(os.path.join(version_dir, REPORT), "w") as f:
        json.dump(report, f, indent=1)
    return path if written else None


def read_report(version_dir: str) -> Optional[dict]:
    path = os.path.join(version_dir, REPORT)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def card_section(version_dir: str):
    """The model card's "TFLite" section, from the version's assets.extra/tflite.json."""
    from xfer.components.model_card import Section

    s = Section("TFLite")
    r = read_report(version_dir)
    if r is None:
        return s
    agreement = (f"{r['agreement']:.4f} of {r['examples']} eval examples" if "agreement" in r
                 else "not measured (the Pusher received no examples)")
    s.blocks.append(("table", ("kind", "file", "size", "top-1 agreement with the SavedModel", "input", "output"),
                     [(r["kind"], "assets.extra/model.tflite" if r["written"] else "not written",
                       f"{r['bytes'] / 1e6:.2f} MB ({r['bytes']} bytes)", agreement, r["input"], r["output"])]))
    if not r["written"]:
        s.blocks.append(("p", r["why"]))
    elif r.get("min_agreement") is not None and "agreement" in r:
        s.blocks.append(("p", f"Written: agreement at or above push.tflite_min_agreement {r['min_agreement']:g}."))
    return s
