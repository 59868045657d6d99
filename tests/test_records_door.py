"""ImportExampleGen's door (components/import_gen.py), driven as TFX's own executor tests
drive it: a real Examples artifact, real Beam, real TFRecord files, including broken ones."""
import gzip
import json
import os

import pytest

import xfer.components  # noqa: F401
import tensorflow as tf
from tfx.proto import example_gen_pb2
from tfx.types import standard_artifacts, standard_component_specs as specs
from tfx.utils import proto_utils

from xfer.components.import_gen import Executor, RecordsRefused, fingerprint, read_provenance
from xfer.pipeline.data.records import image_example

PNG = tf.io.encode_png(tf.zeros([4, 4, 3], tf.uint8)).numpy()


def _records(n, start=0):
    return [image_example(PNG, i % 3, id=f"r{start + i}") for i in range(n)]


def _write(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as w:
        for r in records:
            w.write(r)
    return path


def _import(base, out, pattern="train/*"):
    examples = standard_artifacts.Examples()
    examples.uri = str(out)
    exec_properties = {
        specs.INPUT_BASE_KEY: str(base),
        specs.INPUT_CONFIG_KEY: proto_utils.proto_to_json(
            example_gen_pb2.Input(splits=[example_gen_pb2.Input.Split(name="train", pattern=pattern)])),
        specs.OUTPUT_CONFIG_KEY: proto_utils.proto_to_json(example_gen_pb2.Output()),
        specs.OUTPUT_DATA_FORMAT_KEY: example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE,
    }
    Executor().Do({}, {specs.EXAMPLES_KEY: [examples]}, exec_properties)
    return examples


def _refused(base, out) -> str:
    with pytest.raises(RecordsRefused) as caught:
        _import(base, out)
    assert os.listdir(out) == [], "a refused import leaves nothing behind"
    return str(caught.value)


def test_good_files_pass_unchanged_and_each_record_is_traced_to_its_file(tmp_path):
    a = _write(tmp_path / "in" / "train" / "a.tfrecord", _records(5))
    b = _write(tmp_path / "in" / "train" / "b.tfrecord", _records(3, start=5))
    examples = _import(tmp_path / "in", tmp_path / "out")
    written = []
    for f in tf.io.gfile.glob(os.path.join(examples.uri, "Split-train", "*")):
        written += list(tf.data.TFRecordDataset(f, compression_type="GZIP").as_numpy_iterator())
    assert sorted(written) == sorted(_records(5) + _records(3, start=5)), "the user's bytes, unchanged"
    sources = read_provenance(examples.uri)
    for path, records in ((a, _records(5)), (b, _records(3, start=5))):
        for index, raw in enumerate(records):
            assert sources[fingerprint(raw)] == (str(path), index)


def test_a_file_cut_short_is_named_with_the_record_it_ends_in(tmp_path):
    good = _write(tmp_path / "in" / "train" / "a.tfrecord", _records(4))
    cut = _write(tmp_path / "in" / "train" / "b.tfrecord", _records(5))
    cut.write_bytes(cut.read_bytes()[:-10])
    message = _refused(tmp_path / "in", tmp_path / "out")
    assert f"{cut}: the file is cut short inside record 4 (after 4 whole record(s))" in message, message
    assert str(good) not in message and "copy the file again or remove it" in message


def test_a_file_that_is_not_a_tfrecord_is_named(tmp_path):
    _write(tmp_path / "in" / "train" / "a.tfrecord", _records(2))
    text = tmp_path / "in" / "train" / "notes.tfrecord"
    text.write_text("these are my notes about the data set, not records\n" * 20)
    message = _refused(tmp_path / "in", tmp_path / "out")
    assert f"{text}: record 0 at byte 0: not a TFRecord file" in message and "narrow data.splits" in message, message


def test_a_damaged_record_is_named_by_index(tmp_path):
    path = _write(tmp_path / "in" / "train" / "a.tfrecord", _records(5))
    data = bytearray(path.read_bytes())
    record = len(data) // 5
    data[2 * record + 40] ^= 0xFF  # inside record 2's payload: its data CRC no longer matches
    path.write_bytes(bytes(data))
    message = _refused(tmp_path / "in", tmp_path / "out")
    assert f"{path}: record 2 at byte {2 * record}: corrupted (its data checksum does not match)" in message, message


def test_records_that_are_not_tf_examples_are_named(tmp_path):
    path = _write(tmp_path / "in" / "train" / "a.tfrecord", [_records(1)[0], PNG, b"\xff" * 30, _records(1)[0]])
    message = _refused(tmp_path / "in", tmp_path / "out")
    assert f"{path}: 2 record(s) are not tf.Example: record 1 (" in message, message
    assert "; record 2 (" in message and "tf.train.Example(...).SerializeToString()" in message


def test_a_gz_name_on_a_plain_file_is_named(tmp_path):
    path = _write(tmp_path / "in" / "train" / "a.tfrecord.gz", _records(3))
    message = _refused(tmp_path / "in", tmp_path / "out")
    assert f"{path}: record 0 at byte 0 of the decompressed data: does not decompress as GZIP" in message, message


def test_gzip_files_are_read(tmp_path):
    plain = _write(tmp_path / "plain.tfrecord", _records(3))
    (tmp_path / "in" / "train").mkdir(parents=True)
    (tmp_path / "in" / "train" / "a.tfrecord.gz").write_bytes(gzip.compress(plain.read_bytes()))
    examples = _import(tmp_path / "in", tmp_path / "out")
    assert len(read_provenance(examples.uri)) == 3


def test_nothing_matching_is_named(tmp_path):
    (tmp_path / "in" / "train").mkdir(parents=True)
    with pytest.raises(RecordsRefused, match=r"no input files match .*/in/train/\*"):
        _import(tmp_path / "in", tmp_path / "out")


def test_provenance_is_json_per_input_file(tmp_path):
    _write(tmp_path / "in" / "train" / "a.tfrecord", _records(2))
    examples = _import(tmp_path / "in", tmp_path / "out")
    [name] = os.listdir(os.path.join(examples.uri, "provenance"))
    entry = json.loads((tmp_path / "out" / "provenance" / name).read_text())
    assert entry["file"].endswith("train/a.tfrecord") and len(entry["fingerprints"]) == 2


def test_local_runners_write_each_split_as_it_is_read_without_tfxs_shuffle(tmp_path, monkeypatch):
    """TFX shuffles each split before writing it; Beam's local runners hold that shuffle
    whole in memory. Here the records go from the read to the files (checked on the Beam
    graph that ran), all of them, and TFX's own write is back in place afterwards."""
    import apache_beam as beam
    from tfx.components.example_gen import write_split

    from xfer.components.import_gen import streams

    labels = []

    class Labels(beam.pipeline.PipelineVisitor):
        def enter_composite_transform(self, node):
            labels.append(node.full_label)

        def visit_transform(self, node):
            labels.append(node.full_label)

    run = beam.Pipeline.run

    def run_and_record(pipeline, *args, **kwargs):
        pipeline.visit(Labels())
        return run(pipeline, *args, **kwargs)

    monkeypatch.setattr(beam.Pipeline, "run", run_and_record)
    tfx_write = write_split.WriteSplit
    _write(tmp_path / "in" / "train" / "a.tfrecord", _records(40))
    examples = _import(tmp_path / "in", tmp_path / "out")
    written = []
    for f in tf.io.gfile.glob(os.path.join(examples.uri, "Split-train", "*")):
        written += list(tf.data.TFRecordDataset(f, compression_type="GZIP").as_numpy_iterator())
    assert sorted(written) == sorted(_records(40))
    assert "WriteSplit[train]/Write" in labels, labels
    assert not [label for label in labels if label.startswith("WriteSplit[train]/Shuffle")], labels
    assert write_split.WriteSplit is tfx_write
    assert streams([]) and streams(["--direct_running_mode=in_memory"]) and streams(["--runner=FnApiRunner"])
    assert not streams(["--runner=DataflowRunner", "--project=p"]) and not streams(["--runner=PortableRunner"])
