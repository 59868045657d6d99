"""`xfer predict` throughput: batch mode (`--folder`, N images per request) against the
single-file path (the files one by one, one request each: `xfer predict MODEL f1 ... fN
--batch 1`), on the same images, model loaded once, in one process.

usage: python bench/predict.py [--model DIR] [--images 500] [--size 96] [--rounds 2]

Without --model a small real model is built first (MobileNetV2 alpha 0.35, random init,
a real Transform graph, export.signatures, saved as the Trainer does; serving.max_batch
256). The images are JPEG crops of scikit-learn's two sample photos, written to a temp
folder. Both paths write JSON Lines through the same writer; each is timed `--rounds`
times, alternated, after a warm-up; the best round of each is reported."""
from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # tf.data's per-request cancellation warnings

import xfer.components  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np
import tensorflow as tf


def make_images(folder: str, n: int, seed: int = 0) -> list[str]:
    from PIL import Image
    from sklearn.datasets import load_sample_image

    photos = [load_sample_image("china.jpg"), load_sample_image("flower.jpg")]
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(n):
        photo = photos[i % 2]
        h, w = photo.shape[:2]
        side = int(rng.integers(96, 256))
        y, x = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
        img = Image.fromarray(photo[y:y + side, x:x + side]).resize((160, 120))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        path = os.path.join(folder, f"{i:05d}.jpg")
        with open(path, "wb") as f:
            f.write(buf.getvalue())
        paths.append(path)
    return paths


def build_model(root: str, size: int) -> str:
    """The export path of the Trainer, on a tiny random model: Transform graph, serving
    signatures, serving.json, labels.txt."""
    import apache_beam as beam
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils

    from xfer.components import export
    from xfer.components.labels import write_labels_file
    from xfer.components.model import build_model as build_classifier
    from xfer.components.settings import Config, ModelConfig, ServingConfig
    from xfer.components.transform import preprocessing_fn

    model_config = ModelConfig.model_validate({"backbone": "mobilenet_v2", "weights": "none",
                                               "alpha": 0.35, "image_size": size})
    config = Config.model_validate({"data": {"builtin": "digits"}, "model": model_config.model_dump()})
    step = config.transform_settings("bench").model_dump()
    spec = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(spec))
    with open(make_images(os.path.join(root, "seed"), 1)[0], "rb") as f:
        raw = [{"image": f.read(), "label": i % 3} for i in range(4)]
    with beam.Pipeline(argv=[]) as p, tft_beam.Context(temp_dir=os.path.join(root, "tft-tmp")):
        fn = (p | beam.Create(raw), metadata) | tft_beam.AnalyzeDataset(lambda x: preprocessing_fn(x, step))
        _ = fn | tft_beam.WriteTransformFn(os.path.join(root, "transform"))
    metadata_io.write_metadata(metadata, os.path.join(root, "transform", "metadata"))
    tft_output = tft.TFTransformOutput(os.path.join(root, "transform"))

    tf.keras.utils.set_random_seed(1)
    names = ["cat", "dog", "owl"]
    classifier, _ = build_classifier(model_config, len(names))
    serving = ServingConfig()
    model_dir = os.path.join(root, "model")
    classifier.save(model_dir, save_format="tf", save_traces=False,
                    signatures=export.signatures(classifier, tft_output, "image", names, serving))
    export.write_serving_json(model_dir, size, serving)
    write_labels_file(os.path.join(model_dir, "assets.extra", "labels.txt"), names)
    return model_dir


def main(argv=None) -> int:
    from xfer.pipeline.predict import Predictor, file_items, folder_items, write_predictions

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a SavedModel folder or push destination (default: build one)")
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--size", type=int, default=96, help="image size of the built model")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)

    work = tempfile.mkdtemp(prefix="xfer-bench-predict-")
    folder = os.path.join(work, "images")
    files = make_images(folder, args.images)
    model_dir = args.model or build_model(work, args.size)
    predictor = Predictor(model_dir)
    out = os.path.join(work, "predictions.jsonl")

    def batch_mode():
        return write_predictions(predictor.stream(folder_items(folder)), out=out)

    def single_file():
        return write_predictions(predictor.stream(file_items(files), batch=1), out=out)

    # Warm-up: the first call of each request size traces nothing (a saved signature) but
    # allocates; one of each before timing.
    write_predictions(predictor.stream(file_items(files[:predictor.max_batch])), out=out)
    write_predictions(predictor.stream(file_items(files[:4]), batch=1), out=out)
    rates = {"batch": [], "single": []}
    for _ in range(args.rounds):
        for name, run in (("single", single_file), ("batch", batch_mode)):
            start = time.perf_counter()
            summary = run()
            seconds = time.perf_counter() - start
            assert summary.predicted == args.images, summary
            rates[name].append(args.images / seconds)
            print(f"  {name}: {args.images} images in {seconds:.2f} s, {rates[name][-1]:.1f} images/s",
                  file=sys.stderr)
    batch, single = max(rates["batch"]), max(rates["single"])
    print(f"model {model_dir}: {args.images} images, serving.max_batch {predictor.max_batch}, "
          f"{os.cpu_count()} cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"batch_folder_images_per_s {batch:.1f}  (rounds: {', '.join(f'{r:.1f}' for r in rates['batch'])})")
    print(f"single_file_images_per_s {single:.1f}  (rounds: {', '.join(f'{r:.1f}' for r in rates['single'])})")
    print(f"ratio_batch_over_single {batch / single:.2f}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
