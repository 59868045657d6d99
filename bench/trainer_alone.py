"""The Trainer alone: runs the real run_fn (with the pipeline's callbacks) on the
artifacts of a finished bench run, with KEY=VALUE settings over CONFIG. bench/run.py
uses it for phase 1 alone (10 epochs, cached features or images) and for the phase-2
throughput runs, and reads the Trainer's epoch and 'done' lines.

usage: python trainer_alone.py PIPELINE_ROOT OUT_DIR CONFIG [KEY=VALUE ...]
"""
import glob
import sys

import xfer.components  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from tfx.components.trainer.fn_args_utils import FnArgs

from xfer.components.trainer import run_fn
from xfer.pipeline.config import load_config

def _newest(pattern: str) -> str:
    """The artifact folder with the highest execution id (ids are numbers: 10 after 9)."""
    return max(glob.glob(pattern), key=lambda p: int(p.rsplit("/", 1)[1]))


def trainer_args(root: str, out: str, cfg) -> FnArgs:
    """The Trainer's inputs from a finished bench run under `root` (its pipeline root),
    its outputs under `out`. It reads what the pipeline's Trainer reads: DataCheck's checked
    examples, with its counts beside them (steps_per_execution auto sizes the epoch from them)."""
    examples = _newest(f"{root}/DataCheck/checked_examples/*")
    return FnArgs(train_files=[f"{examples}/Split-train/*"], eval_files=[f"{examples}/Split-eval/*"],
                  transform_graph_path=_newest(f"{root}/Transform/transform_graph/*"),
                  serving_model_dir=f"{out}/serving", model_run_dir=f"{out}/run",
                  custom_config=cfg.trainer_settings(code_fingerprint="bench").model_dump(mode="json"))


if __name__ == "__main__":
    root, out, config = sys.argv[1:4]
    run_fn(trainer_args(root, out, load_config(config, sys.argv[4:])))
