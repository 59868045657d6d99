"""`xfer lr-find`: the pipeline up to Transform with the local runner (from cache when
unchanged), then the range test (components/lr_find.py) on DataCheck's examples with
Transform's graph, read from the metadata store, as the Trainer would get them. Writes
the plot and the points under ROOT/reports/lr_find/<time>/ and returns what to print."""
from __future__ import annotations

import datetime
import json
import os
import types
from typing import Optional

from xfer.pipeline.config import Config, ConfigError

UP_TO = "Transform"
PLOT, POINTS = "lr_find.png", "lr_find.json"
KEYS = {"transfer": "train.transfer.learning_rate", "fine_tune": "train.fine_tune.learning_rate"}


def trainer_inputs(metadata_path: str, pipeline_name: str, run_id: str) -> dict:
    """{examples, transform_graph}: the URIs the run's DataCheck and Transform output
    (executed or cached)."""
    from xfer.pipeline import store as mlmd

    store = mlmd.open_store(metadata_path)
    run = mlmd.find_run(store, pipeline_name, run_id)
    found = {}
    for node, ex in mlmd.step_executions(store, run, pipeline_name):
        for type_name, artifact in mlmd.output_artifacts(store, ex.id):
            if node == "DataCheck" and type_name == "Examples":
                found["examples"] = artifact.uri
            elif node == "Transform" and type_name == "TransformGraph":
                found["transform_graph"] = artifact.uri
    missing = {"examples", "transform_graph"} - set(found)
    if missing:
        raise RuntimeError(f"run {run_id} has no {' or '.join(sorted(missing))} output in {metadata_path}")
    return found


def lr_find(config: Config, phase: str, steps: Optional[int] = None) -> list[str]:
    from xfer.components import lr_find as finder
    from xfer.pipeline.pipeline import code_fingerprint
    from xfer.pipeline.runners import run_local

    try:
        finder.check_phase(config.train, phase)  # before any step runs
        finder.check_one_process()
    except finder.LrFindError as e:
        raise ConfigError(str(e)) from None
    t = config.train
    summary = run_local(config, to_nodes=[UP_TO], keep_cache=True)
    found = trainer_inputs(config.metadata_path, config.name, summary.run_id)
    uri = found["examples"]
    fn_args = types.SimpleNamespace(
        train_files=[os.path.join(uri, "Split-train", "*")], eval_files=[os.path.join(uri, "Split-eval", "*")],
        transform_graph_path=found["transform_graph"], model_run_dir=None, base_model=None,
        custom_config=None)
    settings = config.trainer_settings(code_fingerprint())
    try:
        result = finder.find(settings, fn_args, phase, steps=steps or finder.MAX_STEPS)
    except finder.LrFindError as e:
        raise ConfigError(str(e)) from None
    s = result.suggestion
    stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    folder = os.path.join(config.root, "reports", "lr_find", f"{stamp}-{phase}")
    os.makedirs(folder, exist_ok=True)
    key = KEYS[phase]
    set_line = f"--set {key}={s.rate:.2g}"
    title = (f"{config.name}: lr-find {phase} ({config.model.backbone}, batch {t.batch_size}, "
             f"{getattr(t, phase).optimizer})")
    finder.plot(result.curve, s, title, os.path.join(folder, PLOT))
    with open(os.path.join(folder, POINTS), "w") as f:
        json.dump({"phase": phase, "config_key": key, "run_id": summary.run_id, "weights": result.weights,
                   "train_examples": result.train_examples, "batch_size": t.batch_size,
                   "optimizer": getattr(t, phase).optimizer, "configured_rate": getattr(t, phase).learning_rate,
                   "stopped": result.curve.stopped, "seconds": round(result.curve.seconds, 1),
                   "suggestion": {"rate": s.rate, "rule": s.rule, "steepest": s.steepest, "minimum": s.minimum,
                                  "minimum_over_10": s.minimum_over_10},
                   "set": set_line, "rates": result.curve.rates, "losses": result.curve.losses,
                   "smoothed": [float(v) for v in finder.smooth(finder.usable(result.curve.losses))]}, f, indent=1)
    return [
        f"lr-find {phase}: {len(result.curve.rates)} steps on {result.train_examples} train examples "
        f"(inputs from run {summary.run_id}); {result.curve.stopped}",
        f"weights: {result.weights}",
        f"suggested {key}: {s.rate:.2g} ({s.rule}; steepest descent at {s.steepest:.2g}, "
        f"loss minimum at {s.minimum:.2g}, minimum/10 = {s.minimum_over_10:.2g}; configured now: "
        f"{getattr(t, phase).learning_rate:g})",
        f"use it: xfer run --config {{config}} {set_line}",
        f"plot: {os.path.join(folder, PLOT)}",
        f"points: {os.path.join(folder, POINTS)}",
    ]
