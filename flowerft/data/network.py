"""Whether a download can work: a quick connect before a download that would retry for minutes offline."""

from __future__ import annotations

import socket

from flowerft.errors import OfflineError

NETWORK_PROBE_SECONDS = 10.0


def check_online(host: tuple[str, int], what: str, remedy: str) -> None:
    """Fail in seconds, not after minutes of retries, when `host` cannot be reached."""
    try:
        socket.create_connection(host, timeout=NETWORK_PROBE_SECONDS).close()
    except OSError as e:
        raise OfflineError(f"cannot download {what}: {host[0]} is unreachable ({e.strerror or e}); {remedy}") from None
