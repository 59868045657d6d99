"""The benchmark's data: 2,000 real images from scikit-learn's digits (1,797 scans plus
203 of them shifted by two pixels), upscaled to 96 px RGB JPEG, as gzip TFRecords of
tf.Example (`image`, `label`) in train/ and eval/ (80/20 by a hash of the id), with
labels.txt. The same call always writes the same bytes."""
from __future__ import annotations

import hashlib
import io
import os
import sys

import numpy as np

TOTAL, SIZE = 2000, 96


def images(total: int = TOTAL):
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels, targets = digits.images, digits.target
    for i in range(total):
        k = i % len(pixels)
        gray = pixels[k] * (255.0 / 16.0)
        if i >= len(pixels):  # the extra images: the same scans, shifted
            gray = np.roll(gray, 1 + i % 2, axis=1)
        img = Image.fromarray(gray.round().astype("uint8"), mode="L").resize((SIZE, SIZE), Image.BILINEAR)
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="JPEG", quality=90)
        yield f"bench-{i:05d}", buf.getvalue(), int(targets[k])


def write(out: str, total: int = TOTAL, per_shard: int = 0) -> str:
    """`total` images (beyond 1,797 the scans repeat, shifted, under new ids); one file per
    split, or shards of about `per_shard` examples when it is given (as import-folder writes)."""
    import xfer.components  # noqa: F401
    import tensorflow as tf

    from xfer.components.labels import write_labels_file
    from xfer.pipeline.data.records import image_example

    if os.path.exists(os.path.join(out, "labels.txt")):
        return out
    shards = max(1, -(-total // per_shard)) if per_shard else 1
    writers = {}
    for split in ("train", "eval"):
        os.makedirs(os.path.join(out, split), exist_ok=True)
        for k in range(shards):
            name = "data.tfrecord.gz" if shards == 1 else f"data-{k:05d}-of-{shards:05d}.tfrecord.gz"
            writers[split, k] = tf.io.TFRecordWriter(os.path.join(out, split, name), options="GZIP")
    for i, (example_id, jpeg, label) in enumerate(images(total)):
        digest = int(hashlib.sha256(example_id.encode()).hexdigest(), 16)
        split = "eval" if digest % 5 == 0 else "train"
        writers[split, i % shards].write(image_example(jpeg, label))
    for w in writers.values():
        w.close()
    # labels.txt last: its presence means the data is complete (an interrupted write is redone).
    write_labels_file(os.path.join(out, "labels.txt"), [str(d) for d in range(10)])
    return out


if __name__ == "__main__":
    print(write(sys.argv[1]))
