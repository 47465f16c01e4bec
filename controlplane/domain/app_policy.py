"""The app allowlist a desktop enforces, as a document the control plane signs and the guest checks.

The guest decides which executables may run (only it sees them start), so the list must reach
it in a form that nothing between the control plane and the guest's enforcer can alter or
replay: a canonical JSON document, bound to one desktop by name, with a revision that only ever
grows, signed with the control plane's Ed25519 key. The guest pins the public key it received
with its identity, refuses any document whose signature, desktop or revision is wrong, and
reports the revision it applied; the host quarantines a desktop that refuses or reports another
revision than the one sent (services/apps.py, drivers/libvirt/guest_link.py).

The guest agent carries its own copy of `verify` (it cannot import ShiftDesk);
tests/unit/test_guest_agent_apps.py checks it accepts and refuses what this one does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

FORMAT = 1
MAX_DOC = 8192  # the host channel's `apps.doc` field holds at most this many characters
APP_RE = re.compile(r"[a-z0-9][a-z0-9._+-]{0,63}")  # as policy files name apps (domain/policy_schema.py)
SIGNATURE_BYTES = 64
PUBLIC_KEY_BYTES = 32


class BadAppPolicy(ValueError):
    """A document that must not be applied. The message names the field or the signature."""


@dataclass(frozen=True)
class AppPolicy:
    """Which apps DESKTOP may run, as of REVISION (a number only ever increasing for a desktop)."""

    desktop: str
    revision: int
    apps: tuple[str, ...]  # sorted, unique: the same list always encodes to the same bytes

    @classmethod
    def of(cls, desktop: str, revision: int, apps: frozenset[str] | set[str] | tuple[str, ...]) -> AppPolicy:
        return cls(desktop, revision, tuple(sorted(set(apps))))

    def document(self) -> str:
        """The canonical text that is signed and sent: sorted keys, no spaces, ASCII only."""
        doc = json.dumps({"format": FORMAT, "desktop": self.desktop, "revision": self.revision,
                          "apps": list(self.apps)}, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        if len(doc) > MAX_DOC:
            raise BadAppPolicy(f"apps: the list for {self.desktop} encodes to {len(doc)} characters (max {MAX_DOC})")
        return doc


@dataclass(frozen=True)
class SignedAppPolicy:
    policy: AppPolicy
    document: str
    signature: bytes


def sign(key: Ed25519PrivateKey, policy: AppPolicy) -> SignedAppPolicy:
    doc = policy.document()
    return SignedAppPolicy(policy, doc, key.sign(doc.encode("ascii")))


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    """The raw 32-byte public key a guest pins (the same encoding the guest agent loads)."""
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def verify(public_key: bytes, document: str, signature: bytes) -> AppPolicy:
    """The policy in DOCUMENT if SIGNATURE is the pinned key's and the document is well formed."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        raise BadAppPolicy("signature: wrong length")
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, document.encode("ascii"))
    except (InvalidSignature, UnicodeEncodeError) as err:
        raise BadAppPolicy("signature: does not verify with the pinned key") from err
    return parse(document)


def parse(document: str) -> AppPolicy:
    """The fields of a (verified) document, each checked; the error names the first bad one."""
    try:
        obj = json.loads(document)
    except ValueError as err:
        raise BadAppPolicy("document: not JSON") from err
    if not isinstance(obj, dict) or set(obj) != {"format", "desktop", "revision", "apps"}:
        raise BadAppPolicy("document: expected exactly format, desktop, revision, apps")
    if obj["format"] != FORMAT:
        raise BadAppPolicy(f"format: {obj['format']!r} is not {FORMAT}")
    if not isinstance(obj["desktop"], str) or not obj["desktop"]:
        raise BadAppPolicy("desktop: expected a name")
    if type(obj["revision"]) is not int or obj["revision"] < 1:
        raise BadAppPolicy("revision: expected a positive integer")
    apps = obj["apps"]
    if not isinstance(apps, list) or not all(isinstance(a, str) and APP_RE.fullmatch(a) for a in apps):
        raise BadAppPolicy("apps: expected a list of app names")
    return AppPolicy.of(obj["desktop"], obj["revision"], tuple(apps))



class Revisions:
    """Per desktop, the allowlist last signed for it: the same apps keep their revision (so a
    pass that changes nothing sends nothing), new apps get a higher one. Revisions start from the
    clock in milliseconds, so a restarted control plane still sends numbers above those a guest
    has seen, and the guest can refuse anything older as a replay."""

    def __init__(self) -> None:
        self._last: dict[str, SignedAppPolicy] = {}

    def current(self, desktop: str, apps: frozenset[str], now_ms: int,
                signer: Callable[[AppPolicy], SignedAppPolicy]) -> SignedAppPolicy:
        wanted = tuple(sorted(apps))
        last = self._last.get(desktop)
        if last is not None and last.policy.apps == wanted:
            return last
        revision = max(now_ms, last.policy.revision + 1 if last is not None else 1)
        signed = signer(AppPolicy(desktop, revision, wanted))
        self._last[desktop] = signed
        return signed

    def keep_only(self, desktops: set[str]) -> None:
        for gone in set(self._last) - desktops:
            del self._last[gone]
