"""mongod's ``notablescan`` for the test server (``--notablescan``, mongo_server.py): a query that
no index of its collection can serve is refused instead of scanning the collection.

This is an approximation of mongod 7.0's query planner, written from its source
(src/mongo/db/query/get_executor.cpp ``fillOutPlannerParams``, query_planner.cpp,
planner_ixselect.cpp) and jstests/noPassthrough/notablescan.js. Guarantees:

- Exempt, as in mongod: an empty filter (whatever the sort: mongod never refuses it), the
  ``admin``, ``local`` and ``config`` databases, ``system.*`` collections, and collections that do
  not exist (mongod answers from an empty plan without planning), except the target of an upsert
  (mongod creates the collection first, then plans the update against its ``_id`` index).
- A filter is indexed when one of its top-level conditions (an implicit or explicit ``$and``) can
  use an index whose FIRST key is that condition's field: equality, ranges, ``$in``, ``$all``,
  ``$regex``, ``$type``, ``$mod``, ``$exists``, a value ``$elemMatch``, and the negations ``$ne``,
  ``$nin``, ``$not`` (except of a regex). ``_id`` always has an index. A sparse index serves no
  condition that matches a missing field (``null``, ``$in`` with ``null``, ``$exists: false``,
  negations); a partial index only a filter that repeats every condition of its
  ``partialFilterExpression``. An ``$or`` is indexed when every branch is. An ``$expr`` comparison
  of a field with a constant (``$eq``, ``$lt``, ``$lte``, ``$gt``, ``$gte``, under ``$and`` too) is
  a condition on that field, as mongod 5.0+ rewrites it; ``$nor``, ``$where``, ``$text``, ``$size``
  and any other ``$expr`` use no index.
- A filter that is not indexed still runs when the sort is a prefix of the key pattern of an index
  that is neither sparse nor partial (in either direction): mongod scans that index in order.
- A hint names an index (a full scan of it: allowed); ``{$natural: ...}`` as a hint or a sort is a
  collection scan: refused.
- The refusal is mongod's: code 291 (NoQueryExecutionPlans), ``error processing query: ns=<ns>Tree:
  ... planner returned error :: caused by :: No indexed plans available, and running with
  'notablescan'`` (the tree and sort are printed close to, not exactly as, mongod prints them).
"""

from __future__ import annotations

from typing import Any

from .mongo_collection import CommandError, Doc, bson_text

#: (key pattern, sparse, partialFilterExpression or None) of one index.
IndexInfo = tuple[list[tuple[str, Any]], bool, Doc | None]

EXEMPT_DATABASES = ("admin", "local", "config")
#: The index every collection has.
ID_INDEX: IndexInfo = ([("_id", 1)], False, None)
_REFUSED = "planner returned error :: caused by :: No indexed plans available, and running with 'notablescan'"
_RANGE_OPERATORS = {"$eq", "$gt", "$gte", "$lt", "$lte", "$in", "$all", "$regex", "$type", "$mod", "$exists",
                    "$elemMatch", "$ne", "$nin", "$not"}  # fmt: skip


def check_indexed(ns: str, indexes: list[IndexInfo], spec: Any, sort: Any = None, hint: Any = None) -> None:
    """Raise mongod's error 291 unless the filter (or the sort) of a query on ``ns`` can use an index.
    The caller leaves out exempt namespaces and collections that do not exist."""
    if not isinstance(spec, dict) or not spec:
        return
    natural_sort = isinstance(sort, dict) and "$natural" in sort
    if isinstance(hint, dict) and "$natural" in hint:
        raise CommandError(291, "hint $natural is not allowed, because 'notablescan' is enabled")
    if hint or (not natural_sort and (_indexed(spec, indexes) or _sorted_by_index(sort, indexes))):
        return
    raise CommandError(291, f"error processing query: ns={ns}Tree: {_tree(spec, 1)}Sort: {bson_text(sort or {})}\n"
                            f"Proj: {{}}\n {_REFUSED}")  # fmt: skip


def served_by_id(spec: Any, sort: Any = None, hint: Any = None) -> bool:
    """Whether ``check_indexed`` lets the query run whatever the collection's other indexes: the
    filter's ``_id`` condition uses the ``_id`` index (or the filter is empty, or a hint names an
    index). False means: ask ``check_indexed``."""
    if not isinstance(spec, dict) or not spec:
        return True
    if isinstance(hint, dict) and "$natural" in hint:
        return False
    if hint:
        return True
    if isinstance(sort, dict) and "$natural" in sort:
        return False
    return "_id" in spec and _serves(ID_INDEX, "_id", spec["_id"], spec)


def exempt(db: str, collection: str) -> bool:
    return db in EXEMPT_DATABASES or collection.startswith("system.")


def pushed_down(pipeline: list[Any]) -> tuple[Doc, Doc | None]:
    """The filter and sort mongod's planner sees for a pipeline: its leading ``$match`` and ``$sort``
    stages (mongod moves a ``$match`` ahead of a ``$sort``)."""
    matches: list[Doc] = []
    sort = None
    for stage in pipeline:
        if not isinstance(stage, dict) or len(stage) != 1 or not ({"$match", "$sort"} & set(stage)):
            break
        if "$match" in stage and isinstance(stage["$match"], dict) and stage["$match"]:
            matches.append(stage["$match"])
        elif "$sort" in stage and sort is None:
            sort = stage["$sort"]
    return (matches[0] if len(matches) == 1 else {"$and": matches} if matches else {}), sort



def _indexed(spec: Doc, indexes: list[IndexInfo]) -> bool:
    for field, condition in spec.items():
        if field == "$and" and isinstance(condition, list):
            if any(isinstance(sub, dict) and _indexed(sub, indexes) for sub in condition):
                return True
        elif field == "$or" and isinstance(condition, list):
            if condition and all(isinstance(sub, dict) and _indexed(sub, indexes) for sub in condition):
                return True
        elif field == "$expr":
            if any(_serves(index, f, c, spec) for f, c in _expr_conditions(condition) for index in indexes):
                return True
        elif not field.startswith("$") and any(_serves(index, field, condition, spec) for index in indexes):
            return True
    return False


def _expr_conditions(expr: Any) -> list[tuple[str, Doc]]:
    """The ``(field, {op: constant})`` conditions mongod derives from an ``$expr`` to use indexes."""
    if not isinstance(expr, dict) or len(expr) != 1:
        return []
    ((op, args),) = expr.items()
    if op == "$and" and isinstance(args, list):
        return [condition for arg in args for condition in _expr_conditions(arg)]
    if op not in ("$eq", "$lt", "$lte", "$gt", "$gte") or not isinstance(args, list) or len(args) != 2:
        return []
    for path, constant in (args, args[::-1]):
        is_path = isinstance(path, str) and path.startswith("$") and not path.startswith("$$")
        is_constant = not isinstance(constant, (dict, list)) and not (isinstance(constant, str) and constant[:1] == "$")
        if is_path and is_constant:
            return [(path[1:], {"$eq" if op == "$eq" else "$gt": constant})]
    return []


def _serves(index: IndexInfo, field: str, condition: Any, spec: Doc) -> bool:
    keys, sparse, partial = index
    if not keys or keys[0][0] != field:
        if isinstance(condition, dict) and set(condition) == {"$elemMatch"}:
            return _elem_match_serves(index, field, condition["$elemMatch"], spec)
        return False
    if partial is not None and any(spec.get(k, _Missing) != v for k, v in partial.items()):
        return False
    if not _is_operator_doc(condition):
        return not (sparse and condition is None)
    return any(_operator_serves(op, value, sparse) for op, value in condition.items())


def _elem_match_serves(index: IndexInfo, field: str, inner: Any, spec: Doc) -> bool:
    """``{a: {$elemMatch: {b: 1}}}`` can use an index on ``a.b``."""
    if not isinstance(inner, dict) or _is_operator_doc(inner):
        return False
    return any(_serves(index, f"{field}.{key}", value, spec) for key, value in inner.items() if not key.startswith("$"))


def _operator_serves(op: str, value: Any, sparse: bool) -> bool:
    if op not in _RANGE_OPERATORS:
        return False
    if op in ("$eq",):
        return not (sparse and value is None)
    if op == "$in":
        return isinstance(value, list) and not (sparse and None in value)
    if op == "$exists":
        return bool(value) or not sparse
    if op == "$ne":
        return not sparse or value is None
    if op == "$nin":
        return not sparse
    if op == "$not":
        return not sparse and not (isinstance(value, dict) and "$regex" in value) and not hasattr(value, "pattern")
    if op == "$elemMatch":
        return isinstance(value, dict) and _is_operator_doc(value)  # a value $elemMatch
    if op == "$all":
        return isinstance(value, list) and bool(value)
    return True


def _sorted_by_index(sort: Any, indexes: list[IndexInfo]) -> bool:
    if not isinstance(sort, dict) or not sort:
        return False
    wanted = [(field, 1 if _number(direction) > 0 else -1) for field, direction in sort.items()]
    for keys, sparse, partial in indexes:
        if sparse or partial is not None or len(keys) < len(wanted):
            continue
        pattern = [(field, 1 if _number(direction) > 0 else -1) for field, direction in keys[: len(wanted)]]
        if any(not isinstance(d, (int, float)) for _, d in keys[: len(wanted)]):
            continue
        if pattern == wanted or pattern == [(field, -d) for field, d in wanted]:
            return True
    return False


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else 1.0


def _is_operator_doc(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(str(k).startswith("$") for k in value)


class _Missing:
    pass


def _tree(spec: Doc, depth: int) -> str:
    """The filter about as mongod's ``MatchExpression::debugString`` prints it."""
    lines: list[str] = []
    for field, condition in spec.items():
        if field in ("$and", "$or", "$nor") and isinstance(condition, list):
            branches = [_tree(sub, depth + 1) for sub in condition if isinstance(sub, dict)]
            lines.append(f"{field}\n" + "".join("    " * depth + branch for branch in branches))
        elif _is_operator_doc(condition):
            lines += [f"{field} {op} {bson_text(value)}\n" for op, value in condition.items()]
        else:
            lines.append(f"{field} $eq {bson_text(condition)}\n")
    if len(lines) == 1:
        return lines[0]
    return "$and\n" + "".join("    " * depth + line for line in lines)
