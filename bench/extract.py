"""Phase 1's feature extraction alone, as the Trainer runs it (components/feature_cache.py
on components/inputs.py's datasets), three ways in interleaved rounds:

  frozen     the weights frozen into the graph, tf.data's autotuner off (the Trainer's way);
  plain      the tf.function that reads the variables, autotuner off;
  autotuned  frozen, with tf.data's autotuner switched back on.

Each pass is one feature_cache.extract over the bench's train split, timed from building
the dataset to freeing its iterator. A pass more than STALL_S slower than its way's fastest
counts as a stall (the slow iterator frees docs/speed.md names: about 2.4 s).

usage: python bench/extract.py PIPELINE_ROOT CONFIG [KEY=VALUE ...]
  (the bench's pipeline root and config, after `make bench`, with its --set overrides)
"""
import sys
import time

import xfer.components  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from trainer_alone import trainer_args  # beside this script
from xfer.components import feature_cache, inputs
from xfer.components.model import build_model, split_at_pool
from xfer.pipeline.config import class_count, load_config

STALL_S, ROUNDS = 1.0, 12


def main(root: str, config_path: str, overrides: list[str], rounds: int = ROUNDS) -> None:
    cfg = load_config(config_path, overrides)
    args = trainer_args(root, "/nonexistent", cfg)
    tft_output = tft.TFTransformOutput(args.transform_graph_path)
    classifier, _ = build_model(cfg.model, class_count(cfg))
    features_model, _ = split_at_pool(classifier)
    batch = max(feature_cache.EXTRACT_BATCH, cfg.train.batch_size)

    def images(autotune: bool) -> tf.data.Dataset:
        ds = inputs.make_dataset(args.train_files, tft_output, batch_size=batch, training=False,
                                 seed=cfg.train.seed, drop_remainder=False)
        if autotune:
            options = tf.data.Options()
            options.autotune.enabled = True
            ds = ds.with_options(options)
        return ds

    t0 = time.perf_counter()
    frozen = feature_cache.extractor(features_model, freeze=True)
    freeze_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    plain = feature_cache.extractor(features_model, freeze=False)
    plain(tf.zeros([1, *features_model.input_shape[1:]]))  # its trace, outside the passes
    trace_s = time.perf_counter() - t0
    ways = {"frozen": (frozen, False), "plain": (plain, False), "autotuned": (frozen, True)}

    n = None
    for predict, autotune in ways.values():  # warm-up pass of each
        n = len(feature_cache.extract(predict, images(autotune))[1])
    times = {name: [] for name in ways}
    for _ in range(rounds):
        for name, (predict, autotune) in ways.items():
            start = time.perf_counter()
            feature_cache.extract(predict, images(autotune))
            times[name].append(time.perf_counter() - start)

    print(f"{n} train images at {cfg.model.image_size} px, batch {batch}, {rounds} rounds; "
          f"freezing (trace and convert) {freeze_s:.2f} s, the plain function's trace {trace_s:.2f} s")
    for name, values in times.items():
        median = float(np.median(values))
        stalls = sum(v > min(values) + STALL_S for v in values)
        print(f"extract_{name}_images_per_s {n / median:.1f}")
        print(f"extract_{name}_stalls {stalls} of {rounds}")
        print(f"extract_{name}_pass_seconds {' '.join(f'{v:.2f}' for v in values)}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
