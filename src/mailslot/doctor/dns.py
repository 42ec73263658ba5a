"""The ``dns.resolve`` check: the A and AAAA records of HOST (RFC 1035, RFC 3596).

An IP literal (RFC 3986 section 3.2.2 forms, brackets optional for IPv6) is taken as it is.
A name that does not resolve means nothing else can be checked: the exit status is then 2.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from mailslot.doctor.results import Check, failure, ok


@dataclass(frozen=True)
class Resolved:
    host: str  # without IPv6 brackets
    addresses: tuple[str, ...]
    is_ip: bool
    check: Check


def ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def resolve(host: str) -> Resolved:
    """Resolve ``host``; the check is a failure when it has neither an A nor an AAAA record."""
    literal = ip_literal(host)
    if literal is not None:
        text = str(literal)
        return Resolved(text, (text,), True, ok("dns.resolve", f"{text} is an IP address"))
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        return Resolved(
            host,
            (),
            False,
            failure(
                "dns.resolve",
                f"{host} does not resolve: {exc}",
                "publish an A and/or AAAA record for the name clients use, and check for typos",
            ),
        )
    addresses: list[str] = []
    for family, _type, _proto, _name, sockaddr in infos:
        address = str(sockaddr[0])
        if family in (socket.AF_INET, socket.AF_INET6) and address not in addresses:
            addresses.append(address)
    v4 = [a for a in addresses if ":" not in a]
    v6 = [a for a in addresses if ":" in a]
    summary = f"{host} has {len(v4)} A and {len(v6)} AAAA record(s): {', '.join(addresses)}"
    return Resolved(host, tuple(addresses), False, ok("dns.resolve", summary, a=v4, aaaa=v6))
