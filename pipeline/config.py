"""Loading a config: a YAML file or a shipped name, `--set` overrides, validation with
one-line errors naming the key, and local paths made absolute, once.

The schema itself is components/settings.py (no TensorFlow), shared with the steps; a
run is fully described by its YAML file plus `--set` overrides.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import BaseModel, ValidationError

from xfer.components.settings import Config

__all__ = ["Config", "ConfigError", "apply_overrides", "load_config", "resolve_config_path",
           "shipped_configs", "validate"]

SHIPPED_DIR = Path(__file__).parent / "configs"


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
    if p.is_file():
        return p
    shipped = SHIPPED_DIR / f"{name_or_path}.yaml"
    if "/" not in name_or_path and shipped.is_file():
        return shipped
    if p.is_dir():
        raise ConfigError(
            f"config '{name_or_path}' is a folder ({p.resolve()}), not a YAML file; give a path to "
            f"a YAML file or one of the shipped configs: {', '.join(shipped_configs())}")
    if p.exists():  # a fifo, /dev/stdin, ...: let the reader try
        return p
    raise ConfigError(
        f"config file '{name_or_path}' not found; give a path to a YAML file or one of the "
        f"shipped configs: {', '.join(shipped_configs())}")


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set '{item}' is not key=value; e.g. --set train.batch_size=16")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set '{item}' has no key; e.g. --set train.batch_size=16")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


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
                raise ConfigError(f"--set {item}: '{part}' is a value, not a section")
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
    return f"{source}: bad value for '{key}': {value!r} ({type(value).__name__}); {msg[0].lower() + msg[1:]}"


def validate(raw: dict, source: str = "config") -> Config:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the file must hold a YAML mapping of keys, got {type(raw).__name__}")
    try:
        config = Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError("\n".join(_describe(err, source) for err in e.errors())) from None
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


def load_config(name_or_path: str, overrides: Optional[list[str]] = None) -> Config:
    path = resolve_config_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
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
