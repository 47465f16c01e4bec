"""Policy files -> Policy objects, or errors that name the file, the line and the field.

Pure: it takes {filename: text} and touches nothing. What it refuses, and why:
- files over MAX_FILE_BYTES, or more than MAX_FILES of them (resource exhaustion);
- control characters, and bidirectional or invisible format characters anywhere in the text
  (right-to-left overrides make a file read differently than it parses);
- YAML anchors, aliases and explicit tags (`!!python/...`): billion-laughs bombs and object
  construction are impossible by construction, not by configuration;
- unknown keys, wrong types, out-of-range numbers (the JSON Schema);
- group names that are not NFKC-stable or mix scripts (homoglyph tricks such as Cyrillic
  'а' in 'cc-sаles'); duplicate policy names across files.
Nothing is applied unless every file is valid.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any

import jsonschema
import yaml

from controlplane.domain.policy import DataRules, Policy, SessionLimits
from controlplane.domain.policy_schema import SCHEMA

MAX_FILE_BYTES = 64 * 1024
MAX_FILES = 200
ALLOWED_CONTROLS = {"\n", "\t", "\r"}


@dataclass(frozen=True)
class PolicyError:
    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


class PolicyInvalid(ValueError):
    def __init__(self, errors: list[PolicyError]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors


def load(files: dict[str, str]) -> list[Policy]:
    """Parse and validate every file; raise PolicyInvalid listing every problem found."""
    errors: list[PolicyError] = []
    if len(files) > MAX_FILES:
        raise PolicyInvalid([PolicyError("(files)", 0, "files", f"more than {MAX_FILES} policy files")])
    docs: list[tuple[str, dict[str, Any]]] = []
    for name in sorted(files):
        doc = _load_one(name, files[name], errors)
        if doc is not None:
            docs.append((name, doc))
    seen: dict[str, str] = {}
    for fname, doc in docs:
        if doc["name"] in seen:
            errors.append(PolicyError(fname, 1, "name", f"{doc['name']!r} is also defined in {seen[doc['name']]}"))
        seen[doc["name"]] = fname
    if errors:
        raise PolicyInvalid(errors)
    return [to_policy(doc) for _, doc in docs]


def _load_one(fname: str, text: str, errors: list[PolicyError]) -> dict[str, Any] | None:
    if len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        errors.append(PolicyError(fname, 0, "(file)", f"larger than {MAX_FILE_BYTES} bytes"))
        return None
    before = len(errors)
    for lineno, line in enumerate(text.splitlines(), 1):
        for ch in line:
            cat = unicodedata.category(ch)
            if (cat == "Cc" and ch not in ALLOWED_CONTROLS) or cat in ("Cf", "Co", "Cs", "Zl", "Zp"):
                errors.append(PolicyError(fname, lineno, "(text)",
                                          f"forbidden character U+{ord(ch):04X} ({unicodedata.name(ch, cat)})"))
                break
    if len(errors) > before:
        return None
    try:
        node = _compose_plain(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        errors.append(PolicyError(fname, (mark.line + 1) if mark else 0, "(yaml)", _yaml_problem(err)))
        return None
    except _Refused as err:
        errors.append(PolicyError(fname, err.line, "(yaml)", err.message))
        return None
    if node is None:
        errors.append(PolicyError(fname, 1, "(file)", "empty policy file"))
        return None
    doc = yaml.safe_load(text)
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for problem in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        path = list(problem.absolute_path)
        extra = _unknown_key(problem)
        if extra and problem.validator == "additionalProperties":
            path.append(extra)
        field = ".".join(map(str, path)) if path else "(document)"
        if extra and problem.validator == "required":
            field = ".".join([*map(str, path), extra])
        errors.append(PolicyError(fname, _line_of(node, path), field, _message(problem)))
    if len(errors) > before:
        return None
    for i, group in enumerate(doc["bind"]["groups"]):
        problem = group_name_problem(group)
        if problem:
            errors.append(PolicyError(fname, _line_of(node, ["bind", "groups", i]), f"bind.groups.{i}", problem))
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


SCRIPTS = ("LATIN", "CYRILLIC", "GREEK", "ARABIC", "HEBREW", "CJK", "HIRAGANA", "KATAKANA", "HANGUL", "THAI")


def group_name_problem(name: str) -> str | None:
    """Why NAME is not a trustworthy group name, or None."""
    if unicodedata.normalize("NFKC", name) != name:
        return f"{name!r} is not in NFKC form (look-alike characters?)"
    scripts = set()
    for ch in name:
        if ch.isalpha():
            uname = unicodedata.name(ch, "")
            scripts.add(next((s for s in SCRIPTS if uname.startswith(s)), "OTHER"))
    if len(scripts) > 1:
        return f"{name!r} mixes scripts ({', '.join(sorted(scripts))}): homoglyph trick?"
    return None


def to_policy(doc: dict[str, Any]) -> Policy:
    data = doc.get("data", {})
    session = {**SessionLimits().__dict__, **doc.get("session", {})}
    return Policy(
        name=doc["name"], description=doc.get("description", ""),
        groups=frozenset(g.lower() for g in doc["bind"]["groups"]),
        pools=frozenset(doc["bind"].get("pools", [])),
        apps=frozenset(doc.get("apps", {}).get("allow", [])),
        domains=frozenset(doc.get("domains", {}).get("allow", [])),
        data=DataRules(**{k: bool(data.get(k, False)) for k in DataRules.__dataclass_fields__}),
        watermark=bool(doc.get("watermark", {}).get("enabled", True)),
        session=SessionLimits(**session),
    )


def to_document(policy: Policy) -> dict[str, Any]:
    """The canonical form stored in a revision (sorted, defaults spelled out)."""
    return {
        "name": policy.name, "description": policy.description,
        "bind": {"groups": sorted(policy.groups), "pools": sorted(policy.pools)},
        "apps": {"allow": sorted(policy.apps)}, "domains": {"allow": sorted(policy.domains)},
        "data": dict(policy.data.__dict__), "watermark": {"enabled": policy.watermark},
        "session": dict(policy.session.__dict__),
    }
