"""Where workers may send requests: the operator's policy of allowed and denied networks.

The orchestrator passes it to every worker (`WORKER_OUTBOUND_POLICY`, JSON). A worker checks a literal host
before it sends and every address a name resolves to, so a device that chooses part of a URL, or a name that
resolves somewhere else tomorrow, cannot reach what the operator closed (cloud metadata, the host's own
services). By default link-local addresses and cloud metadata endpoints are closed; private ranges and loopback
are open unless the operator closes them.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

ENVIRONMENT_VARIABLE = "WORKER_OUTBOUND_POLICY"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Names of cloud metadata services (they resolve to link-local addresses, closed as well).
METADATA_NAMES = frozenset({"metadata.google.internal", "metadata", "metadata.azure.com", "instance-data"})
RULES: dict[str, tuple[str, ...]] = {
    "cloud metadata": ("169.254.169.254/32", "169.254.170.2/32", "fd00:ec2::254/128", "100.100.100.200/32"),
    "link-local": ("169.254.0.0/16", "fe80::/10"),
    "private": ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"),
    "loopback": ("127.0.0.0/8", "::1/128"),
    "unspecified": ("0.0.0.0/32", "::/128"),
}


def network(text: str) -> Network:
    """A network from CIDR text (a bare address is a network of one); ValueError names what is wrong."""
    return ipaddress.ip_network(text.strip(), strict=False)


@dataclass(frozen=True)
class OutboundPolicy:
    """Denied networks by rule name, and allowed networks that win over them."""

    deny: tuple[tuple[str, Network], ...]
    allow: tuple[Network, ...] = field(default_factory=tuple)

    @classmethod
    def build(
        cls, *, private: bool = True, loopback: bool = True, allow: Iterable[str] = (), deny: Iterable[str] = ()
    ) -> OutboundPolicy:
        """The policy from an operator's settings: private ranges and loopback open or closed, and lists."""
        closed = ["cloud metadata", "link-local", "unspecified"]
        closed += [] if private else ["private"]
        closed += [] if loopback else ["loopback"]
        rules = [(name, network(cidr)) for name in closed for cidr in RULES[name]]
        rules += [(f"denied network {network(cidr)}", network(cidr)) for cidr in deny]
        return cls(tuple(rules), tuple(network(cidr) for cidr in allow))

    def to_json(self) -> str:
        """For the worker's environment."""
        return json.dumps(
            {"deny": [[name, str(net)] for name, net in self.deny], "allow": [str(n) for n in self.allow]}
        )

    @classmethod
    def from_environment(cls, environment: Mapping[str, str]) -> OutboundPolicy:
        """The policy the orchestrator gave this worker; the defaults when it gave none."""
        text = environment.get(ENVIRONMENT_VARIABLE)
        if not text:
            return cls.build()
        data = json.loads(text)
        return cls(
            tuple((str(name), network(cidr)) for name, cidr in data.get("deny", [])),
            tuple(network(cidr) for cidr in data.get("allow", [])),
        )

    def refuses_address(self, address: str) -> str | None:
        """The rule that closes this address, or None when requests may go there."""
        try:
            ip: Address = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:169.254.169.254 is 169.254.169.254
        if any(ip in net for net in self.allow):
            return None
        return next((f"{name} ({net})" for name, net in self.deny if ip in net), None)

    def refuses_host(self, host: str) -> str | None:
        """The rule that closes this host as written (a literal address, or a metadata service's name)."""
        name = host.strip("[]").rstrip(".").lower()
        if name in METADATA_NAMES and any(rule.startswith("cloud metadata") for rule, _ in self.deny):
            return f"cloud metadata ({name})"
        return self.refuses_address(name)
