"""The process runtime: each worker is a local `python -m <module>` with the environment a container gets."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import RuntimeFailure
from .base import MISSING, Runtime, WorkerSpec, WorkerState, WorkerStatus

log = logging.getLogger(__name__)
FOLLOW_POLL_SECONDS = 0.25


def _start_ticks(pid: int) -> int | None:
    """The process start time in clock ticks, to tell a worker from a later process with its pid."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == "Z":
        return None  # a zombie has exited already
    return int(fields[19])


class ProcessRuntime(Runtime):
    """Runs workers as local subprocesses; records pids on disk so a restarted orchestrator adopts them."""

    name = "process"

    def __init__(
        self, directory: Path, stop_timeout: float = 15.0, log_max_bytes: int = 1_000_000, python: str = sys.executable
    ) -> None:
        self.directory = directory
        self.stop_timeout = stop_timeout
        self.log_max_bytes = log_max_bytes
        self.python = python
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        for sub in ("run", "logs", "work"):
            (directory / sub).mkdir(parents=True, exist_ok=True)

    # -- files ---------------------------------------------------------------------------------

    def _record_path(self, name: str) -> Path:
        return self.directory / "run" / f"{name}.json"

    def _log_path(self, name: str, replica: int) -> Path:
        return self.directory / "logs" / f"{name}.{replica}.log"

    def _read_record(self, name: str) -> dict[str, Any] | None:
        # Read from disk every time: another instance sharing the directory may have started or stopped it.
        try:
            record: dict[str, Any] = json.loads(self._record_path(name).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            log.warning("ignoring unreadable worker record %s", self._record_path(name))
            return None
        return record

    # -- contract ------------------------------------------------------------------------------

    async def start(self, spec: WorkerSpec) -> dict[str, Any]:
        """Start one process per replica (stopping any previous ones first)."""
        module = spec.python_module
        if not module:
            raise RuntimeFailure(
                f"template {spec.template_id} names no python_module, so the process runtime cannot run "
                f"{spec.image}; use the Docker runtime (ORCH_RUNTIME__KIND=docker)"
            )
        if importlib.util.find_spec(module.split(".")[0]) is None:
            raise RuntimeFailure(
                f"Python module {module} (image {spec.image}) is not installed next to the orchestrator; "
                "install the image's package, e.g. pip install -e images/<name>"
            )
        await self.stop(spec.name)
        workdir = self.directory / "work" / spec.name
        workdir.mkdir(parents=True, exist_ok=True)
        replicas = []
        for replica in range(spec.replicas):
            environment = {
                "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
                "LANG": "C.UTF-8",
                "HOME": str(workdir),
                "PYTHONUNBUFFERED": "1",
                # The module was found on the orchestrator's import path: the worker gets the same path.
                **({"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}),
                **spec.replica_environment(replica),
                "WORKER_HEALTH_FILE": str(workdir / f"health.{replica}"),
            }
            self._rotate(self._log_path(spec.name, replica), force=False)
            with self._log_path(spec.name, replica).open("ab") as log_file:
                try:
                    process = subprocess.Popen(
                        [self.python, "-m", module],
                        env=environment,
                        cwd=workdir,
                        stdin=subprocess.DEVNULL,
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # its own process group: stopped as one, survives our Ctrl-C
                    )
                except OSError as err:
                    raise RuntimeFailure(f"cannot start {self.python} -m {module}: {err}") from err
            self._children[process.pid] = process
            replicas.append({"replica": replica, "pid": process.pid, "ticks": _start_ticks(process.pid)})
        record = {
            "name": spec.name,
            "image": spec.image,
            "module": module,
            "config_hash": spec.config_hash,
            "started_at": datetime.now(UTC).isoformat(),
            "replicas": replicas,
        }
        path = self._record_path(spec.name)
        path.with_suffix(".tmp").write_text(json.dumps(record))
        path.with_suffix(".tmp").replace(path)  # whole or not at all, for the other instances reading it
        log.info("started %s: %s", spec.name, ", ".join(str(item["pid"]) for item in replicas))
        return {"pids": [item["pid"] for item in replicas]}

    async def stop(self, name: str) -> None:
        """SIGTERM each replica's process group, SIGKILL what is left after the timeout."""
        record = self._read_record(name)
        if record is None:
            return
        pids = [item["pid"] for item in record["replicas"] if self._alive(item)]
        for pid in pids:
            _signal_group(pid, signal.SIGTERM)
        deadline = asyncio.get_running_loop().time() + self.stop_timeout
        while pids and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            pids = [item["pid"] for item in record["replicas"] if self._alive(item)]
        for pid in pids:
            log.warning("%s (pid %d) ignored SIGTERM for %.0f s; killing it", name, pid, self.stop_timeout)
            _signal_group(pid, signal.SIGKILL)
        for item in record["replicas"]:
            process = self._children.pop(item["pid"], None)
            if process is not None:
                process.wait(timeout=5)
        self._record_path(name).unlink(missing_ok=True)

    async def status(self, name: str) -> WorkerStatus:
        """RUNNING while every replica's process lives; FAILED with exit code and last lines otherwise."""
        record = self._read_record(name)
        if record is None:
            return MISSING
        started_at = datetime.fromisoformat(record["started_at"])
        handle = {"pids": [item["pid"] for item in record["replicas"]]}
        for item in record["replicas"]:
            self._rotate(self._log_path(name, item["replica"]), force=False)
            if self._alive(item):
                continue
            process = self._children.get(item["pid"])
            code = process.returncode if process is not None else None
            how = f"exit code {code}" if code is not None else "exit code unknown (adopted process)"
            tail = " | ".join(await self._tail(name, item["replica"], 3))
            return WorkerStatus(
                WorkerState.FAILED,
                f"replica {item['replica']} exited ({how}): {tail}",
                exit_code=code,
                started_at=started_at,
                config_hash=record["config_hash"],
                handle=handle,
                replicas=len(record["replicas"]),
            )
        return WorkerStatus(
            WorkerState.RUNNING,
            started_at=started_at,
            config_hash=record["config_hash"],
            handle=handle,
            replicas=len(record["replicas"]),
        )

    async def logs(self, name: str, tail: int = 200) -> list[str]:
        """Last lines of every replica (prefixed with the replica when there are several)."""
        paths = sorted((self.directory / "logs").glob(f"{name}.*.log"))
        lines: list[str] = []
        for path in paths:
            replica = int(path.name.rsplit(".", 2)[1])
            prefix = f"[{replica}] " if len(paths) > 1 else ""
            lines += [prefix + line for line in await self._tail(name, replica, tail)]
        return lines[-tail:]

    async def follow(self, name: str) -> AsyncIterator[str]:
        """New lines from every replica's log, polling the files."""
        positions: dict[Path, int] = {}
        for path in (self.directory / "logs").glob(f"{name}.*.log"):
            positions[path] = path.stat().st_size
        while True:
            for path in sorted((self.directory / "logs").glob(f"{name}.*.log")):
                size = path.stat().st_size
                position = positions.get(path, 0)
                if size < position:
                    position = 0  # rotated
                if size > position:
                    with path.open("rb") as handle:
                        handle.seek(position)
                        chunk = handle.read(size - position)
                    complete = chunk.rfind(b"\n") + 1
                    for line in chunk[:complete].decode("utf-8", "replace").splitlines():
                        yield line
                    position += complete
                positions[path] = position
            await asyncio.sleep(FOLLOW_POLL_SECONDS)

    async def list_workers(self) -> dict[str, WorkerStatus]:
        """Workers recorded on disk, including those a previous orchestrator (or another instance) started."""
        names = sorted(path.stem for path in (self.directory / "run").glob("*.json"))
        return {name: await self.status(name) for name in names}

    async def close(self, *, keep_workers: bool = False) -> None:
        """Stop every worker (they live and die with the orchestrator), unless another instance adopts them."""
        if keep_workers:
            return
        for name in list((await self.list_workers()).keys()):
            await self.stop(name)

    # -- helpers -------------------------------------------------------------------------------

    def _alive(self, item: dict[str, Any]) -> bool:
        process = self._children.get(item["pid"])
        if process is not None:
            return process.poll() is None
        return item.get("ticks") is not None and _start_ticks(item["pid"]) == item["ticks"]

    async def _tail(self, name: str, replica: int, count: int) -> list[str]:
        path = self._log_path(name, replica)
        try:
            size = path.stat().st_size
            with path.open("rb") as handle:
                handle.seek(max(0, size - 200 * count))
                data = handle.read()
        except OSError:
            return []
        return data.decode("utf-8", "replace").splitlines()[-count:]

    def _rotate(self, path: Path, force: bool) -> None:
        try:
            if force or path.stat().st_size > self.log_max_bytes:
                shutil.copyfile(path, path.with_suffix(".log.1"))
                with path.open("r+b") as handle:  # the worker appends (O_APPEND), so truncating is safe
                    handle.truncate(0)
        except OSError:
            return


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)
