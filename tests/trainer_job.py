"""Runs the real Trainer run_fn in its own process, as the Trainer step would, for
tests that must kill it, split the CPU into logical devices before TF starts, or run
it as one of several workers (TF_CONFIG in the environment, as Vertex sets it).

usage: python trainer_job.py FN_ARGS.json [--logical-cpus N] [--count-examples]

--count-examples prints, for every training step, the model's name, the optimizer's
step and a fingerprint of each example the step trained on (the sum of its input
values), so a test can tell which examples each worker saw. It observes only: the
step itself is Keras' own.
"""
import json
import sys

import xfer.components  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
from tfx.components.trainer.fn_args_utils import FnArgs


def count_examples() -> None:
    plain_step = tf.keras.Model.train_step

    def counted_step(self, data):
        x = data[0]
        fingerprint = tf.reduce_sum(tf.reshape(tf.cast(x, tf.float64), [tf.shape(x)[0], -1]), axis=1)
        tf.print("[count]", self.name, self.optimizer.iterations, fingerprint,
                 summarize=-1, output_stream=sys.stdout)
        return plain_step(self, data)

    tf.keras.Model.train_step = counted_step


if __name__ == "__main__":
    spec = json.load(open(sys.argv[1]))
    if "--logical-cpus" in sys.argv:
        n = int(sys.argv[sys.argv.index("--logical-cpus") + 1])
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    if "--count-examples" in sys.argv:
        count_examples()
    from xfer.components.trainer import run_fn
    run_fn(FnArgs(**spec))
