"""The host operations the control plane asks of another host's agent, and their wire format.

A desktop's serial log, its join secret for fw_cfg, the templates' save files and a clone's
restore fifo are files of the host whose libvirtd uses them. On the control plane's own host the
libvirt driver handles them directly; on another host they live on that host's disk, and the
driver asks that host's agent, over its console relay (mutual TLS, the control plane's
certificate only: domain/console.py), to do the one thing it needs:

    SHIFTDESK-HOST/1 serial-ready\\n               ->  OK\\n
    {"name": "sd-main-sales-0a1b2c"}\\n           ->  {"ready": false}\\n

One operation per connection. The request line names the operation; then the client sends its
arguments and the agent answers with its results, each one line of JSON of at most MAX_JSON
bytes, or `{"error": "..."}`. Arguments name desktops and templates, never paths: the agent
checks each name against its own installation and makes the path itself. A `feed` answers once
the clone's restore fifo is ready and serves it until the client closes the connection (its
restore is done).
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

from controlplane.errors import InvalidInput

MAX_JSON = 256 * 1024  # bytes, newline included: a clone's XML is about 6 KiB


class HostOp(StrEnum):
    SERIAL_READY = "serial-ready"  # name -> ready: its serial line said so since its last boot
    CLEAR_SERIAL = "clear-serial"  # name: readiness counts from the next boot's line only
    WRITE_JOIN = "write-join"  # name, secret: its join secret, for fw_cfg or its identity
    READ_JOIN = "read-join"  # name -> secret ("" when it has none)
    DISCARD_JOIN = "discard-join"  # name
    CLOSE_SOCKETS = "close-sockets"  # name: its VNC and channel sockets, root and QEMU only
    TEMPLATE_FILES = "template-files"  # -> saved, retired: template names (and stale fifos swept)
    TEMPLATE_STATE = "template-state"  # name -> saved, retired
    SAVED_XML = "saved-xml"  # name -> xml: the domain XML its finished save file holds
    BEGIN_SAVE = "begin-save"  # name -> path: where libvirt is to write the save file
    COMMIT_SAVE = "commit-save"  # name: the finished file takes the final name
    DISCARD_SAVE = "discard-save"  # name: the save file and a partial one go
    RETIRE = "retire"  # name: marked retired first, then its save file goes
    UNRETIRE = "unretire"  # name
    IMAGES = "images"  # -> images: sha256 of each golden image in the host's image store
    DOMAIN_TYPE = "domain-type"  # kernel -> domain_type: "kvm" if a KVM guest really boots there, else "qemu"
    PREPARE = "prepare"  # dirs: let QEMU search them (the host's own run and overlay directories too)
    FEED = "feed"  # name, template, xml -> path: the clone's restore fifo, served until close


def encode(payload: dict[str, Any]) -> bytes:
    line = json.dumps(payload, separators=(",", ":")).encode() + b"\n"
    if len(line) > MAX_JSON:
        raise InvalidInput(f"host operation: {len(line)} bytes, more than {MAX_JSON}", field="arguments")
    return line


def decode(line: bytes) -> dict[str, Any]:
    """One JSON object line. InvalidInput (field `arguments`) for anything else."""
    if len(line) > MAX_JSON or not line.endswith(b"\n"):
        raise InvalidInput(f"arguments: not one line of at most {MAX_JSON} bytes", field="arguments")
    try:
        value = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidInput("arguments: not JSON", field="arguments") from None
    if not isinstance(value, dict):
        raise InvalidInput("arguments: not a JSON object", field="arguments")
    return value


def text(args: dict[str, Any], key: str) -> str:
    """ARGS[KEY], which must be a string. InvalidInput naming KEY otherwise."""
    value = args.get(key)
    if not isinstance(value, str):
        raise InvalidInput(f"{key}: a string is required", field=key)
    return value


def texts(args: dict[str, Any], key: str) -> list[str]:
    """ARGS[KEY], which must be a list of strings. InvalidInput naming KEY otherwise."""
    value = args.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInput(f"{key}: a list of strings is required", field=key)
    return value
