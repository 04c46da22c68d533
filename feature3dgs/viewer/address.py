"""Checking where the viewer is asked to listen, before it loads anything.

``getaddrinfo`` has no timeout: a host such as ``999.1.1.1`` (not an IPv4 address, so looked up
as a name) can block for minutes where no DNS answers. :func:`check_listen_address` refuses
malformed addresses at once, looks names up with a timeout, and tries to bind the port, so a
busy port, or an address that is not this machine's, is a one-line error instead of a hang or
a server that silently moved to another port.
"""

from __future__ import annotations

import errno
import ipaddress
import re
import socket
import threading

__all__ = ["resolve_listen_host", "check_listen_address", "LOOKUP_TIMEOUT_S"]

#: seconds a host-name lookup may take
LOOKUP_TIMEOUT_S = 5.0

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def resolve_listen_host(host: str, timeout: float = LOOKUP_TIMEOUT_S) -> tuple[int, str]:
    """(address family, address) to listen on for ``host``: an IPv4/IPv6 address as is, a host
    name looked up within ``timeout`` seconds.

    Raises:
        ValueError: ``host`` is malformed (e.g. '999.1.1.1'), does not resolve, or its lookup
            took longer than ``timeout``.
    """
    if not isinstance(host, str) or not host.strip():
        raise ValueError(f"host (--host) must be an IP address or a host name, got {host!r}")
    name = host.strip().strip("[]")
    try:
        ip = ipaddress.ip_address(name)
        return (socket.AF_INET6 if ip.version == 6 else socket.AF_INET), str(ip)
    except ValueError:
        pass
    labels = name.rstrip(".").split(".")
    if all(label.isdigit() for label in labels):
        raise ValueError(f"host (--host) {host!r} is not a valid IPv4 address: four numbers 0..255 "
                         "separated by dots, e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)")
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"host (--host) {host!r} is neither an IP address nor a valid host name")
    found: dict = {}

    def lookup() -> None:
        try:
            found["infos"] = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        except OSError as e:
            found["error"] = e

    worker = threading.Thread(target=lookup, name="feature3dgs-host-lookup", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise ValueError(f"host (--host) {host!r}: looking the name up took more than {timeout:g} s; "
                         "give an IP address instead (127.0.0.1: this machine only, 0.0.0.0: every interface)")
    if "error" in found:
        e = found["error"]
        raise ValueError(f"host (--host) {host!r} does not resolve: {getattr(e, 'strerror', None) or e}")
    family, _, _, _, sockaddr = found["infos"][0]
    return family, sockaddr[0]


def check_listen_address(host: str, port: int, timeout: float = LOOKUP_TIMEOUT_S) -> None:
    """Refuse (ValueError, one line naming --host or --port) an address the viewer cannot listen
    on: see :func:`resolve_listen_host`, a port outside 0..65535, a port already in use, an
    address of another machine, a privileged port. Port 0 (any free port) checks the host only.
    The probe socket uses SO_REUSEADDR, as the server does, so a port in TIME_WAIT is free."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port (--port) must be an integer in 0..65535, got {port!r}")
    family, address = resolve_listen_host(host, timeout)
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ValueError(f"port (--port) {port} is already in use on {host}; choose another port, or 0 "
                                 "for any free one") from None
            if e.errno == errno.EADDRNOTAVAIL:
                raise ValueError(f"host (--host) {host} ({address}) is not an address of this machine, so the "
                                 "viewer cannot listen on it; use 127.0.0.1 or 0.0.0.0") from None
            if e.errno == errno.EACCES:
                raise ValueError(f"port (--port) {port}: permission denied (ports below 1024 need privileges)") from None
            raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
