"""The `xfer` command line. Heavy imports (TensorFlow, TFX) happen only in the
subcommand that needs them, so `xfer --help` is instant."""
from __future__ import annotations

import argparse
import os
import sys
import time

from xfer.pipeline import errors, progress
from xfer.pipeline.config import ConfigError, load_config, shipped_configs

DESCRIPTION = """\
xfer: a TFX pipeline that trains image classifiers by transfer learning and
fine-tuning (phase 1: frozen ImageNet base, new head; phase 2: fine-tune the top
of the base at a lower learning rate), evaluates them against the last blessed
model, and pushes only models that earn it.

Configs are YAML files; shipped ones can be named directly: {shipped}.
"""


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default="demo",
                   help="YAML config file, or a shipped config name (default: demo)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value by its dotted key, e.g. --set train.batch_size=16 "
                        "(repeatable; the value is read as YAML; a mapping merges into the "
                        "section: --set 'model={backbone: resnet50}' keeps the other model keys)")


# Exit codes beyond 1 (an error) and 2 (a config error), for schedulers.
EXIT_ROOT_BUSY = 3     # another run holds the root
EXIT_NOT_BLESSED = 4   # --require-blessed and the model was not blessed
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT), as a shell reports a process it ends: 128 + 2
# What an interrupted command leaves, said on the one line Ctrl-C gets.
INTERRUPTED_NOTE = {
    "run": " (the next run on this root clears what this one left; a Trainer resumes from its last finished epoch)",
    "lr-find": " (the range test writes nothing until it ends; the next run on this root clears any step it left)",
}


def cmd_run(args) -> int:
    from xfer.pipeline.runners import run_local
    from xfer.pipeline.summary import format_summary, result, save_report, save_result

    from xfer.pipeline.lock import RunInProgress

    config = load_config(args.config, args.overrides)
    start, started_at = time.perf_counter(), time.time()
    from_nodes = [args.from_node] if args.from_node else None
    to_nodes = [args.to_node] if args.to_node else None
    try:
        summary = run_local(config, from_nodes=from_nodes, to_nodes=to_nodes, check_only=args.check)
    except ConfigError as e:
        _save_failed_result(config, e, started_at)  # after a first step too, a run has its result
        raise
    except RunInProgress as e:
        print(f"xfer: {e}", file=sys.stderr)
        return EXIT_ROOT_BUSY
    except Exception as e:
        failed = errors.step_failed(config, e)
        _save_failed_result(config, e, started_at)  # its innermost cause, as the CLI prints it
        raise failed from e
    if args.check:
        print(f"preflight passed in {time.perf_counter() - start:.1f}s: {config.name} can run")
        return 0
    text = format_summary(summary, config.eval, wall_seconds=time.perf_counter() - start)
    print(text)
    if summary.blessing is not None:
        print(f"blessing report: {save_report(config.root, summary.run_id, text)}")
    print(f"run result: {save_result(config.root, result(summary, config.eval))}")
    if args.require_blessed and not (summary.blessing and summary.blessing.blessed):
        print("xfer: the model was not blessed (--require-blessed)", file=sys.stderr)
        return EXIT_NOT_BLESSED
    return 0


def _save_failed_result(config, failed: Exception, started_at: float) -> None:
    """result.json for a run that failed in or after a step (none when it failed before any step ran)."""
    from xfer.pipeline.summary import result, save_result, summarize

    try:
        summary = summarize(config.metadata_path, config.name)
    except Exception:  # noqa: BLE001 - no store or no run yet
        return
    if summary.started_ms is None or summary.started_ms < started_at * 1000 - 1000:
        return  # the newest run is an earlier one: this one never started a step
    path = save_result(config.root, result(summary, config.eval, error=errors.root_cause(failed)))
    print(f"run result: {path}")


def _lr_find_steps(value: str) -> int:
    from xfer.components.lr_find import MIN_STEPS, STEPS_LIMIT

    if not value.isdigit() or not MIN_STEPS <= int(value) <= STEPS_LIMIT:
        raise argparse.ArgumentTypeError(
            f"{value!r}: give a whole number of steps from {MIN_STEPS} (fewer points make no curve) to "
            f"{STEPS_LIMIT}, e.g. --steps 50")
    return int(value)


def cmd_lr_find(args) -> int:
    from xfer.pipeline.lr_find import lr_find

    config = load_config(args.config, args.overrides)
    for line in lr_find(config, args.phase, args.steps):
        print(line.replace("{config}", args.config))
    return 0


def cmd_compile(args) -> int:
    from xfer.pipeline.preflight import placeholders
    from xfer.pipeline.runners import compile_kubeflow

    config = load_config(args.config, args.overrides)
    out = args.out or ("pipeline.yaml" if args.target == "kubeflow" else "pipeline.json")
    compile_kubeflow(config, out, args.target, allow_placeholders=args.allow_placeholders)
    what = ("Kubeflow Pipelines PipelineSpec 2.1.0 (upload it as is: the UI's Upload pipeline, "
            "or kfp pipeline create)" if args.target == "kubeflow" else "Vertex AI PipelineJob")
    print(f"wrote {out}: {what} of '{config.name}', image {config.kubeflow.image}, "
          f"pipeline root {config.pipeline_root}")
    left = placeholders(config) if args.allow_placeholders else []
    if left:
        print(f"xfer: note: {out} is a template: {', '.join(line.split(':')[0] for line in left)} "
              f"still hold placeholders; set them before it runs", file=sys.stderr)
    return 0


def cmd_runs(args) -> int:
    from xfer.pipeline.store import existing_store
    from xfer.pipeline.summary import format_runs

    config = load_config(args.config, args.overrides)
    if args.json:
        import json

        from xfer.pipeline.summary import runs_results
        print(json.dumps(runs_results(existing_store(config), config.name, config.eval, last=args.last,
                                      root=config.root), indent=1))
        return 0
    print(format_runs(existing_store(config), config.name, last=args.last, root=config.root))
    return 0


def cmd_show(args) -> int:
    from xfer.pipeline.store import existing_store
    from xfer.pipeline.views import format_show

    config = load_config(args.config, args.overrides)
    print(format_show(existing_store(config), config.name, args.run, config.eval, args.component,
                      label_key=config.data.label_key))
    return 0


def cmd_ui(args) -> int:
    from xfer.pipeline.ui import serve

    serve(load_config(args.config, args.overrides), host=args.host, port=args.port)
    return 0


def cmd_predict(args) -> int:
    import os

    from xfer.pipeline.predict import (Predictor, Progress, check_out, count_folder, file_items, folder_items,
                                       tfrecord_items, write_predictions)

    sources = [bool(args.images), args.folder is not None, args.tfrecords is not None]
    if sum(sources) != 1:
        print("xfer predict: give image files, or --folder DIR, or --tfrecords GLOB (exactly one)",
              file=sys.stderr)
        return 2
    if args.batch is not None and args.batch < 1:
        print("xfer predict: --batch must be at least 1", file=sys.stderr)
        return 2
    if args.folder is not None and not os.path.isdir(args.folder):
        print(f"xfer predict: --folder {args.folder}: not a folder", file=sys.stderr)
        return 1
    if args.max_file_bytes < 1:
        print("xfer predict: --max-file-bytes must be at least 1", file=sys.stderr)
        return 2
    unwritable = check_out(args.out) if args.out else None
    if unwritable:  # before the model is loaded and anything predicted
        print(f"xfer predict: --out {args.out}: {unwritable}", file=sys.stderr)
        return 2
    predictor = Predictor(args.model_dir)
    batch = args.batch or predictor.max_batch
    if batch > predictor.max_batch:
        print(f"xfer predict: --batch {batch} is above the model's serving.max_batch "
              f"({predictor.max_batch}); sending {predictor.max_batch} images per request",
              file=sys.stderr)
        batch = predictor.max_batch
    total = None
    if args.images:
        items, total = file_items(args.images, args.max_file_bytes), len(args.images)
    elif args.folder is not None:
        items = folder_items(args.folder, args.max_file_bytes, out=args.out)
    else:
        items = tfrecord_items(args.tfrecords, image_key=args.image_key)
    progress = None
    if args.progress or sys.stderr.isatty():
        if args.folder is not None:
            total = count_folder(args.folder, out=args.out)  # a walk of names only, before reading
        progress = Progress(sys.stderr, total)
    summary = write_predictions(predictor.stream(items, top_k=args.top_k, batch=batch),
                                out=args.out, as_json=args.json, progress=progress)
    if args.out:
        print(f"{args.out}: {summary.total} lines: {summary.predicted} predicted, "
              f"{summary.errors} errors, {summary.skipped} skipped", file=sys.stderr)
    return 0 if summary.predicted else 1


def cmd_import_folder(args) -> int:
    from xfer.pipeline.data.import_folder import BadArgument, OutputNotEmpty, Progress, import_folder, summary

    ratios = {k: v for k, v in (("train", args.train), ("eval", args.eval), ("test", args.test)) if v}
    total = sum(ratios.values())
    if not ratios or abs(total - 1.0) > 1e-6:
        raise ConfigError(f"--train/--eval/--test must add up to 1; got {total:g}")
    try:
        manifest = import_folder(args.src, args.out, ratios=ratios, shards=args.shards,
                                 max_pixels=args.max_pixels, workers=args.workers, progress=Progress(),
                                 overwrite=args.overwrite, follow_links=args.follow_links,
                                 max_side=args.max_side)
    except (OutputNotEmpty, BadArgument) as e:
        raise ConfigError(str(e)) from None
    print(summary(manifest, args.out))
    if not manifest.written:
        print(f"xfer: nothing usable in {args.src}: every file was rejected (see "
              f"{os.path.join(args.out, 'manifest.json')})", file=sys.stderr)
        return 1
    return 0


def cmd_data_schema(args) -> int:
    from xfer.components.labels import read_labels_file
    from xfer.pipeline.data.schema import write_schema

    try:
        n = args.num_classes or len(read_labels_file(args.labels))
    except ValueError as e:  # names refused (components/labels.py), or fewer than 2: the user's file
        raise ConfigError(str(e)) from None
    print(f"wrote {write_schema(args.out, n, args.image_key, args.label_key)}: "
          f"{args.image_key} (bytes, exactly once), {args.label_key} (int in [0, {n}))")
    return 0


def cmd_submit(args) -> int:
    from xfer.pipeline.submit import submit_kubeflow, submit_vertex

    config = load_config(args.config, args.overrides)
    cron = getattr(args, "cron", None)
    if args.target == "kubeflow":
        if not args.endpoint:
            raise ConfigError("--target kubeflow needs --endpoint URL (the KFP API, e.g. https://HOST/pipeline)")
        done = submit_kubeflow(config, args.endpoint, args.experiment, cron=cron)
    else:
        if not (args.project and args.region):
            raise ConfigError("--target vertex needs --project and --region")
        done = submit_vertex(config, args.project, args.region, service_account=args.service_account,
                             cron=cron, api_endpoint=args.api_endpoint)
    print(("scheduled " + done.line().removeprefix("submitted ") + f" (cron '{cron}')") if cron else done.line())
    return 0


def _add_target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", choices=["kubeflow", "vertex"], required=True)
    p.add_argument("--endpoint", help="Kubeflow Pipelines API URL (kubeflow)")
    p.add_argument("--experiment", default="xfer", help="KFP experiment (kubeflow; default xfer)")
    p.add_argument("--project", help="Google Cloud project (vertex)")
    p.add_argument("--region", help="Vertex AI region, e.g. us-central1 (vertex)")
    p.add_argument("--service-account", help="service account the steps run as (vertex)")
    p.add_argument("--api-endpoint", help="another Vertex AI endpoint, e.g. a private one (vertex)")


def cmd_weights_fetch(args) -> int:
    from xfer.components.backbones import fetch_imagenet

    for name in args.backbone:
        for size in args.image_size:
            folder = fetch_imagenet(name, size, args.alpha)
            print(f"{name}: imagenet weights (image size {size}) in {folder}")
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
    p.add_argument("--from", dest="from_node", metavar="COMPONENT",
                   help="partial run: start at this component (e.g. Trainer); upstream artifacts "
                        "come from the latest run in the metadata store, and the components run "
                        "are re-executed, not taken from cache")
    p.add_argument("--to", dest="to_node", metavar="COMPONENT",
                   help="partial run: stop after this component (e.g. Evaluator)")
    p.add_argument("--check", action="store_true",
                   help="run only the preflight (config, the first records of each split, the "
                        "backbone's layers, writable folders) and stop")
    p.add_argument("--require-blessed", action="store_true",
                   help=f"exit {EXIT_NOT_BLESSED} when the model is not blessed (for schedulers)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("lr-find", help="learning-rate range test: a loss-vs-rate plot and a suggested rate",
                       description="A learning-rate range test (Leslie Smith; fastai's lr_find) on a "
                                   "throwaway copy of the Trainer's model: the pipeline runs up to "
                                   "Transform (from cache when unchanged), then the rate grows "
                                   "exponentially from 1e-7 to 10 over up to 100 steps (--steps) on the train "
                                   "split, through the Trainer's input pipeline, model and optimizer, "
                                   "stopping once the smoothed loss passes 4x its minimum. Prints the "
                                   "suggested rate (the steepest descent of the smoothed loss) and the "
                                   "--set line to use it; writes the plot and the points under "
                                   "ROOT/reports/lr_find/. Nothing of the model is kept.")
    _add_config_args(p)
    p.add_argument("--phase", choices=["transfer", "fine_tune"], default="transfer",
                   type=lambda v: v.replace("-", "_"),
                   help="transfer: base frozen, the head's rate (train.transfer.learning_rate); "
                        "fine_tune: phase 1 first for its configured epochs, then the top of the base "
                        "unfrozen (train.fine_tune.learning_rate). Default: transfer")
    p.add_argument("--steps", type=_lr_find_steps, default=None, metavar="N",
                   help="steps of the test, 20 to 1000 (fewer on a split too small for 3 passes); "
                        "fewer steps, a coarser curve. Default: 100, as fastai")
    p.set_defaults(func=cmd_lr_find)

    p = sub.add_parser("runs", help="list past local runs from the metadata store",
                       description="Past runs of the config's pipeline, from its ML Metadata store: "
                                   "run id, start time, status, eval accuracy, blessed, pushed "
                                   "version, and per component cached or executed with its duration.")
    _add_config_args(p)
    p.add_argument("--last", type=int, metavar="N", help="only the last N runs")
    p.add_argument("--json", action="store_true",
                   help="each run as JSON (the fields of reports/RUN/result.json), for schedulers and alerts")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("show", help="show a run's artifacts and readable views of them",
                       description="The artifacts of a run with their URIs, and readable views: "
                                   "statistics, schema, anomalies, Transform output, training "
                                   "curves, TFMA metrics per slice and the blessing with its reason, "
                                   "where the model was pushed.")
    _add_config_args(p)
    p.add_argument("run", help="run id (from `xfer runs`), or 'latest'")
    p.add_argument("component", nargs="?", help="only this component (e.g. Evaluator)")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("ui", help="look at the runs in a browser (read-only local server)",
                       description="A read-only web view of the config's runs: the runs table, each "
                                   "run's DAG with its steps' states and seconds, every view `xfer show` "
                                   "has (plots included), two runs compared; a running run updates live.")
    _add_config_args(p)
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; the pages show "
                        "artifact paths and plots to whoever can reach it)")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("compile", help="compile the pipeline for Kubeflow Pipelines v2 / Vertex AI",
                       description="Compile the same DAG with KubeflowV2DagRunner to a KFP pipeline "
                                   "spec 2.1.0: for Kubeflow the PipelineSpec file you upload (pipeline "
                                   "root as its default), for Vertex AI a PipelineJob. Every step runs "
                                   "in the image kubeflow.image; artifacts go under pipeline_root (a "
                                   "gs:// path in production).")
    _add_config_args(p)
    p.add_argument("--target", choices=["kubeflow", "vertex"], default="kubeflow",
                   help="orchestrator to compile for; both get the same KFP pipeline spec 2.1.0: "
                        "kubeflow the bare PipelineSpec its upload takes, vertex a PipelineJob")
    p.add_argument("--out", "-o",
                   help="output file, .yaml/.yml or .json, written in that format (default: "
                        "pipeline.yaml for kubeflow, pipeline.json for vertex)")
    p.add_argument("--allow-placeholders", action="store_true",
                   help="write a template even if config values still hold the template's "
                        "placeholders (YOUR_PROJECT, YOUR_BUCKET); refused otherwise")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("predict", help="classify images (files, a folder, TFRecords) with a pushed model",
                       description="Load a pushed model (a version folder, or the push destination: "
                                   "its latest complete version) and print, per image, the top "
                                   "classes with probabilities, using the raw-bytes serving "
                                   "signature. Images are streamed in batches; unreadable files, "
                                   "non-images and bad records get one line each naming the reason; "
                                   "the others are still predicted. Exit 0 when at least one image "
                                   "was predicted, 1 when none, 2 for a wrong argument (such as an "
                                   "--out that cannot be written), found before anything is predicted.")
    p.add_argument("model_dir", help="SavedModel folder, or a push destination")
    p.add_argument("images", nargs="*", help="image files (JPEG, PNG, GIF, BMP)")
    p.add_argument("--folder", metavar="DIR",
                   help="every file under DIR, recursively, in sorted order (symlinks to folders "
                        "not followed; hidden files reported as skipped)")
    p.add_argument("--tfrecords", metavar="GLOB",
                   help="TFRecord files of tf.Example (GZIP when the name ends in .gz); each result "
                        "names FILE#RECORD_INDEX")
    p.add_argument("--image-key", default="image",
                   help="with --tfrecords: the feature holding the image bytes (default: image)")
    p.add_argument("--out", metavar="FILE",
                   help="write JSON Lines (one object per image) to FILE (via FILE.tmp, renamed "
                        "when done) instead of printing; checked writable before anything is "
                        "predicted (exit 2 if not); never read as an input under --folder")
    from xfer.pipeline.predict import DEFAULT_MAX_FILE_BYTES  # light: no TensorFlow at import

    p.add_argument("--max-file-bytes", type=int, default=DEFAULT_MAX_FILE_BYTES, metavar="N",
                   help=f"refuse an image file above N bytes by its size, unread (one error line); "
                        f"default {DEFAULT_MAX_FILE_BYTES} (64 MiB, one request's bytes; a JPEG at "
                        f"serving.max_pixels' default, 40 megapixels, is 10-40 MB)")
    p.add_argument("--batch", type=int, metavar="N",
                   help="images per request (default and maximum: the model's serving.max_batch)")
    p.add_argument("--top-k", type=int, default=3, help="classes to show per image (default 3)")
    p.add_argument("--json", action="store_true",
                   help="print JSON instead of lines (names exact; in lines, control characters "
                        "in names are shown escaped: \\n, \\t, \\xNN)")
    p.add_argument("--progress", action="store_true",
                   help="progress line on stderr (images done, images/s) even when it is not a terminal")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("submit", help="compile and start a run on Kubeflow Pipelines or Vertex AI",
                       description="Compile the pipeline (as `xfer compile`) and start one run: on "
                                   "Kubeflow Pipelines v2 (kfp.Client; the spec goes inline in the run) "
                                   "or as a Vertex AI PipelineJob (labels, caching from the config). "
                                   "pipeline_root must be a gs:// (object store) path.")
    _add_config_args(p)
    _add_target_args(p)
    p.set_defaults(func=cmd_submit)
    p = sub.add_parser("schedule", help="compile and schedule recurring runs (cron)",
                       description="As submit, but a KFP recurring run or a Vertex AI pipeline "
                                   "schedule, one run at a time, no catch-up.")
    _add_config_args(p)
    _add_target_args(p)
    p.add_argument("--cron", required=True, help="five-field cron, e.g. '0 3 * * *' (03:00 daily)")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("data", help="bring data in: image folders to TFRecords, schemas",
                       description="Turn labelled image folders into the TFRecords the pipeline "
                                   "reads, and write curated schemas.")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    d = dsub.add_parser("import-folder", help="image folders -> sharded TFRecords + labels.txt + manifest",
                        description="Read SRC/<class>/* or SRC/<split>/<class>/* (splits: train, "
                                    "eval|valid|validation, test), any common image format, and "
                                    "write OUT/<split>/*.tfrecord.gz of tf.Example (image, label, "
                                    "filename, height, width), labels.txt, schema.pbtxt (the curated "
                                    "schema for these classes) and manifest.json (counts per split "
                                    "and class, a checksum per shard, every rejected file with its "
                                    "reason, every converted file). Use OUT as data.input_base with "
                                    "splits {train: 'train/*', eval: 'eval/*'}.")
    d.add_argument("src", help="folder of images, one subfolder per class")
    d.add_argument("out", help="output folder")
    d.add_argument("--train", type=float, default=0.8, help="share for train without split folders (0.8)")
    d.add_argument("--eval", type=float, default=0.2, help="share for eval (0.2)")
    d.add_argument("--test", type=float, default=0.0, help="share for test (0)")
    d.add_argument("--shards", type=int, help="shards per split (default: one per 2,000 images)")
    d.add_argument("--max-pixels", type=int, default=40_000_000,
                   help="refuse larger images as decompression bombs (default 40,000,000, data.max_pixels' "
                        "default, above which DataCheck refuses an image). For genuine larger photos raise "
                        "it and give --max-side, which stores them shrunk")
    d.add_argument("--max-side", type=int, metavar="N",
                   help="store images larger than N pixels on their longer side shrunk to N (aspect kept; "
                        "JPEG re-encoded at quality 95): less disk and less decoding in every epoch. "
                        "Give at least twice model.image_size (448 for 224). Default: stored as they are")
    d.add_argument("--workers", type=int, help="decoding processes (default: all cores)")
    d.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty OUT whole (written beside it, then swapped in)")
    d.add_argument("--follow-links", action="store_true",
                   help="follow symlinks that stay inside SRC (default: not followed, listed as rejected)")
    d.set_defaults(func=cmd_import_folder)
    d = dsub.add_parser("schema", help="write the curated schema for a label set",
                        description="Write schemas/image_classification.pbtxt made concrete for a "
                                    "dataset (label in [0, number of classes), your feature keys), "
                                    "to import with data.schema_path.")
    d.add_argument("--labels", help="labels.txt (one class per line)")
    d.add_argument("--num-classes", type=int, help="instead of --labels")
    d.add_argument("--image-key", default="image")
    d.add_argument("--label-key", default="label")
    d.add_argument("--out", required=True, help="schema.pbtxt to write")
    d.set_defaults(func=cmd_data_schema)

    p = sub.add_parser("weights", help="manage backbone weights (fill the Keras cache ahead of time)",
                       description="ImageNet weights for air-gapped clusters and the Docker image.")
    wsub = p.add_subparsers(dest="weights_command", metavar="ACTION", required=True)
    w = wsub.add_parser("fetch", help="download a backbone's ImageNet weights into the Keras cache",
                        description="Download ImageNet weights (without the top) into the Keras "
                                    "cache ($KERAS_HOME or ~/.keras), so runs with weights: imagenet "
                                    "need no network. MobileNetV2's file depends on image size "
                                    "and alpha.")
    from xfer.components.settings import BACKBONES
    w.add_argument("--backbone", action="append", required=True, choices=sorted(BACKBONES),
                   help="backbone name (repeatable)")
    w.add_argument("--image-size", type=int, action="append", default=None,
                   help="input size (repeatable; default 224)")
    w.add_argument("--alpha", type=float, default=1.0, help="MobileNetV2 width (default 1.0)")
    w.set_defaults(func=cmd_weights_fetch)
    return parser


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:  # --help or a usage error, printed: a closed pipe shows in this flush
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            errors.quiet_broken_pipe()
        raise
    if getattr(args, "image_size", 0) is None:
        args.image_size = [224]
    progress.configure(args.verbose)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a reader gone (`xfer runs | head -1`) shows here, not at exit
        return code
    except BrokenPipeError:
        return errors.quiet_broken_pipe()
    except KeyboardInterrupt:  # Ctrl-C: the user knows why; a trace would bury the one line
        print(f"xfer: interrupted{INTERRUPTED_NOTE.get(args.command, '')}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - the user's error first, the trace in a file
        if args.verbose and not isinstance(e, ConfigError):
            raise
        return errors.report(e)


if __name__ == "__main__":
    sys.exit(main())
