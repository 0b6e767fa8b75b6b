"""A local `itmatch serve` for the tests and the benchmarks: a free port, and a wait until the server answers.
Free of pytest, so that `benchmarks/` can import it."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server the caller starts)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serving(base: str, process: subprocess.Popen, seconds: float = 120) -> bool:
    """Poll ``base``/health until the server answers (True); False as soon as ``process`` ends or after
    ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(f"{base}/health", timeout=5).close()
            return True
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.2)
