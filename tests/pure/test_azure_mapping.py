"""Azure IoT Hub mapping (pure): device ids, tags, telemetry properties, downlinks, SAS tokens, the pool."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from urllib.parse import quote_plus, unquote

import pytest

from azure_worker.config import AzureSettings
from azure_worker.mapping import (
    InvalidDownlink,
    c2d_downlinks,
    desired_downlinks,
    device_tags,
    handler_device_id,
    managed_by,
    telemetry_properties,
)
from azure_worker.pool import ConnectionPool
from azure_worker.registry import sas_token
from worker_sdk import Device, Event

KEY = base64.b64encode(b"k" * 32).decode()


def test_device_ids_and_tags() -> None:
    assert handler_device_id("lw-", "lw-dev-1") == "dev-1"
    assert handler_device_id("lw-", "other") is None and handler_device_id("", "dev") == "dev"
    tags = device_tags("app", "az", Device("dev-1", name="Boiler", dev_eui="00AA", attributes={"a": "1"}))
    assert managed_by({"tags": tags}, "app", "az") and not managed_by({"tags": tags}, "app", "other")
    assert tags["attributes"] == {"a": "1"} and tags["devEui"] == "00AA"


def test_telemetry_properties_are_strings() -> None:
    event = Event("uplink", "t", "app", "dev", {"correlation_ids": ["up:1"], "uplink_message": {"f_port": 3}})
    assert telemetry_properties(event) == {
        "application_id": "app",
        "device_id": "dev",
        "event": "uplink",
        "correlation_id": "up:1",
        "f_port": "3",
    }


def test_c2d_messages_raw_json_and_tts_forms() -> None:
    raw = c2d_downlinks(b"\x01\x02", {"fPort": "7", "confirmed": "true", "priority": "HIGH"}, 1)
    assert raw == [{"f_port": 7, "frm_payload": "AQI=", "confirmed": True, "priority": "HIGH", "correlation_ids": []}]
    shaped = c2d_downlinks(b'{"decoded_payload": {"on": 1}}', {}, 4)
    assert shaped[0]["f_port"] == 4 and shaped[0]["decoded_payload"] == {"on": 1}
    many = c2d_downlinks(
        b'{"downlinks": [{"f_port": 2, "frm_payload": "AA=="}, {"f_port": 3, "frm_payload": "AQ=="}]}', {}, 1
    )
    assert [d["f_port"] for d in many] == [2, 3]
    with pytest.raises(InvalidDownlink, match="f_port"):
        c2d_downlinks(b"\x01", {"f_port": "300"}, 1)
    with pytest.raises(InvalidDownlink, match="empty"):
        c2d_downlinks(b"", {}, 1)


def test_desired_properties() -> None:
    assert desired_downlinks({"decodedPayload": {"open": True}, "fPort": 5, "$version": 3}, 1)[0] == {
        "f_port": 5,
        "decoded_payload": {"open": True},
        "confirmed": False,
        "priority": "NORMAL",
        "correlation_ids": [],
    }
    assert desired_downlinks({"telemetryInterval": 60, "$version": 4}, 1) == []
    with pytest.raises(InvalidDownlink, match="object"):
        desired_downlinks({"decodedPayload": 5}, 1)


def test_sas_token_is_what_the_hub_documents() -> None:
    token = str(sas_token("myhub.azure-devices.net/devices/dev-1", KEY, "iothubowner", 3600))
    fields = {k: unquote(v) for k, v in (item.split("=", 1) for item in token.split(" ", 1)[1].split("&"))}
    assert fields["sr"] == "myhub.azure-devices.net/devices/dev-1" and fields["skn"] == "iothubowner"
    assert int(fields["se"]) > time.time() + 3000
    to_sign = f"{quote_plus(fields['sr'])}\n{fields['se']}".encode()
    expected = base64.b64encode(hmac.new(base64.b64decode(KEY), to_sign, hashlib.sha256).digest()).decode()
    assert fields["sig"] == expected


def test_settings_accept_the_things_network_v2_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTI_AZURE_HUBNAME", "fleet")
    monkeypatch.setenv("TTI_AZURE_KEYNAME", "registryReadWrite")
    monkeypatch.setenv("TTI_AZURE_KEY", KEY)
    settings = AzureSettings()  # type: ignore[call-arg]
    assert settings.hub_hostname == "fleet.azure-devices.net" and settings.policy_name == "registryReadWrite"
    assert settings.registry_base == "https://fleet.azure-devices.net"
    monkeypatch.setenv("TTI_AZURE_KEY", "not base64!")
    with pytest.raises(ValueError, match="base64"):
        AzureSettings()  # type: ignore[call-arg]


async def test_pool_is_bounded_and_closes_least_recently_used() -> None:
    opened: list[str] = []
    closed: list[str] = []

    async def connect(device: str) -> str:
        await asyncio.sleep(0.01)
        opened.append(device)
        return f"client-{device}"

    async def disconnect(client: str) -> None:
        closed.append(client)

    pool = ConnectionPool(connect, disconnect, limit=2, idle=60, max_age=3600)
    results = await asyncio.gather(pool.get("a"), pool.get("a"), pool.get("b"))
    assert results == ["client-a", "client-a", "client-b"] and opened == ["a", "b"]  # one connect per device
    await pool.get("a")  # a is now the most recently used
    await pool.get("c")  # evicts b
    assert closed == ["client-b"] and len(pool) == 2
    pool.idle = 0
    await asyncio.sleep(0.01)
    assert await pool.close_idle() == 2 and len(pool) == 0
