"""Runs the real Trainer run_fn in its own process, as the Trainer step would, for
tests that must kill it or split the CPU into logical devices before TF starts.

usage: python trainer_job.py FN_ARGS.json [--logical-cpus N]
"""
import json
import sys

import xfer.components  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
from tfx.components.trainer.fn_args_utils import FnArgs

if __name__ == "__main__":
    spec = json.load(open(sys.argv[1]))
    if "--logical-cpus" in sys.argv:
        n = int(sys.argv[sys.argv.index("--logical-cpus") + 1])
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    from xfer.components.trainer import run_fn
    run_fn(FnArgs(**spec))
