"""The proxy's ACL helper: the names inside a connection (TLS SNI, HTTP Host) follow the same
policy as the resolver's answers; refusals are logged for the audit; a changed file is reloaded."""

from __future__ import annotations

import io
import json
import os

from controlplane.resolver.proxy_helper import Allowlists, answer


def test_names_inside_connections_follow_the_desktops_policy(tmp_path):
    path = tmp_path / "allowlists.json"
    path.write_text(json.dumps({"10.213.0.10": {"desktop": "sd-a", "user": "alice",
                                                "domains": ["crm.example.com", "*.shop.example"]}}))
    lists, log = Allowlists(path), io.StringIO()
    assert answer(lists, "0 10.213.0.10 crm.example.com\n", "sni", log) == "0 OK"
    assert answer(lists, "1 10.213.0.10 a.shop.example\n", "host", log) == "1 OK"
    assert answer(lists, "2 10.213.0.10 forbidden.example.org\n", "sni", log) == "2 ERR"
    assert answer(lists, "3 10.213.0.10 -\n", "sni", log) == "3 ERR"  # a client hello without a name
    assert answer(lists, "4 10.213.0.99 crm.example.com\n", "sni", log) == "4 ERR"  # not a desktop
    logged = [json.loads(line) for line in log.getvalue().splitlines()]
    assert [(e["src"], e["name"]) for e in logged] == [("10.213.0.10", "forbidden.example.org"),
                                                       ("10.213.0.10", "-"), ("10.213.0.99", "crm.example.com")]
    assert "SNI" in logged[0]["rule"] and "no rule" in logged[0]["rule"]


def test_a_republished_file_is_picked_up(tmp_path):
    path = tmp_path / "allowlists.json"
    path.write_text(json.dumps({"10.213.0.10": {"domains": ["crm.example.com"]}}))
    lists = Allowlists(path)
    assert answer(lists, "0 10.213.0.10 crm.example.com", "sni", io.StringIO()) == "0 OK"
    tmp = tmp_path / "next.json"
    tmp.write_text(json.dumps({"10.213.0.10": {"domains": []}}))
    os.replace(tmp, path)
    assert answer(lists, "1 10.213.0.10 crm.example.com", "sni", io.StringIO()) == "1 ERR"
