"""`xfer data import-folder` on a real folder: digit scans and photos from scikit-learn,
in every common format and mode, plus broken files of every kind. Every input ends in
a TFRecord or in the manifest's rejected list, with its reason."""
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import xfer.components  # noqa: F401
import tensorflow as tf

from xfer.pipeline.data.import_folder import import_folder
from xfer.components.transform import decode_image
from conftest import xfer

NON_UTF8 = b"caf\xe9.png"


def _digit(k, size=40):
    from sklearn.datasets import load_digits
    d = load_digits()
    gray = (d.images[k] * 255 / 16).astype("uint8")
    return Image.fromarray(gray, "L").resize((size, size)), int(d.target[k])


def _photo(name, box):
    from sklearn.datasets import load_sample_image
    return Image.fromarray(load_sample_image(name)).crop(box).resize((48, 36))


def _save(img, path, fmt, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt, **kw)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """{relative path: expected outcome} where outcome is 'ok', 'converted' or a reason prefix."""
    src = tmp_path_factory.mktemp("images")
    expect = {}
    for i in range(12):  # digits 0 and 1 as PNG and JPEG, grayscale
        img, label = _digit(i if i < 10 else i + 10)
        cls = f"digit{label}"
        if label not in (0, 1):
            continue
        fmt = "PNG" if i % 2 else "JPEG"
        rel = f"{cls}/scan{i}.{fmt.lower()}"
        _save(img, src / rel, fmt)
        expect[rel] = "ok"
    photos = src / "photo"
    for j, box in enumerate([(0, 0, 200, 150), (100, 100, 300, 250), (200, 50, 400, 200)]):
        _save(_photo("china.jpg", box), photos / f"china{j}.jpg", "JPEG")
        expect[f"photo/china{j}.jpg"] = "ok"
    flower = _photo("flower.jpg", (0, 0, 300, 220))
    kept = {"rgba.png": (flower.convert("RGBA"), "PNG"), "palette.gif": (flower.convert("P"), "GIF"),
            "gray.png": (flower.convert("L"), "PNG"), "plain.bmp": (flower, "BMP")}
    for name, (img, fmt) in kept.items():
        _save(img, photos / name, fmt)
        expect[f"photo/{name}"] = "ok"
    converted = {"cmyk.jpg": (flower.convert("CMYK"), "JPEG"), "flower.tiff": (flower, "TIFF"),
                 "deep.png": (Image.fromarray((np.asarray(flower.convert("L"), np.uint16) * 257)), "PNG")}
    if "WEBP" in Image.registered_extensions().values():
        converted["flower.webp"] = (flower, "WEBP")
    for name, (img, fmt) in converted.items():
        _save(img, photos / name, fmt)
        expect[f"photo/{name}"] = "converted"
    (photos / NON_UTF8.decode("latin-1")).parent.mkdir(exist_ok=True)
    with open(os.path.join(os.fsencode(photos), NON_UTF8), "wb") as f:
        buf = io.BytesIO()
        flower.save(buf, format="PNG")
        f.write(buf.getvalue())
    expect[os.fsdecode(b"photo/" + NON_UTF8)] = "ok"

    good_jpeg = (photos / "china0.jpg").read_bytes()
    broken = src / "digit0"
    (broken / "truncated.jpg").write_bytes(good_jpeg[: len(good_jpeg) // 2])
    expect["digit0/truncated.jpg"] = "truncated or corrupt image"
    png = (photos / "gray.png").read_bytes()
    (broken / "corrupt.png").write_bytes(png[:60] + b"\x00garbage" * 50)
    expect["digit0/corrupt.png"] = "truncated or corrupt image"
    (broken / "notes.jpg").write_text("this is not an image\n")
    expect["digit0/notes.jpg"] = "not an image"
    (broken / "empty.png").write_bytes(b"")
    expect["digit0/empty.png"] = "empty file"
    os.symlink(src / "nowhere.png", broken / "dangling.png")
    expect["digit0/dangling.png"] = "symlink, not followed"
    _save(Image.new("RGB", (1200, 1000), (10, 20, 30)), broken / "huge.png", "PNG")
    expect["digit0/huge.png"] = "decompression bomb"
    (broken / "._scan1.jpg").write_bytes(b"\x00\x05\x16\x07 mac resource fork")
    expect["digit0/._scan1.jpg"] = "hidden file"
    (src / ".DS_Store").write_bytes(b"Bud1")
    expect[".DS_Store"] = "hidden file"
    (src / "README.txt").write_text("images of digits\n")
    expect["README.txt"] = "not inside a class folder"
    os.symlink(src / "digit1", src / "digit1" / "again")  # a loop
    expect["digit1/again"] = "symlink, not followed"
    return src, expect


@pytest.fixture(scope="module")
def imported(folder, tmp_path_factory):
    src, _ = folder
    out = tmp_path_factory.mktemp("out")
    manifest = import_folder(str(src), str(out), ratios={"train": 0.5, "eval": 0.5},
                             max_pixels=1_000_000, workers=2)
    return out, manifest


def _records(out: Path):
    recs = {}
    for shard in sorted(out.glob("*/*.tfrecord.gz")):
        for raw in tf.data.TFRecordDataset(str(shard), compression_type="GZIP").as_numpy_iterator():
            ex = tf.train.Example.FromString(raw).features.feature
            recs[os.fsdecode(ex["filename"].bytes_list.value[0])] = (shard.parent.name, ex)
    return recs


def test_every_input_is_written_or_rejected_with_its_reason(folder, imported):
    _, expect = folder
    out, manifest = imported
    records = _records(out)
    rejected = {r["path"]: r["reason"] for r in manifest.rejected}
    assert set(records) | set(rejected) == set(expect)
    assert not set(records) & set(rejected)
    for path, outcome in expect.items():
        if outcome in ("ok", "converted"):
            assert path in records, (path, rejected.get(path))
        else:
            assert rejected[path].startswith(outcome), (path, rejected[path])
    assert manifest.written == len(records)


def test_conversions_listed_and_every_image_decodes_as_rgb(folder, imported):
    _, expect = folder
    out, manifest = imported
    assert {c["path"] for c in manifest.converted} == {p for p, o in expect.items() if o == "converted"}
    for path, (_, ex) in _records(out).items():
        image = ex["image"].bytes_list.value[0]
        decoded = decode_image(tf.constant(image), 16).numpy()
        assert decoded.shape == (16, 16, 3), path
        raw = tf.io.decode_image(image, expand_animations=False)
        assert int(ex["height"].int64_list.value[0]) == raw.shape[0], path
        assert int(ex["width"].int64_list.value[0]) == raw.shape[1], path


def test_labels_counts_checksums_and_non_utf8_names(imported):
    import hashlib
    out, manifest = imported
    assert (out / "labels.txt").read_text().split() == ["digit0", "digit1", "photo"]
    records = _records(out)
    for path, (split, ex) in records.items():
        assert manifest.classes[ex["label"].int64_list.value[0]] == path.split("/")[0]
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert sum(sum(c.values()) for c in counts.values()) == len(records)
    assert set(counts) == {"train", "eval"} and all(sum(c.values()) for c in counts.values())
    for shard in manifest.shards:
        assert hashlib.sha256((out / shard["path"]).read_bytes()).hexdigest() == shard["sha256"]
    raw_names = [ex["filename"].bytes_list.value[0] for _, ex in records.values()]
    assert b"photo/" + NON_UTF8 in raw_names  # kept byte for byte
    schema = (out / "schema.pbtxt").read_text()
    assert "max: 2" in schema and 'name: "image"' in schema


def test_same_input_same_bytes(folder, imported, tmp_path):
    src, _ = folder
    out, manifest = imported
    again = import_folder(str(src), str(tmp_path), ratios={"train": 0.5, "eval": 0.5},
                          max_pixels=1_000_000, workers=1)
    assert [s["sha256"] for s in again.shards] == [s["sha256"] for s in manifest.shards]
    assert (tmp_path / "manifest.json").read_text().replace(str(tmp_path), "") == \
        (out / "manifest.json").read_text().replace(str(out), "")


def test_split_folders_valid_becomes_eval(tmp_path):
    for split in ("train", "valid"):
        for k in range(4):
            img, label = _digit(k)
            _save(img, tmp_path / "src" / split / f"d{label}" / f"{k}.png", "PNG")
    manifest = import_folder(str(tmp_path / "src"), str(tmp_path / "out"), workers=1)
    assert manifest.layout == "split-folders"
    assert {s: sum(c.values()) for s, c in manifest.counts.items()} == {"train": 4, "eval": 4}


def test_cli_summary_and_exit_code_when_nothing_is_usable(folder, tmp_path):
    src, _ = folder
    proc = xfer("data", "import-folder", str(src), str(tmp_path / "ok"), "--train", "0.5", "--eval", "0.5",
                "--max-pixels", "1000000")
    assert "rejected: 10" in proc.stdout and "written:" in proc.stdout, proc.stdout
    assert "decompression bomb: digit0/huge.png" in proc.stdout
    for cls in ("cls", "other"):
        (tmp_path / "bad" / cls).mkdir(parents=True)
        (tmp_path / "bad" / cls / "a.jpg").write_text("not an image")
    proc = xfer("data", "import-folder", str(tmp_path / "bad"), str(tmp_path / "none"), check=False)
    assert proc.returncode == 1 and "nothing usable" in proc.stderr, proc.stderr
    assert "not an image, or a format Pillow cannot read: cls/a.jpg, other/a.jpg" in proc.stdout


def test_links_are_followed_only_when_asked_and_only_inside_src(folder, tmp_path):
    src, expect = folder
    outside = tmp_path / "etc"
    outside.mkdir()
    _save(_digit(3)[0], outside / "secret.png", "PNG")
    link = src / "digit1" / "outside"
    os.symlink(outside, link)
    try:
        manifest = import_folder(str(src), str(tmp_path / "out"), ratios={"train": 0.5, "eval": 0.5},
                                 max_pixels=1_000_000, workers=2, follow_links=True)
    finally:
        link.unlink()
    rejected = {r["path"]: r["reason"] for r in manifest.rejected}
    assert rejected["digit0/dangling.png"].startswith("unreadable")
    assert rejected["digit1/again"].startswith("symlink loop")
    assert rejected["digit1/outside"] == f"symlink to {outside}, outside SRC: never followed"
    assert not any("secret" in os.fsdecode(f) for f in _records(tmp_path / "out"))


def test_a_non_empty_out_is_refused_and_overwrite_replaces_it_whole(tmp_path):
    for k in range(8):
        img, label = _digit(k % 2)
        _save(img, tmp_path / "src" / f"d{label}" / f"{k}.png", "PNG")
    out = tmp_path / "out"
    first = xfer("data", "import-folder", str(tmp_path / "src"), str(out), "--train", "0.5", "--eval", "0.5")
    assert first.returncode == 0
    for k in range(4, 8):
        (tmp_path / "src" / f"d{k % 2}" / f"{k}.png").unlink()
    again = xfer("data", "import-folder", str(tmp_path / "src"), str(out), check=False)
    assert again.returncode == 2, again.stderr
    assert f"'{out}' is not empty" in again.stderr and "--overwrite" in again.stderr
    replaced = xfer("data", "import-folder", str(tmp_path / "src"), str(out), "--train", "0.5",
                    "--eval", "0.5", "--overwrite")
    assert "replaced the earlier import" in replaced.stdout
    assert len(_records(out)) == 4  # the deleted images are gone, not trained on
    assert not list(tmp_path.glob(".out.*")), list(tmp_path.iterdir())  # nothing left beside OUT


def test_an_empty_class_folder_is_not_a_class_and_a_split_missing_a_class_is_named(tmp_path):
    for split, labels in (("train", (0, 1)), ("valid", (0,))):
        for k, label in enumerate(labels):
            _save(_digit(label)[0], tmp_path / "src" / split / f"d{label}" / f"{k}.png", "PNG")
    (tmp_path / "src" / "train" / "d7").mkdir()  # no image in it
    manifest = import_folder(str(tmp_path / "src"), str(tmp_path / "out"), workers=1)
    assert manifest.classes == ["d0", "d1"]
    assert (tmp_path / "out" / "labels.txt").read_text().split() == ["d0", "d1"]
    assert {"path": "train/d7", "reason": "class folder with no file to import: not a class"} in manifest.rejected
    assert any(w.startswith("split eval has no example of d1 (d1: 1 in all)") for w in manifest.warnings), \
        manifest.warnings


def test_max_side_stores_large_images_shrunk_with_the_same_content(tmp_path):
    """--max-side: a large photo is stored with its longer side at N, aspect kept, JPEG
    as JPEG; smaller images pass as they are; the manifest counts the bytes saved; the
    shrunk image is the original's picture at the model's size."""
    from sklearn.datasets import load_sample_image
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    big = Image.fromarray(load_sample_image("china.jpg")).resize((1600, 1068), Image.BILINEAR)
    big = Image.fromarray(np.clip(np.asarray(big).astype(np.int16) + rng.normal(0, 4, (1068, 1600, 3))
                                  .astype(np.int16), 0, 255).astype(np.uint8))
    _save(big, src / "a" / "big.jpg", "JPEG", quality=92)
    _save(big.convert("L").rotate(90, expand=True), src / "a" / "tall.png", "PNG")
    small, _ = _digit(3, size=200)
    _save(small, src / "b" / "small.png", "PNG")
    _save(small, src / "b" / "small2.jpg", "JPEG")
    out = tmp_path / "out"
    proc = xfer("data", "import-folder", str(src), str(out), "--max-side", "448", "--train", "1.0", "--eval", "0")
    assert "shrunk: 2 image(s) to at most 448 px on the longer side" in proc.stdout, proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    originals = {p.name: p.read_bytes() for p in src.rglob("*.*")}
    recs = _records(out)
    sizes = {rel: (int(ex["width"].int64_list.value[0]), int(ex["height"].int64_list.value[0]))
             for rel, (_, ex) in recs.items()}
    assert sizes == {"a/big.jpg": (448, 299), "a/tall.png": (299, 448), "b/small.png": (200, 200),
                     "b/small2.jpg": (200, 200)}
    stored = {rel: ex["image"].bytes_list.value[0] for rel, (_, ex) in recs.items()}
    assert stored["b/small.png"] == originals["small.png"] and stored["b/small2.jpg"] == originals["small2.jpg"]
    assert Image.open(io.BytesIO(stored["a/big.jpg"])).format == "JPEG"
    assert Image.open(io.BytesIO(stored["a/tall.png"])).format == "PNG"
    assert manifest["shrunk"] == 2 and manifest["bytes_in"] == sum(len(v) for v in originals.values())
    assert manifest["bytes_out"] == sum(len(v) for v in stored.values()) < manifest["bytes_in"] / 5
    # The same picture at a 224-pixel model's input, within resize tolerance: a mean
    # difference under 3 of 255 (the photo carries noise of sigma 4, which each path
    # averages differently; sampling without antialiasing, the tutorials' resize, is
    # about 9 from the area average on such a photo).
    a = decode_image(tf.constant(originals["big.jpg"]), 224).numpy()
    b = decode_image(tf.constant(stored["a/big.jpg"]), 224).numpy()
    assert np.abs(a - b).mean() < 3.0, np.abs(a - b).mean()


def test_max_side_below_the_floor_is_refused_before_anything_is_written(folder, tmp_path):
    src, _ = folder
    proc = xfer("data", "import-folder", str(src), str(tmp_path / "o"), "--max-side", "16", check=False)
    assert proc.returncode != 0 and "--max-side 16 is too small" in proc.stderr and "448" in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists()
