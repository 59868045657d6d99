"""The `xfer` command line. Heavy imports (TensorFlow, TFX) happen only in the
subcommand that needs them, so `xfer --help` is instant."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings

from pipeline.config import ConfigError, load_config, shipped_configs

DESCRIPTION = """\
xfer: a TFX pipeline that trains image classifiers by transfer learning and
fine-tuning (phase 1: frozen ImageNet base, new head; phase 2: fine-tune the top
of the base at a lower learning rate), evaluates them against the last blessed
model, and pushes only models that earn it.

Configs are YAML files; shipped ones can be named directly: {shipped}.
"""


def _quiet(verbose: bool) -> None:
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    # TFX resets absl's verbosity when it starts a run; a filter on the logger stays.
    logging.getLogger("absl").addFilter(lambda record: record.levelno >= logging.ERROR)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default="demo",
                   help="YAML config file, or a shipped config name (default: demo)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value by its dotted key, e.g. --set train.batch_size=16 "
                        "(repeatable; the value is read as YAML)")


def cmd_run(args) -> int:
    from pipeline.runners import run_local
    from pipeline.summary import format_summary

    config = load_config(args.config, args.overrides)
    start = time.perf_counter()
    summary = run_local(config)
    print(format_summary(summary, config.eval.min_accuracy, config.eval.max_drop,
                         wall_seconds=time.perf_counter() - start))
    return 0


def cmd_compile(args) -> int:
    from pipeline.runners import compile_kubeflow

    config = load_config(args.config, args.overrides)
    out = compile_kubeflow(config, args.out)
    print(f"wrote {out}: Kubeflow Pipelines v2 spec of '{config.name}', image "
          f"{config.kubeflow.image}, pipeline root {config.pipeline_root}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xfer", description=DESCRIPTION.format(shipped=", ".join(shipped_configs())),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="show TensorFlow/TFX logs and full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", help="run the pipeline locally (LocalDagRunner) and print a summary",
                       description="Run the whole pipeline locally with TFX's LocalDagRunner: "
                                   "ImportExampleGen, StatisticsGen, SchemaGen, ExampleValidator, "
                                   "Transform, Trainer, Evaluator, Pusher. Components whose inputs "
                                   "and config did not change come from cache. Ends with a summary: "
                                   "each component ran or cached, eval accuracy, blessing and why, "
                                   "where the model was pushed, total time.")
    _add_config_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("compile", help="compile the pipeline for Kubeflow Pipelines v2 / Vertex AI",
                       description="Compile the same DAG with KubeflowV2DagRunner to a KFP v2 "
                                   "PipelineJob JSON. Every step runs in the image kubeflow.image; "
                                   "artifacts go under pipeline_root (a gs:// path in production).")
    _add_config_args(p)
    p.add_argument("--target", choices=["kubeflow"], default="kubeflow",
                   help="orchestrator to compile for (KFP v2 IR; Vertex AI Pipelines runs the same file)")
    p.add_argument("--out", "-o", default="pipeline.json", help="output file (default: pipeline.json)")
    p.set_defaults(func=cmd_compile)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _quiet(args.verbose)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"xfer: config error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, LookupError) as e:
        if args.verbose:
            raise
        print(f"xfer: error: {e}\n(run with --verbose for the full trace)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
