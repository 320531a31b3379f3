"""A fast yes/no answer to "is this document valid under the schema?".

jsonschema costs tens of microseconds per keyword and per ``$ref``: several
seconds for 10,000 chats. Valid input is the common case, so the schema is
compiled once into plain Python predicates that answer only yes or no; when
the answer is no, jsonschema runs to explain why. The predicates are built
from ``chats.schema.json`` itself, so there is no second copy of the rules;
a keyword this compiler does not know makes :func:`compile_schema` raise,
and the caller then always uses jsonschema.

Lists of strings (members) are checked per distinct string: a string that
passed an item schema once is remembered for the life of the predicate.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Mapping

Check = Callable[[Any], bool]

#: Keywords that never affect validity.
_ANNOTATIONS = frozenset({"$schema", "$id", "$defs", "title", "description", "$comment", "examples", "default"})

_TYPES: Mapping[str, Check] = {
    "string": lambda v: isinstance(v, str),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
}


class UnsupportedSchema(ValueError):
    """The schema uses a keyword this compiler cannot evaluate."""


def compile_schema(root: Mapping[str, Any]) -> Check:
    """A predicate equivalent to ``Draft202012Validator(root).is_valid`` for the keywords it supports."""
    return _Compiler(root).build(root)


class _Compiler:
    def __init__(self, root: Mapping[str, Any]) -> None:
        self._root = root

    def build(self, schema: Any) -> Check:
        if schema is True:
            return lambda value: True
        if schema is False:
            return lambda value: False
        checks = [self._keyword(name, argument, schema) for name, argument in schema.items() if name not in _ANNOTATIONS]
        if len(checks) == 1:
            return checks[0]
        return lambda value: all(check(value) for check in checks)

    def _keyword(self, name: str, argument: Any, schema: Mapping[str, Any]) -> Check:
        if name == "$ref":
            return self.build(self._resolve(argument))
        if name == "type":
            types = [_TYPES[t] for t in ([argument] if isinstance(argument, str) else argument)]
            return lambda value: any(is_type(value) for is_type in types)
        if name in ("const", "enum"):
            allowed = [argument] if name == "const" else list(argument)
            if any(isinstance(a, (dict, list)) for a in allowed):
                raise UnsupportedSchema(f"{name} with a mapping or list")
            return lambda value: any(_same(value, a) for a in allowed)
        if name == "pattern":
            search = re.compile(argument).search
            return lambda value: not isinstance(value, str) or search(value) is not None
        if name == "minLength":
            return lambda value: not isinstance(value, str) or len(value) >= argument
        if name == "maxLength":
            return lambda value: not isinstance(value, str) or len(value) <= argument
        if name == "required":
            return lambda value: not isinstance(value, dict) or all(key in value for key in argument)
        if name == "properties":
            checks = {key: self.build(sub) for key, sub in argument.items()}
            return lambda value: not isinstance(value, dict) or all(
                checks[key](value[key]) for key in checks.keys() & value.keys()
            )
        if name == "additionalProperties":
            known = frozenset(schema.get("properties", ()))
            if "patternProperties" in schema:
                raise UnsupportedSchema("patternProperties")
            check = self.build(argument)
            return lambda value: not isinstance(value, dict) or all(
                check(item) for key, item in value.items() if key not in known
            )
        if name == "propertyNames":
            check = self.build(argument)
            return lambda value: not isinstance(value, dict) or all(check(key) for key in value)
        if name == "items":
            if "prefixItems" in schema:
                raise UnsupportedSchema("prefixItems")
            return _items(self.build(argument))
        raise UnsupportedSchema(name)

    def _resolve(self, ref: str) -> Any:
        if not ref.startswith("#/"):
            raise UnsupportedSchema(f"$ref {ref}")
        target: Any = self._root
        for part in ref[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        return target


def _items(check: Check) -> Check:
    """``items``, remembering the strings that passed so each distinct one is checked once."""
    passed: set[str] = set()

    def items(value: Any) -> bool:
        if not isinstance(value, list):
            return True
        try:
            new = set(value) - passed
        except TypeError:  # an unhashable item (a mapping or list)
            return all(check(item) for item in value)
        if not all(item.__class__ is str and check(item) for item in new):
            return all(check(item) for item in value)
        passed.update(new)
        return True

    return items


def _same(value: Any, expected: Any) -> bool:
    """JSON equality with a scalar: ``true`` is not ``1`` (Python says it is)."""
    if isinstance(value, bool) or isinstance(expected, bool):
        return isinstance(value, bool) and isinstance(expected, bool) and value == expected
    return value == expected
