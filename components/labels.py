"""Class names for a run: from the label vocabulary, a labels file, or a count; and the
one rule every class name follows, wherever it comes from.

A class name is drawn on plots, printed in the terminal, written into the model card and
the served model's labels.txt, and line i of labels.txt is label i. So a name is refused
here, naming the line, record or folder, when it would break one of those: empty (an
empty line in labels.txt shifts every later class id), a duplicate (two ids, one name),
longer than MAX_NAME_CHARS, or holding a character that is invisible or rewrites the text
around it (Unicode categories Cc, Cf, Zl, Zp: control characters, bidi overrides such as
U+202E, zero-width characters, line and paragraph separators), or bytes that are not UTF-8.

This module imports no TensorFlow at load time: DataCheck's workers and the folder
importer use the rule on their own.
"""
from __future__ import annotations

import unicodedata
from typing import TYPE_CHECKING, Callable, Iterable, Optional

if TYPE_CHECKING:
    import tensorflow_transform as tft

# Real label sets stay well under this: ImageNet's synset names (e.g. "bannister,
# banister, balustrade, balusters, handrail", 55), iNaturalist 2021's class folders with
# the whole taxonomy (e.g. "00000_Animalia_Annelida_Clitellata_Haplotaxida_Lumbricidae_
# Lumbricus_terrestris", 79). Plots shorten names further (components/reports.py).
MAX_NAME_CHARS = 200
# A labels.txt larger than this is not a list of class names (100,000 classes of 160 bytes).
MAX_LABELS_BYTES = 16 << 20
REFUSED_CATEGORIES = {
    "Cc": "a control character",
    "Cf": "an invisible format character (a bidi override or mark, a zero-width character)",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
    "Cs": "a byte that is not UTF-8",  # os.fsdecode's surrogate escape of a file name's byte
}
RULE = (f"A class name is 1 to {MAX_NAME_CHARS} characters of visible text (no control or "
        f"format characters), each name once")
SHOWN = 3  # problems listed in one message (then how many more)


class BadClassNames(ValueError):
    """Class names that cannot be used; the message names where each is and the rule."""


def shown(name: str, limit: int = 60) -> str:
    """A name as a message quotes it: repr() escapes the characters refused here (U+202E
    shows as \\u202e, not as reversed text), cut to `limit` characters."""
    text = repr(name[:limit])
    return text if len(name) <= limit else text[:-1] + "...'"


def _code_point(ch: str) -> str:
    if unicodedata.category(ch) == "Cs" and 0xDC80 <= ord(ch) <= 0xDCFF:
        return f"byte 0x{ord(ch) - 0xDC00:02X}"
    return f"U+{ord(ch):04X}" + (f" {unicodedata.name(ch)}" if unicodedata.name(ch, "") else "")


def name_problem(name: str) -> str:
    """Why `name` cannot be a class name ("is empty", "has U+202E ..."), or '' when it
    can (duplicates aside)."""
    if not name.strip():
        return "is empty"
    if len(name) > MAX_NAME_CHARS:
        return f"is {len(name):,} characters long, over the {MAX_NAME_CHARS} a class name may have"
    for i, ch in enumerate(name):
        what = REFUSED_CATEGORIES.get(unicodedata.category(ch))
        if what:
            return f"has {_code_point(ch)} at character {i + 1}, {what}"
    if name != name.strip():
        return "starts or ends with white space (it would look like the name without it)"
    return ""


def check_names(names: Iterable[str], source: str, where: Callable[[int], str], fix: str,
                where_quotes: bool = False) -> list[str]:
    """`names` as a list when each follows the rule and none repeats another (compared in
    Unicode NFC, so two spellings of one accented name are one name); else BadClassNames:
    `source`, the first problems each at where(i) ("line 4"; with where_quotes, where(i)
    quotes the name itself: "class folder 'cat'"), the rule and `fix`."""
    names = list(names)

    def at(i: int) -> str:
        return where(i) if where_quotes else f"{where(i)}: {shown(names[i])}"

    problems, first_seen = [], {}
    for i, name in enumerate(names):
        problem = name_problem(name)
        if problem:
            problems.append(f"{where(i)} {problem}" if problem == "is empty" else f"{at(i)} {problem}")
            continue
        key = unicodedata.normalize("NFC", name)
        if key in first_seen:
            first = first_seen[key]
            same = "" if names[first] == name else f": {ascii(names[first])} and {ascii(name)} are one name in Unicode NFC"
            problems.append(f"{at(i)} again (as {where(first)}{same})")
        else:
            first_seen[key] = i
    if problems:
        more = f"; and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
        raise BadClassNames(f"{source}: {'; '.join(problems[:SHOWN])}{more}. {RULE}; {fix}")
    return names


def label_value_problem(value: bytes) -> str:
    """Why a string label's value (a tf.Example bytes feature) cannot name a class, or ''."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"label {value[:40]!r} is not UTF-8 text (byte {e.start}). {RULE}"
    problem = name_problem(text)
    return f"label {shown(text)} {problem}. {RULE}" if problem else ""


def parse_labels(data: bytes, path: str) -> list[str]:
    """labels.txt's bytes -> the class names, line i naming label i. Line ends (\\n or
    \\r\\n), a UTF-8 byte-order mark and spaces or tabs around a name are dropped; blank
    lines after the last name are ignored; any other blank line is an error (it would
    shift every later class id), as is any name check_names refuses."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise BadClassNames(f"data.labels_file: '{path}' line {line} is not UTF-8 text (byte "
                            f"0x{data[e.start]:02X}); save labels.txt as UTF-8") from None
    lines = [line.removesuffix("\r").strip(" \t") for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return check_names(lines, f"data.labels_file '{path}'", lambda i: f"line {i + 1}",
                       "fix that line (each line names one class: the first label 0, the next label 1, ...)")


def read_labels_file(path: str) -> list[str]:
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(
            f"data.labels_file: '{path}' does not exist; give a labels.txt with one class "
            f"name per line (line i names label i), or set data.num_classes")
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read(MAX_LABELS_BYTES + 1)
    if len(data) > MAX_LABELS_BYTES:
        raise BadClassNames(f"data.labels_file: '{path}' is over {MAX_LABELS_BYTES:,} bytes; a labels.txt "
                            f"holds one class name per line (is it the right file?)")
    names = parse_labels(data, path)
    if len(names) < 2:
        raise ValueError(f"data.labels_file: '{path}' names {len(names)} class(es); need at least 2")
    return names


def vocabulary(tft_output: Optional[tft.TFTransformOutput]) -> Optional[list[str]]:
    """Transform's label vocabulary (string labels; entry i is class i), or None for
    integer labels, which are class indices already. Its names follow the rule above
    (DataCheck refuses the records first, naming them; this is the last gate)."""
    import tensorflow as tf

    from xfer.components.transform import LABEL_VOCABULARY

    if tft_output is None:
        return None
    try:
        names = [n.decode("utf-8", "surrogateescape") if isinstance(n, bytes) else n
                 for n in tft_output.vocabulary_by_name(LABEL_VOCABULARY)]
    except (ValueError, KeyError, tf.errors.NotFoundError):
        return None  # integer labels: no vocabulary
    return check_names(names, "Transform's label vocabulary", lambda i: f"entry {i}",
                       "fix the records with that label (DataCheck names them)")


def class_names(tft_output: Optional[tft.TFTransformOutput], labels_file: Optional[str],
                num_classes: Optional[int]) -> list[str]:
    names = vocabulary(tft_output)
    if names is None and labels_file:
        names = read_labels_file(labels_file)
    if names is None:
        if not num_classes:
            raise ValueError(
                "the number of classes is unknown: labels are integers and neither "
                "data.labels_file nor data.num_classes is set; set one of them")
        names = [str(i) for i in range(num_classes)]
    if num_classes and num_classes != len(names):
        raise ValueError(
            f"data.num_classes is {num_classes} but the labels ({labels_file or 'vocabulary'}) "
            f"name {len(names)} classes; make them agree or drop data.num_classes")
    return names


def write_labels_file(path: str, names) -> str:
    """labels.txt as read_labels_file reads it: line i names label i."""
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "w") as f:
        f.write("".join(f"{n}\n" for n in names))
    return path
