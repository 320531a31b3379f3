"""A fast yes/no answer to "is this document valid under the schema?".

jsonschema costs tens of microseconds per keyword and per ``$ref``: several
seconds for 10,000 chats. Valid input is the common case, so the schema is
compiled once into plain Python predicates that answer only yes or no; when
the answer is no, jsonschema runs to explain why. The predicates are built
from ``chats.schema.json`` itself, so there is no second copy of the rules;
a keyword this compiler does not know makes :func:`compile_schema` raise,
and the caller then always uses jsonschema.

Lists of strings (members) are checked per distinct string: a string that
passed an item schema once is remembered for the life of the predicate, and
the new ones are checked together at C speed when the item schema is a
plain string schema (type, pattern, lengths), or an ``anyOf``/``oneOf`` in
which only one branch can hold a string (a member: a userId or a selector).

Patterns follow ECMA-262, as the schema's other readers (editors) do: there
``$`` is the end of the string, while Python's ``$`` also matches before a
final newline, which would let ``"alice\\n"`` pass as a user id. Both this
module and the jsonschema fallback compile patterns with :func:`search`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

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


@cache
def search(pattern: str) -> Callable[[str], re.Match[str] | None]:
    """``re.compile(pattern).search`` with ECMA-262's ``$``: the end of the string, not "before a final newline"."""
    return re.compile(_ecma_to_python(pattern)).search


def _ecma_to_python(pattern: str) -> str:
    """Rewrite each ``$`` anchor (unescaped, outside a character class) as ``\\Z``."""
    out: list[str] = []
    in_class = False
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            out.append(pattern[index : index + 2])
            index += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "$":
            char = r"\Z"
        out.append(char)
        index += 1
    return "".join(out)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
        checks = [
            self._keyword(name, argument, schema) for name, argument in schema.items() if name not in _ANNOTATIONS
        ]
        if len(checks) == 1:
            return checks[0]

        def every(value: Any) -> bool:  # a loop: `all(genexpr)` costs a generator per value
            for check in checks:
                if not check(value):
                    return False
            return True

        return every

    def build_for_strings(self, schema: Any) -> Callable[[set[Any]], bool] | None:
        """``schema`` applied to a set of values at once, if it is a plain string schema; else None."""
        keywords = self._keywords_of(schema)
        if keywords is None:
            return None
        branches = keywords.get("anyOf", keywords.get("oneOf"))
        if branches is not None and len(keywords) == 1:
            # A string can pass only the branches that allow strings; if that is one, it is the schema for strings.
            for_strings = [branch for branch in branches if not self._rejects_strings(branch)]
            return self.build_for_strings(for_strings[0]) if len(for_strings) == 1 else None
        if keywords.get("type") != "string" or not keywords.keys() <= {"type", "pattern", "minLength", "maxLength"}:
            return None
        matches = search(keywords.get("pattern", ""))
        shortest, longest = keywords.get("minLength", 0), keywords.get("maxLength")

        def strings(values: set[Any]) -> bool:
            if not values:
                return True
            if set(map(type, values)) != {str}:
                return False
            lengths = set(map(len, values))
            if min(lengths) < shortest or (longest is not None and max(lengths) > longest):
                return False
            return all(map(matches, values))

        return strings

    def _keywords_of(self, schema: Any) -> dict[str, Any] | None:
        """The keywords that affect validity, after following plain ``$ref``s; None for a boolean schema."""
        while isinstance(schema, dict) and set(schema) - _ANNOTATIONS == {"$ref"}:
            schema = self._resolve(schema["$ref"])
        if not isinstance(schema, dict):
            return None
        return {name: argument for name, argument in schema.items() if name not in _ANNOTATIONS}

    def _rejects_strings(self, schema: Any) -> bool:
        """True when ``schema`` has a ``type`` that excludes strings (so no string can pass it)."""
        keywords = self._keywords_of(schema)
        if keywords is None or "type" not in keywords:
            return schema is False
        types = keywords["type"]
        return "string" not in ([types] if isinstance(types, str) else types)

    def _keyword(self, name: str, argument: Any, schema: Mapping[str, Any]) -> Check:
        if name == "$ref":
            return self.build(self._resolve(argument))
        if name == "type":
            types = [_TYPES[t] for t in ([argument] if isinstance(argument, str) else argument)]
            if len(types) == 1:
                return types[0]
            return lambda value: any(is_type(value) for is_type in types)
        if name in ("const", "enum"):
            allowed = [argument] if name == "const" else list(argument)
            if any(isinstance(a, (dict, list)) for a in allowed):
                raise UnsupportedSchema(f"{name} with a mapping or list")
            return _one_of(allowed)
        if name == "pattern":
            matches = search(argument)
            return lambda value: not isinstance(value, str) or matches(value) is not None
        if name == "minLength":
            return lambda value: not isinstance(value, str) or len(value) >= argument
        if name == "maxLength":
            return lambda value: not isinstance(value, str) or len(value) <= argument
        if name == "minimum":
            return lambda value: not _is_number(value) or value >= argument
        if name == "maximum":
            return lambda value: not _is_number(value) or value <= argument
        if name == "exclusiveMinimum":
            return lambda value: not _is_number(value) or value > argument
        if name == "exclusiveMaximum":
            return lambda value: not _is_number(value) or value < argument
        if name == "required":
            return lambda value: not isinstance(value, dict) or all(key in value for key in argument)
        if name == "dependentRequired":
            rules = [(key, tuple(needed)) for key, needed in argument.items()]
            return lambda value: (
                not isinstance(value, dict)
                or all(all(other in value for other in needed) for key, needed in rules if key in value)
            )
        if name == "anyOf":
            branches = [self.build(branch) for branch in argument]
            return lambda value: any(branch(value) for branch in branches)
        if name == "oneOf":
            branches = [self.build(branch) for branch in argument]
            return lambda value: sum(1 for branch in branches if branch(value)) == 1
        if name == "properties":
            return _properties({key: self.build(sub) for key, sub in argument.items()})
        if name == "additionalProperties":
            known = frozenset(schema.get("properties", ()))
            if "patternProperties" in schema:
                raise UnsupportedSchema("patternProperties")
            if argument is False:
                return lambda value: not isinstance(value, dict) or known.issuperset(value)
            check = self.build(argument)
            return lambda value: (
                not isinstance(value, dict) or all(check(item) for key, item in value.items() if key not in known)
            )
        if name == "propertyNames":
            check = self.build(argument)
            return lambda value: not isinstance(value, dict) or all(check(key) for key in value)
        if name == "items":
            if "prefixItems" in schema:
                raise UnsupportedSchema("prefixItems")
            return _items(self.build(argument), self.build_for_strings(argument))
        raise UnsupportedSchema(name)

    def _resolve(self, ref: str) -> Any:
        if not ref.startswith("#/"):
            raise UnsupportedSchema(f"$ref {ref}")
        target: Any = self._root
        for part in ref[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        return target


def _items(check: Check, strings: Callable[[set[Any]], bool] | None) -> Check:
    """``items``, remembering the strings that passed so each distinct one is checked once."""
    passed: set[str] = set()

    def items(value: Any) -> bool:
        if not isinstance(value, list):
            return True
        try:
            new = set(value) - passed
        except TypeError:  # an unhashable item (a selector mapping, a list): check those one by one
            if not all(check(item) for item in value if item.__class__ is not str):
                return False
            new = {item for item in value if item.__class__ is str} - passed
        if strings is not None and strings(new):
            passed.update(new)
            return True
        if not all(item.__class__ is str and check(item) for item in new):
            return all(check(item) for item in value)
        passed.update(new)
        return True

    return items


def _properties(checks: Mapping[str, Check]) -> Check:
    def properties(value: Any) -> bool:
        if not isinstance(value, dict):
            return True
        for key in checks.keys() & value.keys():
            if not checks[key](value[key]):
                return False
        return True

    return properties


def _one_of(allowed: list[Any]) -> Check:
    """``enum``/``const`` by one set lookup; JSON equality: ``true`` is not ``1`` (Python says it is)."""
    keys = frozenset((isinstance(a, bool), a) for a in allowed)

    def one_of(value: Any) -> bool:
        try:
            return (isinstance(value, bool), value) in keys
        except TypeError:  # unhashable: a mapping or list, never allowed here
            return False

    return one_of
