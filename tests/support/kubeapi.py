"""A contract double of the Kubernetes API server: exactly the endpoints the Kubernetes runtime calls, over HTTP.

No API server can run on these machines, so the runtime's tests talk to this instead, with the real `kubernetes`
client. It keeps Secrets, StatefulSets and pods in memory and answers as the API server does: 201/200 with the
object, 404 NotFound, 409 AlreadyExists and Conflict (a stale resourceVersion), 422 Invalid, 403 Forbidden for
what a test forbids, a namespace that does not exist. A small controller plays the StatefulSet controller and
the kubelet: one pod per ordinal, replaced one at a time when the template changes, deleted before its
StatefulSet on a foreground deletion; a test sets what a pod's container reports (a crash loop, a pull
error, ...). Every request is recorded as (verb, resource) for comparing with the chart's Role. It has no watch:
the runtime does not use one.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import itertools
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
RESOURCES = {("", "secrets"), ("", "pods"), ("apps", "statefulsets")}
ROUTE = re.compile(
    r"^/(?:api/v1|apis/(?P<group>apps)/v1)/namespaces/(?P<ns>[^/]+)/(?P<resource>[a-z]+)"
    r"(?:/(?P<name>[^/]+))?(?:/(?P<sub>log))?$"
)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(code: int, reason: str, message: str, **details: Any) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code,
    }


def _matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


class KubernetesApiDouble:
    """The double: `start()`, then point a kubeconfig at `url`; `requests` lists (verb, group/resource) seen."""

    def __init__(self, namespaces: tuple[str, ...] = ("default",)) -> None:
        self.namespaces = set(namespaces)
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (resource, namespace, name) -> object
        self.requests: list[tuple[str, str]] = []
        self.forbidden: set[tuple[str, str]] = set()  # (verb, resource) answered 403
        self.container_states: dict[str, dict[str, Any]] = {}  # StatefulSet name -> containerStatus fields
        self.logs: dict[str, list[str]] = {}  # pod name -> its log lines
        self.deletion_delay = 0.3  # seconds a foreground deletion takes
        self.lock = threading.RLock()
        self._versions = itertools.count(1)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._stopped = threading.Event()
        self._connections: set[socket.socket] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def start(self) -> KubernetesApiDouble:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        threading.Thread(target=self._controller_loop, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop answering: the listening socket and every open connection close (the API is unreachable)."""
        self._stopped.set()
        self._server.shutdown()
        self._server.server_close()
        for connection in list(self._connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """A kubeconfig file pointing at the double (no credentials: it checks none)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "double", "cluster": {"server": self.url}}],
            "users": [{"name": "double", "user": {"token": "not-checked"}}],
            "contexts": [
                {"name": "double", "context": {"cluster": "double", "user": "double", "namespace": namespace}}
            ],
            "current-context": "double",
        }
        path.write_text(json.dumps(config))
        return path

    # -- what tests look at ------------------------------------------------------------------------

    def items(self, resource: str, namespace: str = "default") -> dict[str, dict[str, Any]]:
        with self.lock:
            return {
                name: copy.deepcopy(obj)
                for (kind, ns, name), obj in self.objects.items()
                if (kind, ns) == (resource, namespace)
            }

    def pods_of(self, workload: str, namespace: str = "default") -> dict[str, dict[str, Any]]:
        return {
            name: pod
            for name, pod in self.items("pods", namespace).items()
            if pod["metadata"]["labels"].get("app.kubernetes.io/instance") == workload
        }

    def wait(self, condition: Any, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError("the double did not reach the expected state")
            time.sleep(0.05)

    # -- the controller ----------------------------------------------------------------------------

    def _controller_loop(self) -> None:
        while not self._stopped.wait(0.05):
            with self.lock:
                self._reconcile()

    def _reconcile(self) -> None:
        for (kind, ns, name), workload in list(self.objects.items()):
            if kind == "statefulsets":
                self._reconcile_one(ns, name, workload)

    def _owned(self, ns: str, name: str) -> dict[str, dict[str, Any]]:
        return {
            pod_name: pod
            for (kind, pod_ns, pod_name), pod in self.objects.items()
            if kind == "pods" and pod_ns == ns and pod["metadata"]["ownerReferences"][0]["name"] == name
        }

    def _reconcile_one(self, ns: str, name: str, workload: dict[str, Any]) -> None:
        if workload["metadata"].get("deletionTimestamp"):
            for pod_name in self._owned(ns, name):  # foreground: the pods go first, then the StatefulSet
                self.objects.pop(("pods", ns, pod_name), None)
            if time.monotonic() >= workload["_delete_at"]:
                self.objects.pop(("statefulsets", ns, name), None)
            return
        wanted = int(workload["spec"].get("replicas", 1))
        revision = self._revision(workload)
        for pod_name, pod in self._owned(ns, name).items():
            if int(pod["metadata"]["labels"]["apps.kubernetes.io/pod-index"]) >= wanted:
                self.objects.pop(("pods", ns, pod_name), None)
        for ordinal in range(wanted):
            if ("pods", ns, f"{name}-{ordinal}") not in self.objects:
                self.objects[("pods", ns, f"{name}-{ordinal}")] = self._make_pod(workload, ordinal, revision)
        # The pods' containers as the test wants them (a crash loop, a pull error, ...).
        pods = list(self._owned(ns, name).values())
        for pod in pods:
            self._set_container(pod, self.container_states.get(name))
        # A rolling update: one outdated pod at a time, the highest ordinal first, once the others are ready.
        outdated = sorted(
            (pod for pod in pods if pod["metadata"]["labels"]["controller-revision-hash"] != revision),
            key=lambda pod: -int(pod["metadata"]["labels"]["apps.kubernetes.io/pod-index"]),
        )
        if outdated and all(self._ready(pod) for pod in pods if pod not in outdated):
            self.objects.pop(("pods", ns, outdated[0]["metadata"]["name"]), None)
        workload["status"] = {
            "observedGeneration": workload["metadata"].get("generation", 1),
            "replicas": len(pods),
            "readyReplicas": sum(1 for pod in pods if self._ready(pod)),
            "currentRevision": revision,
            "updateRevision": revision,
        }

    @staticmethod
    def _revision(workload: dict[str, Any]) -> str:
        template = json.dumps(workload["spec"]["template"], sort_keys=True)
        return f"{workload['metadata']['name']}-{hashlib.sha256(template.encode()).hexdigest()[:10]}"

    @staticmethod
    def _ready(pod: dict[str, Any]) -> bool:
        statuses = pod["status"].get("containerStatuses") or [{}]
        return bool(statuses[0].get("ready"))

    def _make_pod(self, workload: dict[str, Any], ordinal: int, revision: str) -> dict[str, Any]:
        template = copy.deepcopy(workload["spec"]["template"])
        name = f"{workload['metadata']['name']}-{ordinal}"
        labels = {
            **template["metadata"].get("labels", {}),
            "apps.kubernetes.io/pod-index": str(ordinal),
            "controller-revision-hash": revision,
            "statefulset.kubernetes.io/pod-name": name,
        }
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": workload["metadata"]["namespace"],
                "labels": labels,
                "annotations": template["metadata"].get("annotations", {}),
                "creationTimestamp": _now(),
                "resourceVersion": str(next(self._versions)),
                "uid": f"pod-{next(self._versions)}",
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "StatefulSet",
                        "name": workload["metadata"]["name"],
                        "uid": workload["metadata"]["uid"],
                        "controller": True,
                    }
                ],
            },
            "spec": template["spec"],
            "status": {"phase": "Pending", "conditions": [], "containerStatuses": []},
        }

    def _set_container(self, pod: dict[str, Any], state: dict[str, Any] | None) -> None:
        container = pod["spec"]["containers"][0]
        status: dict[str, Any] = {
            "name": container["name"],
            "image": container["image"],
            "imageID": "",
            "restartCount": 0,
            "ready": True,
            "started": True,
            "state": {"running": {"startedAt": pod["metadata"]["creationTimestamp"]}},
        }
        phase = "Running"
        conditions = [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}]
        if state is not None:
            if state.get("unschedulable"):
                phase, status = "Pending", {}
                conditions = [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": state["unschedulable"],
                    }
                ]
            else:
                status = {**status, "ready": False, "started": False, **state}
                conditions[1]["status"] = "False"
        pod["status"] = {"phase": phase, "conditions": conditions, "containerStatuses": [status] if status else []}

    # -- HTTP --------------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                double._connections.add(self.connection)

            def finish(self) -> None:
                double._connections.discard(self.connection)
                super().finish()

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> dict[str, Any]:
                length = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(length) or b"{}") if length else {}

            def _route(self, method: str) -> None:
                url = urlsplit(self.path)
                query = {key: values[-1] for key, values in parse_qs(url.query).items()}
                match = ROUTE.match(url.path)
                if match is None or (match["group"] or "", match["resource"]) not in RESOURCES:
                    self._send(
                        404, _status(404, "NotFound", f"the server could not find the requested resource {url.path}")
                    )
                    return
                group, resource, ns, name, sub = (
                    match["group"] or "",
                    match["resource"],
                    match["ns"],
                    match["name"],
                    match["sub"],
                )
                verb = {
                    "GET": "get" if name else "list",
                    "POST": "create",
                    "PUT": "update",
                    "PATCH": "patch",
                    "DELETE": "delete",
                }[method]
                qualified = f"{group + '/' if group else ''}{resource}{'/' + sub if sub else ''}"
                body = self._body() if method in ("POST", "PUT", "DELETE") else {}  # read even when refused
                with double.lock:
                    double.requests.append((verb, qualified))
                    if (verb, qualified) in double.forbidden:
                        who = 'User "system:serviceaccount:iot:orchestrator"'
                        message = (
                            f"{resource}{'.' + group if group else ''} is forbidden: {who} cannot {verb} resource "
                            f'"{resource}" in API group "{group}" in the namespace "{ns}"'
                        )
                        self._send(403, _status(403, "Forbidden", message, kind=resource))
                        return
                    if ns not in double.namespaces and verb in ("create", "update"):
                        self._send(
                            404, _status(404, "NotFound", f'namespaces "{ns}" not found', kind="namespaces", name=ns)
                        )
                        return
                    if sub == "log":
                        exists = ("pods", ns, name) in double.objects
                    else:
                        code, answer = double._serve(verb, resource, ns, name, query, body)
                if sub == "log":  # outside the lock: a followed log streams for as long as the client reads
                    self._log(name or "", query, exists)
                    return
                self._send(code, answer)

            def _log(self, name: str, query: dict[str, str], exists: bool) -> None:
                if not exists:
                    self._send(404, _status(404, "NotFound", f'pods "{name}" not found'))
                    return
                lines = double.logs.get(name, [])
                if query.get("follow") != "true":
                    tail = int(query.get("tailLines") or len(lines) or 1)
                    data = "".join(line + "\n" for line in lines[-tail:]).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                # Follow: lines as they are added, in chunks as the API server sends them, until the client goes.
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                sent = len(lines)
                try:
                    while not double._stopped.is_set():
                        current = double.logs.get(name, [])
                        for line in current[sent:]:
                            data = (line + "\n").encode()
                            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                            self.wfile.flush()
                        sent = len(current)
                        time.sleep(0.05)
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:
                    return

            def do_GET(self) -> None:
                self._route("GET")

            def do_POST(self) -> None:
                self._route("POST")

            def do_PUT(self) -> None:
                self._route("PUT")

            def do_DELETE(self) -> None:
                self._route("DELETE")

        return Handler

    def _serve(
        self, verb: str, resource: str, ns: str, name: str | None, query: dict[str, str], body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        key = (resource, ns, name or body.get("metadata", {}).get("name", ""))
        kind_name = {"secrets": "secrets", "pods": "pods", "statefulsets": "statefulsets.apps"}[resource]
        if verb == "list":
            selector = query.get("labelSelector", "")
            found = [
                copy.deepcopy(_public(obj))
                for (kind, n, _), obj in sorted(self.objects.items())
                if kind == resource and n == ns and _matches(obj["metadata"].get("labels", {}), selector)
            ]
            return 200, {
                "kind": "List",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(next(self._versions))},
                "items": found,
            }
        current = self.objects.get(key)
        if verb == "get":
            if current is None:
                return 404, _status(404, "NotFound", f'{kind_name} "{key[2]}" not found', name=key[2])
            return 200, _public(current)
        if verb == "delete":
            if current is None:
                return 404, _status(404, "NotFound", f'{kind_name} "{key[2]}" not found', name=key[2])
            if resource == "statefulsets":
                current["metadata"].setdefault("deletionTimestamp", _now())
                current.setdefault("_delete_at", time.monotonic() + self.deletion_delay)
            else:
                self.objects.pop(key)
            return 200, _public(current)
        problems = list(_invalid(resource, body))
        if problems:
            message = f'{resource[:-1].capitalize()} "{key[2]}" is invalid: ' + "; ".join(problems)
            return 422, _status(422, "Invalid", message, name=key[2])
        if verb == "create":
            if query.get("dryRun") == "All":
                return 201, body
            if current is not None:
                return 409, _status(409, "AlreadyExists", f'{kind_name} "{key[2]}" already exists', name=key[2])
            stored = copy.deepcopy(body)
            stored["metadata"].update(
                namespace=ns,
                resourceVersion=str(next(self._versions)),
                uid=f"uid-{next(self._versions)}",
                generation=1,
                creationTimestamp=_now(),
            )
            _convert(stored)
            self.objects[key] = stored
            return 201, _public(stored)
        # update (PUT)
        if current is None:
            return 404, _status(404, "NotFound", f'{kind_name} "{key[2]}" not found', name=key[2])
        sent_version = body.get("metadata", {}).get("resourceVersion")
        if sent_version and sent_version != current["metadata"]["resourceVersion"]:
            message = (
                f'Operation cannot be fulfilled on {kind_name} "{key[2]}": the object has been modified; please '
                "apply your changes to the latest version and try again"
            )
            return 409, _status(409, "Conflict", message, name=key[2])
        if resource == "statefulsets" and body["spec"].get("selector") != current["spec"].get("selector"):
            return 422, _status(
                422,
                "Invalid",
                f'StatefulSet.apps "{key[2]}" is invalid: spec: Forbidden: updates to statefulset spec for fields '
                "other than 'replicas', 'ordinals', 'template', 'updateStrategy', "
                "'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
            )
        stored = copy.deepcopy(body)
        stored["metadata"].update(
            namespace=ns,
            resourceVersion=str(next(self._versions)),
            uid=current["metadata"]["uid"],
            generation=current["metadata"].get("generation", 1) + 1,
            creationTimestamp=current["metadata"]["creationTimestamp"],
        )
        _convert(stored)
        self.objects[key] = stored
        return 200, _public(stored)


def _convert(obj: dict[str, Any]) -> None:
    """What the API server does on write: a Secret's stringData becomes base64 data."""
    if obj.get("kind") == "Secret" and "stringData" in obj:
        obj.setdefault("data", {}).update(
            {key: base64.b64encode(value.encode()).decode() for key, value in obj.pop("stringData").items()}
        )


def _public(obj: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in obj.items() if not key.startswith("_")}


def _invalid(resource: str, body: dict[str, Any]) -> Iterator[str]:
    """The API server's checks that builders could get wrong: names, label values, required fields."""
    metadata = body.get("metadata", {})
    name = metadata.get("name", "")
    limit = 63 if resource != "secrets" else 253
    if not NAME.match(name) or len(name) > limit:
        yield f"metadata.name: Invalid value: {name!r}: a lowercase RFC 1123 label must be at most {limit} characters"
    for value in metadata.get("labels", {}).values():
        if len(value) > 63 or not LABEL_VALUE.match(value):
            yield f"metadata.labels: Invalid value: {value!r}: at most 63 characters, alphanumeric at both ends"
    if resource == "statefulsets":
        spec = body.get("spec", {})
        selector = spec.get("selector", {}).get("matchLabels", {})
        template_labels = spec.get("template", {}).get("metadata", {}).get("labels", {})
        if not selector or any(template_labels.get(k) != v for k, v in selector.items()):
            yield "spec.template.metadata.labels: Invalid value: `selector` does not match template `labels`"
        if not spec.get("template", {}).get("spec", {}).get("containers"):
            yield "spec.template.spec.containers: Required value"
