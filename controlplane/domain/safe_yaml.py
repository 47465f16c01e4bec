"""Safe YAML documents: what policy and roster files share.

Refused before any parsing: files over MAX_FILE_BYTES (or more than MAX_FILES), control characters,
bidirectional and invisible format characters (a right-to-left override makes a file read
differently than it parses). Refused from the event stream, before anything is built: anchors and
aliases (no billion laughs), explicit tags (`!!python/...`: nothing is ever constructed from a tag),
nesting deeper than MAX_DEPTH (building recurses once per level), repeated keys and merge keys (the
file would mean something else than it reads), keys that are not text, numbers that are not finite
or longer than MAX_DIGITS. Timestamps stay text, for the loaders to check as dates. Then a JSON
Schema. Every error is located as file, line and field, never raised as anything else.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import yaml

MAX_FILE_BYTES = 64 * 1024
MAX_FILES = 200
MAX_DEPTH = 16  # levels of lists and mappings; a roster needs 4, a policy 3
MAX_DIGITS = 32  # an integer longer than this is no count or size
ALLOWED_CONTROLS = {"\n", "\t", "\r"}


@dataclass(frozen=True)
class DocumentError:
    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


class DocumentsInvalid(ValueError):
    def __init__(self, errors: list[DocumentError]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors


def load_one(fname: str, text: str, schema: dict[str, Any],
             errors: list[DocumentError]) -> dict[str, Any] | None:
    """Parse and schema-check one file; append its problems to ERRORS; None if it has any."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        errors.append(DocumentError(fname, 0, "(file)", f"larger than {MAX_FILE_BYTES} bytes"))
        return None
    before = len(errors)
    errors += _text_problems(fname, text)
    if len(errors) > before:
        return None
    try:
        node, doc = _load_plain(text)
    except (yaml.YAMLError, ValueError) as err:  # ValueError: a constructor's surprise, never a crash
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        errors.append(DocumentError(fname, (mark.line + 1) if mark else 0, "(yaml)", _yaml_problem(err)))
        return None
    except _Refused as err:
        errors.append(DocumentError(fname, err.line, err.field, err.message))
        return None
    if node is None:
        errors.append(DocumentError(fname, 1, "(file)", "empty file"))
        return None
    errors += _schema_errors(fname, node, doc, schema)
    return doc if len(errors) == before else None


def _text_problems(fname: str, text: str) -> list[DocumentError]:
    """The first forbidden character of every line: what reads differently than it parses."""
    found = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for ch in line:
            cat = unicodedata.category(ch)
            if (cat == "Cc" and ch not in ALLOWED_CONTROLS) or cat in ("Cf", "Co", "Cs", "Zl", "Zp"):
                found.append(DocumentError(fname, lineno, "(text)",
                                           f"forbidden character U+{ord(ch):04X} ({unicodedata.name(ch, cat)})"))
                break
    return found


def _schema_errors(fname: str, node: yaml.Node, doc: Any, schema: dict[str, Any]) -> list[DocumentError]:
    found = []
    validator = jsonschema.Draft202012Validator(schema)
    for problem in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        path = list(problem.absolute_path)
        extra = _unknown_key(problem)
        if extra and problem.validator == "additionalProperties":
            path.append(extra)
        field = ".".join(map(str, path)) if path else "(document)"
        if extra and problem.validator == "required":
            field = ".".join([*map(str, path), extra])
        found.append(DocumentError(fname, _line_of(node, path), field, _message(problem)))
    return found


class _Refused(Exception):
    def __init__(self, line: int, message: str, field: str = "(yaml)") -> None:
        super().__init__(message)
        self.line, self.message, self.field = line, message, field


class _PlainLoader(yaml.SafeLoader):
    """SafeLoader that reads timestamps as the text they are: dates are checked by the loaders that
    know what they mean, and an impossible one (2026-02-30) must be a field error, not a crash."""


def _timestamp_as_text(_loader: _PlainLoader, node: yaml.Node) -> str:
    return str(node.value)  # the scalar text, as written


_PlainLoader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_as_text)


def _load_plain(text: str) -> tuple[yaml.Node | None, Any]:
    """The composed tree and the document, after the event stream passed every check of _Walk
    (so composing and constructing, both recursive, only ever see shallow trees)."""
    walk = _Walk()
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        walk.event(event)
    loader = _PlainLoader(text)
    try:
        node = loader.get_single_node()
        return node, (loader.construct_document(node) if node is not None else None)
    finally:
        loader.dispose()


def _refuse_references(event: yaml.Event, line: int) -> None:
    """Anchors, aliases (billion laughs) and explicit tags (object construction) are never read."""
    if isinstance(event, yaml.AliasEvent):
        raise _Refused(line, "aliases are not allowed (no YAML anchors or references)")
    if getattr(event, "anchor", None):
        raise _Refused(line, "anchors are not allowed (no YAML anchors or references)")
    tag = getattr(event, "tag", None)
    implicit = getattr(event, "implicit", True)
    if tag is not None and not (implicit is True or (isinstance(implicit, tuple) and any(implicit))):
        raise _Refused(line, f"explicit tag {tag!r} is not allowed")


@dataclass
class _Frame:
    """One open list or mapping of the walk, and where the walk is inside it."""

    mapping: bool
    keys: set[str] = field(default_factory=set)
    key: str | None = None  # a mapping's key whose value comes next (None: a key comes next)
    index: int = 0  # a list's item that comes next


class _Walk:
    """Checks a YAML event stream before anything is built from it, so that what is refused is
    refused with the path of the field: nesting deeper than MAX_DEPTH (composing recurses once per
    level: 10,000 levels is a RecursionError), keys that are repeated (the last one would silently
    win), merge keys or not text, numbers that are not finite or too long to be a count."""

    def __init__(self) -> None:
        self.stack: list[_Frame] = []
        self.resolver = yaml.SafeLoader("")

    def event(self, event: yaml.Event) -> None:
        line = event.start_mark.line + 1 if event.start_mark else 0
        _refuse_references(event, line)
        top = self.stack[-1] if self.stack else None
        if isinstance(event, yaml.CollectionEndEvent):
            self.stack.pop()
            self._done()
        elif top is not None and top.mapping and top.key is None and isinstance(event, yaml.NodeEvent):
            top.key = self._key(top, event, line)
        elif isinstance(event, yaml.CollectionStartEvent):
            if len(self.stack) >= MAX_DEPTH:
                raise _Refused(line, f"nested more than {MAX_DEPTH} levels deep", self._field())
            self.stack.append(_Frame(mapping=isinstance(event, yaml.MappingStartEvent)))
        elif isinstance(event, yaml.ScalarEvent):
            self._scalar(event, line)
            self._done()

    def _field(self, *last: str) -> str:
        path = [f.key if f.mapping else f.index for f in self.stack if not f.mapping or f.key is not None]
        return ".".join(map(str, [*path, *last])) or "(document)"

    def _done(self) -> None:
        """A value is complete: its mapping expects a key next, its list the next item."""
        if self.stack:
            top = self.stack[-1]
            top.key, top.index = None, top.index + (not top.mapping)

    def _key(self, top: _Frame, event: yaml.NodeEvent, line: int) -> str:
        if not isinstance(event, yaml.ScalarEvent):
            raise _Refused(line, "a key must be text, not a list or mapping", self._field("(key)"))
        tag = self.resolver.resolve(yaml.ScalarNode, event.value, event.implicit)
        if tag == "tag:yaml.org,2002:merge":
            raise _Refused(line, "merge keys (<<) are not allowed", self._field(event.value))
        if tag != "tag:yaml.org,2002:str":
            raise _Refused(line, f"a key must be text: quote {event.value!r}", self._field(event.value))
        if event.value in top.keys:
            raise _Refused(line, "duplicate key (the last one would silently win)", self._field(event.value))
        top.keys.add(event.value)
        return str(event.value)

    def _scalar(self, event: yaml.ScalarEvent, line: int) -> None:
        tag = self.resolver.resolve(yaml.ScalarNode, event.value, event.implicit)
        if tag == "tag:yaml.org,2002:int" and len(event.value) > MAX_DIGITS:
            raise _Refused(line, f"too many digits (more than {MAX_DIGITS})", self._field())
        if tag == "tag:yaml.org,2002:float" and not math.isfinite(
                self.resolver.construct_yaml_float(yaml.ScalarNode(tag, event.value))):
            raise _Refused(line, "not a finite number", self._field())


def _yaml_problem(err: Exception) -> str:
    return str(getattr(err, "problem", None) or err).strip()


def _unknown_key(err: jsonschema.ValidationError) -> str | None:
    """The key at fault for 'unknown key' and 'missing key' errors (relative to the error's path)."""
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        extra = sorted(set(map(str, err.instance)) - set(err.schema.get("properties", {})))
        return extra[0] if extra else None
    if err.validator == "required" and "'" in err.message:
        return err.message.split("'")[1]
    return None


def _message(err: jsonschema.ValidationError) -> str:
    if err.validator == "additionalProperties":
        return "unknown key (" + err.message.split("(")[-1]
    if err.validator == "pattern":
        return f"{err.instance!r} has the wrong shape"
    return err.message


def _line_of(node: yaml.Node, path: list[Any]) -> int:
    """1-based line of the value at PATH in the composed tree (the closest existing parent)."""
    line = node.start_mark.line + 1
    for key in path:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if k.value == key), None)
            if match is None:
                break
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            break
        line = node.start_mark.line + 1
    return line




def check_count(files: dict[str, str]) -> None:
    if len(files) > MAX_FILES:
        raise DocumentsInvalid([DocumentError("(files)", 0, "files", f"more than {MAX_FILES} files")])


def line_of(text: str, path: list[Any]) -> int:
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    return _line_of(node, path) if node is not None else 0


def unique(docs: list[tuple[str, dict[str, Any]]], key: str, what: str) -> list[DocumentError]:
    """An error for every document whose KEY value an earlier file already used."""
    seen: dict[str, str] = {}
    errors = []
    for fname, doc in docs:
        if doc[key] in seen:
            errors.append(DocumentError(fname, 1, key, f"{doc[key]!r} {what} {seen[doc[key]]}"))
        seen[doc[key]] = fname
    return errors
