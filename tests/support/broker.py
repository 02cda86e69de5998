"""An external Mosquitto started from the sample configuration in deploy/mosquitto (as docs/broker.md shows it).

Only what must differ in a test is changed: ports (free ones, on loopback) and file locations (a temporary
folder, the test CA's certificate). The accounts file is made with `mosquitto_ctrl dynsec init`, as the docs say.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from .orchestrator import free_port, pid_alive
from .tls import make_certificates
from .waiting import wait_for

SAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto" / "mosquitto.conf"
ADMIN = "orchestrator"


class ExternalBroker:
    """Mosquitto with dynamic security, plain MQTT on loopback, TLS and secure WebSockets, on free ports."""

    def __init__(self, directory: Path, binary: str) -> None:
        if os.geteuid() == 0:
            # Mosquitto started as root becomes its own user, as under Debian's service: that user cannot
            # reach pytest's folders (0700, root's), so the broker's files go to a folder of its own in /tmp.
            directory = Path(tempfile.mkdtemp(prefix="external-broker-"))
        self.directory = directory
        self.binary = binary
        self.plain_port, self.tls_port, self.wss_port = free_port(), free_port(), free_port()
        self.password = "admin-" + os.urandom(8).hex()
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        self.ca, cert, key = make_certificates(directory)
        text = SAMPLE.read_text()
        for written, used in (
            ("listener 1883 127.0.0.1", f"listener {self.plain_port} 127.0.0.1"),
            ("listener 8883\n", f"listener {self.tls_port} 127.0.0.1\n"),
            ("listener 8084\n", f"listener {self.wss_port} 127.0.0.1\n"),
            ("/var/lib/mosquitto/", f"{directory}/"),
            ("/etc/mosquitto/certs/server.crt", str(cert)),
            ("/etc/mosquitto/certs/server.key", str(key)),
        ):
            assert written in text, f"the sample configuration no longer has {written!r}"
            text = text.replace(written, used)
        self.config = directory / "mosquitto.conf"
        self.config.write_text(text + f"log_dest file {directory / 'mosquitto.log'}\n")
        accounts = directory / "dynamic-security.json"
        subprocess.run(["mosquitto_ctrl", "dynsec", "init", str(accounts), ADMIN, self.password], check=True)
        if os.geteuid() == 0:
            user = pwd.getpwnam("mosquitto")
            for path in [directory, *directory.iterdir()]:
                os.chown(path, user.pw_uid, user.pw_gid)

    @property
    def plain_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.plain_port}"

    @property
    def tls_url(self) -> str:
        return f"mqtts://127.0.0.1:{self.tls_port}"

    @property
    def wss_url(self) -> str:
        return f"wss://127.0.0.1:{self.wss_port}"

    def orchestrator_settings(self) -> dict[str, str]:
        """The orchestrator over TLS (checked against the test CA); its workers over plain loopback."""
        return {
            "ORCH_BROKER__MODE": "external",
            "ORCH_BROKER__URL": self.tls_url,
            "ORCH_BROKER__CA_FILE": str(self.ca),
            "ORCH_BROKER__WORKER_URL": self.plain_url,
            "ORCH_BROKER__USERNAME": ADMIN,
            "ORCH_BROKER__PASSWORD": self.password,
        }

    def start(self) -> ExternalBroker:
        log = (self.directory / "mosquitto.stderr").open("ab")
        self.process = subprocess.Popen([self.binary, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT)

        def listening() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"Mosquitto exited: {(self.directory / 'mosquitto.stderr').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.tls_port), timeout=1).close()
            except OSError:
                return False
            return True

        wait_for(listening, 15, what="the external Mosquitto to listen")
        return self

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        assert self.process is None or not pid_alive(self.process.pid)
        if self.directory.parent == Path(tempfile.gettempdir()):
            shutil.rmtree(self.directory, ignore_errors=True)


class UserBroker(ExternalBroker):
    """A user's own Mosquitto, as the MQTT bridge meets it: TLS only (a CA of its own), a password file."""

    def __init__(self, directory: Path, binary: str, username: str = "bridge", password: str = "bridge-pw") -> None:
        if os.geteuid() == 0:  # as above: the broker runs as its own user
            directory = Path(tempfile.mkdtemp(prefix="user-broker-"))
        self.directory, self.binary = directory, binary
        self.plain_port = self.wss_port = 0
        self.tls_port = free_port()
        self.username, self.password = username, password
        self.process = None
        directory.mkdir(parents=True, exist_ok=True)
        self.ca, cert, key = make_certificates(directory)
        passwords = directory / "passwords"
        subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), username, password], check=True)
        self.config = directory / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.tls_port} 127.0.0.1\ncertfile {cert}\nkeyfile {key}\n"
            f"allow_anonymous false\npassword_file {passwords}\npersistence false\n"
            f"log_dest file {directory / 'mosquitto.log'}\n"
        )
        if os.geteuid() == 0:
            user = pwd.getpwnam("mosquitto")
            for path in [directory, *directory.iterdir()]:
                os.chown(path, user.pw_uid, user.pw_gid)
