"""Metadata filters (`label=3`, `{"split": ["val", "test"]}`) parsed and checked against the item columns."""

from __future__ import annotations

from jointspace.errors import UsageError

MAX_VALUES = 100  # values of one key in a filter
WHERE_TYPES: dict[str, type] = {"key": str, "modality": str, "label": int, "label_name": str, "caption": str,
                                "source": str, "split": str}
COLUMNS = tuple(WHERE_TYPES)  # the item table's columns besides the id, in table order


class IndexStoreError(UsageError):
    """An index folder, filter or item is wrong; the message names the file, key or field."""


class FingerprintError(IndexStoreError):
    """The index was built by a different model than the one offered to query or extend it."""


def parse_where(where: dict | list[str] | tuple[str, ...] | None) -> dict[str, list]:
    """`["label=3", "split=test"]` or `{"label": 3, "split": ["val", "test"]}` -> {column: [values]}."""
    if not where:
        return {}
    if isinstance(where, (list, tuple)):
        pairs = []
        for item in where:
            if not isinstance(item, str) or "=" not in item:
                raise IndexStoreError(f"where {item!r}: expected key=value, e.g. label=3")
            pairs.append(tuple(s.strip() for s in item.split("=", 1)))
    elif isinstance(where, dict):
        for key, value in where.items():
            if key not in WHERE_TYPES:
                raise IndexStoreError(f"where: unknown key {key!r} (known: {', '.join(WHERE_TYPES)})")
            if isinstance(value, list) and not value:  # an empty allow-list would match nothing, not everything
                raise IndexStoreError(f"where {key}: an empty list allows no value; leave {key!r} out to not "
                                      "filter on it")
        pairs = [(k, x) for k, v in where.items() for x in (v if isinstance(v, list) else [v])]
    else:
        raise IndexStoreError(f"where: expected an object like {{\"label\": 3}}, got {type(where).__name__}")
    out: dict[str, list] = {}
    for key, value in pairs:
        if key not in WHERE_TYPES:
            raise IndexStoreError(f"where: unknown key {key!r} (known: {', '.join(WHERE_TYPES)})")
        typ = WHERE_TYPES[key]
        if isinstance(value, float) and typ is int and value.is_integer():
            value = int(value)  # JSON's 3.0 is the integer 3
        if isinstance(value, bool) or not isinstance(value, (str, int)) or (typ is str and not isinstance(value, str)):
            raise IndexStoreError(f"where {key}: expected a {typ.__name__}, got {type(value).__name__}")
        try:
            value = typ(value)
        except ValueError:
            raise IndexStoreError(f"where {key}: expected a {typ.__name__}, got {str(value)[:80]!r}") from None
        if typ is int and not -(2**63) <= value < 2**63:
            raise IndexStoreError(f"where {key}: {value} is out of the 64-bit integer range")
        out.setdefault(key, []).append(value)
        if len(out[key]) > MAX_VALUES:
            raise IndexStoreError(f"where {key}: more than {MAX_VALUES} values")
    return out


def delete_conditions(keys: list[str] | None, where: dict | list[str] | tuple[str, ...] | None) -> dict[str, list]:
    """What `delete` removes, as {column: [values]}: the filter's conditions with the named sample keys added to
    its `key` values; refused when empty (a delete never removes everything by omission)."""
    conds = parse_where(where)
    if keys:
        conds.setdefault("key", []).extend(keys)
    if not conds:
        raise IndexStoreError("delete: name keys or a where filter (refusing to delete everything)")
    return conds


def sql_where(conds: dict[str, list]) -> tuple[str, list]:
    """WHERE clause (columns come from WHERE_TYPES only) and its parameters."""
    parts, params = [], []
    for key, values in conds.items():
        parts.append(f"{key} IN ({','.join('?' * len(values))})")
        params += values
    return (" WHERE " + " AND ".join(parts)) if parts else "", params


MILVUS_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def milvus_literal(value: str | int) -> str:
    """A value as a Milvus expression literal: an int as digits; a string double-quoted with backslash,
    quote and line-break characters escaped (Milvus refuses a raw line break in a literal and knows no
    \\u escape, so every other character goes in as it is): no value can end the literal early."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise IndexStoreError(f"where: expected a string or an integer, got {type(value).__name__}")
    if isinstance(value, int):
        return str(int(value))
    return '"' + "".join(MILVUS_ESCAPES.get(c, c) for c in value) + '"'


def milvus_where(conds: dict[str, list]) -> str:
    """A parsed filter ({column: [values]}, columns from WHERE_TYPES only) as a Milvus boolean expression
    (`key in ["a", "b"] and label in [3]`); "" for no filter."""
    parts = []
    for key, values in conds.items():
        if key not in WHERE_TYPES:
            raise IndexStoreError(f"where: unknown key {key!r} (known: {', '.join(WHERE_TYPES)})")
        parts.append(f"{key} in [{', '.join(milvus_literal(v) for v in values)}]")
    return " and ".join(parts)
