"""Phase 2 (fine-tune) throughput of the Trainer: runs the real run_fn, with the
pipeline's callbacks (resume backups, TensorBoard, epoch lines), on the artifacts of a
finished bench run; phase 1 is one epoch on cached features, so the process gets to
phase 2 quickly. Prints the Trainer's 'fine-tune epoch N: ... X images/s' lines.

usage: python phase2.py PIPELINE_ROOT FINE_TUNE_EPOCHS OUT_DIR CONFIG [KEY=VALUE ...]
"""
import glob
import sys

import components  # noqa: F401
from tfx.components.trainer.fn_args_utils import FnArgs

from components.trainer import run_fn
from pipeline.config import load_config, to_absolute

if __name__ == "__main__":
    root, epochs, out, config = sys.argv[1:5]
    cfg = to_absolute(load_config(config, sys.argv[5:] + [
        "train.transfer.epochs=1", f"train.fine_tune.epochs={epochs}"]))
    examples = sorted(glob.glob(f"{root}/ImportExampleGen/examples/*"))[-1]
    graph = sorted(glob.glob(f"{root}/Transform/transform_graph/*"))[-1]
    run_fn(FnArgs(train_files=[f"{examples}/Split-train/*"], eval_files=[f"{examples}/Split-eval/*"],
                  transform_graph_path=graph, serving_model_dir=f"{out}/serving",
                  model_run_dir=f"{out}/run", custom_config=cfg.step_config("trainer")))
