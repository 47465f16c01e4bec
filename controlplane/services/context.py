"""What every service needs, wired once by main.py: store, hypervisor, clock, limits."""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import Engine

from controlplane.domain.app_policy import Revisions
from controlplane.domain.login_throttle import LoginThrottle
from controlplane.domain.planning import Limits
from controlplane.domain.ports import Clock, Directory, HostNetwork, Hypervisor, ImageBuilder
from controlplane.errors import TemporaryError
from controlplane.services.fleet import Fleet

CRASH_ENV = "SHIFTDESK_TEST_CRASH_AT"


def crash_from_env(point: str) -> None:
    """Fault injection for crash tests: die like `kill -9` at the named point, once.

    SHIFTDESK_TEST_CRASH_AT=<point> makes the process exit at once, mid-step, the way a power
    cut would. Unset (always, in production) it does nothing.
    """
    if os.environ.get(CRASH_ENV) == point:
        os._exit(137)


@dataclass(frozen=True)
class AuthConfig:
    key: bytes = field(repr=False, default=b"")
    ttl_s: int = 900
    admin_group: str = "shiftdesk-admins"


@dataclass
class Context:
    engine: Engine
    hypervisor: Hypervisor
    clock: Clock
    builder: ImageBuilder | None
    instance: str
    host_id: int
    image_store: Path
    limits: Limits = field(default_factory=Limits)
    parallelism: int = 8
    crashpoint: Callable[[str], None] = crash_from_env
    directory: Directory | None = None
    auth: AuthConfig = field(default_factory=AuthConfig)
    ticket_ttl_s: int = 20
    provisioning_rate: Any = None  # a ProvisioningRate to plan with; None: measured from the audit log
    login_throttle: LoginThrottle = field(default_factory=LoginThrottle)  # in-process: one per replica
    network: HostNetwork | None = None  # the host's desktop network; None: desktops get no NIC
    app_signer: Ed25519PrivateKey | None = field(default=None, repr=False)  # signs app allowlists; None: none sent
    app_revisions: Revisions = field(default_factory=Revisions)  # in-process: what each desktop was last sent
    fleet: Fleet | None = None  # the other hosts' hypervisors; None: this control plane drives its own host only
    # the gateway's client identity for the console relays of other hosts (made on first use); None: none
    console_tls: Callable[[], ssl.SSLContext | None] = field(default=lambda: None, repr=False)

    def driver(self, host_id: int) -> Hypervisor:
        """The hypervisor of HOST_ID: `hypervisor` for this control plane's own host, else the
        fleet's. TemporaryError for a host it cannot drive (now)."""
        if host_id == self.host_id:
            return self.hypervisor
        if self.fleet is None:
            raise TemporaryError(f"host {host_id}: this control plane drives only its own host", delay=60)
        return self.fleet.driver(host_id)
