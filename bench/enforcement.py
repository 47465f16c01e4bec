"""Egress enforcement: what it costs and how fast it follows a policy.

    .venv/bin/python bench/enforcement.py [--lookups 400] [--changes 20] [--mib 64]

On bench/netlab.py's namespace internet, with the real desktop network (bridge, nftables,
dnsmasq) and the real enforcing resolver, from a desktop namespace plugged in like a desktop:
- DNS: p50 of cached A lookups through the enforcing resolver, against the same lookups sent
  straight to the upstream server from an unenforced namespace (a plain routed veth) in the
  same run;
- HTTP: download throughput of one file over HTTPS (the agents' traffic: Squid peeks at the SNI
  and splices) and over plain HTTP (Squid proxies it), through the enforcement (bridge,
  nftables, Squid) against the unenforced namespace, alternating, best of three each;
  `http_throughput_ratio` is the HTTPS one;
- propagation: 20 policy applies that alternately remove and restore the CRM name; for each,
  the time until a prober inside the desktop (resolving every 20 ms) sees the change;
- bypasses: IP literal, QUIC, DNS-over-TLS, another resolver, rebinding, the DoH canary, a
  forbidden name, a forbidden TLS name on an allowed name's (CDN) address, TLS without a name,
  a forged source address; each must fail.

Last line: {"dns_p50_ratio", "http_throughput_ratio", "propagation_p95_s", "bypasses_tried",
"bypasses_leaked", ...}. Everything is removed at the end, also when killed (bench/cleanup.py).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import cleanup, netlab  # noqa: E402
from bench.netlab import CRM, ELSEWHERE, SHARED, FakeDesktop, Internet, sh  # noqa: E402
from controlplane.config import Settings  # noqa: E402
from controlplane.db.engine import session_scope  # noqa: E402
from controlplane.db.models import Desktop  # noqa: E402
from controlplane.domain.egress import RefusalCounter  # noqa: E402
from controlplane.domain.network import DesktopNetwork  # noqa: E402
from controlplane.drivers.fake import FakeHypervisor  # noqa: E402
from controlplane.drivers.netfilter.egress import NftEgressFirewall  # noqa: E402
from controlplane.drivers.netfilter.host_network import LinuxHostNetwork, host_addresses  # noqa: E402
from controlplane.drivers.netfilter.proxy import SquidProxy  # noqa: E402
from controlplane.main import build_context  # noqa: E402
from controlplane.resolver.core import EgressResolver, Upstream  # noqa: E402
from controlplane.resolver.server import ProxyFiles, ResolverService  # noqa: E402
from controlplane.services import images, policies, pools  # noqa: E402

VENV_PY = str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "python")
AGENTS = "CN=cc-agents,OU=Agents,DC=bench,DC=test"


def policy(domains: list[str]) -> dict[str, str]:
    allow = "".join(f'\n    - "{d}"' for d in domains)
    return {"floor.yaml": f'name: floor\nbind:\n  groups: ["{AGENTS}"]\n  pools: [floor]\ndomains:\n  allow:{allow}\n'}


def lookups_ms(ns: str, server: str, n: int) -> list[float]:
    """N A lookups of crm.example.com from namespace NS to SERVER, in milliseconds, 25 ms apart
    (a browser's pace, and below the resolver's per-desktop rate limit of 50 a second)."""
    code = ("import json, time, dns.message, dns.query\n"
            "q = dns.message.make_query('crm.example.com', 'A'); out = []\n"
            f"dns.query.udp(q, '{server}', timeout=2)\n"
            f"for _ in range({n}):\n t = time.perf_counter(); dns.query.udp(q, '{server}', timeout=2)\n"
            " out.append((time.perf_counter() - t) * 1000); time.sleep(0.025)\nprint(json.dumps(out))")
    return json.loads(sh("ip", "netns", "exec", ns, VENV_PY, "-c", code).stdout)


def download_mib_s(ns: str, url: str) -> float:
    code = ("import ssl, time, urllib.request\nt = time.perf_counter(); n = 0\n"
            "ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE\n"
            f"with urllib.request.urlopen('{url}', timeout=30, context=ctx) as r:\n"
            " while (b := r.read(1 << 20)): n += len(b)\n"
            "print(n / (1 << 20) / (time.perf_counter() - t))")
    return float(sh("ip", "netns", "exec", ns, "python3", "-c", code).stdout)


class Raw:
    """An unenforced namespace: a plain veth from the host, routed, no bridge, no nftables."""

    def __init__(self, tag: str, inet: Internet) -> None:
        self.ns, self.link = f"{tag}-raw", f"{tag}-rawh"
        self.inet = inet
        self.host_side, self.far_side = "10.236.0.1", "10.236.0.2"

    def start(self) -> None:
        sh("ip", "netns", "add", self.ns)
        sh("ip", "link", "add", self.link, "type", "veth", "peer", "name", "eth0", "netns", self.ns)
        sh("ip", "addr", "add", f"{self.host_side}/30", "dev", self.link)
        sh("ip", "link", "set", self.link, "up")
        for cmd in (["ip", "addr", "add", f"{self.far_side}/30", "dev", "eth0"], ["ip", "link", "set", "eth0", "up"],
                    ["ip", "link", "set", "lo", "up"], ["ip", "route", "add", "default", "via", self.host_side]):
            sh("ip", "netns", "exec", self.ns, *cmd)
        sh("ip", "netns", "exec", self.inet.ns, "ip", "route", "add", "10.236.0.0/30", "via", self.inet.host_side)


def propagation_s(ctx, desk: FakeDesktop, changes: int) -> list[float]:
    """Apply CHANGES policies (CRM out, CRM back, ...); seconds until the desktop sees each."""
    prober = subprocess.Popen(
        ["ip", "netns", "exec", desk.ns, "python3", "-u", "-c",
         "import socket, time\nlast = None\nwhile True:\n"
         " try: now = socket.gethostbyname('crm.example.com') == '" + CRM + "'\n"
         " except OSError: now = False\n"
         " if now != last: print(time.monotonic(), now, flush=True); last = now\n"
         " time.sleep(0.02)"], stdout=subprocess.PIPE, text=True)
    try:
        assert prober.stdout is not None
        assert prober.stdout.readline().split()[1] == "True"
        took = []
        for i in range(changes):
            allowed = i % 2 == 1
            began = time.monotonic()
            policies.apply(ctx, policy(["crm.example.com", "*.example.com"] if allowed else ["shop.example.com"]),
                           actor="bench")
            stamp, seen = prober.stdout.readline().split()
            assert seen == str(allowed), f"the desktop saw {seen} after change {i}"
            took.append(float(stamp) - began)
        return took
    finally:
        prober.kill()


def bypasses(desk: FakeDesktop, inet: Internet, net: DesktopNetwork) -> dict[str, bool]:
    """Each bypass attempt, and whether it leaked (True: it got through)."""
    desk.lookup("crm.example.com")  # CRM's address is open: the attempts below try to ride on it
    desk.run("ip", "addr", "add", f"{net.first + 77}/32", "dev", "eth0", check=False)
    return {
        "ip_literal": not desk.fetch(f"http://{ELSEWHERE}/").startswith("ERROR"),
        "quic_udp_443": desk.udp(IPv4Address(CRM), 443) is not None,
        "dns_over_tls_853": desk.tcp(IPv4Address(CRM), 853),
        "other_resolver": desk.udp(IPv4Address(inet.far_side), 53) is not None,
        "rebinding_to_host": not desk.lookup("rebind.example.com").startswith("ERROR"),
        "doh_canary": not desk.lookup("use-application-dns.net").startswith("ERROR"),
        "forbidden_name": not desk.lookup("forbidden.example.org").startswith("ERROR"),
        "forbidden_sni_on_shared_address": desk.lookup("shop.example.com") == SHARED
        and not desk.tls(SHARED, "forbidden.example.org").startswith("ERROR"),
        "no_sni": not desk.tls(SHARED, "").startswith("ERROR"),
        "forged_source": desk.udp(net.host, 53, source=net.first + 77) is not None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lookups", type=int, default=400)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--mib", type=int, default=64)
    args = parser.parse_args()
    instance = cleanup.run_instance("benf")
    with cleanup.data_dir(instance) as tmp:
        settings = Settings(data_dir=Path(tmp) / "data", instance=instance, libvirt={"uri": "fake://"},
                            images_dir=Path(__file__).resolve().parents[1] / "images",
                            cache_dir=Path(__file__).resolve().parents[1] / ".cache")
        ctx = build_context(settings, hypervisor=FakeHypervisor())
        image = images.build(ctx, "busybox-desktop", actor="bench")
        net = DesktopNetwork.of(instance, IPv4Network("10.237.0.0/24"))
        state = Path("/run/shiftdesk") / instance / "net"
        inet, desk = Internet(instance), FakeDesktop(f"{instance}-d0", net.nic(f"sd-{instance}-floor-1", net.first))
        proxy = SquidProxy(net, state, [inet.far_side])
        host = LinuxHostNetwork(instance, net, state, proxy=proxy)
        raw = Raw(instance, inet)
        service = None
        try:
            inet.start(big_file_mib=args.mib)
            raw.start()
            host.sync([desk.nic])
            desk.plug(net, default_route=True)
            pools.create(ctx, name="floor", image="busybox-desktop", size=0, actor="bench")
            policies.apply(ctx, policy(["crm.example.com", "*.example.com"]), actor="bench")
            with session_scope(ctx.engine) as session:
                pool_id = next(p.id for p in pools.list_all(ctx) if p.name == "floor")
                session.add(Desktop(name=desk.nic.name, pool_id=pool_id, host_id=ctx.host_id, image_id=image.id,
                                    state="in_use", assigned_to="agent", assigned_groups=[AGENTS.lower()],
                                    ipv4=str(desk.nic.ipv4)))
            resolver = EgressResolver(NftEgressFirewall(instance), [Upstream(inet.far_side)],
                                      [net.subnet, *host_addresses()], RefusalCounter())
            service = ResolverService(ctx, resolver, net.host, refresh_s=0.2,
                                      proxy=ProxyFiles(proxy.allowlists_file, proxy.refusals_file))
            service.start()
            assert service.ready.wait(10), "the resolver did not start"

            enforced_dns = lookups_ms(desk.ns, str(net.host), args.lookups)
            direct_dns = lookups_ms(raw.ns, inet.far_side, args.lookups)
            desk.lookup("crm.example.com")
            desk.lookup("shop.example.com")
            best = {"https": [0.0, 0.0], "http": [0.0, 0.0]}  # enforced, direct
            for _ in range(3):  # alternating, best of three each: the host is shared and noisy
                for scheme, pair in best.items():
                    pair[0] = max(pair[0], download_mib_s(desk.ns, f"{scheme}://shop.example.com/big.bin"))
                    pair[1] = max(pair[1], download_mib_s(raw.ns, f"{scheme}://{SHARED}/big.bin"))
            took = propagation_s(ctx, desk, args.changes)
            leaks = bypasses(desk, inet, net)
        finally:
            if service is not None:
                service.stop()
            netlab.purge(instance)
    p50 = statistics.median(enforced_dns), statistics.median(direct_dns)
    result = {
        "dns_p50_ms": round(p50[0], 3), "dns_direct_p50_ms": round(p50[1], 3),
        "dns_p50_ratio": round(p50[0] / p50[1], 2),
        "https_mib_s": round(best["https"][0], 1), "https_direct_mib_s": round(best["https"][1], 1),
        "http_throughput_ratio": round(best["https"][0] / best["https"][1], 2),  # HTTPS: what agents use
        "plain_http_mib_s": round(best["http"][0], 1), "plain_http_direct_mib_s": round(best["http"][1], 1),
        "plain_http_ratio": round(best["http"][0] / best["http"][1], 2),
        "propagation_p50_s": round(statistics.median(took), 3),
        "propagation_p95_s": round(sorted(took)[math.ceil(0.95 * len(took)) - 1], 3),
        "bypasses_tried": len(leaks), "bypasses_leaked": sum(leaks.values()),
        "leaked": sorted(k for k, v in leaks.items() if v),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
