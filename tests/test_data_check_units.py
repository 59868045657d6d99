"""DataCheck's rules that need no pipeline: a key no record has, and the label counts."""
import json

import pytest

from xfer.components.data_check import (DataCheckFailed, _raise_if_a_key_is_absent, _write_json_counts,
                                        read_label_counts)


def _bad(split, missing, features):
    return {"split": split, "missing": missing, "features": features, "reason": "x"}


def test_a_key_no_record_has_is_one_line_listing_the_features_present():
    bad = [_bad("train", ["img"], ["image", "label"]), _bad("train", ["img"], ["filename", "image", "label"])]
    with pytest.raises(DataCheckFailed) as caught:
        _raise_if_a_key_is_absent(bad, {}, ["train"], "img", "label")
    assert str(caught.value) == ("data.image_key: 'img' is in none of the 2 records of split train; their "
                                 "features are: filename, image, label. Set data.image_key to one of them")


def test_a_key_some_records_have_is_left_to_the_bad_record_rules():
    bad = [_bad("train", ["label"], ["image"])]
    _raise_if_a_key_is_absent(bad, {"train": 5}, ["train"], "image", "label")  # 5 good records: no raise
    mixed = [_bad("eval", ["label"], ["image"]), {"split": "eval", "reason": "image does not decode"}]
    _raise_if_a_key_is_absent(mixed, {}, ["eval"], "image", "label")


def test_label_counts_round_trip_sorted(tmp_path):
    path = tmp_path / "label_counts.json"
    _write_json_counts([(("train", "10"), 3), (("train", "2"), 5), (("eval", "2"), 1)], str(path))
    assert read_label_counts(str(tmp_path)) == {"eval": {"2": 1}, "train": {"2": 5, "10": 3}}
    assert list(json.loads(path.read_text())["train"]) == ["2", "10"]


def _jpeg(seed, size=(40, 30)):
    import io
    import numpy as np
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
        buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("chunk", [3, 256])
def test_the_check_judges_every_record_in_file_order_whatever_the_chunking(tmp_path, monkeypatch, chunk):
    """Images are decoded a chunk at a time in parallel; every record still gets its own
    outcome and reason, in file order, across chunk boundaries."""
    import apache_beam as beam
    import tensorflow as tf

    from xfer.components import data_check
    from xfer.pipeline.data.records import image_example

    monkeypatch.setattr(data_check, "CHUNK_RECORDS", chunk)
    good = _jpeg(1)
    big = _jpeg(2, size=(1200, 900))  # decoded at reduced scale for image_size 64
    no_image = tf.train.Example(features=tf.train.Features(feature={
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[1]))})).SerializeToString()
    records = [image_example(good, 0), image_example(good[: len(good) // 2], 1), b"not an Example",
               image_example(b"plain text", 2), image_example(big, 1), no_image, image_example(good, 7),
               image_example(good, 2)]
    path = str(tmp_path / "part.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
        for r in records:
            w.write(r)
    check = data_check._Check("image", "label", num_classes=3, image_size=64)
    check.setup()
    out = list(check.process((path, "train")))
    kinds = [("bad", o.value["index"], o.value["reason"]) if isinstance(o, beam.pvalue.TaggedOutput)
             else ("good", o[2]) for o in out]
    assert [k[0] for k in kinds] == ["good", "bad", "bad", "bad", "good", "bad", "bad", "good"]
    reasons = {k[1]: k[2] for k in kinds if k[0] == "bad"}
    assert reasons[1].startswith("image does not decode (") and reasons[3].startswith("image does not decode (")
    assert "Graph execution" not in reasons[1] + reasons[3] and ")" in reasons[1][len("image does not decode ("):]
    assert reasons[2].startswith("not a tf.Example")
    assert reasons[5] == "feature 'image' has 0 values, not 1"
    assert reasons[6].startswith("label 7 is outside the 3 classes")
    assert [k[1] for k in kinds if k[0] == "good"] == ["0", "1", "2"]


def test_op_error_text_keeps_the_decoders_words():
    from xfer.components.data_check import op_error_text
    assert op_error_text("{{function_node __wrapped__DecodeImage_device_/cpu:0}} Invalid PNG. Failed to "
                         "initialize decoder. [Op:DecodeImage]") == "Invalid PNG. Failed to initialize decoder."
    assert op_error_text("{{function_node __inference_shape_147}} Invalid PNG. Failed to initialize decoder.\n"
                         "\t [[{{node decode_image/DecodeImage}}]] [Op:__inference_shape_147]") == \
        "Invalid PNG. Failed to initialize decoder."
