"""Phase 1 alone, 10 epochs, no augmentation, on cached features or on images: runs the
real run_fn on the artifacts of a finished bench run, and prints the Trainer's
'transfer done: N epochs in Xs' line.

usage: python phase1.py PIPELINE_ROOT on|off OUT_DIR CONFIG [KEY=VALUE ...]
"""
import glob
import sys

import components  # noqa: F401
from tfx.components.trainer.fn_args_utils import FnArgs

from components.trainer import run_fn
from pipeline.config import load_config, to_absolute

if __name__ == "__main__":
    root, mode, out, config = sys.argv[1:5]
    cfg = to_absolute(load_config(config, sys.argv[5:] + [
        "train.transfer.epochs=10", f"train.transfer.cache_features={mode}",
        "train.fine_tune.enabled=false", "train.reports=false", "train.resume=false"]))
    examples = sorted(glob.glob(f"{root}/ImportExampleGen/examples/*"))[-1]
    graph = sorted(glob.glob(f"{root}/Transform/transform_graph/*"))[-1]
    run_fn(FnArgs(train_files=[f"{examples}/Split-train/*"], eval_files=[f"{examples}/Split-eval/*"],
                  transform_graph_path=graph, serving_model_dir=f"{out}/serving",
                  model_run_dir=f"{out}/run", custom_config=cfg.step_config("trainer")))
