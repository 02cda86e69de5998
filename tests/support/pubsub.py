"""Google's Pub/Sub emulator for tests, and small client helpers around it."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from .orchestrator import free_port

LAUNCHER = "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator"


def find_launcher() -> str | None:
    """The emulator's launcher from the Debian package, if installed."""
    if Path(LAUNCHER).exists():
        return LAUNCHER
    try:
        files = subprocess.run(["dpkg", "-L", "google-cloud-cli-pubsub-emulator"], capture_output=True, text=True)
    except OSError:
        return None
    return next((line for line in files.stdout.splitlines() if line.endswith("bin/cloud-pubsub-emulator")), None)


class PubSubEmulator:
    """The real emulator (Java), on a free loopback port, with its own data directory."""

    def __init__(self, launcher: str, data_dir: Path) -> None:
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.log = (data_dir / "emulator.log").open("wb")
        self.process = subprocess.Popen(
            [launcher, "--host=127.0.0.1", f"--port={self.port}", f"--dir={data_dir}"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the Pub/Sub emulator exited: {(data_dir / 'emulator.log').read_text()[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("the Pub/Sub emulator did not start within 60 s")

    def clients(self) -> tuple[Any, Any]:
        """A publisher and a subscriber client talking to this emulator."""
        os.environ["PUBSUB_EMULATOR_HOST"] = self.host
        from google.cloud import pubsub_v1

        return pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def pull(subscriber: Any, subscription: str, count: int, timeout: float = 30.0) -> list[Any]:
    """Synchronously pull (and ack) at least `count` messages."""
    received: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(received) < count and time.monotonic() < deadline:
        response = subscriber.pull(request={"subscription": subscription, "max_messages": 100}, timeout=10)
        if response.received_messages:
            subscriber.acknowledge(
                request={"subscription": subscription, "ack_ids": [m.ack_id for m in response.received_messages]}
            )
            received += [m.message for m in response.received_messages]
    assert len(received) >= count, f"pulled {len(received)} of {count} messages from {subscription}"
    return received
