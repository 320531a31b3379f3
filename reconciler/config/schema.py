"""Check a loaded file against ``schemas/chats.schema.json`` and explain failures in YAML terms.

The JSON Schema is the single description of the file format (editors use
it too). jsonschema's own messages talk about Python values and schema
keywords; here each failure becomes one sentence about the key as written,
at the ``file:line:col`` where it was written.

jsonschema is slow on large valid files, so a compiled yes/no check
(:mod:`.fastcheck`) runs first; jsonschema runs only on files that fail it.
"""

from __future__ import annotations

import datetime
import difflib
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache, cached_property
from importlib.resources import files
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from jsonschema.exceptions import ValidationError

from ..model import Location
from .fastcheck import UnsupportedSchema, compile_schema, search
from .issues import ConfigIssue, quoted
from .yamlload import Document

#: Why a string failed a pattern, by the ``$defs`` entry (or property) it failed.
_PATTERN_RULES = {
    "chatKey": "a chat key must be a lowercase slug: a-z, 0-9 and '-', starting and ending with a letter or digit",
    "groupName": "a group name may use a-z, 0-9, '-' and '_', starting and ending with a letter or digit",
    "userId": "a userId has no spaces and does not start with '@' (a group cannot own a chat)",
    "member": "a member is a userId (no spaces) or a `@group` reference",
    "chatid": "a chatid has no spaces",
    "name": "a chat name is one line of text: no newlines, tabs or other control characters",
    "mobile": "a mobile number has 5 to 20 characters: digits, spaces, '+', '-', '(' and ')'",
}
#: What a value is called in messages, by the ``$defs`` entry it is checked against.
_DEF_NOUNS = {
    "chatKey": "chat key",
    "groupName": "group name",
    "userId": "user id",
    "member": "member",
    "memberItem": "member",
    "selector": "selector",
}
#: Keywords about one value (not about a mapping's keys): one message per value is enough.
_VALUE_KEYWORDS = frozenset({"type", "enum", "const", "pattern", "minLength", "maxLength", "minimum", "maximum"})


@cache
def chats_schema() -> Mapping[str, Any]:
    """The chats JSON Schema, as shipped in the package."""
    return json.loads((files("reconciler") / "schemas" / "chats.schema.json").read_text("utf-8"))


def is_chat_key(key: str) -> bool:
    """Whether ``key`` is a valid chat key, by the schema's own ``chatKey`` pattern (for ``dtchat import``)."""
    return search(chats_schema()["$defs"]["chatKey"]["pattern"])(key) is not None


@cache
def validator_class() -> Any:
    """jsonschema's 2020-12 validator with ECMA-262 patterns (see :func:`.fastcheck.search`), as editors read them."""
    import jsonschema
    from jsonschema.exceptions import ValidationError

    def pattern(validator: Any, regex: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
        if validator.is_type(instance, "string") and search(regex)(instance) is None:
            yield ValidationError(f"{instance!r} does not match {regex!r}")

    return jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": pattern})


@dataclass(frozen=True)
class SchemaResult:
    """The issues of one file, and the parts of it too broken for the semantic checks.

    ``broken`` holds paths cut to two keys: ``()`` (the whole file),
    ``("chats",)``, ``("chats", "eng-oncall")``, ``("defaults", "settings")``...
    so one bad chat leaves the others checkable.
    """

    issues: tuple[ConfigIssue, ...]
    broken: frozenset[tuple[Any, ...]]

    def is_broken(self, path: tuple[Any, ...]) -> bool:
        return any(path[:i] in self.broken for i in range(len(path) + 1))


class SchemaChecker:
    """Validates documents; one per load, so the fast check's memory of valid strings is short-lived."""

    def __init__(self) -> None:
        schema = chats_schema()
        self._defs = schema["$defs"]
        try:
            self._is_valid: Callable[[Any], bool] = compile_schema(schema)
        except UnsupportedSchema:
            self._is_valid = self._validator.is_valid

    @cached_property
    def _validator(self) -> Any:
        """jsonschema, imported only when a file fails the fast check (it costs ~70 ms of start-up)."""
        return validator_class()(chats_schema())

    def check(self, document: Document) -> SchemaResult:
        try:
            return self._check(document)
        except RecursionError:  # both checkers recurse; YAML can nest deeper than Python's stack
            issue = ConfigIssue(Location(document.file, 1, 1), "the file is nested too deeply to check")
            return SchemaResult((issue,), frozenset({()}))

    def _check(self, document: Document) -> SchemaResult:
        if self._is_valid(document.data):
            return SchemaResult((), frozenset())
        issues: list[ConfigIssue] = []
        broken: set[tuple[Any, ...]] = set()
        empty = _empty_chats(document.data, self._defs["chat"]["properties"])
        for key, fields in empty.items():
            issues.append(ConfigIssue(document.locate(("chats", key), key=True), _empty_chat(key, fields)))
            broken.update(("chats", name) for name in (key, *fields))
        explained = frozenset(broken)  # errors inside these: said by the "is empty; indent its fields" issue
        seen: set[tuple[Any, ...]] = set()
        for error in self._validator.iter_errors(document.data):
            path = _path_of(error)
            if path[:2] in explained:
                continue
            if error.validator != "additionalProperties":  # later checks read known keys only
                broken.add(path[:2])
            issues.extend(self._explain(document, error, path, seen))
        return SchemaResult(tuple(issues), frozenset(broken))

    def _explain(
        self, document: Document, error: ValidationError, path: tuple[Any, ...], seen: set[tuple[Any, ...]]
    ) -> Iterator[ConfigIssue]:
        kind = error.validator
        # iter_errors sets these on every error it yields (the stubs' Unset marks an error built by hand).
        instance: Any = error.instance
        argument: Any = error.validator_value  # the keyword's value in the schema
        schema = _schema_of(error)
        if kind in _VALUE_KEYWORDS:
            if path in seen:
                return  # e.g. a mobile number both too short and with letters: the first rule says enough
            seen.add(path)
        is_key = "propertyNames" in error.absolute_schema_path
        where = document.locate(path, key=is_key)
        definition = next((name for name, sub in self._defs.items() if sub == error.schema), None)
        if kind == "additionalProperties":
            known = list(schema.get("properties", {}))
            for extra in sorted((k for k in instance if k not in known), key=str):
                yield ConfigIssue(document.locate(path + (extra,), key=True), _unknown_key(extra, known))
            return
        if kind == "required":
            missing = [name for name in argument if name not in instance]
            at = document.locate(path, key=True) if path else where
            suggested = _suggestions(instance, list(schema.get("properties", {})))
            for name in missing:
                if name not in suggested:  # else "unknown key `nmae`; did you mean `name`?" already says it
                    yield ConfigIssue(at, f"missing required key `{name}`" + (f" in `{path[-1]}`" if path else ""))
            return
        if kind == "dependentRequired":
            for name, needs in argument.items():
                absent = [need for need in needs if need not in instance]
                if name in instance and absent:
                    with_ = " and ".join(f"`{need}`" for need in absent)
                    at = document.locate(path + (name,), key=True)
                    yield ConfigIssue(at, f"`{name}` can only be used with {with_}")
            return
        what = _DEF_NOUNS.get(definition or "", f"`{path[-1]}`" if path else "the top level")
        if kind in ("anyOf", "oneOf"):
            yield from self._explain_alternatives(document, error, path, what, seen)
            return
        written = document.written(path, key=is_key)
        shown = quoted(written if written is not None else _yaml_text(instance))
        if kind == "type":
            yield ConfigIssue(where, _wrong_type(what, argument, instance, written, path))
        elif kind == "enum":
            allowed = ", ".join(_yaml_text(v) for v in argument)
            yield ConfigIssue(where, f"{what} must be one of: {allowed} (got {shown})")
        elif kind == "const":
            yield ConfigIssue(where, f"{what} must be {_yaml_text(argument)} (got {shown})")
        elif kind == "pattern":
            rule = _PATTERN_RULES.get(definition or str(path[-1]), f"it must match {argument}")
            yield ConfigIssue(where, f"{what} {quoted(instance)} is not valid: {rule}")
        elif kind in ("minLength", "maxLength"):
            limits = f"{schema.get('minLength', 0)} to {schema['maxLength']} characters"
            length = len(instance)
            detail = "is empty" if length == 0 else f"has {length} characters"
            yield ConfigIssue(where, f"{what} {detail}; it must have {limits}")
        elif kind == "minimum":
            bound = argument
            positive = bound == 1 and schema.get("type") == "integer"
            wanted = "a positive whole number" if positive else f"at least {bound}"
            yield ConfigIssue(where, f"{what} must be {wanted} (got {shown})")
        elif kind == "maximum":
            yield ConfigIssue(where, f"{what} must be at most {argument} (got {shown})")
        else:  # a keyword this module has no wording for yet: jsonschema's own message
            yield ConfigIssue(where, error.message)

    def _explain_alternatives(
        self, document: Document, error: ValidationError, path: tuple[Any, ...], what: str, seen: set[tuple[Any, ...]]
    ) -> Iterator[ConfigIssue]:
        """A value that may take one of several forms: explained as the form it is closest to.

        ``oneOf`` of ``required`` alone (a selector's one of ``dept``/``role``/``mobile``)
        says which keys; otherwise the form whose ``type`` the value has explains
        its own failures (a mapping in a member list is a selector; a string, a userId).
        """
        branches: Any = error.validator_value  # the anyOf / oneOf list of schemas
        instance: Any = error.instance
        if all(isinstance(branch, dict) and set(branch) == {"required"} for branch in branches):
            names = [name for branch in branches for name in branch["required"]]
            present = [name for name in names if name in instance]
            choices = _alternatives(names)
            if not present:
                if not _suggestions(instance, list(_schema_of(error).get("properties", {}))) & set(names):
                    yield ConfigIssue(document.locate(path), f"a {what} needs one of {choices}")
            else:
                both = ("both " if len(present) == 2 else "") + _alternatives(present, "and")
                yield ConfigIssue(document.locate(path), f"a {what} takes exactly one of {choices}, not {both}")
            return
        if not error.context:  # valid under several branches of a oneOf that is not about keys
            yield ConfigIssue(document.locate(path), error.message)
            return
        by_branch: dict[str | int, list[ValidationError]] = {}  # by the index of the branch that failed
        for sub in error.context:
            by_branch.setdefault(sub.relative_schema_path[0], []).append(sub)
        fitting = [
            errors
            for _, errors in sorted(by_branch.items())
            if not any(sub.validator == "type" and not sub.relative_path for sub in errors)
        ]
        if not fitting:  # the value has none of the types: say which ones it may have
            types: list[Any] = [
                sub.validator_value for errors in by_branch.values() for sub in errors if sub.validator == "type"
            ]
            expected = [name for value in types for name in ([value] if isinstance(value, str) else value)]
            written = document.written(path)
            yield ConfigIssue(document.locate(path), _wrong_type(what, expected, instance, written, path))
            return
        for errors in fitting:
            for sub in errors:
                yield from self._explain(document, sub, _path_of(sub), seen)


def _schema_of(error: ValidationError) -> Mapping[str, Any]:
    """The schema holding the keyword ``error`` is about: ``{}`` when that is a boolean schema (``false``)."""
    schema = error.schema
    return schema if isinstance(schema, Mapping) else {}


def _path_of(error: ValidationError) -> tuple[Any, ...]:
    path: tuple[Any, ...] = tuple(error.absolute_path)
    if "propertyNames" in error.absolute_schema_path:
        path += (error.instance,)  # the failing key itself
    return path


def _empty_chats(data: Any, chat_fields: Mapping[str, Any]) -> dict[Any, list[Any]]:
    """Chats written with no value, each with the chat fields that follow it at its own indentation.

    ``eng:`` then ``name: 工程`` on the next line at the same indentation reads
    as an empty chat ``eng`` and a chat ``name``; the fix is to indent, and one
    issue saying so beats one per misplaced field. A following key counts as a
    misplaced field when it is a chat field's name and its value is not a chat
    (a mapping with a ``name`` or ``owner``).
    """
    chats = data.get("chats") if isinstance(data, dict) else None
    if not isinstance(chats, dict):
        return {}
    empty: dict[Any, list[Any]] = {}
    current: list[Any] | None = None
    for key, value in chats.items():
        is_chat = isinstance(value, dict) and ("name" in value or "owner" in value)
        if current is not None and isinstance(key, str) and key in chat_fields and not is_chat:
            current.append(key)
            continue
        current = empty.setdefault(key, []) if value is None else None
    return empty


def _empty_chat(key: Any, fields: list[Any]) -> str:
    if not fields:
        return f"chat {quoted(key)} is empty; it needs at least `name` and `owner`"
    return f"chat {quoted(key)} is empty; its fields {', '.join(map(str, fields))} must be indented under it"


def _alternatives(names: list[str], joined_by: str = "or") -> str:
    shown = [f"`{name}`" for name in names]
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + f" {joined_by} " + shown[-1]


def _suggestions(instance: Any, known: list[str]) -> set[str]:
    """The known keys that unknown keys of ``instance`` look like typos of (what "did you mean" offers)."""
    if not isinstance(instance, dict):
        return set()
    return {
        close[0]
        for key in instance
        if key not in known
        for close in [difflib.get_close_matches(str(key), known, n=1)]
        if close
    }


def _unknown_key(key: Any, known: list[str]) -> str:
    close = difflib.get_close_matches(str(key), known, n=1)
    if close:
        return f"unknown key {quoted(key)}; did you mean `{close[0]}`?"
    return f"unknown key {quoted(key)}; expected one of: {', '.join(known)}"


def _wrong_type(what: str, expected: Any, value: Any, written: Any, path: tuple[Any, ...]) -> str:
    types = [expected] if isinstance(expected, str) else list(dict.fromkeys(expected))
    wanted = " or ".join(_TYPE_WORDS[t] for t in types)
    got = _describe(value)
    if types == ["integer"] and isinstance(value, float):
        got = _yaml_text(value)  # "not 1.5": "not a number" would puzzle
    if not path:
        return f"the top level must be a mapping (version, defaults, groups, chats), not {got}"
    message = f"{what} must be {wanted}, not {got}"
    text = written if written is not None else _yaml_text(value)
    if "string" in types and value is not None and not isinstance(value, (dict, list)):
        if what in ("user id", "member") and isinstance(value, (int, float)):
            return (
                f"{what} {text} is read as a number, but DingTalk user ids are strings "
                f'(numeric ones often start with zeros that YAML drops): quote it: "{text}"'
            )
        message += f': quote it: "{text}"'
    elif types == ["integer"] and isinstance(value, str) and value.strip().isdigit():
        message += f": write it without quotes: {value.strip()}"
    return message


_TYPE_WORDS = {
    "string": "a string",
    "object": "a mapping",
    "array": "a list",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "null": "empty",
}


def _describe(value: Any) -> str:
    if value is None:
        return "empty (null)"
    if isinstance(value, bool):
        return f"a boolean ({_yaml_text(value)})"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, (datetime.date, datetime.datetime)):
        return "a date"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    return type(value).__name__


def _yaml_text(value: Any) -> str:
    """A value as YAML would write it (``true``, not ``True``)."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return str(value)
