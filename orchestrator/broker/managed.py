"""The managed Mosquitto: configuration, listeners, the accounts file at start, supervise, save, stop."""

from __future__ import annotations

import asyncio
import glob
import hashlib
import logging
import os
import shutil
import signal
import ssl
import subprocess
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from worker_sdk import topics

from ..bus import Bus
from ..config import BrokerSettings
from ..db.models import ApiKey
from ..errors import BrokerError
from . import dynsec

log = logging.getLogger(__name__)
SUPERVISE_INTERVAL_SECONDS = 1.0
RESTART_DELAY_MAX_SECONDS = 30.0
SAVE_DELAY_SECONDS = 0.2  # changes to sessions within this time share one save
PLUGIN_NAME = "mosquitto_dynamic_security.so"
PLUGIN_FOLDERS = ("/usr/lib/*", "/usr/lib", "/usr/local/lib", "/usr/lib/*/mosquitto", "/usr/lib/mosquitto")


class ManagedBroker:
    """A Mosquitto process the orchestrator configures and supervises (embedded-broker mode)."""

    def __init__(self, settings: BrokerSettings, directory: Path, admin_password: str, bus: Bus) -> None:
        self.settings = settings
        self.directory = directory
        self.admin_password = admin_password
        parts = urlsplit(settings.url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 1883
        self.process: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.extra_hosts: list[str] = []  # more addresses to listen on, e.g. Docker's bridge gateway
        self.restarts = 0  # times the supervisor restarted a broker that had exited
        self.saves = 0  # saves asked for (SIGUSR1) when sessions changed
        self._supervisor: asyncio.Task[None] | None = None
        self._save: asyncio.TimerHandle | None = None
        # Sessions change when the orchestrator (re)connects and subscribes, when a worker has made its
        # session and subscriptions (it then reports its status), and when one is removed.
        bus.on_connect(self._on_session_change)
        bus.subscribe(topics.integration_topic("+", "+", "status/+"), self._on_worker_status)

    @property
    def pid_file(self) -> Path:
        """Where Mosquitto writes its pid, so a broker left behind by a crash can be adopted."""
        return self.directory / "mosquitto.pid"

    @property
    def accounts_file(self) -> Path:
        """The dynamic security plugin's file: the broker saves it after every change of accounts."""
        return self.directory / "dynamic-security.json"

    @property
    def tls(self) -> bool:
        """True when a certificate and key are set: the TLS listeners are on."""
        return self.settings.tls_cert_file is not None and self.settings.tls_key_file is not None

    @property
    def listeners(self) -> list[str]:
        """Where devices and tools connect, as URLs."""
        settings = self.settings
        urls = [f"mqtt://{host}:{self.port}" for host in [self.host, *self.extra_hosts]]
        if settings.websockets_port:
            urls.append(f"ws://127.0.0.1:{settings.websockets_port}")
        if self.tls:
            urls.append(f"mqtts://{settings.listen_host}:{settings.tls_port}")
            if settings.websockets_tls_port:
                urls.append(f"wss://{settings.listen_host}:{settings.websockets_tls_port}")
        return urls

    def plugin_path(self) -> Path:
        """The dynamic security plugin: the configured file, or the one Mosquitto's package installed."""
        configured = self.settings.dynsec_plugin
        if configured is not None:
            if not configured.is_file():
                raise BrokerError(f"ORCH_BROKER__DYNSEC_PLUGIN: {configured} does not exist")
            return configured
        for folder in PLUGIN_FOLDERS:
            for found in sorted(glob.glob(f"{folder}/{PLUGIN_NAME}")):
                return Path(found)
        raise BrokerError(
            f"ORCH_BROKER__DYNSEC_PLUGIN: Mosquitto's {PLUGIN_NAME} was not found (Debian's mosquitto package "
            "ships it); set the path to it"
        )

    def check_tls(self) -> None:
        """BrokerError naming the setting when the certificate or key cannot be read or do not match."""
        cert, key = self.settings.tls_cert_file, self.settings.tls_key_file
        if cert is None or key is None:
            return
        for setting, path in (("ORCH_BROKER__TLS_CERT_FILE", cert), ("ORCH_BROKER__TLS_KEY_FILE", key)):
            try:
                path.read_bytes()
            except OSError as err:
                raise BrokerError(f"{setting}: cannot read {path}: {err.strerror}") from err
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
        except ssl.SSLError as err:
            raise BrokerError(
                f"ORCH_BROKER__TLS_CERT_FILE, ORCH_BROKER__TLS_KEY_FILE: {cert} and {key} are not a PEM certificate "
                f"and its key ({err.reason or err})"
            ) from err

    def config_text(self, plugin: Path) -> str:
        """mosquitto.conf: listeners, the accounts plugin, no anonymous access, persistence, big queues."""
        settings = self.settings
        tls = [f"certfile {settings.tls_cert_file}", f"keyfile {settings.tls_key_file}"]
        # A change of the admin login must restart an adopted broker, so the digest of it is in the file.
        login = hashlib.sha256(f"{settings.username}\n{self.admin_password}".encode()).hexdigest()[:16]
        lines = [
            "# Written by the orchestrator at every start; edits are overwritten.",
            f"# admin login {login}",
            "per_listener_settings false",
            "allow_anonymous false",
            f"plugin {plugin}",
            f"plugin_opt_config_file {self.accounts_file}",
            # Plain MQTT stays on loopback (and Docker's bridge, for workers) unless ORCH_BROKER__URL asks.
            f"listener {self.port} {self.host}",
            *(f"listener {self.port} {host}" for host in self.extra_hosts),
        ]
        if settings.websockets_port:
            lines += [f"listener {settings.websockets_port} 127.0.0.1", "protocol websockets"]
        if self.tls:
            lines += [f"listener {settings.tls_port} {settings.listen_host}", *tls]
            if settings.websockets_tls_port:
                lines += [
                    f"listener {settings.websockets_tls_port} {settings.listen_host}",
                    "protocol websockets",
                    *tls,
                ]
        lines += [
            "persistence true",
            f"persistence_location {self.directory}/",
            "autosave_interval 10",
            f"max_queued_messages {settings.max_queued_messages}",
            "max_inflight_messages 0",
            "set_tcp_nodelay true",
            f"pid_file {self.pid_file}",
            # As root Mosquitto would switch to its own user, which cannot read our 0600 files.
            *(["user root"] if os.geteuid() == 0 else []),
            f"log_dest file {self.directory / 'mosquitto.log'}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "",
        ]
        return "\n".join(lines)

    def write_accounts(self, records: Iterable[ApiKey], tenant: str | None) -> None:
        """Write the plugin's file: the admin set anew; on a first start also every key (from its hash)."""
        username = self.settings.username
        if self.accounts_file.exists():
            text = dynsec.with_admin(self.accounts_file.read_text(), username, self.admin_password)
        else:
            text = dynsec.initial_config(username, self.admin_password, records, tenant)
        _write_private(self.accounts_file, text)

    def save_soon(self) -> None:
        """Ask Mosquitto to save its sessions (SIGUSR1) shortly: called when a worker's session changes.

        Mosquitto saves on its own only every `autosave_interval`; a session (and its subscriptions) made
        since the last save would not survive a crash, and the messages published for it meanwhile would
        reach nobody. Several changes in a row share one save.
        """
        if self._save is None:
            self._save = asyncio.get_running_loop().call_later(SAVE_DELAY_SECONDS, self._save_now)

    async def _on_session_change(self) -> None:
        self.save_soon()

    async def _on_worker_status(self, topic: str, payload: bytes) -> None:
        self.save_soon()

    def _save_now(self) -> None:
        self._save = None
        if self.pid and _alive(self.pid):
            os.kill(self.pid, signal.SIGUSR1)
            self.saves += 1

    async def start(self, records: Iterable[ApiKey], tenant: str | None) -> None:
        """Start Mosquitto, or adopt the one a previous run left with the same configuration; wait until ready."""
        if shutil.which(self.settings.mosquitto_binary) is None:
            raise BrokerError(
                f"ORCH_BROKER__MOSQUITTO_BINARY: {self.settings.mosquitto_binary} is not installed; run ./scripts/run "
                "(it installs Mosquitto) or set ORCH_BROKER__MODE=external with ORCH_BROKER__URL"
            )
        self.check_tls()
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "mosquitto.conf"
        text = self.config_text(self.plugin_path())
        unchanged = conf.exists() and conf.read_text() == text
        previous = _read_pid(self.pid_file)
        if previous and _alive(previous) and _is_mosquitto(previous):
            if unchanged:
                log.info("adopting the Mosquitto broker left running (pid %d)", previous)
                self.pid = previous
                await self._wait_ready()
                return
            log.info("stopping the Mosquitto broker left running (pid %d): its configuration changed", previous)
            await _terminate(previous)
        conf.write_text(text)
        self.write_accounts(records, tenant)
        ports = self._ports()
        for setting, host, port in ports:
            same = [other for other, _, used in ports if used == port and other != setting]
            if same:
                raise BrokerError(f"{setting}: port {port} is also {same[0]}'s; give each listener its own port")
            if await _listening(host, port):
                raise BrokerError(
                    f"{setting}: port {port} on {host} is already in use (another Mosquitto or orchestrator?); choose "
                    f"a free port, or use that broker with ORCH_BROKER__MODE=external"
                )
        self._spawn()
        await self._wait_ready()

    def _spawn(self) -> None:
        log_file = (self.directory / "mosquitto.stderr").open("ab")
        self.process = subprocess.Popen(
            [self.settings.mosquitto_binary, "-c", str(self.directory / "mosquitto.conf")],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C meant for us must not stop it before the handler disconnects
        )
        self.pid = self.process.pid
        log.info("started Mosquitto (pid %d) on %s:%d", self.pid, self.host, self.port)

    def running(self) -> bool:
        """True while the broker process (started or adopted) is alive."""
        if self.process is not None:
            return self.process.poll() is None
        return bool(self.pid and _alive(self.pid))

    def supervise(self) -> None:
        """Restart Mosquitto whenever it exits, until `stop`: a crashed broker must not stay an outage."""
        self._supervisor = asyncio.create_task(self._supervise())

    async def _supervise(self) -> None:
        delay = 1.0
        while True:
            await asyncio.sleep(SUPERVISE_INTERVAL_SECONDS)
            if self.running():
                continue
            code = self.process.returncode if self.process is not None else None
            # Sessions and queued messages come back from its persistence file (saved every 10 s and at exit).
            log.error("Mosquitto exited (exit code %s: %s); restarting it", code, self._log_tail())
            try:
                self._spawn()
                await self._wait_ready()
            except (BrokerError, OSError) as err:
                log.error("could not restart Mosquitto: %s; next try in %.0f s", err, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESTART_DELAY_MAX_SECONDS)
                continue
            self.restarts += 1
            delay = 1.0

    def _ports(self) -> list[tuple[str, str, int]]:
        """Every listener as (the setting that chose its port, host, port)."""
        settings = self.settings
        host = "127.0.0.1" if settings.listen_host in ("0.0.0.0", "::") else settings.listen_host
        ports = [("ORCH_BROKER__URL", self.host, self.port)]
        if settings.websockets_port:
            ports.append(("ORCH_BROKER__WEBSOCKETS_PORT", "127.0.0.1", settings.websockets_port))
        if self.tls:
            ports.append(("ORCH_BROKER__TLS_PORT", host, settings.tls_port))
            if settings.websockets_tls_port:
                ports.append(("ORCH_BROKER__WEBSOCKETS_TLS_PORT", host, settings.websockets_tls_port))
        return ports

    async def _wait_ready(self, timeout: float = 15.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise BrokerError(f"Mosquitto exited at start-up: {self._log_tail()}")
            if await _listening(self.host, self.port):
                return
            await asyncio.sleep(0.1)
        raise BrokerError(f"Mosquitto did not listen on {self.host}:{self.port} within {timeout:.0f} s")

    def _log_tail(self) -> str:
        lines: list[str] = []
        for name in ("mosquitto.stderr", "mosquitto.log"):
            path = self.directory / name
            if path.exists():
                lines += path.read_text(errors="replace").splitlines()[-5:]
        return " | ".join(lines) or "no output"

    async def stop(self) -> None:
        """Stop supervising, then the broker (it saves its sessions first)."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        if self._save is not None:
            self._save.cancel()
        if not self.pid or not _alive(self.pid):
            return
        if self.process is not None:
            self.process.terminate()
            try:
                await asyncio.to_thread(self.process.wait, 5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        else:
            await _terminate(self.pid)
        log.info("stopped Mosquitto")


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return True


def _is_mosquitto(pid: int) -> bool:
    try:
        return "mosquitto" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


async def _terminate(pid: int) -> None:
    """SIGTERM (Mosquitto saves its sessions), SIGKILL after 5 s."""
    os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        if not _alive(pid):
            return
        await asyncio.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, atomically."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.touch(mode=0o600)
    temporary.write_text(text)
    temporary.replace(path)


async def _listening(host: str, port: int) -> bool:
    """True when something accepts connections on host:port."""
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError:
        return False
    writer.close()
    return True
