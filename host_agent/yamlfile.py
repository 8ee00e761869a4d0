"""YAML loading that remembers where every value came from, for one-line errors.

`load()` returns plain Python data plus a map from each value's path (("policies", 0,
"action")) to its line, so a validation error found later can still name file and line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

Loc = tuple[str | int, ...]


class ConfigError(Exception):
    """A bad settings or policy source. str() is the one line the user sees."""

    def __init__(self, source: str, reason: str, line: int | None = None) -> None:
        self.source = source
        self.line = line
        self.reason = reason
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {reason}")


def _walk(node: yaml.Node, loc: Loc, lines: dict[Loc, int], source: str) -> None:
    lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            if key in seen:
                raise ConfigError(source, f"duplicate key {key!r}", key_node.start_mark.line + 1)
            seen.add(key)
            _walk(value_node, (*loc, key), lines, source)
            # an error about the key itself (unknown field) points at the key's line
            lines[(*loc, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*loc, i), lines, source)


def loads(text: str, source: str) -> tuple[Any, dict[Loc, int]]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is None:
            return None, {}
        lines: dict[Loc, int] = {}
        _walk(node, (), lines, source)
        data = yaml.SafeLoader(text).get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        raise ConfigError(source, f"invalid YAML: {e.problem or e.context}", line) from None
    except yaml.YAMLError as e:
        raise ConfigError(source, f"invalid YAML: {e}") from None
    return data, lines


def load(path: str | Path) -> tuple[Any, dict[Loc, int]]:
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(source, "no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(source, f"cannot read: {e}") from None
    return loads(text, source)


def line_of(lines: dict[Loc, int], loc: Sequence[str | int]) -> int | None:
    """Line of the deepest known prefix of `loc` (pydantic locs can go past the YAML)."""
    loc = tuple(loc)
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return lines.get(())


def pydantic_error(
    source: str, lines: dict[Loc, int], err: Any, noun: str = "field"
) -> ConfigError:
    """The first error of a pydantic ValidationError, as file:line: reason."""
    first = err.errors(include_url=False)[0]
    loc = tuple(first["loc"])
    # discriminated/union locs carry the tag name ("literal['block']"): drop non-YAML parts
    yaml_loc = tuple(p for p in loc if isinstance(p, int) or (isinstance(p, str) and "[" not in p))
    field = ".".join(str(p) for p in yaml_loc) or "(top level)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = f"unknown {noun} {yaml_loc[-1]!r}" if yaml_loc else f"unknown {noun}"
        return ConfigError(source, msg, line_of(lines, yaml_loc))
    return ConfigError(source, f"{field}: {msg}", line_of(lines, yaml_loc))


def validate(model: type[M], data: Any, lines: dict[Loc, int], source: str, shape: str) -> M:
    """A YAML document as `model`, or a ConfigError naming file and line."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, f"must be a mapping with {shape}", 1)
    try:
        return model(**data)
    except ValidationError as err:
        raise pydantic_error(source, lines, err) from None


def unique_ids(
    ids: Sequence[str], section: str, lines: dict[Loc, int], source: str, what: str
) -> None:
    """Refuse the second use of an id in `section` (a list of mappings with `id:`)."""
    seen: set[str] = set()
    for i, ident in enumerate(ids):
        if ident in seen:
            raise ConfigError(source, f"duplicate {what} {ident!r}", lines.get((section, i, "id")))
        seen.add(ident)
