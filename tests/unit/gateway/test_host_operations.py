"""Another host's files through its console relay (drivers/libvirt/host_files.py and the relay's
host operations, gateway/console_server.py), with real TLS from the local CA: the control plane's
RelayedHostFiles against the agent's LocalHostFiles in a directory of its own, which the client
never touches."""

from __future__ import annotations

import shutil
import socket
import ssl
import time
from pathlib import Path

import pytest

from controlplane.domain import console, host_ops
from controlplane.drivers.libvirt import save_image as si
from controlplane.drivers.libvirt.host_files import LocalHostFiles, RelayedHostFiles
from controlplane.errors import PermanentError, TemporaryError
from controlplane.gateway.console_server import ConsoleServer, client_context, server_context
from tests.unit.drivers.test_save_image import NEW, STREAM, read_fifo, template_file
from tests.unit.gateway.test_console_server import free_port

DESKTOP, TEMPLATE = "sd-main-sales-0a1b2c", "sd-main.tpl-i1-m256-c1"


@pytest.fixture
def host(pki, tmp_path):
    """The agent's side: its files in THERE, behind a relay on a free port."""
    there = tmp_path / "there"
    granted: list[list[Path]] = []
    probes = {Path("/data/images/agent-desktop/3/vmlinuz"): "kvm", Path("/data/images/odd/vmlinuz"): "tcg?"}
    files = LocalHostFiles(instance="main", run_dir=there / "run", templates_dir=there / "templates",
                           image_store=there / "images", grant=granted.append, probe=probes.__getitem__)
    files.run_dir.mkdir(parents=True)
    s = pki["server"]
    server = ConsoleServer(lambda *_: Path("/nonexistent"), server_context(cert=s.cert, key=s.key, ca=s.ca_cert),
                           allowed_clients=frozenset({"shiftdesk-control-plane"}), request_timeout=2.0,
                           host_files=files)
    port = free_port()
    server.run_in_thread("127.0.0.1", port)
    files.port, files.granted = port, granted
    return files


def remote(pki, host, who: str = "control-plane") -> RelayedHostFiles:
    d = pki[who]
    tls = client_context(cert=d / "clientcert.pem", key=d / "clientkey.pem", ca=pki["server"].ca_cert)
    return RelayedHostFiles("127.0.0.1", host.port, lambda: tls, timeout=5)


def test_serial_readiness_and_join_secrets_are_the_other_hosts_files(pki, host):
    files = remote(pki, host)
    assert files.serial_ready(DESKTOP) is False
    (host.run_dir / f"{DESKTOP}.serial").write_text(f"boot\nSHIFTDESK-READY name={DESKTOP}\n")
    assert files.serial_ready(DESKTOP) is True
    files.clear_serial(DESKTOP)
    assert not (host.run_dir / f"{DESKTOP}.serial").exists()

    files.write_join(DESKTOP, "s3cret")
    written = host.run_dir / f"{DESKTOP}.join"
    assert written.read_text() == "s3cret" and written.stat().st_mode & 0o777 == 0o600
    assert files.read_join(DESKTOP) == "s3cret"
    files.discard_join(DESKTOP)
    assert not written.exists() and files.read_join(DESKTOP) == ""


def test_a_template_is_saved_committed_retired_and_unretired_on_the_other_host(pki, host):
    files = remote(pki, host)
    partial = files.begin_save(TEMPLATE)
    assert partial == host.templates_dir / f"{TEMPLATE}.partial"  # where the host's libvirtd writes it
    shutil.copyfile(template_file(partial.parent), partial)
    assert files.template_state(TEMPLATE) == (False, False) and files.saved_xml(TEMPLATE) is None
    files.commit_save(TEMPLATE)
    assert files.template_state(TEMPLATE) == (True, False)
    assert "<name>sd-main.tpl-i1-m256-c1</name>" in (files.saved_xml(TEMPLATE) or "")
    found = files.template_files()
    assert found.saved == {TEMPLATE} and found.retired == frozenset()

    files.retire(TEMPLATE)
    assert files.template_state(TEMPLATE) == (False, True)
    assert not (host.templates_dir / f"{TEMPLATE}.save").exists()
    assert files.template_files().retired == {TEMPLATE}
    files.unretire(TEMPLATE)
    assert files.template_files().retired == frozenset()


def test_a_clone_is_fed_from_the_other_hosts_save_file_until_the_restore_closes(pki, host):
    files = remote(pki, host)
    host.templates_dir.mkdir()
    template_file(host.templates_dir).rename(host.templates_dir / f"{TEMPLATE}.save")
    xml = si.rewrite_for_clone(files.saved_xml(TEMPLATE) or "", NEW)
    with files.feed(DESKTOP, TEMPLATE, xml) as fifo:
        assert fifo == host.run_dir / f"{DESKTOP}.restore"
        served = read_fifo(fifo)  # what the host's libvirtd reads
    out = host.run_dir / "as-read"
    out.write_bytes(served)
    head = si.read_header(out)
    assert head.xml == xml and served[head.stream_offset:] == STREAM
    for _ in range(50):  # the agent ends the feed once the client closed
        if not fifo.exists():
            break
        time.sleep(0.1)
    assert not fifo.exists()


def test_directories_are_prepared_by_the_other_hosts_agent(pki, host):
    remote(pki, host).prepare([Path("/data/images/agent-desktop/3")])
    assert host.granted == [[Path("/data/images/agent-desktop/3")]]


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/shadow", "sd-other-sales-0a1b2c", "sd-main--x-0a1b2c"])
def test_a_name_that_is_not_this_installations_is_refused_and_nothing_is_written(pki, host, name):
    files = remote(pki, host)
    with pytest.raises(PermanentError, match="not a desktop or template of installation 'main'"):
        files.write_join(name, "s3cret")
    with pytest.raises(PermanentError, match="not a template"):
        files.begin_save(name)
    assert sorted(p.name for p in host.run_dir.parent.rglob("*")) == ["run"]


def test_only_the_control_planes_certificate_may_ask(pki, host):
    with pytest.raises(TemporaryError):
        remote(pki, host, who="stranger").write_join(DESKTOP, "s3cret")
    assert not (host.run_dir / f"{DESKTOP}.join").exists()


def test_arguments_past_the_bound_end_the_connection_unanswered(pki, host):
    d = pki["control-plane"]
    tls = client_context(cert=d / "clientcert.pem", key=d / "clientkey.pem", ca=pki["server"].ca_cert)
    with tls.wrap_socket(socket.create_connection(("127.0.0.1", host.port), timeout=5),
                         server_hostname="127.0.0.1") as conn:
        conn.sendall(console.request("write-join", console.Stream.HOST))
        assert conn.recv(3) == console.OK
        with pytest.raises((ssl.SSLError, ConnectionError)):
            for _ in range(64):  # 4 MiB without a newline: the relay stops reading after MAX_JSON
                conn.sendall(b"x" * 65536)
            if conn.recv(16) == b"":
                raise ConnectionError("closed")
    assert host_ops.MAX_JSON < 64 * 65536 and not (host.run_dir / f"{DESKTOP}.join").exists()


def test_a_relay_without_host_files_refuses_host_operations(pki):
    s = pki["server"]
    server = ConsoleServer(lambda *_: Path("/nonexistent"), server_context(cert=s.cert, key=s.key, ca=s.ca_cert),
                           allowed_clients=frozenset({"shiftdesk-control-plane"}))
    port = free_port()
    server.run_in_thread("127.0.0.1", port)
    with pytest.raises(TemporaryError, match="serves no host operations"):
        remote(pki, type("H", (), {"port": port})()).serial_ready(DESKTOP)


def test_whether_kvm_runs_guests_is_asked_of_the_other_host(pki, host):
    files = remote(pki, host)
    assert files.domain_type(Path("/data/images/agent-desktop/3/vmlinuz")) == "kvm"
    with pytest.raises(PermanentError, match="neither kvm nor qemu"):
        files.domain_type(Path("/data/images/odd/vmlinuz"))


def test_the_golden_images_of_the_other_hosts_image_store_are_listed_by_their_disks(pki, host):
    disk = "ab" * 32
    for made in (host.image_store / "busybox-desktop" / disk, host.image_store / "busybox-desktop" / ".x.partial",
                 host.image_store / "agent-desktop" / ("cd" * 32)):
        made.mkdir(parents=True)
    (host.image_store / "busybox-desktop" / disk / "disk.qcow2").write_bytes(b"QFI\xfb")
    (host.image_store / "busybox-desktop" / ".x.partial" / "disk.qcow2").write_bytes(b"QFI\xfb")
    assert remote(pki, host).images() == {disk}  # not a copy under way, not a directory without a disk
    host.image_store = None
    assert remote(pki, host).images() is None  # no image store: placement does not ask
