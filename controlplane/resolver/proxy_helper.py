"""Squid's external ACL helper: may this desktop open a TLS connection named NAME (its SNI) or an
HTTP request for host NAME? Answered from the allowlists the resolver publishes (a JSON file it
rewrites atomically when they change), with the same rules as the resolver, so an address a
permitted name opened (a CDN shared with forbidden names) carries only permitted names.

    /usr/bin/python3 -s controlplane/resolver/proxy_helper.py ALLOWLISTS.json REFUSALS.log sni|host

Squid writes "CHANNEL SRC NAME" lines (concurrency protocol) and reads "CHANNEL OK|ERR". A
refusal is appended to REFUSALS.log as one JSON line; the resolver counts it into the audit log.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TextIO

if __package__ in (None, ""):  # run by path (as Squid does): the repository's root is the import root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from controlplane.domain.egress import decide_name  # noqa: E402

MAX_LINE = 4096


class Allowlists:
    """The published allowlists, reloaded when the file changes: address -> (desktop, user, rules)."""

    def __init__(self, path: Path) -> None:
        self.path, self.stamp = path, (0, 0)
        self.by_address: dict[str, dict] = {}

    def get(self, address: str) -> dict | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        if (st.st_mtime_ns, st.st_ino) != self.stamp:
            try:
                self.by_address = json.loads(self.path.read_text())
                self.stamp = (st.st_mtime_ns, st.st_ino)
            except (OSError, ValueError):
                return None
        return self.by_address.get(address)


def answer(lists: Allowlists, line: str, kind: str, refusals: TextIO) -> str:
    parts = line.split()
    if not parts:
        return ""
    channel, src, name = parts[0], parts[1] if len(parts) > 1 else "-", parts[2] if len(parts) > 2 else "-"
    desktop = lists.get(src)
    if desktop is not None and name not in ("-", ""):
        decision = decide_name(desktop["domains"], name)
        if decision.allowed:
            return f"{channel} OK"
        rule = decision.rule
    else:
        rule = "no name given" if desktop is not None else "not a desktop"
    why = "TLS name (SNI)" if kind == "sni" else "HTTP Host"
    refusals.write(json.dumps({"src": src, "name": name[:253], "rule": f"{why}: {rule} (proxy)"}) + "\n")
    refusals.flush()
    return f"{channel} ERR"


def main() -> None:
    lists, kind = Allowlists(Path(sys.argv[1])), sys.argv[3]
    fd = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as refusals:
        for line in sys.stdin:
            reply = answer(lists, line[:MAX_LINE], kind, refusals)
            if reply:
                sys.stdout.write(reply + "\n")
                sys.stdout.flush()


if __name__ == "__main__":
    main()
