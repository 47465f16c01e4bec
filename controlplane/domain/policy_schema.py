"""The JSON Schema of a policy file (policies/schema.json is generated from this; a test keeps
them equal). Unknown keys are refused everywhere: a typo must not silently allow something."""

from __future__ import annotations

from typing import Any

NAME = r"^[a-z][a-z0-9-]{0,46}[a-z0-9]$"
POOL = r"^[a-z][a-z0-9-]{0,22}[a-z0-9]$"
APP = r"^[a-z0-9][a-z0-9._+-]{0,63}$"
START_PAGE = r"^(https://[a-z0-9.-]{1,253}(:[0-9]{1,5})?(/[\x21-\x7e]*)?|file:///usr/share/shiftdesk/[a-z0-9._/-]{1,200})$"
DOMAIN = r"^(\*\.)?((?!-)[a-z0-9-]{1,63}(?<!-)\.)+(xn--[a-z0-9-]{1,59}|[a-z]{2,63})$"


def _object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "properties": properties,
            "required": required or []}


def _list(item: dict[str, Any], max_items: int = 500) -> dict[str, Any]:
    return {"type": "array", "items": item, "uniqueItems": True, "maxItems": max_items}


SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://shiftdesk.dev/schemas/policy-1.json",
    "title": "ShiftDesk desktop policy",
    **_object({
        "name": {"type": "string", "pattern": NAME, "description": "unique; lowercase a-z, 0-9, '-'"},
        "description": {"type": "string", "maxLength": 500},
        "bind": _object({
            "groups": {**_list({"type": "string", "minLength": 1, "maxLength": 1024}, 100), "minItems": 1,
                       "description": "AD groups by full DN (CN=...,OU=...,DC=...) or SID (S-1-5-21-...), "
                                      "never a bare name; nested membership counts"},
            "pools": {**_list({"type": "string", "pattern": POOL}, 100),
                      "description": "only these pools; omitted or empty: every pool"},
        }, ["groups"]),
        "apps": _object({"allow": {**_list({"type": "string", "pattern": APP}),
                                   "description": "applications that may run"}}),
        "domains": _object({"allow": {**_list({"type": "string", "pattern": DOMAIN, "maxLength": 253}),
                                      "description": "host names; '*.example.com' = any subdomain"}}),
        "data": _object({k: {"type": "boolean", "default": False}
                         for k in ("clipboard", "file_transfer", "printing", "audio")}),
        "watermark": _object({"enabled": {"type": "boolean", "default": True}}),
        "isolation": _object({"memory_sharing": {
            "type": "boolean", "default": True,
            "description": "false: desktops of the pools this policy names (every pool when bind.pools is "
                           "empty) never share memory pages with other desktops (no KSM), closing the "
                           "cross-VM timing side channel at the cost of host memory"}}),
        "browser": _object({"start_page": {
            "type": "string", "pattern": START_PAGE, "maxLength": 2000,
            "description": "what the desktop's browser shows when an agent is given it: an https URL "
                           "(its host should be in domains.allow) or a page the image ships under "
                           "file:///usr/share/shiftdesk/"}}),
        "session": _object({
            "idle_timeout_minutes": {"type": "integer", "minimum": 1, "maximum": 1440},
            "max_session_hours": {"type": "integer", "minimum": 1, "maximum": 24},
            "disconnect_grace_minutes": {"type": "integer", "minimum": 0, "maximum": 240},
        }),
    }, ["name", "bind"]),
}
