"""Bad data in the pipeline, for real: TFRecords from elsewhere with undecodable images,
a curated schema that the data breaks, other feature keys, and scheduled spans."""

import pytest

import xfer.components  # noqa: F401
import tensorflow as tf

from conftest import CONFIGS, xfer
from xfer.pipeline.data.records import image_example

pytestmark = pytest.mark.integration


def _copy(src_file, dst_file, *, keys=("image", "label"), corrupt=(), limit=None):
    """Rewrite CIFAR examples: rename the image and label keys, corrupt some images."""
    dst_file.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with tf.io.TFRecordWriter(str(dst_file)) as w:
        for i, raw in enumerate(tf.data.TFRecordDataset(str(src_file)).as_numpy_iterator()):
            if limit is not None and i >= limit:
                break
            f = tf.train.Example.FromString(raw).features.feature
            image = f["image"].bytes_list.value[0]
            if i in corrupt:
                image = image[:40]  # truncated PNG
            w.write(image_example(image, f["label"].int64_list.value[0], image_key=keys[0],
                                  label_key=keys[1], id=f["id"].bytes_list.value[0]))
            n += 1
    return n


def _config(root, data, *extra):
    return ["--config", str(CONFIGS / "cifar_small.yaml"), "--set", f"root={root}",
            "--set", f"data.input_base={data}", "--set", "data.splits={train: 'train/*', eval: 'eval/*'}",
            *extra]


@pytest.fixture(scope="module")
def broken(tmp_path_factory, cifar):
    data = tmp_path_factory.mktemp("broken-data")
    _copy(cifar / "train" / "cifar10_train.tfrecord", data / "train" / "part.tfrecord", corrupt=(5, 77))
    _copy(cifar / "test" / "cifar10_test.tfrecord", data / "eval" / "part.tfrecord")
    ids = []
    for i, raw in enumerate(tf.data.TFRecordDataset(str(data / "train" / "part.tfrecord")).as_numpy_iterator()):
        if i in (5, 77):
            ids.append(tf.train.Example.FromString(raw).features.feature["id"].bytes_list.value[0].decode())
    return data, ids


def test_undecodable_image_fails_naming_split_record_and_id(broken, tmp_path, cifar):
    data, ids = broken
    proc = xfer("run", *_config(tmp_path, data, "--set", f"data.labels_file={cifar / 'labels.txt'}"),
                "--to", "DataCheck", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    err = proc.stderr
    assert err.startswith("xfer: error in DataCheck: 2 bad record(s)"), err
    # Named by the user's file and record index (ImportExampleGen's provenance), and the id
    assert f"split train, {data / 'train' / 'part.tfrecord'} record 5, id {ids[0]}: image does not decode " \
           "(Invalid PNG" in err, err
    assert f"record 77, id {ids[1]}" in err and "data.on_bad_image: skip" in err
    assert "Traceback" not in err


def test_skip_drops_counts_and_trains_on_the_rest(broken, tmp_path, cifar):
    data, ids = broken
    out = xfer("run", *_config(tmp_path, data, "--set", f"data.labels_file={cifar / 'labels.txt'}",
                               "--set", "data.on_bad_image=skip", "--set", "data.max_bad_fraction=0.05",
                               "--set", "train.augment.horizontal_flip=false",
                               "--set", "train.batch_size=8"), "--to", "Trainer").stdout
    assert "skipped 2 bad record(s)" in out and ids[0] in out, out
    assert "cached base features of 126 train and 128 eval images" in out, out
    assert "[xfer] Trainer done" in out
    assert "bad records skipped: 2 (data.on_bad_image: skip)" in out, out
    config = _config(tmp_path, data)
    runs = xfer("runs", *config).stdout
    assert "examples eval 128/train 126  bad records skipped 2" in runs.splitlines()[0], runs
    shown = xfer("show", *config, "latest", "DataCheck").stdout
    assert "train: 126 records kept" in shown and "bad records skipped (data.on_bad_image: skip): 2" in shown
    for index, ident in zip((5, 77), ids):
        assert f"split train, {data / 'train' / 'part.tfrecord'} record {index}, id {ident}: image does not " \
               "decode" in shown, shown
    import json
    with open(out.split("run result: ")[1].split()[0]) as f:
        result = json.load(f)
    assert result["bad_records_skipped"] == 2 and result["examples"] == {"eval": 128, "train": 126}
    assert result["status"] == "complete" and result["pushed"] is None
    assert result["not_pushed_because"].startswith("not evaluated")
    [listed] = json.loads(xfer("runs", *config, "--json").stdout)
    assert listed == result


def test_curated_schema_anomaly_stops_the_run_or_warns(tmp_path, cifar):
    schema = tmp_path / "schema.pbtxt"
    xfer("data", "schema", "--num-classes", "5", "--out", str(schema))  # CIFAR has labels 0..9
    config = _config(tmp_path / "root", cifar, "--set", f"data.labels_file={cifar / 'labels.txt'}",
                     "--set", "data.splits={train: 'train/*', eval: 'test/*'}",
                     "--set", f"data.schema_path={schema}")
    proc = xfer("run", *config, "--to", "DataCheck", check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("xfer: error in DataCheck: ExampleValidator found"), proc.stderr
    assert "feature 'label': Out-of-range values" in proc.stderr and "data.on_anomaly: warn" in proc.stderr
    warned = xfer("run", *config, "--set", "data.on_anomaly=warn", "--to", "DataCheck").stdout
    assert "anomaly (data.on_anomaly: warn, continuing): split train, feature 'label'" in warned, warned


def test_other_feature_keys_work_by_config_alone(tmp_path, cifar):
    data = tmp_path / "renamed"
    _copy(cifar / "train" / "cifar10_train.tfrecord", data / "train" / "a.tfrecord", keys=("image_raw", "y"))
    _copy(cifar / "test" / "cifar10_test.tfrecord", data / "eval" / "a.tfrecord", keys=("image_raw", "y"))
    out = xfer("run", *_config(tmp_path / "root", data, "--set", f"data.labels_file={cifar / 'labels.txt'}",
                               "--set", "data.image_key=image_raw", "--set", "data.label_key=y")).stdout
    assert "pushed to:" in out, out
    pushed = out.split("pushed to: ")[1].split()[0]
    model = tf.saved_model.load(pushed)
    png = next(iter(tf.data.TFRecordDataset(str(data / "eval" / "a.tfrecord")).as_numpy_iterator()))
    image = tf.train.Example.FromString(png).features.feature["image_raw"].bytes_list.value[0]
    probs = model.signatures["serving_default"](images=tf.constant([image]))["probabilities"]
    assert probs.shape == (1, 10)


def test_scheduled_run_picks_the_newest_span(tmp_path, cifar):
    data = tmp_path / "spans"
    for split, name in (("train", "cifar10_train"), ("eval", "cifar10_test")):
        _copy(cifar / split.replace("eval", "test") / f"{name}.tfrecord", data / "span-1" / split / "a.tfrecord")
    config = _config(tmp_path / "root", data, "--set", f"data.labels_file={cifar / 'labels.txt'}",
                     "--set", "data.splits={train: 'span-{SPAN}/train/*', eval: 'span-{SPAN}/eval/*'}",
                     "--set", "train.augment.horizontal_flip=false", "--set", "train.batch_size=8")
    first = xfer("run", *config, "--to", "Trainer").stdout
    assert "cached base features of 128 train" in first, first
    for split, name in (("train", "cifar10_train"), ("eval", "cifar10_test")):  # the nightly drop
        _copy(cifar / split.replace("eval", "test") / f"{name}.tfrecord", data / "span-2" / split / "a.tfrecord",
              limit=48)
    second = xfer("run", *config, "--to", "Trainer").stdout
    assert "cached base features of 48 train and 48 eval images" in second, second
    from xfer.pipeline.store import open_store
    store = open_store(str(tmp_path / "root" / "metadata.sqlite"))
    spans = {step: sorted(a.custom_properties["span"].int_value for a in store.get_artifacts_by_type("Examples")
                          if f"/{step}/" in a.uri) for step in ("ImportExampleGen", "DataCheck")}
    assert spans == {"ImportExampleGen": [1, 2], "DataCheck": [1, 2]}


def test_skip_never_drops_more_than_max_bad_fraction(broken, tmp_path, cifar):
    data, _ = broken
    proc = xfer("run", *_config(tmp_path, data, "--set", f"data.labels_file={cifar / 'labels.txt'}",
                                "--set", "data.on_bad_image=skip"), "--to", "DataCheck", check=False)
    assert proc.returncode == 1, proc.stdout
    assert "split train: 2 of 128 records are bad (1.6%), more than data.max_bad_fraction 0.01" in proc.stderr


def test_a_label_outside_the_classes_is_named_by_datacheck(tmp_path, cifar):
    """Record 300 of 384 has label 99: past the 256 records the preflight samples, so
    DataCheck, which reads every record, must name it before Transform and training."""
    import tensorflow as tf

    data = tmp_path / "data"
    records = list(tf.data.TFRecordDataset(str(cifar / "train" / "cifar10_train.tfrecord")).as_numpy_iterator()) * 3
    (data / "train").mkdir(parents=True)
    with tf.io.TFRecordWriter(str(data / "train" / "part.tfrecord")) as w:
        for i, raw in enumerate(records):
            f = tf.train.Example.FromString(raw).features.feature
            label = 99 if i == 300 else f["label"].int64_list.value[0]
            w.write(image_example(f["image"].bytes_list.value[0], label, id=f"r{i}"))
    _copy(cifar / "test" / "cifar10_test.tfrecord", data / "eval" / "part.tfrecord")
    proc = xfer("run", *_config(tmp_path / "root", data, "--set", f"data.labels_file={cifar / 'labels.txt'}"),
                "--to", "DataCheck", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "xfer: error in DataCheck: 1 bad record(s)" in proc.stderr, proc.stderr
    assert "id r300: label 99 is outside the 10 classes (0 to 9)" in proc.stderr, proc.stderr


def test_broken_record_files_are_named_before_any_step_or_at_the_door(tmp_path, cifar):
    """A text file among the TFRecords is named by the preflight (it reads the first
    records of every file); a file cut short past the records the preflight samples is
    named by ImportExampleGen, with the record it ends in, and nothing is trained."""
    data = tmp_path / "data"
    records = list(tf.data.TFRecordDataset(str(cifar / "train" / "cifar10_train.tfrecord")).as_numpy_iterator()) * 3
    (data / "train").mkdir(parents=True)
    cut = data / "train" / "part.tfrecord"
    with tf.io.TFRecordWriter(str(cut)) as w:
        for raw in records:
            w.write(raw)
    cut.write_bytes(cut.read_bytes()[:-100])
    _copy(cifar / "test" / "cifar10_test.tfrecord", data / "eval" / "part.tfrecord")
    config = _config(tmp_path / "root", data, "--set", f"data.labels_file={cifar / 'labels.txt'}")
    proc = xfer("run", *config, "--to", "DataCheck", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.startswith("xfer: error in ImportExampleGen: 1 input file problem(s)"), proc.stderr
    assert f"{cut}: the file is cut short inside record 383 (after 383 whole record(s))" in proc.stderr
    assert "Not a valid TFRecord" not in proc.stderr and "Traceback" not in proc.stderr
    notes = data / "eval" / "notes.tfrecord"
    notes.write_text("not records\n" * 50)
    proc = xfer("run", *config, "--check", check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"cannot read {notes} record 0" in proc.stderr and "narrow data.splits" in proc.stderr, proc.stderr
