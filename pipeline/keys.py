"""The key reference of params.yaml, made from the config classes: each key, its default and the comment
beside its field (the comment lines right above a field, if any, come first). One source: the classes
say what applies when a key is left out; params.yaml sets its own values, with its own comments.

    python -m pipeline.keys   # rewrites the reference in docs/configuration.md (tests/test_config.py checks it is current)
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import io
import re
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, Iterator

import yaml

from pipeline.params import DEFAULT_PIPELINES, Params, TaskConfig
from pipeline.tasks import TASK_TYPES, task_class

PAGE = Path("docs/configuration.md")
BEGIN = "<!-- keys: made by `python -m pipeline.keys` from the config classes; edit the comments beside their fields -->"
END = "<!-- end of keys -->"
FIELD = re.compile(r"^    (\w+)\s*:")  # a field in a class body
Row = tuple[str, str, str]  # key, default, meaning


@functools.cache  # read once per class, not once per field
def comments(cls: type) -> dict[str, str]:
    """Each field's comment in the body of `cls` (not its bases): the comment lines right above it, then the one beside it."""
    source = inspect.getsource(cls)
    beside = {token.start[0]: token.string.lstrip("# ").strip()
              for token in tokenize.generate_tokens(io.StringIO(source).readline) if token.type == tokenize.COMMENT}
    lines, found, above = source.splitlines(), {}, []
    for number, line in enumerate(lines, 1):
        if line.strip().startswith("#"):
            above.append(beside[number])
            continue
        if match := FIELD.match(line):
            found[match.group(1)] = " ".join([*above, beside.get(number, "")]).strip()
        above = []
    return found


def meaning(cls: type, name: str) -> str:
    """The comment of field `name`, from the class in cls's MRO that declares it."""
    return next((comments(base).get(name, "") for base in cls.__mro__ if name in getattr(base, "__annotations__", {})), "")


def section_class(annotation: Any) -> type | None:
    """The config class of a nested section (a dataclass, or an optional one); None for a plain value."""
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union else (annotation,)
    return next((option for option in options if dataclasses.is_dataclass(option)), None)


def shown(value: Any) -> str:
    """A default as params.yaml spells it."""
    return f"`{yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix('...').strip()}`"


def default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else dataclasses.MISSING


def rows(cls: type, prefix: str) -> Iterator[Row]:
    """A row per key of config class `cls` under `prefix`, nested sections flattened (an optional one also has
    its own row: null turns it off)."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        key, value, nested = f"{prefix}{field.name}", default(field), section_class(hints[field.name])
        if nested is None or value is None:
            yield key, "required" if value is dataclasses.MISSING else shown(value), meaning(cls, field.name)
        if nested is not None:
            yield from rows(nested, f"{key}.")


def table(found: Iterator[Row]) -> str:
    lines = ["| key | default | meaning |", "|---|---|---|"]
    return "\n".join(lines + [f"| `{key}` | {value} | {text.replace('|', '/')} |" for key, value, text in found])


def shared_rows() -> Iterator[Row]:
    """The sections every params.yaml has."""
    yield "pipelines", shown(DEFAULT_PIPELINES), meaning(Params, "pipelines")
    for name in ("tracking", "serving", "orchestration", "monitoring"):
        yield from rows(typing.get_type_hints(Params)[name], f"{name}.")


def reference() -> str:
    """The whole reference, in markdown: the shared sections, every pipeline's keys, and each task type's own
    (its validate section, and any key whose default or meaning differs)."""
    every = list(rows(TaskConfig, "<pipeline>."))
    parts = [BEGIN, "### Shared sections", table(shared_rows()),
             "### Every pipeline (`<pipeline>` is the section's name)", table(iter(every))]
    for kind in TASK_TYPES:
        own = [row for row in rows(task_class(kind).config_class, "<pipeline>.") if row not in every]
        parts += [f"### `type: {kind}`: its own keys", table(iter(own))]
    return "\n\n".join(parts + [END])


def current(page: str) -> str:
    """`page` with its reference replaced by the one the classes make now."""
    start, end = page.index(BEGIN), page.index(END) + len(END)
    return page[:start] + reference() + page[end:]


if __name__ == "__main__":
    PAGE.write_text(current(PAGE.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"{PAGE}: key reference written")
