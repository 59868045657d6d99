"""`xfer predict`: top classes for image files, from a pushed model's raw-bytes signature."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

LABELS_FILE = os.path.join("assets.extra", "labels.txt")
SERVING_JSON = os.path.join("assets.extra", "serving.json")  # the model's limits (components/export.py)
DEFAULT_MAX_BATCH = 256


@dataclass
class Prediction:
    image: str
    top: list[tuple[str, float]] = field(default_factory=list)
    error: Optional[str] = None

    def as_dict(self) -> dict:
        if self.error:
            return {"image": self.image, "error": self.error}
        return {"image": self.image, "top": [{"class": c, "probability": p} for c, p in self.top]}

    def line(self) -> str:
        if self.error:
            return f"{self.image}: {self.error}"
        return f"{self.image}: " + ", ".join(f"{c} {p:.4f}" for c, p in self.top)


def resolve_model_dir(path: str) -> str:
    """A SavedModel folder, or a push destination (then its latest complete version)."""
    import tensorflow as tf

    from xfer.components.pusher import latest_version_dir

    if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        return path
    latest = latest_version_dir(path)
    if latest is None:
        raise FileNotFoundError(
            f"'{path}' is neither a SavedModel folder nor a push destination with a complete "
            f"numbered version; give the folder `xfer run` printed after 'pushed to:'")
    return latest


def _read(path: str) -> tuple[Optional[bytes], Optional[str]]:
    try:
        with open(path, "rb") as f:
            return f.read(), None
    except OSError as e:
        return None, f"cannot read file: {e.strerror}"


def _decodes(data: bytes) -> bool:
    """Only for models exported before the per-image `error` output."""
    import tensorflow as tf

    try:
        tf.io.decode_image(data, channels=3, expand_animations=False)
        return True
    except (tf.errors.InvalidArgumentError, ValueError):
        return False


def predict(model_dir: str, images: list[str], top_k: int = 3) -> list[Prediction]:
    import json

    import tensorflow as tf

    from xfer.components.labels import read_labels_file

    model_dir = resolve_model_dir(model_dir)
    model = tf.saved_model.load(model_dir)
    serve = model.signatures["serving_default"]
    names_path = os.path.join(model_dir, LABELS_FILE)
    names = read_labels_file(names_path) if tf.io.gfile.exists(names_path) else None
    limits_path = os.path.join(model_dir, SERVING_JSON)
    max_batch = DEFAULT_MAX_BATCH
    if tf.io.gfile.exists(limits_path):
        with tf.io.gfile.GFile(limits_path) as f:
            max_batch = int(json.load(f).get("max_batch", DEFAULT_MAX_BATCH))
    # The model judges each image itself (size from its header, decodability) and says why
    # in `error`; the files are sent as they are, never decoded here.
    guarded = "error" in serve.structured_outputs

    results = [Prediction(image=p) for p in images]
    good = []
    for r in results:
        data, r.error = _read(r.image)
        if data is not None and not guarded and not _decodes(data):
            data, r.error = None, "not a decodable image (JPEG, PNG, GIF or BMP expected)"
        if data is not None:
            good.append((r, data))
    for start in range(0, len(good), max_batch):
        chunk = good[start:start + max_batch]
        out = serve(images=tf.constant([d for _, d in chunk]))
        probs = out["probabilities"].numpy()
        errors = out["error"].numpy() if guarded else [b""] * len(chunk)
        for (r, _), p, error in zip(chunk, probs, errors):
            if error:
                r.error = error.decode("utf-8", "replace")
                continue
            order = p.argsort()[::-1][:top_k]
            r.top = [(names[i] if names else str(i), float(p[i])) for i in order]
    return results
