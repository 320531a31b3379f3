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
import re
from dataclasses import dataclass
from functools import cache, cached_property
from importlib.resources import files
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

if TYPE_CHECKING:  # pragma: no cover
    import jsonschema
    from jsonschema.exceptions import ValidationError

from .fastcheck import UnsupportedSchema, compile_schema
from ..model import Location
from .issues import ConfigIssue
from .yamlload import Document

#: Why a string failed a pattern, by the ``$defs`` entry (or property) it failed.
_PATTERN_RULES = {
    "chatKey": "a chat key must be a lowercase slug: a-z, 0-9 and '-', starting and ending with a letter or digit",
    "groupName": "a group name may use a-z, 0-9, '-' and '_', starting and ending with a letter or digit",
    "userId": "a userId has no spaces and does not start with '@' (a group cannot own a chat)",
    "member": "a member is a userId (no spaces) or a `@group` reference",
    "chatid": "a chatid has no spaces",
}
#: What a value is called in messages, by the ``$defs`` entry it is checked against.
_DEF_NOUNS = {"chatKey": "chat key", "groupName": "group name", "userId": "user id", "member": "member"}


@cache
def chats_schema() -> Mapping[str, Any]:
    """The chats JSON Schema, as shipped in the package."""
    return json.loads((files("reconciler") / "schemas" / "chats.schema.json").read_text("utf-8"))


def is_chat_key(key: str) -> bool:
    """Whether ``key`` is a valid chat key, by the schema's own ``chatKey`` pattern (for ``dtchat import``)."""
    return re.fullmatch(chats_schema()["$defs"]["chatKey"]["pattern"], key) is not None


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
    def _validator(self) -> "jsonschema.Draft202012Validator":
        """jsonschema, imported only when a file fails the fast check (it costs ~70 ms of start-up)."""
        import jsonschema

        return jsonschema.Draft202012Validator(chats_schema())

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
        for error in self._validator.iter_errors(document.data):
            path = tuple(error.absolute_path)
            if "propertyNames" in error.absolute_schema_path:
                path += (error.instance,)  # the failing key itself
            if error.validator != "additionalProperties":  # later checks read known keys only
                broken.add(path[:2])
            issues.extend(self._explain(document, error, path))
        return SchemaResult(tuple(issues), frozenset(broken))

    def _explain(self, document: Document, error: ValidationError, path: tuple[Any, ...]) -> Iterator[ConfigIssue]:
        is_key = "propertyNames" in error.absolute_schema_path
        where = document.locate(path, key=is_key)
        kind = error.validator
        definition = next((name for name, sub in self._defs.items() if sub == error.schema), None)
        if kind == "additionalProperties":
            known = list(error.schema.get("properties", {}))
            for extra in sorted((k for k in error.instance if k not in known), key=str):
                yield ConfigIssue(document.locate(path + (extra,), key=True), _unknown_key(extra, known))
            return
        if kind == "required":
            missing = [name for name in error.validator_value if name not in error.instance]
            at = document.locate(path, key=True) if path else where
            for name in missing:
                yield ConfigIssue(at, f"missing required key `{name}`" + (f" in `{path[-1]}`" if path else ""))
            return
        what = _DEF_NOUNS.get(definition or "", f"`{path[-1]}`" if path else "the top level")
        written = document.written(path, key=is_key)
        shown = written if written is not None else _yaml_text(error.instance)
        if kind == "type":
            yield ConfigIssue(where, _wrong_type(what, error.validator_value, error.instance, written, path))
        elif kind == "enum":
            allowed = ", ".join(_yaml_text(v) for v in error.validator_value)
            yield ConfigIssue(where, f"{what} must be one of: {allowed} (got `{shown}`)")
        elif kind == "const":
            yield ConfigIssue(where, f"{what} must be {_yaml_text(error.validator_value)} (got `{shown}`)")
        elif kind == "pattern":
            rule = _PATTERN_RULES.get(definition or str(path[-1]), f"it must match {error.validator_value}")
            yield ConfigIssue(where, f"{what} `{error.instance}` is not valid: {rule}")
        elif kind in ("minLength", "maxLength"):
            limits = f"{error.schema.get('minLength', 0)} to {error.schema['maxLength']} characters"
            length = len(error.instance)
            detail = "is empty" if length == 0 else f"has {length} characters"
            yield ConfigIssue(where, f"{what} {detail}; it must have {limits}")
        else:  # a keyword this module has no wording for yet: jsonschema's own message
            yield ConfigIssue(where, error.message)


def _unknown_key(key: Any, known: list[str]) -> str:
    close = difflib.get_close_matches(str(key), known, n=1)
    if close:
        return f"unknown key `{key}`; did you mean `{close[0]}`?"
    return f"unknown key `{key}`; expected one of: {', '.join(known)}"


def _wrong_type(what: str, expected: Any, value: Any, written: Any, path: tuple[Any, ...]) -> str:
    wanted = " or ".join(_TYPE_WORDS[t] for t in ([expected] if isinstance(expected, str) else expected))
    got = _describe(value)
    if not path:
        return f"the top level must be a mapping (version, defaults, groups, chats), not {got}"
    message = f"{what} must be {wanted}, not {got}"
    if expected == "string" and value is not None and not isinstance(value, (dict, list)):
        text = written if written is not None else _yaml_text(value)
        if what in ("user id", "member") and isinstance(value, (int, float)):
            return (
                f"{what} {text} is read as a number, but DingTalk user ids are strings "
                f'(numeric ones often start with zeros that YAML drops): quote it: "{text}"'
            )
        message += f': quote it: "{text}"'
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
