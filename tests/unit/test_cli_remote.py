"""The CLI on an admin's own machine: `shiftdesk login` against a real HTTPS control plane (uvicorn
on loopback, the fake hypervisor behind it), the token kept 0600, the CA pinned, and the same
commands with the same output through the REST API, acting as the signed-in AD admin."""

from __future__ import annotations

import gc
import json
import stat

import pytest
from typer.testing import CliRunner

from controlplane.cli import app
from controlplane.drivers.local_ca import ensure_server_cert
from controlplane.main import create_app, tls_files
from controlplane.services import audit, images
from controlplane.services.reconciler import Reconciler
from controlplane.services.views import image_view
from tests.conftest import SALES, USERS, database_env
from tests.e2e.conftest import Server


@pytest.fixture
def server(ctx, settings, image):
    cert, key = tls_files(settings)
    with Server(create_app(settings, ctx, Reconciler(ctx)), cert, key) as s:
        s.ca, s.ctx = cert.parent / "ca.pem", ctx
        yield s
        gc.collect()  # the CLI's clients, kept in cycles by the errors they raised, hang up: the server stops now


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("SHIFTDESK_URL", raising=False)
    return tmp_path / "config" / "shiftdesk"


def run(*args: str, password: str = "", monkeypatch=None):
    if monkeypatch is not None:
        monkeypatch.setattr("getpass.getpass", lambda _prompt="": password)
    return CliRunner().invoke(app, list(args))


def sign_in(server, monkeypatch, user="carol"):
    r = run("login", "--server", server.url, "--ca", str(server.ca), "--username", user,
            password=USERS[user][0], monkeypatch=monkeypatch)
    assert r.exit_code == 0, r.output
    monkeypatch.setenv("SHIFTDESK_URL", server.url)


def test_login_keeps_the_token_private_and_pins_the_ca(server, home, monkeypatch):
    sign_in(server, monkeypatch)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "credentials.json").stat().st_mode) == 0o600
    saved = json.loads((home / "credentials.json").read_text())[server.url]
    assert saved["username"] == "carol" and saved["token"] and saved["ca_pem"] == server.ca.read_text()
    assert USERS["carol"][0] not in (home / "credentials.json").read_text()  # the token, never the password


def test_the_same_commands_act_remotely_as_the_admin(server, home, monkeypatch, ctx, settings):
    sign_in(server, monkeypatch)
    r = run("pool", "create", "sales", "--image", "busybox-desktop", "--size", "2", "--timeout", "30")
    assert r.exit_code == 0, r.output
    pools = json.loads(run("pool", "ls", "--json").output)
    assert pools[0]["name"] == "sales" and pools[0]["desktops"] == {"ready": 2}
    desktops = json.loads(run("desktop", "ls", "--pool", "sales", "--json").output)
    assert len(desktops) == 2 and desktops[0]["state"] == "ready"
    assert run("desktop", "rebuild", desktops[0]["name"]).exit_code == 0
    assert json.loads(run("image", "ls", "--json").output)[0]["name"] == "busybox-desktop"
    created = audit.recent(ctx, action="pool.create")
    assert created[0]["actor"] == "carol"  # the AD admin who signed in, not the machine's account

    assert run("pool", "scale", "sales", "2", "--timeout", "30").exit_code == 0  # follows the rebuild to ready
    remote_view = run("pool", "ls", "--json").output
    remote_hosts = run("host", "ls", "--json").output
    assert [(h["state"], h["desktops"]) for h in json.loads(remote_hosts)] == [("active", {"ready": 2})]
    on_the_host(monkeypatch, settings)  # the same question asked on the host: the same answer
    assert run("pool", "ls", "--json").output == remote_view
    assert run("host", "ls", "--json").output == remote_hosts


def on_the_host(monkeypatch, settings):
    """From now on the CLI acts on the server's database, as the host operator does."""
    monkeypatch.delenv("SHIFTDESK_URL")
    monkeypatch.setenv("SHIFTDESK_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("SHIFTDESK_INSTANCE", settings.instance)
    monkeypatch.setenv("SHIFTDESK_LIBVIRT__URI", "fake://")
    for key, value in database_env(settings).items():
        monkeypatch.setenv(key, value)


def test_pool_set_acts_remotely_as_the_admin(server, home, monkeypatch, ctx, settings):
    sign_in(server, monkeypatch)
    assert run("pool", "create", "sales", "--image", "busybox-desktop", "--size", "1", "--timeout", "30").exit_code == 0
    r = run("pool", "set", "sales", "--clone", "cold", "--group", SALES)
    assert r.exit_code == 0, r.output
    assert audit.recent(ctx, action="pool.entitle")[0]["actor"] == "carol"
    before = {k: v for k, v in json.loads(run("pool", "ls", "--json").output)[0].items() if k != "desktops"}
    assert (before["clone"], before["groups"]) == ("cold", [SALES])
    for args, field in ((["--clone", "warm"], "clone"), (["--image", "nope"], "image"),
                        (["--group", "sales"], "groups")):
        r = run("pool", "set", "sales", *args)
        assert r.exit_code == 2 and field in r.output, r.output
    after = {k: v for k, v in json.loads(run("pool", "ls", "--json").output)[0].items() if k != "desktops"}
    assert after == before  # the mistakes changed nothing
    remote_view = run("pool", "set", "sales", "--group", SALES).output
    on_the_host(monkeypatch, settings)
    assert run("pool", "set", "sales", "--group", SALES).output == remote_view


def test_image_build_acts_remotely_as_the_admin(server, home, monkeypatch, ctx):
    sign_in(server, monkeypatch)
    ctx.builder.variant = "2"
    r = run("image", "build", "busybox-desktop", "--json")
    assert r.exit_code == 0, r.output
    built = image_view(images.get(ctx, "busybox-desktop:2"))  # what the host prints for its build
    assert r.stdout == json.dumps([built.model_dump(mode="json")], indent=2) + "\n"
    assert audit.recent(ctx, action="image.register")[0]["actor"] == "carol"
    builds = ctx.builder.builds
    for recipe in ("Bad Recipe", "x" * 65):
        r = run("image", "build", recipe)
        assert r.exit_code == 2 and "recipe" in r.output, r.output
    assert ctx.builder.builds == builds and len(images.list_all(ctx)) == 2


def test_schedules_act_remotely_as_on_the_host(server, home, monkeypatch, ctx, settings, tmp_path):
    sign_in(server, monkeypatch)
    assert run("pool", "create", "sales", "--image", "busybox-desktop", "--size", "0", "--no-wait").exit_code == 0
    rosters = tmp_path / "rosters"  # nobody on shift at the server's 08:00 UTC: no desktop boots, the plan holds still
    rosters.mkdir()
    (rosters / "sales.yaml").write_text("pool: sales\ntimezone: UTC\nmin: 0\nmax: 10\nshifts:\n"
                                        '  - {name: late, days: [tue], start: "18:00", end: "22:00", headcount: 4}\n')
    r = run("schedule", "validate", "-f", str(rosters))
    assert r.exit_code == 0 and "1 rosters valid: sales" in r.output, r.output
    r = run("schedule", "apply", "-f", str(rosters))
    assert r.exit_code == 0 and "rosters applied: sales" in r.output, r.output
    assert [e["actor"] for e in audit.recent(ctx, action="roster.apply")] == ["carol"]
    shown = run("schedule", "show", "sales").output
    assert json.loads(shown)["roster"]["timezone"] == "UTC"

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.yaml").write_text("pool: sales\ntimezone: Nowhere/City\nshifts: []\n")
    for command in ("validate", "apply"):
        r = run("schedule", command, "-f", str(tmp_path / "bad"))
        assert r.exit_code == 2 and "x.yaml:2: timezone" in r.output, r.output
    for args, field in ((["--start", "2026-11-27T00:00"], "start"), (["--days", "0"], "days")):
        r = run("schedule", "plan", "sales", *args)
        assert r.exit_code == 2 and field in r.output, r.output
    assert run("schedule", "show", "nowhere").exit_code == 2
    assert run("schedule", "show", "sales").output == shown  # the bad file changed nothing
    assert len(audit.recent(ctx, action="roster.apply")) == 1

    plan = run("schedule", "plan", "sales", "--json").output
    assert max(p["desired"] for p in json.loads(plan)) == 4
    table = run("schedule", "plan", "sales").output
    r = run("schedule", "plan", "sales", "--png", str(tmp_path / "remote.png"), "--svg", str(tmp_path / "r.svg"))
    assert r.exit_code == 0 and f"wrote {tmp_path / 'r.svg'}" in r.output.replace("\n", ""), r.output
    assert b"<svg" in (tmp_path / "r.svg").read_bytes()[:400]
    on_the_host(monkeypatch, settings)
    now = ctx.clock.now().replace(tzinfo=None).isoformat()  # the server plans from its clock; the host is told
    assert run("schedule", "show", "sales").output == shown
    assert run("schedule", "plan", "sales", "--start", now, "--json").output == plan
    assert run("schedule", "plan", "sales", "--start", now).output == table
    assert run("schedule", "plan", "sales", "--start", now, "--png", str(tmp_path / "host.png")).exit_code == 0
    assert (tmp_path / "remote.png").read_bytes() == (tmp_path / "host.png").read_bytes()


def test_mistakes_name_the_field_and_local_only_commands_say_so(server, home, monkeypatch):
    sign_in(server, monkeypatch)
    r = run("pool", "create", "Bad Name", "--image", "busybox-desktop", "--size", "1", "--no-wait")
    assert r.exit_code == 2 and "name" in r.output
    r = run("pool", "scale", "missing", "3", "--no-wait")
    assert r.exit_code == 2 and "missing" in r.output
    r = run("token")
    assert r.exit_code == 2 and "control-plane host only" in r.output


def test_policy_files_are_checked_by_the_server_remotely_as_on_the_host(server, home, monkeypatch, settings,
                                                                        tmp_path):
    sign_in(server, monkeypatch)
    good = run("policy", "validate", "-f", "policies")
    assert good.exit_code == 0 and "3 policies valid: all-agents, sales-floor, support-desk" in good.output
    (tmp_path / "bad.yaml").write_text("name: bad\nbind:\n  groups: [g]\n  colour: red\n")
    remote_bad = run("policy", "validate", "-f", str(tmp_path))
    assert remote_bad.exit_code == 2 and "bad.yaml:4" in remote_bad.output and "bind.colour" in remote_bad.output
    on_the_host(monkeypatch, settings)
    assert run("policy", "validate", "-f", "policies").output == good.output
    assert run("policy", "validate", "-f", str(tmp_path)).output == remote_bad.output


def test_an_agent_cannot_administer_remotely(server, home, monkeypatch):
    sign_in(server, monkeypatch, user="alice")
    r = run("pool", "ls")
    assert r.exit_code == 2 and "admin" in r.output.lower()


def test_another_ca_is_refused_and_a_signed_out_admin_is_told(server, home, monkeypatch, tmp_path):
    other = ensure_server_cert(tmp_path / "other-ca", ["127.0.0.1"]).ca_cert
    r = run("login", "--server", server.url, "--ca", str(other), "--username", "carol",
            password=USERS["carol"][0], monkeypatch=monkeypatch)
    assert r.exit_code == 1 and "pinned CA" in r.output
    assert not (home / "credentials.json").exists()
    sign_in(server, monkeypatch)
    assert run("logout").exit_code == 0
    r = run("pool", "ls")
    assert r.exit_code == 2 and "shiftdesk login" in r.output
    r = run("login", "--server", "http://127.0.0.1:1", "--username", "carol", password="x", monkeypatch=monkeypatch)
    assert r.exit_code == 2 and "https://" in r.output


def test_hosts_are_registered_and_put_in_maintenance_remotely_as_the_admin(server, home, monkeypatch, ctx,
                                                                           settings):
    sign_in(server, monkeypatch)
    bad = run("host", "add", "host-b", "http://host-b")
    assert bad.exit_code != 0 and "uri:" in bad.output
    r = run("host", "add", "host-b", "fake://host-b")
    assert r.exit_code == 0, r.output
    assert run("host", "maintenance", "host-b").exit_code == 0
    hosts = {h["name"]: h for h in json.loads(run("host", "ls", "--json").output)}
    assert (hosts["host-b"]["mode"], hosts["host-b"]["state"]) == ("maintenance", "active")
    assert [e["actor"] for e in audit.recent(ctx, action="host.register")] == ["carol"]
    assert [e["actor"] for e in audit.recent(ctx, action="host.maintenance")] == ["carol"]
    unknown = run("host", "activate", "host-z")
    assert unknown.exit_code != 0 and "host-z" in unknown.output
    remote_hosts = run("host", "ls", "--json").output
    on_the_host(monkeypatch, settings)
    assert run("host", "ls", "--json").output == remote_hosts
    assert run("host", "activate", "host-b").exit_code == 0
    assert [e["action"] for e in audit.recent(ctx, target="host-b")][:1] == ["host.active"]
