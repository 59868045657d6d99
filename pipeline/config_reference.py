"""The configuration reference page, written from the schema itself (components/settings.py).

    python -m xfer.pipeline.config_reference > docs/reference/config.md
    python -m xfer.pipeline.config_reference --out docs/reference/config.md

Every key a config may hold, by its dotted path, with its type, default, allowed values
and the `description=` of its field, so the page cannot drift from what the CLI accepts;
tests/test_docs.py fails when the committed page differs from this output. No TensorFlow
is imported.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import types
import typing
from typing import Any, Iterator, Literal, NamedTuple, Union

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from xfer.components.settings import Config

REGENERATE = "python -m xfer.pipeline.config_reference --out docs/reference/config.md"

INTRO = """\
# Configuration reference

<!-- Written by `{regenerate}` from components/settings.py; do not edit by hand. -->

A config is a YAML file; every key below is its dotted path in that file, and
`--set PATH=VALUE` overrides it for one run (the value read as YAML):

```yaml
train:
  fine_tune:
    from_layer: block5_conv1      # train.fine_tune.from_layer
```

```bash
xfer run --config my.yaml --set train.fine_tune.from_layer=block4_conv1
```

An unknown key or a value outside what is allowed is a config error naming the key
(exit code 2). The shipped configs in `pipeline/configs/` (`demo`, `local`, `kubeflow`)
show typical values; [Command line](cli.md) says how `--config` and `--set` read them.
"""


class Key(NamedTuple):
    path: str
    field: FieldInfo


class Section(NamedTuple):
    path: str
    model: type[BaseModel]
    field: FieldInfo | None  # the field that holds the section (None for the top level)
    keyed: bool  # a mapping of names to sections (e.g. kubeflow.resources.<component>)


def _model_in(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The settings model an annotation holds, directly, as Optional, or as the values of a
    dict (then keyed is True); (None, False) for a plain value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is dict and len(args) == 2:
        model, _ = _model_in(args[1])
        return model, model is not None
    if origin in (Union, types.UnionType):
        models = [a for a in args if a is not type(None)]
        if len(models) == 1:
            return _model_in(models[0])
    return None, False


def walk(model: type[BaseModel] = Config, prefix: str = "") -> Iterator[Section | Key]:
    """Sections and keys in the schema's own order, depth first."""
    keys, sections = [], []
    for name, field in model.model_fields.items():
        sub, keyed = _model_in(field.annotation)
        path = f"{prefix}{name}"
        if sub is None:
            keys.append(Key(path, field))
        else:
            sections.append(Section(f"{path}.<name>" if keyed else path, sub, field, keyed))
    yield from keys
    for section in sections:
        yield section
        yield from walk(section.model, section.path + ".")


def _yaml(value: Any) -> str:
    """A value as it is written in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and (abs(value) >= 1e5 or (value and abs(value) < 1e-3)):
        return f"{value:g}"
    if isinstance(value, int) and not isinstance(value, bool) and value >= 10_000:
        return f"{value:_}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml_item(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_item(v) for v in value) + "]"
    return str(value)


def _yaml_item(value: Any) -> str:
    """A value inside a flow collection: strings other than plain words are quoted."""
    if isinstance(value, str) and not value.replace("_", "").replace("-", "").isalnum():
        return f'"{value}"'
    return _yaml(value)


def type_name(annotation: Any) -> str:
    if annotation is type(None):
        return "null"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        kinds = sorted({type_name(type(a)) for a in args})
        return " or ".join(kinds)
    if origin in (Union, types.UnionType):
        parts = [a for a in args if a is not type(None)]
        names = []
        for part in parts:
            if typing.get_origin(part) is Literal and len(parts) > 1:
                names.extend(f"`{_yaml(a)}`" for a in typing.get_args(part))
            else:
                names.append(type_name(part))
        if len(parts) < len(args):
            names.append("null")
        return " or ".join(dict.fromkeys(names))
    if origin is list:
        return f"list of {type_name(args[0])}s" if args else "list"
    if origin is dict:
        return f"mapping of {type_name(args[0])} to {type_name(args[1])}" if args else "mapping"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(annotation, str(annotation))


def _literals(annotation: Any) -> list[Any]:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return list(args)
    if origin in (Union, types.UnionType) and len([a for a in args if a is not type(None)]) == 1:
        return _literals(next(a for a in args if a is not type(None)))
    return []


def allowed(field: FieldInfo) -> str:
    """The values a key accepts beyond its type: choices, bounds, a pattern."""
    choices = _literals(field.annotation)
    if choices:
        return ", ".join(f"`{_yaml(c)}`" for c in choices) + (
            ", `null`" if type(None) in typing.get_args(field.annotation) else "")
    bounds = []
    for meta in field.metadata:
        for attr, sign in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤")):
            if getattr(meta, attr, None) is not None:
                bounds.append(f"{sign} {_yaml(getattr(meta, attr))}")
        if getattr(meta, "pattern", None):
            bounds.append(f"matches `{meta.pattern}`")
    return ", ".join(bounds)


def default(field: FieldInfo) -> str | None:
    """The default as YAML, or None for a required key."""
    if field.default_factory is not None:
        return _yaml(field.default_factory())
    if field.default is PydanticUndefined:
        return None
    return _yaml(field.default)


def missing_descriptions() -> list[str]:
    """Keys (and sections) whose field has no description: each needs one in settings.py."""
    missing = []
    for item in walk():
        text = item.field.description if item.field is not None else None
        if isinstance(item, Section) and not text:
            text = item.model.__doc__
        if not text:
            missing.append(item.path)
    return missing


def render() -> str:
    out = [INTRO.format(regenerate=REGENERATE), "## Top level\n"]
    for item in walk():
        if isinstance(item, Section):
            out.append(f"## `{item.path}`\n")
            text = (item.field.description if item.field is not None else None) or item.model.__doc__
            if text:
                out.append(" ".join(text.split()) + "\n")
            if item.keyed:
                out.append("A mapping: one entry per name, each with the keys below.\n")
            elif item.field is not None and item.field.default is None:
                out.append("Optional: `null` (the default) leaves it off; "
                           "a mapping with the keys below turns it on.\n")
            continue
        field = item.field
        out.append(f"### `{item.path}`\n")
        facts = [f"*{type_name(field.annotation)}*"]
        value = default(field)
        facts.append("**required**" if value is None else f"default `{value}`")
        limits = allowed(field)
        if limits:
            facts.append(f"allowed: {limits}")
        out.append(" · ".join(facts) + "\n")
        if field.description:
            out.append(" ".join(field.description.split()) + "\n")
    return "\n".join(out)


def _write_atomically(path: str, text: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".config-reference-", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write this file (atomically) instead of printing")
    args = parser.parse_args(argv)
    text = render()
    if args.out:
        _write_atomically(args.out, text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
