"""`xfer predict`: top classes for image files, from a pushed model's raw-bytes signature."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

LABELS_FILE = os.path.join("assets.extra", "labels.txt")


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


def _readable_image(path: str) -> tuple[Optional[bytes], Optional[str]]:
    import tensorflow as tf

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return None, f"cannot read file: {e.strerror}"
    try:
        tf.io.decode_image(data, channels=3, expand_animations=False)
    except (tf.errors.InvalidArgumentError, ValueError):
        return None, "not a decodable image (JPEG, PNG, GIF or BMP expected)"
    return data, None


def predict(model_dir: str, images: list[str], top_k: int = 3) -> list[Prediction]:
    import tensorflow as tf

    from xfer.components.labels import read_labels_file

    model_dir = resolve_model_dir(model_dir)
    model = tf.saved_model.load(model_dir)
    serve = model.signatures["serving_default"]
    names_path = os.path.join(model_dir, LABELS_FILE)
    names = read_labels_file(names_path) if tf.io.gfile.exists(names_path) else None

    results = [Prediction(image=p) for p in images]
    good = []
    for r in results:
        data, r.error = _readable_image(r.image)
        if data is not None:
            good.append((r, data))
    if good:
        probs = serve(images=tf.constant([d for _, d in good]))["probabilities"].numpy()
        for (r, _), p in zip(good, probs):
            order = p.argsort()[::-1][:top_k]
            r.top = [(names[i] if names else str(i), float(p[i])) for i in order]
    return results
