"""Records that lie about their length. TensorFlow's TFRecord reader allocates what a
record's header claims: a header saying 1 TiB, with a valid checksum of the length,
killed `xfer run --check`, ImportExampleGen and `xfer predict --tfrecords` with SIGSEGV
(exit 139, no message). Every reader of users' files now goes through
components/tfrecords.read_records, which checks the framing in plain Python first.
The hostile files are made here byte by byte: TFRecord framing is an 8-byte
little-endian length, its masked CRC32C, the data, the data's masked CRC32C."""
import gzip
import os
import struct

import google_crc32c
import pytest

import xfer.components  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from conftest import CONFIGS, xfer
from test_records_door import _import
from xfer.components.import_gen import RecordsRefused
from xfer.components.tfrecords import FramingError, read_records
from xfer.pipeline.data.records import image_example

PNG = tf.io.encode_png(tf.zeros([4, 4, 3], tf.uint8)).numpy()
TIB = 1 << 40


def masked(data: bytes) -> int:
    """TFRecord's masked CRC32C, written out here from the format's definition."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) % (1 << 32)


def frame(data: bytes, claimed: int = None, length_crc: int = None) -> bytes:
    """One record: its length (or `claimed`) with a valid masked CRC (or `length_crc`)."""
    length = struct.pack("<Q", len(data) if claimed is None else claimed)
    crc = masked(length) if length_crc is None else length_crc
    return length + struct.pack("<I", crc) + data + struct.pack("<I", masked(data))


def examples(n, start=0):
    return [image_example(PNG, i % 3, id=f"r{start + i}") for i in range(n)]


def lying(n_good=1):
    """n_good good records, then one whose header claims 1 TiB (its length CRC valid), then
    its 100 bytes: (file bytes, the lying record's byte offset)."""
    good = b"".join(frame(r) for r in examples(n_good))
    return good + frame(b"x" * 100, claimed=TIB), len(good)


def test_our_framing_is_tensorflows(tmp_path):
    """The crafted bytes are what TensorFlow's writer writes, so the lies below are real."""
    path = tmp_path / "a.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as w:
        for r in examples(3):
            w.write(r)
    assert path.read_bytes() == b"".join(frame(r) for r in examples(3))


def test_good_files_read_as_tensorflow_reads_them(tmp_path):
    plain = tmp_path / "a.tfrecord"
    with tf.io.TFRecordWriter(str(plain)) as w:
        for r in examples(50):
            w.write(r)
    gz = tmp_path / "b.tfrecord.gz"
    with tf.io.TFRecordWriter(str(gz), "GZIP") as w:
        for r in examples(50):
            w.write(r)
    members = tmp_path / "c.tfrecord.gz"  # two gzip members, as `cat a.gz b.gz > c.gz` makes
    members.write_bytes(gzip.compress(b"".join(frame(r) for r in examples(50)[:20]))
                        + gzip.compress(b"".join(frame(r) for r in examples(50)[20:])))
    assert list(read_records(str(plain))) == examples(50)
    assert list(read_records(str(gz))) == list(tf.data.TFRecordDataset(str(gz), "GZIP").as_numpy_iterator())
    assert list(read_records(str(members))) == examples(50)
    empty = tmp_path / "empty.tfrecord"
    empty.write_bytes(b"")
    assert list(read_records(str(empty))) == []


@pytest.mark.parametrize("gz", [False, True])
def test_a_length_of_one_tib_is_refused_before_reading_naming_record_and_offset(tmp_path, gz):
    data, offset = lying(n_good=2)
    path = tmp_path / ("a.tfrecord.gz" if gz else "a.tfrecord")
    path.write_bytes(gzip.compress(data) if gz else data)
    got = []
    with pytest.raises(FramingError) as caught:
        for raw in read_records(str(path)):
            got.append(raw)
    e = caught.value
    assert got == examples(2), "the records before the lie are read"
    assert (e.index, e.offset) == (2, offset)
    of = " of the decompressed data" if gz else ""
    held = "the decompressed data" if gz else "the file"
    assert str(e) == (f"{path}: record 2 at byte {offset}{of}: it claims 1099511627776 bytes (1.0 TiB) but "
                      f"only 104 bytes remain in {held}: its length field is wrong (a damaged or crafted "
                      f"file); write or copy it again, or remove it")


def test_a_valid_record_above_the_limit_is_refused_not_allocated(tmp_path):
    path = tmp_path / "big.tfrecord.gz"
    path.write_bytes(gzip.compress(frame(examples(1)[0]) + frame(b"\0" * 5000)))
    with pytest.raises(FramingError, match=r"record 1 at byte \d+ of the decompressed data: it claims 5000 "
                                           r"bytes \(4.9 KiB\), above xfer's limit of 4096 bytes \(4.0 KiB\) for one "
                                           r"record \(one image's tf.Example is far smaller\)"):
        list(read_records(str(path), max_record_bytes=4096))
    assert len(list(read_records(str(path), max_record_bytes=5000))) == 2


def test_the_default_limit_refuses_a_record_the_file_does_hold(tmp_path):
    """A header claiming MAX_RECORD_BYTES + 1 in a (sparse) file that holds them: refused
    by the limit, before the data is read."""
    from xfer.components.tfrecords import MAX_RECORD_BYTES

    path = tmp_path / "huge.tfrecord"
    head = frame(b"", claimed=MAX_RECORD_BYTES + 1)[:12]
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(12 + MAX_RECORD_BYTES + 1 + 4)
    with pytest.raises(FramingError, match=r": record 0 at byte 0: it claims 268435457 bytes \(256.0 MiB\), above "
                                           r"xfer's limit of 268435456 bytes \(256.0 MiB\) for one record"):
        list(read_records(str(path)))


def test_cut_short_and_damaged_lengths_and_data_are_named(tmp_path):
    good = [frame(r) for r in examples(3)]
    one = len(good[0])
    cases = {
        "cut.tfrecord": (b"".join(good)[:-10], 2, 2 * one,
                         "the file is cut short inside record 2 (after 2 whole record(s)): record 2 at byte "
                         f"{2 * one}: it claims {one - 16} bytes (and a 4-byte checksum) but only {one - 22} "
                         "bytes remain; an interrupted copy or write? copy the file again or remove it"),
        "header.tfrecord": (good[0] + good[1][:5], 1, one,
                            f"the file is cut short inside record 1 (after 1 whole record(s)): record 1 at "
                            f"byte {one}: only 5 of its 12 header bytes"),
        "length-crc.tfrecord": (good[0] + frame(examples(1)[0], length_crc=12345), 1, one,
                                f"record 1 at byte {one}: corrupted (the checksum of its length field does "
                                f"not match); the file was damaged; write or copy it again"),
        "data-crc.tfrecord": (good[0] + good[1][:20] + bytes([good[1][20] ^ 1]) + good[1][21:], 1, one,
                              f"record 1 at byte {one}: corrupted (its data checksum does not match)"),
        "notes.tfrecord": (b"my notes, not records\n" * 5, 0, 0,
                           "record 0 at byte 0: not a TFRecord file (its first bytes are not a record header"),
        "plain.tfrecord.gz": (b"".join(good), 0, 0,
                              "record 0 at byte 0 of the decompressed data: does not decompress as GZIP"),
        "cut.tfrecord.gz": (gzip.compress(b"".join(good))[:-12], None, None,
                            "the compressed data ends early (no gzip end marker)"),
    }
    for name, (data, index, offset, text) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(FramingError) as caught:
            list(read_records(str(tmp_path / name)))
        assert str(caught.value).startswith(f"{tmp_path / name}: ") and text in str(caught.value), caught.value
        if index is not None:
            assert (caught.value.index, caught.value.offset) == (index, offset), name


# --- the three readers of users' files, for real --------------------------------------------

def _lying_files(folder):
    """A good file, and a lying one plain and GZIP: {name: (path, offset of the lie)}."""
    folder.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(folder / "a-good.tfrecord")) as w:
        for r in examples(4):
            w.write(r)
    data, offset = lying(n_good=1)
    (folder / "b-lies.tfrecord").write_bytes(data)
    (folder / "c-lies.tfrecord.gz").write_bytes(gzip.compress(data))
    return offset


def test_the_door_names_each_lying_file_and_leaves_nothing(tmp_path):
    offset = _lying_files(tmp_path / "in" / "train")
    with pytest.raises(RecordsRefused) as caught:
        _import(tmp_path / "in", tmp_path / "out")
    message = str(caught.value)
    assert message.startswith("2 input file problem(s)"), message
    base = tmp_path / "in" / "train"
    assert f"{base}/b-lies.tfrecord: record 1 at byte {offset}: it claims 1099511627776 bytes (1.0 TiB)" in message
    assert (f"{base}/c-lies.tfrecord.gz: record 1 at byte {offset} of the decompressed data: it claims "
            f"1099511627776 bytes (1.0 TiB)") in message
    assert "a-good" not in message
    assert os.listdir(tmp_path / "out") == []


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_run_check_names_each_broken_file_and_exits_2(tmp_path, cifar):
    """The preflight names every broken file it reads, each on its own line with the
    record, offset, what is wrong and the fix; exit 2 (a preflight error), not a crash."""
    data = tmp_path / "data"
    offset = _lying_files(data / "train")
    (data / "train" / "d-notes.tfrecord").write_text("notes, not records\n" * 10)
    good = frame(examples(1)[0])
    (data / "train" / "e-crc.tfrecord").write_bytes(good + frame(examples(1)[0], length_crc=7))
    (data / "eval").mkdir()
    (data / "eval" / "part.tfrecord").write_bytes((cifar / "test" / "cifar10_test.tfrecord").read_bytes())
    proc = xfer("run", "--config", str(CONFIGS / "cifar_small.yaml"), "--set", f"root={tmp_path / 'root'}",
                "--set", f"data.input_base={data}", "--set", "data.splits={train: 'train/*', eval: 'eval/*'}",
                "--check", check=False)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert proc.stderr.startswith("xfer: config error: preflight found 4 problem(s) before any step ran:\n")
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("  - ")]
    where = f"  - split 'train' ({data}/train/*): cannot read {data}/train/"
    assert lines == [
        f"{where}b-lies.tfrecord record 1 at byte {offset}: it claims 1099511627776 bytes (1.0 TiB) but only "
        f"104 bytes remain in the file: its length field is wrong (a damaged or crafted file); write or copy "
        f"it again, or remove it",
        f"{where}c-lies.tfrecord.gz record 1 at byte {offset} of the decompressed data: it claims 1099511627776 "
        f"bytes (1.0 TiB) but only 104 bytes remain in the decompressed data: its length field is wrong (a "
        f"damaged or crafted file); write or copy it again, or remove it",
        f"{where}d-notes.tfrecord record 0 at byte 0: not a TFRecord file (its first bytes are not a record "
        f"header: a text, image or other file matched by the pattern?); remove it, or narrow data.splits "
        f"(predict: --tfrecords) so it is not matched",
        f"{where}e-crc.tfrecord record 1 at byte {len(good)}: corrupted (the checksum of its length field "
        f"does not match); the file was damaged; write or copy it again",
    ], proc.stderr
    assert "Traceback" not in proc.stderr and "[Op:" not in proc.stderr
    assert not (tmp_path / "root").exists() or not any((tmp_path / "root").rglob("result.json"))
