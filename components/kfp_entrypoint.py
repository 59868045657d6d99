"""The command every compiled step runs: TFX's KFP v2 entrypoint, made to work under the
open-source Kubeflow Pipelines launcher as well as on Vertex AI.

`python -m xfer.components.kfp_entrypoint --executor_class_path ... --json_serialized_invocation_args {{$}}
--json_serialized_inputs_spec_args {...}` takes TFX's arguments unchanged and, around
TFX's own `kubeflow_v2_run_executor`:

1. restores input artifact types. The open-source launcher hands every upstream artifact
   with an empty type (`Schema: "" // TODO` in kubeflow/pipelines
   backend/src/v2/metadata/client.go); TFX's entrypoint takes the artifact class from that
   type and fails. The compiled component's own input definitions, which TFX passes as
   `--json_serialized_inputs_spec_args` in pipeline spec 2.1, name every input's type.
2. resolves `{SPAN}` / `{VERSION}`, the input fingerprint and the span of an ExampleGen's
   output inside the step, with TFX's own driver code. TFX compiles that driver as a
   `lifecycle.preCacheCheck` hook, which only Vertex AI runs: nothing in the open-source
   backend reads `lifecycle`, so without this a `{SPAN}` pattern is globbed literally.
3. gives the outputs of KFP's own types (system.Metrics, system.HTML, ...) the classes that
   write them (components/kfp_artifacts.py): TFX's entrypoint reads an output's type title
   as the import path of its class; and keeps a system.Metrics artifact's metadata to
   numbers, the metrics the KFP UI lists.
4. deletes the zero-byte "directory" objects TensorFlow's GCS filesystem leaves under a
   gs:// output, which make the open-source launcher's input download fail in the next
   step ("mkdir ...: not a directory", kubeflow/pipelines#13476, open).
"""
from __future__ import annotations

import argparse
from typing import Optional


class EntrypointError(ValueError):
    """An ExecutorInput this entrypoint cannot make sense of; names the input and why."""


def _title(artifact_type) -> str:
    """The type's title: `schemaTitle`, or the `title:` line of an `instanceSchema`."""
    kind = artifact_type.WhichOneof("kind")
    if kind == "schema_title":
        return artifact_type.schema_title
    if kind == "instance_schema":
        for line in artifact_type.instance_schema.splitlines():
            if line.startswith("title:"):
                return line.split(":", 1)[1].strip()
    return ""


def restore_input_types(executor_input, inputs_spec) -> list[str]:
    """Give each input artifact the type the compiled component declares for it.

    The open-source launcher sends an empty type; kfp.local sends the generic
    `system.Artifact`. Either is replaced by the declared type. Returns the keys
    restored. A type that is missing and undeclared, or a specific type that differs
    from the declared one, is an error: a guessed type would load the wrong class."""
    restored = []
    for key, artifacts in executor_input.inputs.artifacts.items():
        declared = inputs_spec.artifacts[key].artifact_type if (
            inputs_spec is not None and key in inputs_spec.artifacts) else None
        for artifact in artifacts.artifacts:
            title = _title(artifact.type)
            if declared is None:
                if not title or title.startswith("system."):
                    raise EntrypointError(
                        f"input artifact '{key}' arrived with type {title or '(none)'} and the "
                        f"component's input definitions do not name it; compile with `xfer compile` "
                        f"(pipeline spec 2.1 passes them as --json_serialized_inputs_spec_args)")
                continue
            if title == _title(declared):
                continue
            if title and not title.startswith("system."):
                raise EntrypointError(
                    f"input artifact '{key}' arrived as {title} but the component declares "
                    f"{_title(declared)}: the compiled spec and the image do not match")
            artifact.type.CopyFrom(declared)
            restored.append(key)
    return restored


def is_file_based_example_gen(executor_class_path: str, executor_input) -> bool:
    from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor
    from tfx.utils import import_utils

    cls = import_utils.import_class_by_path(executor_class_path)
    params = executor_input.inputs.parameter_values
    return issubclass(cls, BaseExampleGenExecutor) and "input_base" in params


def directory_markers(blobs) -> list:
    """The zero-byte objects whose name ends in '/' (what a GCS folder looks like to
    tf.io.gfile.makedirs); real files, even empty ones, are kept."""
    return [b for b in blobs if b.name.endswith("/") and (b.size or 0) == 0]


def remove_directory_markers(uri: str, client=None) -> int:
    """Delete the directory markers under a gs:// output URI; returns how many."""
    if not uri.startswith("gs://"):
        return 0
    if client is None:
        from google.cloud import storage
        client = storage.Client()
    bucket, _, prefix = uri[len("gs://"):].partition("/")
    prefix = prefix.rstrip("/")
    markers = directory_markers(client.list_blobs(bucket, prefix=prefix))
    for blob in markers:
        blob.delete()
    return len(markers)


def _record_span(executor_input) -> None:
    """The driver's span and version onto the output Examples as properties (it writes
    them as custom properties only), as TFX's local driver leaves them."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    from tfx.dsl.io import fileio

    with fileio.open(executor_input.outputs.output_file) as f:
        resolved = json_format.Parse(f.read(), pipeline_spec_pb2.ExecutorOutput(), ignore_unknown_fields=True)
    for key, artifacts in resolved.artifacts.items():
        if key not in executor_input.outputs.artifacts or not artifacts.artifacts:
            continue
        target = executor_input.outputs.artifacts[key].artifacts[0]
        target.metadata.update(json_format.MessageToDict(artifacts.artifacts[0].metadata))
        for name in ("span", "version"):
            if name in resolved.parameter_values:
                target.metadata[name] = resolved.parameter_values[name].number_value


def prepare(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """TFX's flags, with the ExecutorInput repaired as the module doc says."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2
    from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_run_executor as tfx_entry

    args, beam_args = tfx_entry._parse_flags(argv)
    executor_input = pipeline_spec_pb2.ExecutorInput()
    json_format.Parse(args.json_serialized_invocation_args, executor_input, ignore_unknown_fields=True)
    inputs_spec: Optional[pipeline_spec_pb2.ComponentInputsSpec] = None
    if args.json_serialized_inputs_spec_args:
        inputs_spec = pipeline_spec_pb2.ComponentInputsSpec()
        json_format.Parse(args.json_serialized_inputs_spec_args, inputs_spec, ignore_unknown_fields=True)
    restored = restore_input_types(executor_input, inputs_spec)
    if restored:
        print(f"[xfer] input types restored from the component spec: {', '.join(sorted(restored))}",
              flush=True)
    from xfer.components import kfp_artifacts
    kfp_artifacts.as_tfx_classes(executor_input)
    if is_file_based_example_gen(args.executor_class_path, executor_input):
        from tfx.orchestration.kubeflow.v2.file_based_example_gen import driver

        # Writes span, version, fingerprint and the resolved input config to the
        # executor's output file, which TFX's entrypoint reads back as exec properties.
        driver._run_driver(executor_input, inputs_spec)
        _record_span(executor_input)
    args.json_serialized_invocation_args = json_format.MessageToJson(executor_input)
    return args, beam_args


def run(parsed: tuple[argparse.Namespace, list[str]]) -> None:
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2
    from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_run_executor as tfx_entry

    args, beam_args = parsed
    tfx_entry.main((args, beam_args))
    executor_input = json_format.Parse(args.json_serialized_invocation_args,
                                       pipeline_spec_pb2.ExecutorInput(), ignore_unknown_fields=True)
    from xfer.components import kfp_artifacts
    kfp_artifacts.numbers_only(executor_input)
    for artifacts in executor_input.outputs.artifacts.values():
        for artifact in artifacts.artifacts:
            removed = remove_directory_markers(artifact.uri)
            if removed:
                print(f"[xfer] removed {removed} zero-byte directory object(s) under {artifact.uri}",
                      flush=True)


if __name__ == "__main__":
    from absl import app

    # As TFX's own entrypoint: absl parses argv (program name first) through the flags parser.
    app.run(run, flags_parser=lambda argv: prepare(argv[1:]))
