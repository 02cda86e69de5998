"""The managed Mosquitto: configuration, password and ACL files, start, supervise, save, reload, stop."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from worker_sdk import topics

from ..bus import Bus
from ..errors import BrokerError

log = logging.getLogger(__name__)
ADMIN_USER = "orchestrator"
SUPERVISE_INTERVAL_SECONDS = 1.0
RESTART_DELAY_MAX_SECONDS = 30.0
SAVE_DELAY_SECONDS = 0.2  # changes to sessions within this time share one save


@dataclass(frozen=True)
class BrokerUser:
    """One broker account: user name, Mosquitto password hash, ACL lines."""

    username: str
    password_hash: str
    acl: list[str]


class ManagedBroker:
    """A Mosquitto process the orchestrator configures and supervises (embedded-broker mode)."""

    def __init__(self, directory: Path, url: str, binary: str, max_queued_messages: int, bus: Bus) -> None:
        self.directory = directory
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 1883
        self.binary = binary
        self.max_queued_messages = max_queued_messages
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

    def write_config(self) -> Path:
        """Write mosquitto.conf: loopback listener, no anonymous access, persistence, big queues."""
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "mosquitto.conf"
        conf.write_text(
            "\n".join(
                [
                    "# Written by the orchestrator at every start; edits are overwritten.",
                    "per_listener_settings false",
                    f"listener {self.port} {self.host}",
                    *(f"listener {self.port} {host}" for host in self.extra_hosts),
                    "allow_anonymous false",
                    f"password_file {self.directory / 'passwords'}",
                    f"acl_file {self.directory / 'acl'}",
                    "persistence true",
                    f"persistence_location {self.directory}/",
                    "autosave_interval 10",
                    f"max_queued_messages {self.max_queued_messages}",
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
            )
        )
        return conf

    def write_users(self, users: list[BrokerUser]) -> None:
        """Write the password and ACL files (atomically), then ask a running broker to reload them."""
        self.directory.mkdir(parents=True, exist_ok=True)
        passwords = "".join(f"{user.username}:{user.password_hash}\n" for user in users)
        acl = "".join(f"user {user.username}\n" + "".join(line + "\n" for line in user.acl) + "\n" for user in users)
        for name, text in (("passwords", passwords), ("acl", acl)):
            temporary = self.directory / f".{name}.tmp"
            temporary.touch(mode=0o600)
            temporary.write_text(text)
            temporary.replace(self.directory / name)
        self.reload()

    def reload(self) -> None:
        """SIGHUP: Mosquitto re-reads the password and ACL files."""
        if self.pid and _alive(self.pid):
            os.kill(self.pid, signal.SIGHUP)

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

    async def start(self) -> None:
        """Start Mosquitto, or adopt the one a previous run left behind; wait until it accepts connections."""
        if shutil.which(self.binary) is None:
            raise BrokerError(
                f"{self.binary} is not installed; run ./scripts/run (it installs Mosquitto) or "
                "set ORCH_BROKER__MODE=external with ORCH_BROKER__URL"
            )
        self.write_config()
        previous = _read_pid(self.pid_file)
        if previous and _alive(previous) and _is_mosquitto(previous):
            log.info("adopting the Mosquitto broker left running (pid %d)", previous)
            self.pid = previous
            self.reload()
        else:
            if await self._listening():
                raise BrokerError(
                    f"port {self.port} on {self.host} is already in use (a system Mosquitto? stop it, or set "
                    f"ORCH_BROKER__URL=mqtt://{self.host}:<free port>, or use it with ORCH_BROKER__MODE=external)"
                )
            self._spawn()
        await self._wait_ready()

    def _spawn(self) -> None:
        log_file = (self.directory / "mosquitto.stderr").open("ab")
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.directory / "mosquitto.conf")],
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

    async def _listening(self) -> bool:
        try:
            _, writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            return False
        writer.close()
        return True

    async def _wait_ready(self, timeout: float = 15.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise BrokerError(f"Mosquitto exited at start-up: {self._log_tail()}")
            if await self._listening():
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
        os.kill(self.pid, signal.SIGTERM)
        for _ in range(100):
            if self.process is not None and self.process.poll() is not None:
                break
            if self.process is None and not _alive(self.pid):
                break
            await asyncio.sleep(0.05)
        else:
            os.kill(self.pid, signal.SIGKILL)
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
