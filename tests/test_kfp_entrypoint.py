"""The step entrypoint (components/kfp_entrypoint.py) under what the open-source KFP
launcher hands a step: input artifacts with an empty type, no lifecycle hook run."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from conftest import CIFAR, CONFIGS, xfer
from xfer.components import kfp_entrypoint

EXAMPLES = "title: tfx.Examples\ntype: object\n"
SCHEMA = "title: tfx.Schema\ntype: object\n"


def _inputs(**types) -> pipeline_spec_pb2.ExecutorInput:
    ei = pipeline_spec_pb2.ExecutorInput()
    for key, artifact_type in types.items():
        a = ei.inputs.artifacts[key].artifacts.add(uri=f"/x/{key}", name="17")
        if artifact_type is not None:
            json_format.ParseDict(artifact_type, a.type)
    return ei


def _spec(**schemas) -> pipeline_spec_pb2.ComponentInputsSpec:
    spec = pipeline_spec_pb2.ComponentInputsSpec()
    for key, schema in schemas.items():
        spec.artifacts[key].artifact_type.instance_schema = schema
    return spec


def test_empty_and_generic_input_types_get_the_declared_type():
    # The open-source launcher: {"instanceSchema": ""} (backend/src/v2/metadata/client.go);
    # kfp.local: schemaTitle system.Artifact; a missing type altogether.
    ei = _inputs(examples={"instanceSchema": ""}, schema={"schemaTitle": "system.Artifact"}, stats=None)
    restored = kfp_entrypoint.restore_input_types(ei, _spec(examples=EXAMPLES, schema=SCHEMA, stats=EXAMPLES))
    assert sorted(restored) == ["examples", "schema", "stats"]
    assert ei.inputs.artifacts["examples"].artifacts[0].type.instance_schema == EXAMPLES
    assert ei.inputs.artifacts["schema"].artifacts[0].type.instance_schema == SCHEMA


def test_a_typed_input_is_kept_and_a_contradicting_one_refused():
    ei = _inputs(examples={"instanceSchema": EXAMPLES})
    assert kfp_entrypoint.restore_input_types(ei, _spec(examples=EXAMPLES)) == []
    ei = _inputs(examples={"schemaTitle": "tfx.Model"})
    with pytest.raises(kfp_entrypoint.EntrypointError, match="arrived as tfx.Model but the component declares tfx.Examples"):
        kfp_entrypoint.restore_input_types(ei, _spec(examples=EXAMPLES))


def test_an_untyped_input_the_spec_does_not_declare_is_an_error():
    ei = _inputs(examples={"instanceSchema": ""})
    with pytest.raises(kfp_entrypoint.EntrypointError, match="input artifact 'examples' arrived with type"):
        kfp_entrypoint.restore_input_types(ei, None)


class Blob:
    def __init__(self, name, size):
        self.name, self.size, self.deleted = name, size, False

    def delete(self):
        self.deleted = True


class Client:
    """Records what is listed; as google.cloud.storage.Client.list_blobs(bucket, prefix)."""

    def __init__(self, blobs):
        self.blobs, self.asked = blobs, []

    def list_blobs(self, bucket, prefix):
        self.asked.append((bucket, prefix))
        return [b for b in self.blobs if b.name.startswith(prefix)]


def test_only_zero_byte_directory_objects_are_removed_under_a_gs_output():
    blobs = [Blob("root/Trainer/model/", 0), Blob("root/Trainer/model/Format-Serving/", 0),
             Blob("root/Trainer/model/Format-Serving/saved_model.pb", 1200),
             Blob("root/Trainer/model/Format-Serving/assets/empty.txt", 0),  # a real empty file
             Blob("root/Other/x/", 0)]
    client = Client(blobs)
    assert kfp_entrypoint.remove_directory_markers("gs://bkt/root/Trainer/model", client) == 2
    assert client.asked == [("bkt", "root/Trainer/model")]
    assert [b.name for b in blobs if b.deleted] == ["root/Trainer/model/", "root/Trainer/model/Format-Serving/"]
    assert kfp_entrypoint.remove_directory_markers("/local/path", client) == 0


@pytest.mark.integration
def test_import_example_gen_resolves_the_newest_span_inside_the_step(tmp_path):
    """The compiled ImportExampleGen step, run in-process as its container would run it,
    with no preCacheCheck: it must read span 2, not glob 'span-{SPAN}' literally."""
    import tensorflow as tf

    data = tmp_path / "data"
    train = list(tf.data.TFRecordDataset(str(CIFAR / "train" / "cifar10_train.tfrecord")).as_numpy_iterator())
    for span, records in ((1, train[:100]), (2, train[:40])):
        for split in ("train", "eval"):
            (data / f"span-{span}" / split).mkdir(parents=True)
            with tf.io.TFRecordWriter(str(data / f"span-{span}" / split / "data.tfrecord")) as w:
                for r in records:
                    w.write(r)
    spec_path = tmp_path / "pipeline.yaml"
    xfer("compile", "--config", str(CONFIGS / "cifar_small.yaml"), "--set", "kubeflow.image=x:1",
         "--set", f"pipeline_root={tmp_path / 'root'}", "--set", f"data.input_base={data}",
         "--set", f"data.labels_file={CIFAR / 'labels.txt'}",
         "--set", 'data.splits={train: "span-{SPAN}/train/*", eval: "span-{SPAN}/eval/*"}',
         "--out", str(spec_path))
    spec = yaml.safe_load(spec_path.read_text())  # the PipelineSpec, as Kubeflow's upload takes it
    task = spec["root"]["dag"]["tasks"]["ImportExampleGen"]
    component = spec["components"][task["componentRef"]["name"]]
    container = spec["deploymentSpec"]["executors"][component["executorLabel"]]["container"]

    ei = pipeline_spec_pb2.ExecutorInput()
    for key, value in task["inputs"]["parameters"].items():
        json_format.ParseDict(value["runtimeValue"]["constant"], ei.inputs.parameter_values[key])
    out = ei.outputs.artifacts["examples"].artifacts.add(uri=str(tmp_path / "out" / "examples"))
    out.type.instance_schema = component["outputDefinitions"]["artifacts"]["examples"]["artifactType"]["instanceSchema"]
    ei.outputs.output_file = str(tmp_path / "out" / "executor_output.json")
    args = [json_format.MessageToJson(ei) if a == "{{$}}" else a for a in container["args"]]

    # The compiled step names Beam's in-process runner (the config names none): no Prism
    # fetched from GitHub, no 52 MB sdist of TFX in /tmp (pipeline.in_process_beam_args).
    assert "--runner=FnApiRunner" in args and "--sdk_container_image=none" in args, args

    # As the container runs it: its own process (absl parses that process's flags), with
    # a /tmp of its own that it must leave as it found it.
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    subprocess.run([sys.executable, "-m", "xfer.components.kfp_entrypoint", *args], check=True,
                   capture_output=True, env={**os.environ, "TMPDIR": str(tmp)})
    assert sorted(p.name for p in tmp.iterdir()) == []

    result = json.loads((tmp_path / "out" / "executor_output.json").read_text())
    examples = result["artifacts"]["examples"]["artifacts"][0]
    assert examples["metadata"]["span"] == 2
    written = tf.io.gfile.glob(str(Path(examples["uri"]) / "Split-train" / "*"))
    assert sum(1 for _ in tf.data.TFRecordDataset(written, compression_type="GZIP")) == 40
