"""Load a plant file (YAML) keeping the line of every value, so errors can name it."""

from __future__ import annotations

from typing import Any

import yaml

from sessions.errors import ValidationError

Lines = dict[str, int]  # document path ("assets[2].endpoints[0].port") -> 1-based line


class _Loader(yaml.SafeLoader):
    """SafeLoader; duplicate mapping keys are errors (YAML allows last-wins silently)."""


def _build(node: yaml.Node, path: str, lines: Lines) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            if not isinstance(key_node, yaml.ScalarNode):
                raise ValidationError(
                    f"line {key_node.start_mark.line + 1}: {path or 'document'}: keys must be "
                    "plain strings",
                    code="invalid_plant",
                )
            if key in out:
                raise ValidationError(
                    f"line {key_node.start_mark.line + 1}: {path or 'document'}: duplicate key "
                    f"{key!r}",
                    code="invalid_plant",
                )
            child = f"{path}.{key}" if path else str(key)
            lines.setdefault(child, key_node.start_mark.line + 1)
            out[key] = _build(value_node, child, lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, f"{path}[{i}]", lines) for i, item in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    # Why strings: YAML 1.1 reads 14:00 as the integer 840 and dates as datetimes; the plant
    # file wants "HH:MM" and ISO 8601 text, parsed by the document model.
    if node.tag.endswith(":timestamp") or (node.tag.endswith(":int") and ":" in node.value):
        return node.value
    return _Loader("").construct_object(node)


def load_yaml(text: str) -> tuple[Any, Lines]:
    """Parse ``text``; return the data and the line of each path.

    Raises :class:`ValidationError` (code ``invalid_plant``) naming the line of a YAML
    syntax error.
    """
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f"line {mark.line + 1}: " if mark is not None else ""
        raise ValidationError(
            f"{line}YAML syntax error: {exc.problem or exc.context}", code="invalid_plant"
        ) from exc
    except yaml.YAMLError as exc:
        raise ValidationError(f"YAML syntax error: {exc}", code="invalid_plant") from exc
    lines: Lines = {}
    if node is None:
        return {}, lines
    return _build(node, "", lines), lines


def line_of(lines: Lines, path: str) -> int | None:
    """The line of ``path`` or of its nearest enclosing value that has one."""
    while True:
        if path in lines:
            return lines[path]
        if not path:
            return None
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
