"""Safe YAML documents: what policy and roster files share.

Refused before any parsing: files over MAX_FILE_BYTES (or more than MAX_FILES), control characters,
bidirectional and invisible format characters (a right-to-left override makes a file read
differently than it parses). Refused while parsing: anchors and aliases (no billion laughs),
explicit tags (`!!python/...`: nothing is ever constructed from a tag). Then a JSON Schema, with
every error located as file, line and field.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any

import jsonschema
import yaml

MAX_FILE_BYTES = 64 * 1024
MAX_FILES = 200
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
    for lineno, line in enumerate(text.splitlines(), 1):
        for ch in line:
            cat = unicodedata.category(ch)
            if (cat == "Cc" and ch not in ALLOWED_CONTROLS) or cat in ("Cf", "Co", "Cs", "Zl", "Zp"):
                errors.append(DocumentError(fname, lineno, "(text)",
                                          f"forbidden character U+{ord(ch):04X} ({unicodedata.name(ch, cat)})"))
                break
    if len(errors) > before:
        return None
    try:
        node = _compose_plain(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        errors.append(DocumentError(fname, (mark.line + 1) if mark else 0, "(yaml)", _yaml_problem(err)))
        return None
    except _Refused as err:
        errors.append(DocumentError(fname, err.line, "(yaml)", err.message))
        return None
    if node is None:
        errors.append(DocumentError(fname, 1, "(file)", "empty policy file"))
        return None
    doc = yaml.safe_load(text)
    validator = jsonschema.Draft202012Validator(schema)
    for problem in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        path = list(problem.absolute_path)
        extra = _unknown_key(problem)
        if extra and problem.validator == "additionalProperties":
            path.append(extra)
        field = ".".join(map(str, path)) if path else "(document)"
        if extra and problem.validator == "required":
            field = ".".join([*map(str, path), extra])
        errors.append(DocumentError(fname, _line_of(node, path), field, _message(problem)))
    if len(errors) > before:
        return None
    return doc if len(errors) == before else None


class _Refused(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line, self.message = line, message


def _compose_plain(text: str) -> yaml.Node | None:
    """Compose the YAML node tree, refusing anchors, aliases and explicit tags on the way."""
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        line = event.start_mark.line + 1 if event.start_mark else 0
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(line, "aliases are not allowed (no YAML anchors or references)")
        if getattr(event, "anchor", None):
            raise _Refused(line, "anchors are not allowed (no YAML anchors or references)")
        tag = getattr(event, "tag", None)
        implicit = getattr(event, "implicit", True)
        explicit = tag is not None and not (implicit is True or (isinstance(implicit, tuple) and any(implicit)))
        if explicit:
            raise _Refused(line, f"explicit tag {tag!r} is not allowed")
    return yaml.compose(text, Loader=yaml.SafeLoader)


def _yaml_problem(err: yaml.YAMLError) -> str:
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
