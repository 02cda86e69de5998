"""The SDK's MQTT connection against a real Mosquitto with its default limits (20 messages in flight)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.broker import ExternalBroker
from tests.support.orchestrator import free_port
from worker_sdk.mqtt import MqttConnection, MqttError


class PlainBroker:
    """Mosquitto with a stock configuration on a loopback port, restartable."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.port = free_port()
        self.config = directory / "mosquitto.conf"
        self.config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([self.binary, "-c", str(self.config)], stderr=subprocess.DEVNULL)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()


@pytest.fixture
def broker(mosquitto: str, tmp_path: Path) -> Iterator[PlainBroker]:
    plain = PlainBroker(mosquitto, tmp_path)
    plain.start()
    yield plain
    plain.kill()


async def test_a_lost_connection_frees_its_packet_ids(broker: PlainBroker) -> None:
    # Without resending (the event outbox publishes again from its log), what was in flight when the
    # connection went must not keep its packet ids: with a broker allowing 20, they would be gone for good.
    connection = MqttConnection(f"mqtt://127.0.0.1:{broker.port}", "ids", resend_after_reconnect=False)
    await connection.connect_with_retry()
    assert connection.send_window == 20
    assert broker.process is not None
    os.kill(broker.process.pid, signal.SIGSTOP)  # nothing gets acknowledged any more
    pending = [connection.publish_nowait("t/x", b"in flight") for _ in range(19)]
    with pytest.raises(MqttError, match="await the broker's acknowledgement"):
        connection.publish_nowait("t/x", b"one too many")
    broker.kill()
    broker.start()
    results = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 30)
    assert all(isinstance(result, MqttError) for result in results)
    await asyncio.wait_for(connection.wait_connected(), 30)
    for _ in range(3):  # a full window's worth, several times over
        await asyncio.wait_for(asyncio.gather(*(connection.publish("t/x", b"after") for _ in range(19))), 10)
    await connection.disconnect()


def dynsec(broker: ExternalBroker, *command: str) -> None:
    login = ["-h", "127.0.0.1", "-p", str(broker.plain_port), "-u", "orchestrator", "-P", broker.password]
    subprocess.run(["mosquitto_ctrl", *login, "dynsec", *command], check=True, capture_output=True, timeout=20)


async def test_a_connection_refused_for_a_while_comes_back_once_its_account_does(
    mosquitto: str, tmp_path: Path
) -> None:
    # A broker that lost its accounts refuses a worker until the orchestrator has made them again: the
    # worker must keep trying (gmqtt on its own gives up after a "not authorized").
    broker = ExternalBroker(tmp_path / "broker", mosquitto).start()
    try:
        dynsec(broker, "createClient", "worker", "-p", "pw")
        connection = MqttConnection(broker.plain_url, "worker-1", username="worker", password="pw")
        await connection.connect_with_retry()
        dynsec(broker, "deleteClient", "worker")  # closes its connection; reconnecting is refused
        await asyncio.sleep(3)
        assert not connection.is_connected
        dynsec(broker, "createClient", "worker", "-p", "pw")
        await asyncio.wait_for(connection.wait_connected(), 15)
        await connection.disconnect()
    finally:
        broker.stop()
