"""Which AD group is meant: a full distinguished name or a SID, never a bare name.

Why: a group's `cn` is not an identity. Anyone allowed to create groups in any OU can make a
`cc-admins` of their own and join it; matching by cn would make them an admin. A full DN names
one place in the tree, and an objectSid is unique in the forest, so policies (`bind.groups`),
pools (`groups`) and the admin group (`auth.admin_group`) name groups one of these two ways.

Canonical form, the only form compared anywhere (a *group reference*):
- SID: `s-1-5-21-...-1104`, lower-cased.
- DN: `cn=cc-agents,ou=agents,dc=corp,dc=example`: attribute types and values lower-cased
  (AD compares both case-insensitively), unescaped spaces around `,` and `=` dropped, escapes
  (`\\,`, `\\2C`, `\\-`) decoded, then the value re-escaped one fixed way (RFC 4514), so every
  spelling of one DN gives the same text. Spaces inside a value are kept as they are: `cc  x`
  and `cc x` are different groups to AD, and folding them could let one stand in for the other.
Refused: bare names, DNs without a `DC=` suffix, multi-valued RDNs (AD never uses them), bad
escapes, non-UTF-8 bytes, values that are not NFKC-stable or that mix scripts (homoglyphs).
"""

from __future__ import annotations

import re
import unicodedata

SID_RE = re.compile(r"^s-1-\d{1,15}(-\d{1,10}){1,15}$")
TYPE_RE = re.compile(r"^([a-z][a-z0-9-]*|\d+(\.\d+)*)$")
HEX = "0123456789abcdefABCDEF"
SPECIAL = '\\,+";<>='
SCRIPTS = ("LATIN", "CYRILLIC", "GREEK", "ARABIC", "HEBREW", "CJK", "HIRAGANA", "KATAKANA", "HANGUL", "THAI")
MAX_REF = 1024


class InvalidGroup(ValueError):
    """Why a text is not a usable group reference (the message is shown to the admin)."""


def group_ref(text: str) -> str:
    """The canonical reference of TEXT (a full DN or a SID); InvalidGroup if it is neither."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidGroup("empty group reference")
    if len(text) > MAX_REF:
        raise InvalidGroup(f"group reference longer than {MAX_REF} characters")
    stripped = text.strip()
    if re.match(r"(?i)^s-\d", stripped):
        if not SID_RE.match(stripped.lower()):
            raise InvalidGroup(f"{text!r} is not a SID (S-1-5-21-...)")
        return stripped.lower()
    return normalize_dn(text)


def group_refs(texts: frozenset[str] | set[str] | list[str] | tuple[str, ...]) -> frozenset[str]:
    """Canonical references of TEXTS; the ones that are not valid are left out (they match nothing).

    For data already stored (policy revisions, pools): an old bare name must fail closed."""
    out = set()
    for text in texts:
        try:
            out.add(group_ref(text))
        except InvalidGroup:
            continue
    return frozenset(out)


def normalize_dn(text: str) -> str:
    rdns = _parse(text) if "=" in text else []
    if len(rdns) < 2 or rdns[-1][0] != "dc":
        raise InvalidGroup(f"{text!r} is not a full DN (CN=name,OU=...,DC=corp,DC=example) or a SID "
                           "(S-1-5-21-...): a bare name matches any group of that name in any OU")
    for _, value in rdns:
        _check_value(value)
    return ",".join(f"{kind}={escape_value(value.lower())}" for kind, value in rdns)


def escape_value(value: str) -> str:
    """RFC 4514 escaping, one fixed way: specials and controls escaped, edge spaces and '#' too."""
    out = []
    for i, ch in enumerate(value):
        if ch in SPECIAL:
            out.append("\\" + ch)
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\{ord(ch):02x}")
        elif (ch == " " and (i == 0 or i == len(value) - 1)) or (ch == "#" and i == 0):
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def sid_text(raw: bytes) -> str:
    """The canonical reference of a binary objectSid (revision, count, 48-bit authority, sub-ids)."""
    if len(raw) < 8 or len(raw) != 8 + 4 * raw[1]:
        raise InvalidGroup("objectSid: malformed")
    authority = int.from_bytes(raw[2:8], "big")
    subs = [int.from_bytes(raw[8 + 4 * i:12 + 4 * i], "little") for i in range(raw[1])]
    return "-".join(["s", str(raw[0]), str(authority), *map(str, subs)])


def _parse(text: str) -> list[tuple[str, str]]:
    rdns: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while True:
        eq = text.find("=", i)
        if eq < 0:
            raise InvalidGroup(f"{text!r}: empty or missing RDN (is this a full DN?)")
        kind = text[i:eq].strip().lower()
        if not TYPE_RE.match(kind):
            raise InvalidGroup(f"{text!r}: bad attribute type {kind!r}")
        value, i = _value(text, eq + 1)
        if not value:
            raise InvalidGroup(f"{text!r}: empty value in RDN {kind}=")
        rdns.append((kind, value))
        if i >= n:
            return rdns
        if text[i] == "+":
            raise InvalidGroup(f"{text!r}: multi-valued RDNs are not used by AD")
        i += 1  # the ','


def _value(text: str, i: int) -> tuple[str, int]:
    """Decode one attribute value starting at I; return it and the index of the ',' or '+' after it."""
    buf, keep, n = bytearray(), 0, len(text)
    while i < n and text[i] == " ":
        i += 1
    while i < n and text[i] not in ",+":
        ch = text[i]
        if ch == "\\":
            pair = text[i + 1:i + 3]
            if len(pair) == 2 and all(c in HEX for c in pair):
                buf.append(int(pair, 16))
                i += 3
            elif i + 1 < n and text[i + 1] >= " " and text[i + 1] not in HEX:
                buf += text[i + 1].encode()
                i += 2
            else:
                raise InvalidGroup(f"{text!r}: bad escape at character {i + 1}")
            keep = len(buf)
            continue
        if ch == '"':
            raise InvalidGroup(f"{text!r}: quoted values are not supported; escape with '\\'")
        buf += ch.encode()
        if ch != " ":
            keep = len(buf)
        i += 1
    try:
        return bytes(buf[:keep]).decode("utf-8"), i
    except UnicodeDecodeError:
        raise InvalidGroup(f"{text!r}: an escape does not decode as UTF-8") from None


def _check_value(value: str) -> None:
    if unicodedata.normalize("NFKC", value) != value:
        raise InvalidGroup(f"{value!r} is not in NFKC form (look-alike characters?)")
    scripts = set()
    for ch in value:
        if ch.isalpha():
            uname = unicodedata.name(ch, "")
            scripts.add(next((s for s in SCRIPTS if uname.startswith(s)), "OTHER"))
    if len(scripts) > 1:
        raise InvalidGroup(f"{value!r} mixes scripts ({', '.join(sorted(scripts))}): homoglyph trick?")
