"""Nested mappings and their dotted keys: {"a": {"b": 1}} <-> "a.b" = 1 (config overrides, tracking parameters)."""

from __future__ import annotations

from typing import Any


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """`data` with `a.b.c = value` set in place, creating the mappings on the way."""
    node = data
    parts = dotted.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"cannot set '{dotted}': '{'.'.join(parts[: i + 1])}' is not a mapping")
        node = child
    node[parts[-1]] = value


def flatten(prefix: str, value: Any, keep_empty: bool = False) -> list[tuple[str, Any]]:
    """{"a": {"b": 1}} -> [("a.b", 1)]: nested settings as the dotted keys of `key=value` overrides. An empty
    mapping gives nothing, or itself as a value with `keep_empty`."""
    if isinstance(value, dict) and (value or not keep_empty or not prefix):
        out: list[tuple[str, Any]] = []
        for key, item in value.items():
            out += flatten(f"{prefix}.{key}" if prefix else str(key), item, keep_empty)
        return out
    return [(prefix, value)]
