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
