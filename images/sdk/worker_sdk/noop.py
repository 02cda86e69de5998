"""An idle worker that does nothing until SIGTERM: a stand-in for control-plane tests and benchmarks."""

from __future__ import annotations

import signal
import sys
import threading


def main() -> None:
    """Wait for SIGTERM or SIGINT, then exit 0."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    sys.exit(0)


if __name__ == "__main__":
    main()
