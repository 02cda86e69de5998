"""`python -m bench [scenario ...]`: runs the benchmarks (all by default) and saves JSON under bench/results/."""

from __future__ import annotations

import importlib
import sys

SCENARIOS = [
    "ingest",
    "accounts",
    "webhook",
    "templates",
    "scale_out",
    "startup",
    "control_plane",
    "pubsub",
    "azure_fleet",
    "faults",
]


def main() -> None:
    """Run the named scenarios, or all."""
    for name in sys.argv[1:] or SCENARIOS:
        print(f"==> {name}", flush=True)
        importlib.import_module(f"bench.{name}").run()


if __name__ == "__main__":
    main()
