"""Policy files -> Policy objects, or errors that name the file, the line and the field.

Pure: it takes {filename: text} and touches nothing. What it refuses, and why:
- files over MAX_FILE_BYTES, or more than MAX_FILES of them (resource exhaustion);
- control characters, and bidirectional or invisible format characters anywhere in the text
  (right-to-left overrides make a file read differently than it parses);
- YAML anchors, aliases and explicit tags (`!!python/...`): billion-laughs bombs and object
  construction are impossible by construction, not by configuration;
- unknown keys, wrong types, out-of-range numbers (the JSON Schema);
- groups that are not a full DN or a SID (a bare cn is anyone's to reuse in another OU), or
  whose names are not NFKC-stable or mix scripts (homoglyph tricks such as Cyrillic 'а' in
  'cc-sаles'): see domain/groups.py; duplicate policy names across files.
Nothing is applied unless every file is valid.
"""

from __future__ import annotations

from typing import Any

from controlplane.domain.groups import InvalidGroup, group_ref, group_refs
from controlplane.domain.policy import DataRules, Policy, SessionLimits
from controlplane.domain.policy_schema import SCHEMA
from controlplane.domain.safe_yaml import MAX_FILE_BYTES as MAX_FILE_BYTES
from controlplane.domain.safe_yaml import DocumentError as PolicyError
from controlplane.domain.safe_yaml import DocumentsInvalid as PolicyInvalid
from controlplane.domain.safe_yaml import check_count, line_of, load_one, unique

__all__ = ["MAX_FILE_BYTES", "PolicyError", "PolicyInvalid", "load", "to_document", "to_policy"]


def load(files: dict[str, str]) -> list[Policy]:
    """Parse and validate every file; raise PolicyInvalid listing every problem found."""
    errors: list[PolicyError] = []
    check_count(files)
    docs: list[tuple[str, dict[str, Any]]] = []
    for name in sorted(files):
        doc = load_one(name, files[name], SCHEMA, errors)
        if doc is None:
            continue
        for i, group in enumerate(doc["bind"]["groups"]):
            try:
                group_ref(group)
            except InvalidGroup as err:
                errors.append(PolicyError(name, line_of(files[name], ["bind", "groups", i]), f"bind.groups.{i}",
                                          str(err)))
        docs.append((name, doc))
    errors += unique(docs, "name", "is also defined in")
    if errors:
        raise PolicyInvalid(errors)
    return [to_policy(doc) for _, doc in docs]


def to_policy(doc: dict[str, Any]) -> Policy:
    data = doc.get("data", {})
    session = {**SessionLimits().__dict__, **doc.get("session", {})}
    return Policy(
        name=doc["name"], description=doc.get("description", ""),
        groups=group_refs(doc["bind"]["groups"]),  # a stored bare name (older revision) matches nothing
        pools=frozenset(doc["bind"].get("pools", [])),
        apps=frozenset(doc.get("apps", {}).get("allow", [])),
        domains=frozenset(doc.get("domains", {}).get("allow", [])),
        data=DataRules(**{k: bool(data.get(k, False)) for k in DataRules.__dataclass_fields__}),
        watermark=bool(doc.get("watermark", {}).get("enabled", True)),
        session=SessionLimits(**session),
        start_page=doc.get("browser", {}).get("start_page"),
        memory_sharing=bool(doc.get("isolation", {}).get("memory_sharing", True)),
    )


def to_document(policy: Policy) -> dict[str, Any]:
    """The canonical form stored in a revision (sorted, defaults spelled out)."""
    return {
        "name": policy.name, "description": policy.description,
        "bind": {"groups": sorted(policy.groups), "pools": sorted(policy.pools)},
        "apps": {"allow": sorted(policy.apps)}, "domains": {"allow": sorted(policy.domains)},
        "data": dict(policy.data.__dict__), "watermark": {"enabled": policy.watermark},
        "session": dict(policy.session.__dict__),
        **({"browser": {"start_page": policy.start_page}} if policy.start_page else {}),
        **({"isolation": {"memory_sharing": False}} if not policy.memory_sharing else {}),
    }
