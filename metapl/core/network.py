"""`metapl train --download` without a network: one line at once, not minutes of retries.

A download is preceded by a probe of its server (a name lookup and a TCP connection, PROBE_SECONDS at most, through
the proxy that the environment names, if any), and a download that fails anyway is told from other failures by its
error type, so that both say "no network: ..." and what to do instead. Torch-free: the CLI's download path uses it
before anything big is imported.
"""

from __future__ import annotations

import socket
import threading
import urllib.error
import urllib.request
from urllib.parse import urlparse

PROBE_SECONDS = 5.0  # a server that has not accepted a connection by then is taken as unreachable
DOWNLOAD_TIMEOUT = 60.0  # seconds a download's socket may wait for the server at one time


def unreachable(url: str, timeout: float = PROBE_SECONDS) -> str | None:
    """'HOST (why)' when the server of `url` (or the proxy the environment sets for it) cannot be reached, or None
    when it accepts a connection within `timeout` seconds. The lookup runs in a thread: a resolver that hangs is cut off."""
    parsed = urlparse(url)
    proxy = urllib.request.getproxies().get(parsed.scheme)
    target = urlparse(proxy if proxy and "://" in proxy else f"http://{proxy}") if proxy else parsed
    host = target.hostname or ""
    port = target.port or (443 if target.scheme == "https" else 80)
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append(None)
        except OSError as err:
            outcome.append(describe(err))

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        return f"{host} (no answer within {timeout:g} s)"
    return f"{host} ({outcome[0]})" if outcome[0] is not None else None


def is_network_error(err: BaseException) -> bool:
    """A failure to reach a server (name lookup, refused or timed-out connection), not one of the files."""
    if isinstance(err, urllib.error.URLError):
        return not isinstance(err, urllib.error.HTTPError)
    return isinstance(err, (socket.gaierror, socket.timeout, TimeoutError, ConnectionError))


def describe(err: BaseException) -> str:
    """A network error's reason in a few words."""
    reason = getattr(err, "reason", None) or err
    text = getattr(reason, "strerror", None) or str(reason).strip() or type(reason).__name__
    return text.splitlines()[0]
