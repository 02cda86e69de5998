"""Container health check: healthy while the worker touched its health file recently."""

from __future__ import annotations

import os
import sys
import time

MAX_AGE_SECONDS = 30


def main() -> int:
    """Exit 0 when the health file is fresh, 1 otherwise."""
    path = os.environ.get("WORKER_HEALTH_FILE", "/tmp/worker-health")
    try:
        age = time.time() - os.stat(path).st_mtime
    except OSError:
        print(f"unhealthy: {path} missing (not connected to the handler yet)")
        return 1
    if age > MAX_AGE_SECONDS:
        print(f"unhealthy: last sign of life {age:.0f} s ago")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
