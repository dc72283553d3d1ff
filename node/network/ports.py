"""Is a fixed TCP port already held by another process? Asked before a node listens on it.

py-libp2p listens with SO_REUSEPORT (for hole punching), so a second node on a taken port starts
without a word and the kernel splits incoming connections between the two (seen: 12 of 20 to
one, 8 to the other). A plain bind tells: it fails where another socket listens. SO_REUSEADDR lets
it past the TIME_WAIT leftovers of a node just stopped, which are no conflict.
"""

from __future__ import annotations

import errno
import re
import socket

_TCP_MULTIADDR = re.compile(r"^/ip(4|6)/([^/]+)/tcp/(\d+)(/|$)")


def port_in_use(family: socket.AddressFamily, host: str, port: int) -> bool:
    """Whether another socket listens on ``host:port`` (False for port 0, and for addresses not bindable here:
    those are for the listener itself to report)."""
    if port == 0:
        return False
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def multiaddr_port_in_use(addr: str) -> bool:
    """:func:`port_in_use` for a ``/ip4|ip6/HOST/tcp/PORT`` multiaddr (False for any other kind)."""
    match = _TCP_MULTIADDR.match(addr)
    if match is None:
        return False
    family = socket.AF_INET if match.group(1) == "4" else socket.AF_INET6
    return port_in_use(family, match.group(2), int(match.group(3)))


__all__ = ["multiaddr_port_in_use", "port_in_use"]
