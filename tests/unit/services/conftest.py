"""Fixtures of the service tests."""

from __future__ import annotations

import pytest

from controlplane.drivers.fake import FakeHypervisor
from controlplane.services import hosts
from controlplane.services.fleet import Fleet

URIS = {"b": "fake://b", "c": "fake://c"}


@pytest.fixture
def fleet(ctx):
    """Two hosts beside the control plane's own, each with its own fake hypervisor."""
    fakes = {name: FakeHypervisor() for name in URIS}
    by_uri = {URIS[name]: fake for name, fake in fakes.items()}
    ctx.fleet = Fleet(ctx.engine, lambda _name, uri: by_uri[uri])
    ids = {name: hosts.register(ctx, name=name, uri=uri, actor="admin").id for name, uri in URIS.items()}
    return fakes, ids
