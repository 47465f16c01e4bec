"""Certificates from a local CA for the console relay's tests: the host's, the control plane's,
one for another name, and one from another CA."""

from __future__ import annotations

import pytest

from controlplane.drivers.local_ca import ensure_ca, ensure_libvirt_client, ensure_libvirt_server


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    ca = root / "ca"
    ensure_ca(ca)
    server = ensure_libvirt_server(ca, "127.0.0.1", root / "host")
    other_ca = root / "other-ca"
    ensure_ca(other_ca)
    return {
        "server": server,
        "control-plane": ensure_libvirt_client(ca, root / "cp"),
        "stranger": ensure_libvirt_client(ca, root / "stranger", name="someone-else"),
        "other-ca": ensure_libvirt_client(other_ca, root / "other"),
    }
