"""Loading a config: a YAML file or a shipped name, `--set` overrides, validation with
one-line errors naming the key, and local paths made absolute, once.

The schema itself is components/settings.py (no TensorFlow), shared with the steps; a
run is fully described by its YAML file plus `--set` overrides.
"""
from __future__ import annotations

import difflib
import os
import reprlib
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import BaseModel, ValidationError

from xfer.components.settings import Config

__all__ = ["Config", "ConfigError", "apply_overrides", "load_config", "resolve_config_path",
           "shipped_configs", "validate"]

SHIPPED_DIR = Path(__file__).parent / "configs"

# Bounds on what a config may be. The shipped configs are under 4 KB, 200 values and 4
# levels deep; these leave room for any real config and refuse, in milliseconds, YAML that
# stays small on disk but not in memory: 285 characters of nested aliases (a "billion
# laughs") expand to 10^9 values, and a message quoting such a value never ends.
MAX_CONFIG_BYTES = 1 << 20      # the config file
MAX_SET_BYTES = 16 << 10        # one --set KEY=VALUE
MAX_VALUES = 10_000             # YAML nodes, aliases expanded (each alias counts its whole value)
MAX_DEPTH = 32                  # nesting of a YAML value, and the parts of a dotted --set key
MAX_SHOWN = 200                 # characters of a value quoted in an error message
MAX_ERRORS = 20                 # validation errors listed (then how many more)


class ConfigError(ValueError):
    """A config that cannot run; the message names the key, the value and the fix."""


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.yaml"))


def resolve_config_path(name_or_path: str) -> Path:
    """A file path, or the name of a shipped config (demo, local, kubeflow).

    A file wins over a shipped name (`demo` the file in the working directory); a
    shipped name wins over a folder of that name (`runs/`, `demo/` lying around); a
    folder that is no shipped name is an error naming it."""
    p = Path(name_or_path)
    try:
        if p.is_file():
            return p
        shipped = SHIPPED_DIR / f"{name_or_path}.yaml"
        if "/" not in name_or_path and shipped.is_file():
            return shipped
        if p.is_dir():
            raise ConfigError(
                f"config {shown(name_or_path)} is a folder ({p.resolve()}), not a YAML file; give a path to "
                f"a YAML file or one of the shipped configs: {', '.join(shipped_configs())}")
        if p.exists():  # a fifo, /dev/stdin, ...: let the reader try
            return p
    except OSError as e:  # a name too long for the file system, a folder not searchable
        raise ConfigError(f"config {shown(name_or_path)}: {e.strerror}; give a path to a YAML file or one "
                          f"of the shipped configs: {', '.join(shipped_configs())}") from None
    raise ConfigError(
        f"config file {shown(name_or_path)} not found; give a path to a YAML file or one of the "
        f"shipped configs: {', '.join(shipped_configs())}")


def shown(value: Any) -> str:
    """`value` as an error message quotes it: a repr of at most MAX_SHOWN characters,
    built without walking more than a few levels and items of it (reprlib), so quoting a
    value costs the same whatever its size."""
    r = reprlib.Repr()
    r.maxlevel, r.maxstring, r.maxother, r.maxlong = 3, MAX_SHOWN, MAX_SHOWN, 40
    r.maxlist = r.maxtuple = r.maxset = r.maxdict = 8
    text = r.repr(value)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 3] + "..."


def _clip(text: str, limit: int = 4 * MAX_SHOWN) -> str:
    """A message line of at most `limit` characters: its start (the key) and its end (the
    fix) kept, a long value in the middle cut."""
    return text if len(text) <= limit else text[:limit // 2] + " [...] " + text[-limit // 3:]


class _Refused(Exception):
    """YAML that parses but is not a config: too deep or too many values."""

    def __init__(self, what: str, mark=None):
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        super().__init__(where + what)


class BoundedLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader with bounds checked on the composed node graph, before any
    value is built: nesting at most MAX_DEPTH levels (checked while composing, which
    recurses), at most MAX_VALUES nodes with every alias expanded (counted on the graph,
    where an alias is one shared node, so the count costs the document's size, not the
    expansion's), and no alias inside its own anchor."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nested more than {MAX_DEPTH} levels deep; a config needs a few",
                               self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self):
        node = super().compose_document()
        _check_expansion(node)
        return node


def _check_expansion(root: yaml.Node) -> None:
    """Raise _Refused when `root` expands to more than MAX_VALUES nodes or holds a cycle.
    An iterative post-order walk with each node's expanded size memoized."""
    def children(node):
        if isinstance(node, yaml.SequenceNode):
            return node.value
        if isinstance(node, yaml.MappingNode):
            return [n for pair in node.value for n in pair]
        return []

    size: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            open_nodes.discard(id(node))
            size[id(node)] = total = 1 + sum(size[id(c)] for c in children(node))
            if total > MAX_VALUES:
                # The innermost node over the bound: where the aliases multiply.
                inner = next((c for c in children(node) if size[id(c)] > MAX_VALUES), node)
                while inner is not node and any(size[id(c)] > MAX_VALUES for c in children(inner)):
                    inner = next(c for c in children(inner) if size[id(c)] > MAX_VALUES)
                raise _Refused(f"expands to more than {MAX_VALUES:,} values (YAML aliases repeating "
                               f"aliases: an alias bomb); write the values out, or use fewer aliases",
                               inner.start_mark)
            continue
        if id(node) in size:
            continue
        if id(node) in open_nodes:
            raise _Refused("an alias inside its own anchor (a value that contains itself)", node.start_mark)
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children(node) if id(c) not in size)


def _load_bounded(text: str) -> Any:
    return yaml.load(text, Loader=BoundedLoader)  # noqa: S506 - a SafeLoader, with bounds


def parse_yaml(text: str, source: str) -> Any:
    """`text` as a YAML value, within the bounds above; a ConfigError naming `source` and
    the line otherwise (one line: the problem, where, and the fix)."""
    try:
        return _load_bounded(text)
    except _Refused as e:
        raise ConfigError(f"{source}: refused: {e}") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{source}: not valid YAML: {e.problem or e.context}{where}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {_clip(' '.join(str(e).split()))}") from None
    except ValueError as e:  # an integer of more than 4,300 digits (Python's int limit)
        raise ConfigError(f"{source}: {_clip(str(e))}") from None


def _parse_override(item: str) -> tuple[list[str], Any]:
    size = len(item.encode("utf-8", "surrogateescape"))
    if size > MAX_SET_BYTES:
        raise ConfigError(f"--set {shown(item[:40])}... is {size:,} bytes, over the {MAX_SET_BYTES:,} a "
                          f"--set may be; put large values in the config file")
    if "=" not in item:
        raise ConfigError(f"--set {shown(item)} is not key=value; e.g. --set train.batch_size=16")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {shown(item)} has no key; e.g. --set train.batch_size=16")
    path = key.split(".")
    if len(path) > MAX_DEPTH:
        raise ConfigError(f"--set {shown(key)}: a key of {len(path):,} parts, more than {MAX_DEPTH}; "
                          f"config keys are a few parts deep, e.g. train.fine_tune.epochs")
    try:
        value = _load_bounded(raw) if raw != "" else ""
    except _Refused as e:
        raise ConfigError(f"--set {shown(key)}: refused: {e}") from None
    except (yaml.YAMLError, ValueError):
        value = raw  # not YAML (or an integer beyond Python's digits limit): the text itself
    return path, value


def _merge(into: dict, value: dict) -> dict:
    """`value` merged into `into`, recursively: keys not named keep their values."""
    for k, v in value.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v
    return into


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Each `--set key.path=value` in order. A mapping value merges into the section
    already there (recursively): `--set 'model={backbone: vgg16}'` changes the backbone
    and keeps the weights and image size. Any other value replaces; `{}` changes nothing."""
    for item in overrides or []:
        path, value = _parse_override(item)
        node = raw
        for part in path[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {shown(item)}: '{part}' is a value, not a section")
            node = nxt
        if isinstance(value, dict) and isinstance(node.get(path[-1]), dict):
            _merge(node[path[-1]], value)
        else:
            node[path[-1]] = value
    return raw


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys allowed at the section `loc` names (for an unknown-key message)."""
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return []
        model = field.annotation
    return list(model.model_fields)


def _describe(err: dict, source: str) -> str:
    return _clip(_describe_unclipped(err, source))


def _describe_unclipped(err: dict, source: str) -> str:
    loc = err["loc"]
    key = ".".join(str(p) for p in loc) or "(top level)"
    value = err.get("input")
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(Config, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return (f"{source}: unknown key '{key}'{hint}; allowed keys here: {', '.join(allowed)}")
    if err["type"] == "missing":
        return f"{source}: missing required key '{key}'"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
        return f"{source}: {key}: {msg}"
    return f"{source}: bad value for '{key}': {shown(value)} ({type(value).__name__}); {msg[0].lower() + msg[1:]}"


def validate(raw: dict, source: str = "config") -> Config:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the file must hold a YAML mapping of keys, got {type(raw).__name__}")
    try:
        config = Config.model_validate(raw)
    except ValidationError as e:
        found = e.errors()
        lines = [_describe(err, source) for err in found[:MAX_ERRORS]]
        if len(found) > MAX_ERRORS:
            lines.append(f"{source}: and {len(found) - MAX_ERRORS:,} more errors like these")
        raise ConfigError("\n".join(lines)) from None
    return _absolute_paths(config)


def _absolute_paths(config: Config) -> Config:
    """Local relative paths made absolute against the working directory the user ran
    `xfer` in: steps run elsewhere (other processes, other working directories), and
    every consumer then reads one meaning of each path. gs:// and absolute paths stay."""
    def fix(p: Optional[str]) -> Optional[str]:
        if p is None or "://" in p or os.path.isabs(p):
            return p
        return os.path.abspath(p)

    for owner, key in ((config, "root"), (config, "pipeline_root"), (config, "metadata_path"),
                       (config.data, "input_base"), (config.data, "labels_file"),
                       (config.data, "schema_path"), (config.push, "destination")):
        setattr(owner, key, fix(getattr(owner, key)))
    if config.model.weights not in ("imagenet", "none"):
        config.model.weights = fix(config.model.weights)
    return config


def read_config_text(path: Path) -> str:
    """The file's text, read no further than MAX_CONFIG_BYTES (a fifo or /dev/zero too)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: more than {MAX_CONFIG_BYTES:,} bytes; a config is a few KB "
                          f"(is it the right file?)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); save the config as UTF-8") from None


def load_config(name_or_path: str, overrides: Optional[list[str]] = None) -> Config:
    path = resolve_config_path(name_or_path)
    raw = parse_yaml(read_config_text(path), str(path)) or {}
    if not isinstance(raw, dict):
        validate(raw, source=str(path))  # raises: a config is a mapping
    raw = apply_overrides(raw, overrides or [])
    return validate(raw, source=str(path))


def class_count(config) -> Optional[int]:
    """The number of classes the config names (data.num_classes, or the lines of
    data.labels_file); None when only Transform's label vocabulary will know. Raises
    when the labels file is missing or names fewer than 2 classes."""
    if config.data.num_classes:
        return config.data.num_classes
    if config.data.labels_file:
        from xfer.components.labels import read_labels_file
        return len(read_labels_file(config.data.labels_file))
    return None
