"""The embedded dataset: scikit-learn's 1,797 handwritten digits as PNG TFRecords.

Real images that ship with an installed package, so the demo runs offline. Made at
first use; the same call always writes the same bytes.
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile

SIZE = 32  # the 8x8 scans, upscaled so that VGG16 (32 px minimum) accepts them
EVAL_PERCENT = 20


def _split_of(example_id: str) -> str:
    bucket = int(hashlib.sha256(example_id.encode()).hexdigest(), 16) % 100
    return "eval" if bucket < EVAL_PERCENT else "train"


def digits_pngs():
    """Yield (id, png bytes, label) for each of the 1,797 digits, upscaled to SIZE px."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        gray = (pixels * (255.0 / 16.0)).round().astype("uint8")
        img = Image.fromarray(gray, mode="L").resize((SIZE, SIZE), Image.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        yield f"digits-{i:04d}", buf.getvalue(), int(label)


def ensure_digits(out_dir: str) -> str:
    """Write `out_dir/{train,eval}/digits.tfrecord` and `labels.txt` unless already there."""
    import tensorflow as tf

    from xfer.components.labels import write_labels_file
    from xfer.pipeline.data.records import image_example

    if os.path.exists(os.path.join(out_dir, "labels.txt")):
        return out_dir
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".digits-", dir=parent)
    writers = {s: tf.io.TFRecordWriter(os.path.join(tmp, s, "digits.tfrecord"))
               for s in ("train", "eval") if not os.makedirs(os.path.join(tmp, s))}
    for example_id, png, label in digits_pngs():
        writers[_split_of(example_id)].write(image_example(png, label, id=example_id))
    for w in writers.values():
        w.close()
    write_labels_file(os.path.join(tmp, "labels.txt"), [str(d) for d in range(10)])
    if os.path.exists(out_dir):  # a half-written folder from an interrupted first use
        shutil.rmtree(out_dir)
    os.rename(tmp, out_dir)  # readers see all of it or none of it
    return out_dir
