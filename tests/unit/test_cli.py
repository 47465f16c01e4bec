"""The CLI mirrors the API: same services, `--json` everywhere, errors that name the field."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from controlplane.cli import app
from tests.conftest import database_env


@pytest.fixture
def env(settings, image, monkeypatch):
    """The CLI builds its own context from the environment; the fake directory comes via monkeypatch."""
    import controlplane.main as main
    from controlplane.drivers.fake import FakeDirectory
    from tests.conftest import USERS

    users = {k: (v[0], set(v[1])) for k, v in USERS.items()}
    monkeypatch.setattr(main, "make_directory", lambda _s: FakeDirectory(users))
    monkeypatch.setenv("SHIFTDESK_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("SHIFTDESK_INSTANCE", settings.instance)
    monkeypatch.setenv("SHIFTDESK_LIBVIRT__URI", "fake://")
    for key, value in database_env(settings).items():  # PostgreSQL in a SHIFTDESK_TEST_DB=postgresql run
        monkeypatch.setenv(key, value)
    return settings


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def test_pool_and_desktop_listing_as_json(env):
    r = run("pool", "create", "sales", "--image", "busybox-desktop", "--size", "2")
    assert r.exit_code == 0, r.output
    pools = json.loads(run("pool", "ls", "--json").output)
    assert pools[0]["name"] == "sales" and pools[0]["desktops"] == {"ready": 2}
    desks = json.loads(run("desktop", "ls", "--pool", "sales", "--json").output)
    assert len(desks) == 2
    assert {"state", "domain", "disk_path"} <= set(desks[0]) and desks[0]["state"] == "ready"
    images = json.loads(run("image", "ls", "--json").output)
    assert images[0]["name"] == "busybox-desktop" and len(images[0]["sha256"]) == 64
    assert run("pool", "scale", "sales", "1", "--no-wait").exit_code == 0
    assert json.loads(run("pool", "ls", "--json").output)[0]["size"] == 1
    assert run("pool", "delete", "sales", "--no-wait").exit_code == 0


def test_bad_input_exits_2_naming_the_field(env):
    r = run("pool", "create", "Bad Name", "--image", "busybox-desktop", "--size", "1", "--no-wait")
    assert r.exit_code == 2 and "name:" in r.output
    r = run("pool", "scale", "missing", "3", "--no-wait")
    assert r.exit_code == 2 and "missing" in r.output
    r = run("pool", "create", "sales", "--image", "nope", "--size", "1", "--no-wait")
    assert r.exit_code == 2 and "image" in r.output
    assert json.loads(run("pool", "ls", "--json").output) == []


def test_policy_commands(env, tmp_path):
    from pathlib import Path

    examples = Path(__file__).resolve().parents[2] / "policies"
    r = run("policy", "validate", "-f", str(examples))
    assert r.exit_code == 0 and "3 policies valid" in r.output
    assert run("policy", "apply", "-f", str(examples), "--comment", "first").exit_code == 0
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.yaml").write_text("name: xx\nbind:\n  groups: [g]\n  colour: red\n")
    r = run("policy", "apply", "-f", str(bad))
    assert r.exit_code == 2 and "x.yaml:4: bind.colour" in r.output
    history = json.loads(run("policy", "history", "--json").output)
    assert [h["revision"] for h in history] == [1] and history[0]["actor"].startswith("cli:")
    changes = json.loads(run("policy", "diff", "-f", str(examples), "--json").output)
    assert changes == []
    explained = json.loads(run("policy", "explain", "alice", "--pool", "sales", "--json").output)
    assert explained["applied"] == ["all-agents", "sales-floor"]
    why = run("policy", "explain", "alice", "--pool", "sales", "--name", "news.example.org", "--app", "softphone")
    assert why.exit_code == 0 and "name news.example.org: refused" in why.output
    assert "app softphone: allowed" in why.output and "sales-floor: not in apps.allow" not in why.output
    assert run("policy", "explain", "nobody").exit_code == 2


def test_local_admin_token_works_against_the_api(env, settings):
    from fastapi.testclient import TestClient

    from controlplane.main import build_context, create_app

    r = run("token")
    assert r.exit_code == 0
    token = r.stdout.strip().splitlines()[0]
    with TestClient(create_app(settings, build_context(settings))) as client:
        assert client.get("/api/v1/pools", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert client.get("/api/v1/pools", headers={"Authorization": f"Bearer {token}x"}).status_code == 401


def test_schedule_commands_and_capacity_plots(env, tmp_path):
    from pathlib import Path

    rosters = Path(__file__).resolve().parents[2] / "policies" / "rosters"
    assert run("pool", "create", "sales", "--image", "busybox-desktop", "--size", "0", "--no-wait").exit_code == 0
    r = run("schedule", "validate", "-f", str(rosters))
    assert r.exit_code == 0 and "1 rosters valid: sales" in r.output
    assert run("schedule", "apply", "-f", str(rosters)).exit_code == 0
    assert json.loads(run("schedule", "show", "sales").output)["roster"]["timezone"] == "Europe/Berlin"
    plan = json.loads(run("schedule", "plan", "sales", "--start", "2026-11-27T00:00", "--json").output)
    peak = max(p["desired"] for p in plan)
    assert len(plan) == 96 and peak == 230 + 23  # Black Friday 13-14h: early shift 30 + stream 200, buffer 10%
    png, svg = tmp_path / "week.png", tmp_path / "week.svg"
    r = run("schedule", "plan", "sales", "--days", "7", "--png", str(png), "--svg", str(svg))
    assert r.exit_code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and b"<svg" in svg.read_bytes()[:400]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.yaml").write_text("pool: sales\ntimezone: Nowhere/City\nshifts: []\n")
    r = run("schedule", "apply", "-f", str(bad))
    assert r.exit_code == 2 and "x.yaml:2: timezone" in r.output


@pytest.mark.parametrize("command", ["policy", "schedule"])
def test_hostile_yaml_exits_2_naming_file_line_and_field(env, tmp_path, command):
    (tmp_path / "deep.yaml").write_text("name: x\ndeep: " + "[" * 10_000 + "]" * 10_000 + "\n")
    (tmp_path / "twice.yaml").write_text("pool: a\npool: b\n")
    r = run(command, "validate", "-f", str(tmp_path))
    assert r.exit_code == 2, r.output
    assert "deep.yaml:2: deep.0.0" in r.output and "twice.yaml:2: pool: duplicate key" in r.output


def test_pool_rollout_follows_to_the_end_and_reports(env, ctx):
    ctx.builder.variant = "2"
    from controlplane.services import images

    images.build(ctx, "busybox-desktop", actor="test")
    assert run("pool", "create", "sales", "--image", "busybox-desktop:1", "--size", "2").exit_code == 0
    r = run("pool", "rollout", "start", "sales", "--image", "busybox-desktop:2", "--soak", "0", "--batch", "2",
            "--timeout", "60")
    assert r.exit_code == 0, r.output
    assert "rollout of sales: done" in r.output
    status = json.loads(run("pool", "rollout", "status", "sales", "--json").output)
    assert (status["state"], status["desktops"], status["to_image"]) == ("done", {"old": 0, "new": 2},
                                                                         "busybox-desktop:2")
    r = run("pool", "rollout", "rollback", "sales")
    assert r.exit_code == 2 and "no rollout in progress" in r.output
    r = run("pool", "rollout", "start", "sales", "--image", "busybox-desktop:2", "--canary", "0%", "--no-wait")
    assert r.exit_code == 2 and "canary" in r.output


def test_a_hosts_tls_certificate_comes_from_the_local_ca_that_signs_the_control_planes_own(env, tmp_path):
    import ipaddress
    import stat

    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    from controlplane.main import with_client_certificate

    r = run("host", "certificate", "10.0.0.5", "--out", str(tmp_path / "pki"))
    assert r.exit_code == 0, r.output
    assert 'tls_allowed_dn_list = ["O=ShiftDesk local CA,CN=shiftdesk-control-plane"]' in r.output
    ca = x509.load_pem_x509_certificate((tmp_path / "pki" / "cacert.pem").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "pki" / "servercert.pem").read_bytes())
    assert server.issuer == ca.subject
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]
    assert ExtendedKeyUsageOID.SERVER_AUTH in server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert stat.S_IMODE((tmp_path / "pki" / "serverkey.pem").stat().st_mode) == 0o600
    uri = with_client_certificate(env, "qemu+tls://10.0.0.5/system")
    pki = env.data_dir / "tls" / "libvirt-client"
    assert uri == f"qemu+tls://10.0.0.5/system?pkipath={pki}"
    client = x509.load_pem_x509_certificate((pki / "clientcert.pem").read_bytes())
    client.verify_directly_issued_by(ca)
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "shiftdesk-control-plane"
    assert ExtendedKeyUsageOID.CLIENT_AUTH in client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert with_client_certificate(env, "qemu+ssh://h/system") == "qemu+ssh://h/system"
