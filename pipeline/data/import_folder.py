"""`xfer data import-folder`: a folder of labelled images -> sharded TFRecords of
tf.Example, labels.txt, a schema and a manifest.

Layouts: SRC/<class>/<files> (split by a hash of the relative path), or
SRC/<split>/<class>/<files> with split folders named train, eval/valid/validation
and test. Every input file ends either in a TFRecord or in the manifest's `rejected`
list with its reason; images TensorFlow cannot decode as RGB as they are (CMYK,
16-bit, WebP, TIFF, ...) are re-encoded as PNG and listed under `converted`.
With `max_side`, larger images are stored shrunk (aspect kept; JPEG stays JPEG, at
quality 95; others become PNG), and counted under `shrunk` with their bytes before
and after: camera photos of 3-12 megapixels cost decoding time in every epoch and
every Evaluator run, and a model of 224 pixels sees none of their detail.
Files are decoded in a pool of processes; results stream to the writers in a fixed
order, so memory stays flat and the same input always gives the same bytes.
"""
from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import shutil
import tempfile
import stat
import sys
import time
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Callable, Iterator, Optional

SPLIT_NAMES = {"train": "train", "eval": "eval", "valid": "eval", "validation": "eval", "test": "test"}
# What TensorFlow's decode_image reads as RGB as it is; anything else is re-encoded.
TF_READS = {"JPEG": {"RGB", "L"}, "PNG": {"RGB", "RGBA", "L", "LA", "P", "1"},
            "GIF": {"P", "L", "RGB"}, "BMP": {"RGB", "RGBA"}}
# Larger is refused as a decompression bomb. The same as data.max_pixels' default, above
# which DataCheck refuses an image: what is imported is what trains.
DEFAULT_MAX_PIXELS = 40_000_000
EXAMPLES_PER_SHARD = 2000
MIN_SIDE = 32  # --max-side below this leaves nothing to train on


@dataclass
class Item:
    path: bytes       # absolute, as the filesystem spells it
    rel: bytes        # relative to SRC
    split: str
    label: int


@dataclass
class Result:
    rel: bytes
    split: str
    label: int
    image: Optional[bytes] = None
    height: int = 0
    width: int = 0
    reason: Optional[str] = None
    converted: Optional[str] = None
    shrunk_from: Optional[tuple] = None  # (width, height, bytes) before --max-side
    size_in: int = 0                     # the file's bytes


@dataclass
class Manifest:
    source: str
    layout: str
    classes: list
    ratios: dict
    counts: dict = field(default_factory=dict)
    shards: list = field(default_factory=list)
    rejected: list = field(default_factory=list)
    converted: list = field(default_factory=list)
    # --max-side: how many images were stored shrunk, and the bytes of all images read
    # and written (so the saving is in the manifest).
    max_side: Optional[int] = None
    shrunk: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    warnings: list = field(default_factory=list)
    replaced: bool = False  # --overwrite replaced an earlier import in OUT

    @property
    def written(self) -> int:
        return sum(s["examples"] for s in self.shards)


def _name(b: bytes) -> str:
    # Non-UTF-8 names survive as surrogate escapes (JSON writes them as \\udcXX).
    return os.fsdecode(b)


def _is_hidden(name: bytes) -> bool:
    return name.startswith(b".")


class Links:
    """What to do with a symlink in SRC: not followed unless asked, and then only inside
    SRC (a link to /etc would import the system), and each folder once (loops)."""

    def __init__(self, src: bytes, follow: bool):
        self.real_src, self.follow = os.path.realpath(src), follow

    def refusal(self, path: bytes) -> Optional[str]:
        if not os.path.islink(path):
            return None
        if not self.follow:
            return "symlink, not followed (--follow-links follows links that stay inside SRC)"
        target = os.path.realpath(path)
        if target != self.real_src and not target.startswith(self.real_src + b"/"):
            return f"symlink to {_name(target)}, outside SRC: never followed"
        return None


def scan(src: bytes, ratios: dict, follow_links: bool = False) -> tuple[str, list[str], list[Item], list[dict]]:
    """(layout, classes, items, rejected) for a source folder. Class folders that hold
    nothing to import are not classes (they are listed in `rejected`)."""
    links = Links(src, follow_links)
    rejected: list[dict] = []
    top = []
    for e in sorted(os.listdir(src)):
        why = links.refusal(os.path.join(src, e))
        if why:
            rejected.append({"path": _name(e), "reason": why})
        else:
            top.append(e)
    top_dirs = [e for e in top if os.path.isdir(os.path.join(src, e)) and not _is_hidden(e)]
    split_layout = bool(top_dirs) and all(_name(d).lower() in SPLIT_NAMES for d in top_dirs)
    roots = []  # (folder, split or None)
    for entry in top:
        full = os.path.join(src, entry)
        if entry in top_dirs:
            roots.append((entry, SPLIT_NAMES[_name(entry).lower()] if split_layout else None))
        else:
            rejected.append({"path": _name(entry), "reason": "hidden file (dotfile or macOS metadata)"
                             if _is_hidden(entry) else "not inside a class folder"})
    found: list[tuple[bytes, str, Optional[str]]] = []  # (rel, class name, split)
    seen_dirs: set = set()
    for folder, split in roots:
        class_dirs = _class_dirs(src, folder, rejected, links) if split else [folder]
        for cdir in class_dirs:
            rel_class = os.path.join(folder, cdir) if split else cdir
            for rel in _walk_files(src, rel_class, seen_dirs, rejected, links):
                found.append((rel, _name(cdir), split))
    classes = sorted({c for _, c, _ in found})
    _check_class_folders(src, classes)
    for folder, split in roots:
        for cdir in (_class_dirs(src, folder, [], links) if split else [folder]):
            if _name(cdir) not in classes and not any(r["path"] == _name(cdir) for r in rejected):
                rejected.append({"path": _name(os.path.join(folder, cdir) if split else cdir),
                                 "reason": "class folder with no file to import: not a class"})
    index = {c: i for i, c in enumerate(classes)}
    items = [Item(os.path.join(src, rel), rel, split or _hash_split(rel, ratios), index[c])
             for rel, c, split in found]
    items.sort(key=lambda it: it.rel)
    rejected.sort(key=lambda r: r["path"])
    return ("split-folders" if split_layout else "class-folders"), classes, items, rejected


def _check_class_folders(src: bytes, classes: list[str]) -> None:
    """Each class folder's name becomes a class name (labels.txt, plots, the model card):
    BadArgument naming the folder when one breaks components/labels.py's rule."""
    from xfer.components.labels import BadClassNames, check_names, shown

    try:
        check_names(classes, f"import-folder: {_name(src)}", lambda i: f"class folder {shown(classes[i])}",
                    "rename the folder (its name becomes the class name)", where_quotes=True)
    except BadClassNames as e:
        raise BadArgument(str(e)) from None


def _class_dirs(src: bytes, split_dir: bytes, rejected: list, links: Links) -> list[bytes]:
    out = []
    for e in sorted(os.listdir(os.path.join(src, split_dir))):
        full = os.path.join(src, split_dir, e)
        why = links.refusal(full)
        if why:
            rejected.append({"path": _name(os.path.join(split_dir, e)), "reason": why})
        elif os.path.isdir(full) and not _is_hidden(e):
            out.append(e)
        else:
            rejected.append({"path": _name(os.path.join(split_dir, e)),
                             "reason": "hidden file (dotfile or macOS metadata)" if _is_hidden(e)
                             else "not inside a class folder"})
    return out


def _walk_files(src: bytes, rel_dir: bytes, seen: set, rejected: list, links: Links) -> Iterator[bytes]:
    full = os.path.join(src, rel_dir)
    st = os.stat(full)
    key = (st.st_dev, st.st_ino)
    if key in seen:
        rejected.append({"path": _name(rel_dir), "reason": "symlink loop: folder already visited "
                         f"as another path ({_name(os.path.realpath(full))})"})
        return
    seen.add(key)
    for e in sorted(os.listdir(full)):
        rel = os.path.join(rel_dir, e)
        path = os.path.join(src, rel)
        why = links.refusal(path)
        if why:
            rejected.append({"path": _name(rel), "reason": why})
        elif _is_hidden(e):
            rejected.append({"path": _name(rel), "reason": "hidden file (dotfile or macOS metadata)"})
        elif os.path.isdir(path):
            yield from _walk_files(src, rel, seen, rejected, links)
        else:
            yield rel


def _hash_split(rel: bytes, ratios: dict) -> str:
    """A deterministic split from the relative path: the same file always lands in the
    same split, whatever else is in the folder."""
    x = int.from_bytes(hashlib.sha256(rel).digest()[:8], "big") / 2**64
    acc = 0.0
    names = [n for n in ("train", "eval", "test") if ratios.get(n)]
    for name in names:
        acc += ratios[name]
        if x < acc:
            return name
    return names[-1]


def _load(item: Item, max_pixels: int, max_side: Optional[int] = None) -> Result:
    """Read and check one file; re-encode what TensorFlow would not decode as RGB, and
    shrink what is larger than `max_side`."""
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = max_pixels
    res = Result(item.rel, item.split, item.label)
    try:
        st = os.stat(item.path)
        if not stat.S_ISREG(st.st_mode):
            res.reason = "not a regular file"
            return res
        with open(item.path, "rb") as f:
            data = f.read()
    except OSError as e:
        res.reason = f"unreadable: {e.strerror or e}"
        return res
    if not data:
        res.reason = "empty file (0 bytes)"
        return res
    res.size_in = len(data)
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, mode = img.format, img.mode
            if img.width * img.height > max_pixels:
                raise Image.DecompressionBombError("")
            img.load()  # decodes fully: truncated and corrupt files fail here
            res.width, res.height = img.size
            if max_side and max(img.size) > max_side:
                return _shrink(img, fmt, mode, res, max_side)
            if mode in TF_READS.get(fmt, ()):
                res.image = data
                return res
            res.image = _reencode(img)
            res.converted = f"{fmt} {mode} -> PNG RGB"
            return res
    except Image.DecompressionBombError:
        res.reason = (f"decompression bomb: more pixels than the limit of {max_pixels:,} "
                      f"(raise it with --max-pixels if the image is genuine)")
    except UnidentifiedImageError:
        res.reason = "not an image, or a format Pillow cannot read"
    except (OSError, SyntaxError, ValueError) as e:
        res.reason = f"truncated or corrupt image: {e}"
    return res


def _shrink(img, fmt: str, mode: str, res: Result, max_side: int) -> Result:
    """The image scaled so its longer side is `max_side` (aspect kept, Lanczos), as JPEG
    (quality 95) if it was one, else as PNG."""
    from PIL import Image

    w, h = img.size
    scale = max_side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if mode not in ("RGB", "L"):
        img = Image.open(io.BytesIO(_reencode(img)))  # 16-bit, CMYK, palette, alpha -> RGB
    small = img.resize(size, Image.LANCZOS, reducing_gap=3.0)
    buf = io.BytesIO()
    if fmt == "JPEG":
        small.save(buf, format="JPEG", quality=95)
    else:
        small.save(buf, format="PNG", optimize=False)
    res.image, res.shrunk_from = buf.getvalue(), (w, h, res.size_in)
    res.width, res.height = small.size
    return res


def _reencode(img) -> bytes:
    import numpy as np
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit: keep the top 8 bits, as a viewer would show it.
        arr = np.asarray(img, dtype=np.uint32)
        img = Image.fromarray((arr >> 8).clip(0, 255).astype("uint8"), mode="L")
    rgb = img.convert("RGB")
    buf = io.BytesIO()
    rgb.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _shard_of(rel: bytes, shards: int) -> int:
    return int.from_bytes(hashlib.sha256(b"shard:" + rel).digest()[:8], "big") % shards


class OutputNotEmpty(ValueError):
    """OUT already holds files; the message names the fix."""


class BadArgument(ValueError):
    """An option that cannot work; the message names the fix."""


def import_folder(src: str, out: str, *, ratios: Optional[dict] = None, shards: Optional[int] = None,
                  max_pixels: int = DEFAULT_MAX_PIXELS, workers: Optional[int] = None,
                  progress: Optional[Callable[[int, int], None]] = None, overwrite: bool = False,
                  follow_links: bool = False, max_side: Optional[int] = None) -> Manifest:
    """Import SRC into OUT. OUT is written beside itself and swapped in whole, so it never
    mixes two imports (old shards beside new ones would be trained on) and a killed
    import leaves the previous OUT as it was."""
    ratios = ratios or {"train": 0.8, "eval": 0.2}
    if max_side is not None and max_side < MIN_SIDE:
        raise BadArgument(f"import-folder: --max-side {max_side} is too small to train on; give at least "
                         f"{MIN_SIDE}, and best twice the model's image size (448 for model.image_size 224)")
    srcb = os.fsencode(os.path.abspath(src))
    if not os.path.isdir(srcb):
        raise FileNotFoundError(f"import-folder: source '{src}' is not a folder; give a folder with "
                                f"one subfolder per class (or train/ and eval/ folders of them)")
    out = os.path.abspath(out)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)) and not overwrite:
        raise OutputNotEmpty(
            f"import-folder: '{out}' is not empty; an import into it would mix with what is there "
            f"(old shards would still be trained on). Choose a new folder, or pass --overwrite to "
            f"replace it whole")
    parent, name = os.path.split(out)
    os.makedirs(parent, exist_ok=True)
    for stale in glob.glob(os.path.join(parent, f".{name}.partial-*")):
        shutil.rmtree(stale, ignore_errors=True)  # a killed import's leftovers
    staging = tempfile.mkdtemp(prefix=f".{name}.partial-", dir=parent)
    try:
        manifest = _import(srcb, staging, ratios, shards, max_pixels, workers, progress, follow_links,
                           max_side)
        manifest.replaced = os.path.isdir(out) and bool(os.listdir(out))
        if manifest.replaced:
            manifest.warnings.append(f"replaced the earlier import in {out} (--overwrite)")
        _write_manifest(manifest, staging)
        if os.path.isdir(out) and not manifest.replaced:
            os.rmdir(out)  # an empty folder the user made for the import
        if manifest.replaced:
            old = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
            os.rename(out, os.path.join(old, name))
            os.rename(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _write_manifest(manifest: Manifest, out: str) -> None:
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest.__dict__, f, indent=1, sort_keys=True)


def _import(srcb: bytes, out: str, ratios: dict, shards: Optional[int], max_pixels: int,
            workers: Optional[int], progress, follow_links: bool, max_side: Optional[int] = None) -> Manifest:
    import tensorflow as tf

    from xfer.pipeline.data.records import image_example

    src = os.fsdecode(srcb)
    layout, classes, items, rejected = scan(srcb, ratios, follow_links)
    manifest = Manifest(source=src, layout=layout, classes=classes,
                        ratios=ratios if layout == "class-folders" else {}, rejected=rejected,
                        max_side=max_side)
    splits = sorted({it.split for it in items})
    per_split = {s: sum(1 for it in items if it.split == s) for s in splits}
    n_shards = {s: shards or max(1, -(-per_split[s] // EXAMPLES_PER_SHARD)) for s in splits}
    os.makedirs(out, exist_ok=True)
    paths = {(s, k): os.path.join(out, s, f"data-{k:05d}-of-{n_shards[s]:05d}.tfrecord.gz")
             for s in splits for k in range(n_shards[s])}
    for s in splits:
        os.makedirs(os.path.join(out, s), exist_ok=True)
    writers = {key: tf.io.TFRecordWriter(p, options="GZIP") for key, p in paths.items()}
    written = {key: 0 for key in paths}
    counts = {s: {c: 0 for c in classes} for s in splits}
    ctx = get_context("fork")
    with ctx.Pool(workers or os.cpu_count() or 1) as pool:
        args = ((it, max_pixels, max_side) for it in items)
        for done, r in enumerate(pool.imap(_load_star, args, chunksize=8), 1):
            if r.reason:
                manifest.rejected.append({"path": _name(r.rel), "reason": r.reason})
            else:
                key = (r.split, _shard_of(r.rel, n_shards[r.split]))
                writers[key].write(image_example(r.image, r.label, filename=r.rel,
                                                 height=r.height, width=r.width))
                written[key] += 1
                counts[r.split][classes[r.label]] += 1
                manifest.bytes_in += r.size_in
                manifest.bytes_out += len(r.image)
                manifest.shrunk += r.shrunk_from is not None
                if r.converted:
                    manifest.converted.append({"path": _name(r.rel), "how": r.converted})
            if progress:
                progress(done, len(items))
    for w in writers.values():
        w.close()
    for key, p in sorted(paths.items()):
        if not written[key]:
            os.remove(p)
            continue
        with open(p, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        manifest.shards.append({"path": os.path.relpath(p, out), "split": key[0],
                                "examples": written[key], "sha256": digest})
    manifest.counts = counts
    manifest.rejected.sort(key=lambda r: r["path"])
    total = {c: sum(counts[s][c] for s in splits) for c in classes}
    for c in classes:
        if not total[c]:
            manifest.warnings.append(f"class '{c}': every file was rejected (see rejected); its label "
                                     f"stays in labels.txt but no example has it: fix or remove the folder")
    for s in splits:
        missing = [c for c in classes if total[c] and not counts[s][c]]
        if missing:
            manifest.warnings.append(
                f"split {s} has no example of {', '.join(missing)} ("
                + ", ".join(f"{c}: {total[c]} in all" for c in missing)
                + "); too few images to hash-split, or a split folder lacks the class")
    # Imported after the decoding pool has forked: its workers need no TFT.
    from xfer.components.labels import write_labels_file
    write_labels_file(os.path.join(out, "labels.txt"), classes)
    if len(classes) >= 2:
        from xfer.pipeline.data.schema import write_schema
        write_schema(os.path.join(out, "schema.pbtxt"), num_classes=len(classes))
    return manifest


def _load_star(args):
    return _load(*args)


def summary(m: Manifest, out: str) -> str:
    lines = [f"import-folder: {m.source} ({m.layout}, {len(m.classes)} classes) -> {out}"]
    for split, by_class in sorted(m.counts.items()):
        lines.append(f"  {split}: {sum(by_class.values())} images "
                     f"({', '.join(f'{c}: {n}' for c, n in by_class.items())})")
    if m.converted:
        lines.append(f"  converted: {len(m.converted)} (re-encoded as RGB PNG; see manifest)")
    if m.max_side:
        lines.append(f"  shrunk: {m.shrunk} image(s) to at most {m.max_side} px on the longer side (--max-side); "
                     f"images {m.bytes_in / 1e6:.1f} MB read, {m.bytes_out / 1e6:.1f} MB stored")
    if m.rejected:
        reasons: dict = {}
        for r in m.rejected:
            reasons.setdefault(r["reason"].split(":")[0], []).append(r["path"])
        lines.append(f"  rejected: {len(m.rejected)}")
        for reason, files in sorted(reasons.items()):
            shown = ", ".join(files[:3]) + (f", ... ({len(files) - 3} more)" if len(files) > 3 else "")
            lines.append(f"    {reason}: {shown}")
    for w in m.warnings:
        lines.append(f"  warning: {w}")
    if len(m.classes) < 2:
        lines.append(f"  only {len(m.classes)} class folder(s): a classifier needs at least 2; "
                     f"no schema.pbtxt written")
    lines.append(f"  written: {m.written} examples in {len(m.shards)} shard(s); "
                 f"labels.txt{', schema.pbtxt' if len(m.classes) >= 2 else ''} and manifest.json in {out}")
    return "\n".join(lines)


class Progress:
    """A progress line on stderr at most every 2 s, for large folders."""

    def __init__(self):
        self.start = self.last = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if now - self.last >= 2 or done == total and now - self.start >= 2:
            self.last = now
            print(f"[xfer] import-folder: {done}/{total} files "
                  f"({done / (now - self.start):.0f} files/s)", file=sys.stderr, flush=True)
