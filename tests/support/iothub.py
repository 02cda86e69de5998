"""Azure IoT Hub for tests, where no emulator exists:

- the MQTT side is a real Mosquitto with a TLS listener on 127.0.0.1:8883 (the device SDK's fixed port),
  whose certificate names `localhost`, so the real azure-iot-device SDK connects to it as to a hub;
- `RegistryContractDouble` is a small HTTPS contract double of the documented registry REST endpoints
  (devices, twins, query) that checks every SAS token's signature and expiry;
- `TwinResponder` answers the SDK's twin requests on `$iothub/twin/...`. Mosquitto cannot scope those
  topics per connection as the hub does, so twin traffic is attributed to one device at a time
  (`twin_device`): twin tests keep a single device connected.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import ssl
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote_plus, unquote

import paho.mqtt.client as paho
from aiohttp import web

from .orchestrator import free_port

HUB_HOST = "localhost"
MQTT_PORT = 8883  # fixed by azure-iot-device
POLICY = "iothubowner"


class HubBroker:
    """Mosquitto with a TLS listener on 127.0.0.1:8883, as the device SDK expects of a hub."""

    def __init__(self, binary: str, directory: Path, ca: Path, cert: Path, key: Path) -> None:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", MQTT_PORT)) == 0:
                raise RuntimeError(f"port {MQTT_PORT} is taken; the IoT Hub tests need it (the SDK's fixed port)")
        conf = directory / "hub-mosquitto.conf"
        conf.write_text(
            "\n".join(
                [
                    "per_listener_settings false",
                    "allow_anonymous true",
                    f"listener {MQTT_PORT} 127.0.0.1",
                    f"cafile {ca}",
                    f"certfile {cert}",
                    f"keyfile {key}",
                    "user root",
                    "persistence false",
                    "",
                ]
            )
        )
        self.log = (directory / "hub-mosquitto.log").open("wb")
        self.process = subprocess.Popen([binary, "-c", str(conf)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", MQTT_PORT)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError("the TLS Mosquitto did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self.log.close()


def hub_client(ca: Path, client_id: str) -> paho.Client:
    """A paho client on the hub broker (TLS), connected and looping."""
    client = paho.Client(client_id=client_id, protocol=paho.MQTTv311)
    client.tls_set(ca_certs=str(ca))
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    client.connect(HUB_HOST, MQTT_PORT)
    client.loop_start()
    if not connected.wait(10):
        raise RuntimeError("cannot connect to the hub broker")
    return client


class TwinResponder:
    """Answers twin GET and reported-property PATCH requests, and sends desired-property patches."""

    def __init__(self, ca: Path, registry: RegistryContractDouble) -> None:
        self.registry = registry
        self.twin_device: str | None = None
        self.client = hub_client(ca, f"twin-responder-{uuid.uuid4().hex[:6]}")
        self.client.on_message = self._on_message
        self.client.subscribe("$iothub/twin/GET/#", qos=0)
        self.client.subscribe("$iothub/twin/PATCH/properties/reported/#", qos=0)

    def _on_message(self, _client: Any, _userdata: Any, message: paho.MQTTMessage) -> None:
        query = parse_qs(message.topic.split("?", 1)[1]) if "?" in message.topic else {}
        rid = (query.get("$rid") or [""])[0]
        twin = self.registry.twin(self.twin_device) if self.twin_device else None
        if message.topic.startswith("$iothub/twin/GET/"):
            body = (
                {"desired": twin["properties"]["desired"], "reported": twin["properties"]["reported"]}
                if twin
                else {"desired": {"$version": 1}, "reported": {"$version": 1}}
            )
            self.client.publish(f"$iothub/twin/res/200/?$rid={rid}", json.dumps(body))
            return
        version = 1
        if twin is not None:
            reported = twin["properties"]["reported"]
            reported.update(json.loads(message.payload))
            reported["$version"] = version = int(reported.get("$version", 1)) + 1
        self.client.publish(f"$iothub/twin/res/204/?$rid={rid}&$version={version}", b"")

    def send_desired(self, device_id: str, patch: dict[str, Any]) -> None:
        """Change desired properties (as the hub would notify the connected device)."""
        twin = self.registry.twin(device_id)
        desired = twin["properties"]["desired"]
        desired.update(patch)
        desired["$version"] = int(desired.get("$version", 1)) + 1
        body = {**patch, "$version": desired["$version"]}
        self.client.publish(f"$iothub/twin/PATCH/properties/desired/?$version={desired['$version']}", json.dumps(body))

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class RegistryContractDouble:
    """Contract double of the IoT Hub registry REST API (devices, twins, query), checking SAS tokens."""

    def __init__(self, key: str, cert: Path, server_key: Path) -> None:
        self.key = key
        self.devices: dict[str, dict[str, Any]] = {}
        self.twins: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.throttle_next = 0
        self.lock = threading.Lock()
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(cert), str(server_key))
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(context, ready), daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the registry double did not start")

    # -- state for tests -------------------------------------------------------------------------

    def twin(self, device_id: str) -> dict[str, Any]:
        with self.lock:
            return self.twins[device_id]

    def ids(self) -> set[str]:
        with self.lock:
            return set(self.devices)

    # -- SAS check -------------------------------------------------------------------------------

    def _authorized(self, header: str) -> str | None:
        """None when the token is valid for the hub, else why not."""
        if not header.startswith("SharedAccessSignature "):
            return "no SharedAccessSignature"
        fields = {k: unquote(v) for k, v in (item.split("=", 1) for item in header.split(" ", 1)[1].split("&"))}
        if fields.get("sr", "").lower() != HUB_HOST or fields.get("skn") != POLICY:
            return f"token for {fields.get('sr')} / {fields.get('skn')}"
        expiry = int(fields.get("se", "0"))
        if expiry < time.time():
            return "token expired"
        to_sign = f"{quote_plus(fields['sr'])}\n{expiry}".encode()
        expected = base64.b64encode(hmac.new(base64.b64decode(self.key), to_sign, hashlib.sha256).digest()).decode()
        if not hmac.compare_digest(expected, fields.get("sig", "")):
            return "bad signature"
        return None

    # -- HTTP ------------------------------------------------------------------------------------

    def _serve(self, context: ssl.SSLContext, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application(middlewares=[self._middleware])
        app.add_routes(
            [
                web.post("/devices", self._bulk),
                web.put("/devices/{id}", self._put_device),
                web.get("/devices/{id}", self._get_device),
                web.delete("/devices/{id}", self._delete_device),
                web.post("/devices/query", self._query),
                web.get("/twins/{id}", self._get_twin),
                web.patch("/twins/{id}", self._patch_twin),
            ]
        )
        runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port, ssl_context=context).start())
        ready.set()
        self._loop.run_forever()

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if "api-version" not in request.query:
            return web.json_response({"Message": "ErrorCode:InvalidProtocolVersion"}, status=400)
        problem = self._authorized(request.headers.get("Authorization", ""))
        if problem:
            return web.json_response({"Message": f"ErrorCode:IotHubUnauthorizedAccess;{problem}"}, status=401)
        if self.throttle_next > 0:
            self.throttle_next -= 1
            return web.json_response(
                {"Message": "ErrorCode:ThrottlingException"}, status=429, headers={"Retry-After": "1"}
            )
        result: web.StreamResponse = await handler(request)
        return result

    async def _bulk(self, request: web.Request) -> web.Response:
        operations = await request.json()
        if not isinstance(operations, list) or len(operations) > 100:
            return web.json_response({"Message": "ErrorCode:TooManyDevices;at most 100"}, status=400)
        errors = []
        with self.lock:
            for operation in operations:
                device_id, mode = operation["id"], operation.get("importMode")
                if mode == "delete":
                    if self.devices.pop(device_id, None) is None:
                        errors.append({"deviceId": device_id, "errorCode": "DeviceNotFound", "errorStatus": ""})
                    self.twins.pop(device_id, None)
                    continue
                if mode == "create" and device_id in self.devices:
                    errors.append({"deviceId": device_id, "errorCode": "DeviceAlreadyExists", "errorStatus": ""})
                    continue
                self.devices[device_id] = {
                    "deviceId": device_id,
                    "status": operation.get("status", "enabled"),
                    "etag": uuid.uuid4().hex,
                }
                empty = {"desired": {"$version": 1}, "reported": {"$version": 1}}
                twin = self.twins.setdefault(
                    device_id,
                    {"deviceId": device_id, "etag": uuid.uuid4().hex, "version": 1, "tags": {}, "properties": empty},
                )
                if "tags" in operation:
                    twin["tags"] = operation["tags"]
        return web.json_response({"isSuccessful": not errors, "errors": errors, "warnings": []})

    async def _put_device(self, request: web.Request) -> web.Response:
        device_id = request.match_info["id"]
        body = await request.json()
        with self.lock:
            if device_id in self.devices and "If-Match" not in request.headers:
                return web.json_response({"Message": "ErrorCode:DeviceAlreadyExists"}, status=409)
            etag = base64.b64encode(uuid.uuid4().bytes).decode()
            device = {
                **body,
                "deviceId": device_id,
                "etag": etag,
                "generationId": uuid.uuid4().hex,
                "status": body.get("status", "enabled"),
            }
            self.devices[device_id] = device
            self.twins.setdefault(
                device_id,
                {
                    "deviceId": device_id,
                    "etag": etag,
                    "version": 1,
                    "tags": {},
                    "properties": {"desired": {"$version": 1}, "reported": {"$version": 1}},
                },
            )
        return web.json_response(device)

    async def _get_device(self, request: web.Request) -> web.Response:
        with self.lock:
            device = self.devices.get(request.match_info["id"])
        if device is None:
            return web.json_response({"Message": "ErrorCode:DeviceNotFound"}, status=404)
        return web.json_response(device)

    async def _delete_device(self, request: web.Request) -> web.Response:
        if "If-Match" not in request.headers:
            return web.json_response({"Message": "ErrorCode:PreconditionFailed;If-Match required"}, status=412)
        with self.lock:
            if self.devices.pop(request.match_info["id"], None) is None:
                return web.json_response({"Message": "ErrorCode:DeviceNotFound"}, status=404)
            self.twins.pop(request.match_info["id"], None)
        return web.Response(status=204)

    async def _query(self, request: web.Request) -> web.Response:
        body = await request.json()
        if not str(body.get("query", "")).upper().startswith("SELECT"):
            return web.json_response({"Message": "ErrorCode:ArgumentInvalid"}, status=400)
        size = int(request.headers.get("x-ms-max-item-count", "100"))
        start = int(request.headers.get("x-ms-continuation", "0") or 0)
        with self.lock:
            twins = [self.twins[key] for key in sorted(self.twins)]
        page = twins[start : start + size]
        headers = {"x-ms-continuation": str(start + size)} if start + size < len(twins) else {}
        return web.json_response(page, headers=headers)

    async def _get_twin(self, request: web.Request) -> web.Response:
        with self.lock:
            twin = self.twins.get(request.match_info["id"])
        if twin is None:
            return web.json_response({"Message": "ErrorCode:DeviceNotFound"}, status=404)
        return web.json_response(twin)

    async def _patch_twin(self, request: web.Request) -> web.Response:
        body = await request.json()
        with self.lock:
            twin = self.twins.get(request.match_info["id"])
            if twin is None:
                return web.json_response({"Message": "ErrorCode:DeviceNotFound"}, status=404)
            if "tags" in body:
                twin["tags"] = body["tags"]
            twin["properties"]["desired"].update((body.get("properties") or {}).get("desired") or {})
            twin["version"] += 1
        return web.json_response(twin)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
