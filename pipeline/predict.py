"""`xfer predict`: top classes for images, from a pushed model's raw-bytes signature.

Images come from files given by name, every file under a folder (`--folder`), or the
image feature of tf.Examples in TFRecord files (`--tfrecords`). They are streamed: read,
batched (`--batch`, capped by the model's `serving.max_batch`), sent, written, repeated;
neither all images nor all results are ever held. Every input gives exactly one result
(predicted, an error, or skipped with a reason), in input order.

Nothing is read on trust: a file above `--max-file-bytes` is refused by its size before
it is read, TFRecord files are read by `tfrecords.read_records` (each record's length
checked before it is read; TensorFlow's reader segfaults on a header claiming 1 TiB),
`--out` and its temporary file are never inputs, and `--out` is checked writable before
the model is loaded."""
from __future__ import annotations

import json
import os
import stat
import sys
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional, TextIO

LABELS_FILE = os.path.join("assets.extra", "labels.txt")
SERVING_JSON = os.path.join("assets.extra", "serving.json")  # the model's limits (components/export.py)
DEFAULT_MAX_BATCH = 256
TFRECORD_NAME_KEYS = ("id", "filename")  # copied into a record's result when present
MAX_REQUEST_BYTES = 64 << 20  # a request is sent early once its files reach this size
# A file above this is refused by its size, unread (`--max-file-bytes`): reading a 3 GB file
# whole took the process to 7.4 GB. 64 MiB is one whole request's bytes (MAX_REQUEST_BYTES),
# so a larger file would be a request on its own; a JPEG at serving.max_pixels' default
# (40 megapixels) is 10-40 MB, and the model refuses a larger image from its header anyway.
DEFAULT_MAX_FILE_BYTES = 64 << 20
# Control characters (a newline in a file name) and undecodable bytes of a name, as they
# are shown in text output, one line per input; JSON keeps the name exact.
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


@dataclass
class Prediction:
    image: str
    top: list[tuple[str, float]] = field(default_factory=list)
    error: Optional[str] = None
    skipped: Optional[str] = None  # a file not sent, on purpose (hidden, not a regular file)
    extra: dict = field(default_factory=dict)  # a record's id / filename features
    # serving.abstain_below: the model answered "unknown" (its top classes still in `top`).
    abstained: bool = False

    @property
    def predicted(self) -> bool:
        return not self.error and not self.skipped

    def as_dict(self) -> dict:
        out = {"image": self.image, **self.extra}
        if self.skipped:
            out["skipped"] = self.skipped
        elif self.error:
            out["error"] = self.error
        else:
            if self.abstained:
                out["abstained"] = True
            out["top"] = [{"class": c, "probability": p} for c, p in self.top]
        return out

    def line(self) -> str:
        name = shown(self.image) + "".join(f" ({k}={shown(str(v))})" for k, v in self.extra.items())
        if self.skipped:
            return f"{name}: skipped: {self.skipped}"
        if self.error:
            return f"{name}: {self.error}"
        return f"{name}: " + ("unknown (abstained; top: " if self.abstained else "") + \
            ", ".join(f"{c} {p:.4f}" for c, p in self.top) + (")" if self.abstained else "")


@dataclass
class Item:
    """One input: its bytes, or why there are none (then `error` or `skipped`)."""
    name: str
    data: Optional[bytes] = None
    error: Optional[str] = None
    skipped: Optional[str] = None
    extra: dict = field(default_factory=dict)


def resolve_model_dir(path: str) -> str:
    """A SavedModel folder, or a push destination (then its latest complete version)."""
    import tensorflow as tf

    if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        return path
    from xfer.components.pusher import latest_version_dir  # imports TFX: only when needed

    latest = latest_version_dir(path)
    if latest is None:
        raise FileNotFoundError(
            f"'{path}' is neither a SavedModel folder nor a push destination with a complete "
            f"numbered version; give the folder `xfer run` printed after 'pushed to:'")
    return latest


def shown(name: str) -> str:
    """A name on one line of text output: control characters and line separators as \\n,
    \\t, \\xNN or \\uNNNN, and bytes that are not UTF-8 (kept by Python as lone
    surrogates) as \\xNN; any other character as it is."""
    import unicodedata

    if name.isprintable():
        return name
    out = []
    for c in name:
        kind = unicodedata.category(c)
        if c in _ESCAPES:
            out.append(_ESCAPES[c])
        elif kind == "Cs" and "\udc80" <= c <= "\udcff":  # os.fsdecode's stand-in for a byte 0x80-0xff
            out.append(f"\\x{ord(c) - 0xDC00:02x}")
        elif kind in ("Cc", "Cs", "Zl", "Zp"):
            out.append(f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return "".join(out)


def _read(path: str, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> tuple[Optional[bytes], Optional[str]]:
    """The file's bytes, or why not; a file above max_bytes is refused by its size (stat),
    unread, and one that grows meanwhile is not read past the limit."""
    try:
        size = os.stat(path).st_size
        if size > max_bytes:
            return None, _too_large(size, max_bytes)
        with open(path, "rb") as f:
            data = f.read(size + 1)  # one byte more than stat said: shows a file that grew
            if len(data) > size:  # (or one whose size stat does not know, as in /proc)
                data += f.read(max_bytes + 1 - len(data))
            if len(data) > max_bytes:
                return None, _too_large(len(data), max_bytes, "or more, growing while read")
            return data, None
    except OSError as e:
        return None, f"cannot read file: {e.strerror}"


def _too_large(size: int, max_bytes: int, more: str = "") -> str:
    from xfer.components.tfrecords import size_text

    return (f"too large: {size_text(size)}{' ' + more if more else ''}, above --max-file-bytes "
            f"{max_bytes}; not read (raise --max-file-bytes if it is an image)")


def check_out(out: str) -> Optional[str]:
    """Why `--out` cannot be written, checked before anything is predicted (None: it can):
    a folder, a missing or unwritable parent folder. Tried for real: a file is made and
    removed beside it, as OUT.tmp will be."""
    import tempfile

    if os.path.isdir(out):
        return f"is a folder; give a file name (e.g. {os.path.join(out, 'predictions.jsonl')})"
    if os.path.isdir(out + ".tmp"):
        return f"its temporary file {out}.tmp is a folder; remove it or give another name"
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        what = "is not a folder" if os.path.exists(parent) else "does not exist"
        return f"{parent} {what}; give a file in a folder"
    try:
        fd, probe = tempfile.mkstemp(prefix=".xfer-predict-", dir=parent)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        return f"cannot write in {parent} ({e.strerror})"
    return None


def _decodes(data: bytes) -> bool:
    """Only for models exported before the per-image `error` output."""
    import tensorflow as tf

    try:
        tf.io.decode_image(data, channels=3, expand_animations=False)
        return True
    except (tf.errors.InvalidArgumentError, ValueError):
        return False


# --- sources: each yields one Item per input, in order, reading as it goes -------------

def file_items(paths: Iterable[str], max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> Iterator[Item]:
    for p in paths:
        data, error = _read(p, max_bytes)
        yield Item(p, data=data, error=error)


def _output_names(out: Optional[str]) -> tuple[Optional[str], set]:
    """(the real folder of `out`, {its name, its temporary file's name}): never inputs."""
    if not out:
        return None, set()
    name = os.path.basename(out)
    return os.path.realpath(os.path.dirname(os.path.abspath(out))), {name, name + ".tmp"}


def _folder_entries(root: str, out: Optional[str] = None) -> Iterator[tuple[str, Optional[str]]]:
    """(path, None) for each file to read under `root`, or (path, why it is skipped).
    Recursive, each folder's entries sorted by name with files and subfolders merged (so
    a/b.png, a/c/x.png, a/d.png: sorted path order); symlinks to folders are never
    followed (one line each), hidden entries (`.DS_Store`, `._x.jpg`, `.git/`) are
    reported, not read. `out` and its temporary file, when they are in the folder (a
    previous output, and the one being written), are left out: they are no input."""
    yield from _walk(root, *_output_names(out))


def _walk(root: str, out_dir: Optional[str], out_names: set) -> Iterator[tuple[str, Optional[str]]]:
    try:
        with os.scandir(root) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
        yield root, f"cannot list folder: {e.strerror}"
        return
    here_out = out_names if out_dir is not None and os.path.realpath(root) == out_dir else set()
    for e in entries:
        path = e.path
        try:
            is_link, is_dir = e.is_symlink(), e.is_dir(follow_symlinks=False)
            if e.name in here_out:
                continue  # the output, not an input: neither read nor listed
            elif e.name.startswith("."):
                yield path, "hidden folder" if is_dir else "hidden file"
            elif is_dir:
                yield from _walk(path, out_dir, out_names)
            elif is_link and os.path.isdir(path):
                yield path, "symlink to a folder (not followed)"
            elif is_link and not os.path.exists(path):
                yield path, None  # a dangling link: reading it reports the error
            else:
                regular = stat.S_ISREG(e.stat(follow_symlinks=True).st_mode)
                yield path, None if regular else "not a regular file"
        except OSError:
            yield path, None  # reading it reports the error


def folder_items(root: str, max_bytes: int = DEFAULT_MAX_FILE_BYTES, out: Optional[str] = None) -> Iterator[Item]:
    for path, skipped in _folder_entries(root, out):
        if skipped:
            yield Item(path, skipped=skipped)
        else:
            data, error = _read(path, max_bytes)
            yield Item(path, data=data, error=error)


def count_folder(root: str, out: Optional[str] = None) -> int:
    return sum(1 for _ in _folder_entries(root, out))


def tfrecord_items(pattern: str, image_key: str = "image") -> Iterator[Item]:
    """The image feature of every tf.Example in the files matching `pattern` (GZIP when a
    name ends in .gz or .gzip, as everywhere in xfer), named `FILE#INDEX`, read by
    tfrecords.read_records. A broken file (cut short, a bad CRC, a length beyond the
    file's end or above its limit) gives one error naming the record where reading
    stopped and its byte offset; the next file is read."""
    import tensorflow as tf
    from google.protobuf.message import DecodeError

    from xfer.components.tfrecords import FramingError, read_records

    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        yield Item(pattern, error="no TFRecord file matches this pattern")
        return
    for path in files:
        index = 0
        try:
            for raw in read_records(path):
                name = f"{path}#{index}"
                index += 1
                try:
                    example = tf.train.Example.FromString(raw)
                except DecodeError:
                    yield Item(name, error="not a tf.Example")
                    continue
                features = example.features.feature
                extra = {}
                for key in TFRECORD_NAME_KEYS:
                    if key in features:
                        f = features[key]
                        values = (list(f.bytes_list.value) or list(f.int64_list.value)
                                  or list(f.float_list.value))
                        if values:
                            v = values[0]
                            extra[key] = v.decode("utf-8", "replace") if isinstance(v, bytes) else v
                if image_key not in features:
                    yield Item(name, error=f"no '{image_key}' feature (--image-key)", extra=extra)
                    continue
                values = features[image_key].bytes_list.value
                if len(values) != 1:
                    yield Item(name, error=f"feature '{image_key}' holds {len(values)} byte strings, "
                                           f"1 expected", extra=extra)
                    continue
                yield Item(name, data=values[0], extra=extra)
        except FramingError as e:
            yield Item(f"{path}#{e.index}", error=f"broken TFRecord file: {e.located}; "
                                                  f"records from {e.index} on not read")
        except OSError as e:
            yield Item(f"{path}#{index}", error=f"cannot read TFRecord file ({e.strerror or e}); "
                                                f"records from {index} on not read")


# --- the model ---------------------------------------------------------------------------

class Predictor:
    """A loaded model's serving_default, its class names and its batch limit."""

    def __init__(self, model_dir: str):
        import tensorflow as tf

        from xfer.components.labels import read_labels_file

        self.model_dir = resolve_model_dir(model_dir)
        self._model = tf.saved_model.load(self.model_dir)
        self.serve = self._model.signatures["serving_default"]
        names_path = os.path.join(self.model_dir, LABELS_FILE)
        self.names = read_labels_file(names_path) if tf.io.gfile.exists(names_path) else None
        limits_path = os.path.join(self.model_dir, SERVING_JSON)
        self.max_batch = DEFAULT_MAX_BATCH
        if tf.io.gfile.exists(limits_path):
            with tf.io.gfile.GFile(limits_path) as f:
                self.max_batch = int(json.load(f).get("max_batch", DEFAULT_MAX_BATCH))
        # The model judges each image itself (size from its header, decodability) and says
        # why in `error`; the bytes are sent as they are, never decoded here.
        self.guarded = "error" in self.serve.structured_outputs

    def _send(self, chunk: list[tuple[Prediction, bytes]], top_k: int) -> None:
        import tensorflow as tf

        out = self.serve(images=tf.constant([d for _, d in chunk]))
        probs = out["probabilities"].numpy()
        errors = out["error"].numpy() if self.guarded else [b""] * len(chunk)
        # Models exported before serving.abstain_below have no `abstained` output.
        abstained = out["abstained"].numpy() if "abstained" in out else [False] * len(chunk)
        for (r, _), p, error, unsure in zip(chunk, probs, errors, abstained):
            if error:
                r.error = error.decode("utf-8", "replace")
                continue
            r.abstained = bool(unsure)
            order = p.argsort()[::-1][:top_k]
            r.top = [(self.names[i] if self.names else str(i), float(p[i])) for i in order]

    def stream(self, items: Iterable[Item], top_k: int = 3,
               batch: Optional[int] = None) -> Iterator[Prediction]:
        """One Prediction per item, in order; `batch` images per request (at most
        max_batch). At most a few batches of items are held at once."""
        batch = min(batch or self.max_batch, self.max_batch)
        pending: list[Prediction] = []
        chunk: list[tuple[Prediction, bytes]] = []
        chunk_bytes = 0
        for item in items:
            r = Prediction(item.name, error=item.error, skipped=item.skipped, extra=item.extra)
            data = item.data
            if data is not None and not self.guarded and not _decodes(data):
                data, r.error = None, "not a decodable image (JPEG, PNG, GIF or BMP expected)"
            pending.append(r)
            if data is not None:
                chunk.append((r, data))
                chunk_bytes += len(data)
            # Flush on a full request, on MAX_REQUEST_BYTES of files (big photos), or when
            # many inputs without bytes pile up (a folder of thousands of hidden files), so
            # memory stays bounded either way.
            if len(chunk) >= batch or chunk_bytes >= MAX_REQUEST_BYTES or len(pending) >= 4 * batch:
                if chunk:
                    self._send(chunk, top_k)
                yield from pending
                pending, chunk, chunk_bytes = [], [], 0
        if chunk:
            self._send(chunk, top_k)
        yield from pending


def predict(model_dir: str, images: list[str], top_k: int = 3) -> list[Prediction]:
    """The given files, one Prediction each (a list: for a few files)."""
    return list(Predictor(model_dir).stream(file_items(images), top_k=top_k))


# --- writing -----------------------------------------------------------------------------

class Progress:
    """`predict: 1200/2000 images, 345.2 images/s` on stderr, at most every `every` s."""

    def __init__(self, stream: TextIO, total: Optional[int], every: float = 1.0):
        self.stream, self.total, self.every = stream, total, every
        self.tty = stream.isatty()
        self.start = self.last = time.monotonic()
        self.done = 0

    def _show(self, end: str) -> None:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        of = f"/{self.total}" if self.total is not None else ""
        cr = "\r" if self.tty else ""
        self.stream.write(f"{cr}predict: {self.done}{of} images, "
                          f"{self.done / elapsed:.1f} images/s{end}")
        self.stream.flush()

    def step(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self._show("" if self.tty else "\n")

    def close(self) -> None:
        self._show("\n")


@dataclass
class Summary:
    total: int = 0
    predicted: int = 0
    errors: int = 0
    skipped: int = 0


def write_predictions(results: Iterable[Prediction], out: Optional[str] = None,
                      as_json: bool = False, stdout: Optional[TextIO] = None,
                      progress: Optional[Progress] = None) -> Summary:
    """Write as they come: JSON Lines to `out` (into OUT.tmp, renamed when complete; the
    tmp file is removed on failure), else lines (or, with as_json, one JSON array) on
    stdout."""
    summary = Summary()
    stdout = stdout or sys.stdout

    def count(r: Prediction) -> None:
        summary.total += 1
        if r.skipped:
            summary.skipped += 1
        elif r.error:
            summary.errors += 1
        else:
            summary.predicted += 1
        if progress:
            progress.step()

    if out:
        tmp = out + ".tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                for r in results:
                    f.write(json.dumps(r.as_dict()) + "\n")
                    count(r)
            os.replace(tmp, out)
        except BaseException:
            try:
                os.remove(tmp)
            except OSError:
                pass
            raise
    elif as_json:
        # The same text as json.dumps(list, indent=1), written one element at a time.
        first = True
        for r in results:
            body = "\n".join(" " + ln for ln in json.dumps(r.as_dict(), indent=1).splitlines())
            stdout.write(("[\n" if first else ",\n") + body)
            first = False
            count(r)
        stdout.write("[]\n" if first else "\n]\n")
    else:
        for r in results:
            stdout.write(r.line() + "\n")
            count(r)
    stdout.flush()
    if progress:
        progress.close()
    return summary
