"""Every setting in one typed place.

Environment variables are `SHIFTDESK_<GROUP>__<FIELD>` (for example `SHIFTDESK_LIBVIRT__URI`),
plus `SHIFTDESK_DATA_DIR` and `SHIFTDESK_INSTANCE`. Settings are validated once at start;
nothing here touches the disk or the network.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Network
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from controlplane.domain.groups import group_ref
from controlplane.domain.network import DesktopNetwork

INSTANCE_RE = re.compile(r"^[a-z][a-z0-9]{0,11}$")


class DatabaseSettings(BaseModel):
    url: str | None = Field(
        None, description="SQLAlchemy URL; default is SQLite at DATA_DIR/shiftdesk.db (WAL mode); "
                          "PostgreSQL: postgresql+psycopg://ROLE@HOST/DB"
    )
    migrate_url: str | None = Field(
        None, description="PostgreSQL: the schema owner's URL, for migrations; the role in `url` is then "
                          "granted what the application needs and may not rewrite the audit log. "
                          "Unset: `url` migrates (and owns the schema)"
    )
    busy_timeout_ms: int = Field(5000, ge=0, description="SQLite busy timeout: writers wait, not fail")


class LibvirtSettings(BaseModel):
    uri: str = Field("qemu:///system", description="libvirt connection URI")
    host_name: str | None = Field(
        None, description="The name this control plane's own libvirt host is registered under; default the "
        "machine's hostname. Replicas that share one host's libvirt give the same name",
    )
    readiness: Literal["serial", "running"] = Field(
        "serial",
        description="How a desktop proves it is ready: its serial line says so (real guests), "
        "or merely running (libvirt's test driver, which boots nothing)",
    )
    domain_type: Literal["auto", "qemu", "kvm"] = Field(
        "auto", description="auto = TCG unless a real probe shows KVM executes guest code"
    )
    storage_pool: str | None = Field(None, description="libvirt storage pool; default shiftdesk-INSTANCE")
    selftest_max_ms: float = Field(
        50.0, gt=0, description="define+undefine of a dummy domain must be faster than this at start"
    )


class ConsoleSettings(BaseModel):
    """Consoles of desktops on other hosts: each host agent relays them over mutual TLS
    (gateway/console_server.py); the gateway never opens plain VNC over a network."""

    port: int = Field(16600, ge=1, le=65535, description="The port of every host's console relay")
    listen: str | None = Field(None, description="The host agent relays its host's consoles on this address "
                               "(the one the control plane reaches the host's libvirtd at); unset: no relay")
    pki_dir: Path = Field(Path("/etc/pki/libvirt"), description="The relay's TLS identity: servercert.pem, "
                          "serverkey.pem and cacert.pem (ShiftDesk's local CA), as the host's libvirtd has them")
    allowed_clients: list[str] = Field(default_factory=lambda: ["shiftdesk-control-plane"],
                                       description="Common names of the client certificates the relay admits")
    max_consoles: int = Field(256, ge=1, le=4096, description="Consoles one host relays at once")


class ReconcilerSettings(BaseModel):
    period_s: float = Field(2.0, gt=0, description="Seconds between passes when nothing is pending")
    busy_period_s: float = Field(0.25, gt=0, description="Seconds between passes while work is pending")
    parallelism: int = Field(8, ge=1, le=64, description="How many desktop steps run at once")
    boot_timeout_s: float = Field(
        600.0, gt=0, description="A desktop (or template) not ready this long after its start is failed "
        "(a browser desktop's cold boot takes minutes under TCG)")
    template_wait_s: float = Field(
        300.0, gt=0, description="An instant-clone desktop waits this long for its pool's template, then boots")
    failure_budget: int = Field(
        3, ge=1, description="A pool with this many failed desktops stops creating new ones"
    )
    lease_ttl_s: float = Field(15.0, gt=0, description="Reconciler lease: one active reconciler per DB")
    cpu_ratio: float = Field(
        8.0, gt=0, le=64, description="Placement: a host's desktops may be given this many vCPUs per host CPU "
        "(agents' desktops mostly wait for a person)")
    memory_ratio: float = Field(
        1.5, gt=0, le=8, description="Placement: a host's desktops may be given this much memory per MiB it has "
        "(instant clones of one template share pages through KSM where their pools allow it)")
    disk_reserve_gib: float = Field(2.0, ge=0, description="Placement: a host with less free desktop storage "
                                    "takes no new desktop (overlays grow as guests write)")
    host_lease_ttl_s: float = Field(
        30.0, gt=0, description="A host agent renews its host's lease this often x3 and powers the host's desktops "
        "off after this long without; a host that does not answer is fenced this long after its lease ran out")


class LdapSettings(BaseModel):
    url: str | None = Field(None, description="ldaps://dc.example:636 (or ldap:// with start_tls); unset: no AD")
    base_dn: str = Field("", description="Where users and groups are searched")
    bind_dn: str = Field("", description="Service account used for searches (users bind as themselves)")
    bind_password: SecretStr = Field(SecretStr(""), description="Service account password (never logged)")
    ca_file: str | None = Field(None, description="CA bundle that validates the DC's certificate")
    start_tls: bool = Field(False, description="Upgrade ldap:// with StartTLS")
    allow_plain: bool = Field(False, description="Allow unencrypted LDAP (lab use only)")
    computers_ou: str | None = Field(None, description="OU where desktops' computer accounts are created")
    connect_timeout_s: float = Field(5.0, gt=0, description="TCP/TLS connect timeout")
    receive_timeout_s: float = Field(10.0, gt=0, description="Per-response timeout")

    @field_validator("bind_password")
    @classmethod
    def _no_placeholder(cls, value: SecretStr) -> SecretStr:
        if value.get_secret_value().lower() in {"changeme", "change-me", "password", "secret"}:
            raise ValueError("bind_password: a placeholder is not a password")
        return value


class LoginThrottleSettings(BaseModel):
    """Failed sign-ins (see domain/login_throttle.py for the rule and why these defaults)."""

    ad_lockout_threshold: int = Field(
        10, ge=0, le=1000, description="AD's account lockout threshold (0: AD never locks); ShiftDesk stops "
        "sending a user's wrong passwords to AD well before it")
    window_s: float = Field(1800.0, gt=0, description="Failure counting window; at least AD's 'reset account "
                            "lockout counter after'")
    pair_free_failures: int = Field(3, ge=1, description="Failures one user may make from one address before "
                                    "back-off starts")
    max_backoff_s: float = Field(900.0, gt=0, description="Longest wait between attempts of one user from one address")
    source_failures: int = Field(30, ge=1, description="Failures one address may make (any users) per window")
    familiar_days: float = Field(30.0, gt=0, description="An address a user signed in from this recently is familiar")
    max_entries: int = Field(50_000, ge=100, description="Cap on remembered users/addresses (least recently used go)")


class AuthSettings(BaseModel):
    admin_group: str = Field(
        "", description="AD group whose members get the admin API, by full DN (CN=...,OU=...,DC=...) or SID "
        "(S-1-5-21-...), never a bare name; empty: nobody is an admin through AD (use `shiftdesk token`)")
    token_ttl_s: int = Field(900, ge=60, le=43200, description="Lifetime of an API session token")
    key_file: Path | None = Field(None, description="HMAC key for tokens; default DATA_DIR/token.key (0600)")
    throttle: LoginThrottleSettings = LoginThrottleSettings()

    @field_validator("admin_group")
    @classmethod
    def _group_by_identity(cls, value: str) -> str:
        """Canonical DN or SID: a group's cn can be reused by anyone in any OU."""
        return group_ref(value) if value.strip() else ""


class GatewaySettings(BaseModel):
    ticket_ttl_s: int = Field(20, ge=2, le=120, description="Seconds a connect ticket may wait to be used")
    allowed_origins: list[str] = Field(default_factory=list,
                                       description="Origins allowed to open the gateway WebSocket (empty: same host)")
    max_connections_per_user: int = Field(2, ge=1, le=10, description="Concurrent display sessions per agent")
    handshake_timeout_s: float = Field(10.0, gt=0, description="Both RFB handshakes must finish within this")
    idle_timeout_s: float = Field(900.0, gt=0, description="Ceiling on idle time (the policy's idle timeout is used)")
    watchdog_period_s: float = Field(2.0, gt=0, description="How often a live session checks idle/limits/admin")
    max_frame_bytes: int = Field(64 * 1024, ge=4096, le=1 << 20,
                                 description="Largest WebSocket message from a browser (RFB input is tiny)")
    violation_budget: int = Field(256, ge=1, description="Dropped messages a session may send before it is closed")
    max_input_bytes_per_s: int = Field(32 * 1024, ge=4096,
                                       description="A browser's sustained input rate; faster input is slowed down")


class SchedulerSettings(BaseModel):
    period_s: float = Field(60.0, gt=0, description="Scaling is re-evaluated at least this often")
    boot_s: float | None = Field(None, gt=0, description="Plan with this boot time (default: measured)")
    desktops_per_s: float | None = Field(None, gt=0, description="Plan with this provisioning rate (default: measured)")


class ApiSettings(BaseModel):
    host: str = Field("127.0.0.1", description="Listen address of `shiftdesk serve`")
    port: int = Field(8600, ge=1, le=65535, description="Listen port of `shiftdesk serve`")
    tls_cert_file: Path | None = Field(None, description="Server certificate (PEM); unset: a local CA signs one")
    tls_key_file: Path | None = Field(None, description="Its private key (PEM)")
    tls_names: list[str] = Field(default_factory=lambda: ["localhost", "127.0.0.1"],
                                 description="Names the generated certificate is valid for")
    agents_dir: Path = Field(Path("agents"), description="The portal's files and its npm packages")


class NetworkSettings(BaseModel):
    enabled: bool = Field(False, description="Give each desktop one NIC on the host's isolated desktop network "
                          "(a bridge, nftables and a DHCP server that ShiftDesk owns); off: desktops have no NIC")
    subnet: IPv4Network = Field(IPv4Network("10.213.0.0/16"), description="The desktop network (private, /8-/24; "
                                "the host is .1, desktops from .10); one per installation on a host")
    bridge: str | None = Field(None, description="Its bridge; default sd-INSTANCE")
    upstream_dns: list[str] = Field(default_factory=list, description="Resolvers the desktops' resolver asks "
                                    "(IPv4, optionally :port); empty: the host's /etc/resolv.conf")
    forbidden_answers: list[IPv4Network] = Field(default_factory=list, description="More ranges no answer may "
                                                 "point into (the host's own and private ranges always are)")


class LogSettings(BaseModel):
    format: Literal["text", "json"] = Field("text", description="text: one readable line per record; json: one "
                                            "JSON object per line (time, level, logger, message) for log shippers")
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Least severe level logged")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHIFTDESK_", env_nested_delimiter="__", extra="forbid")

    data_dir: Path = Field(Path("/var/lib/shiftdesk"), description="Images, overlays, database")
    instance: str = Field(
        "main",
        description="Installation tag: names and tags of libvirt objects carry it, so several "
        "installations (a demo and a test run) share one libvirtd without touching each other",
    )
    images_dir: Path = Field(Path("images"), description="Where recipes live (images/recipes/NAME)")
    cache_dir: Path = Field(Path(".cache"), description="Build cache (downloaded .debs)")
    db: DatabaseSettings = DatabaseSettings()
    libvirt: LibvirtSettings = LibvirtSettings()
    reconciler: ReconcilerSettings = ReconcilerSettings()
    api: ApiSettings = ApiSettings()
    ldap: LdapSettings = LdapSettings()
    auth: AuthSettings = AuthSettings()
    gateway: GatewaySettings = GatewaySettings()
    console: ConsoleSettings = ConsoleSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    network: NetworkSettings = NetworkSettings()
    log: LogSettings = LogSettings()

    @field_validator("instance")
    @classmethod
    def _instance_shape(cls, value: str) -> str:
        if not INSTANCE_RE.match(value):
            raise ValueError("instance: 1-12 lowercase letters/digits, starting with a letter")
        return value

    @property
    def database_url(self) -> str:
        return self.db.url or f"sqlite:///{self.data_dir / 'shiftdesk.db'}"

    @property
    def storage_pool(self) -> str:
        return self.libvirt.storage_pool or f"shiftdesk-{self.instance}"

    @property
    def desktop_network(self) -> DesktopNetwork:
        return DesktopNetwork.of(self.instance, self.network.subnet, self.network.bridge)

    @property
    def overlay_dir(self) -> Path:
        return self.data_dir / "desktops"

    @property
    def image_store(self) -> Path:
        return self.data_dir / "images"

    @property
    def run_dir(self) -> Path:
        """Serial logs and VNC sockets: reachable by root (the gateway) only."""
        return self.data_dir / "run"
