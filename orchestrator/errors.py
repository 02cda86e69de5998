"""The orchestrator's error hierarchy; the API maps each class to an HTTP problem+json answer."""

from __future__ import annotations


class OrchestratorError(Exception):
    """Base of every error the orchestrator raises on purpose."""

    status = 500
    title = "Internal error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFoundError(OrchestratorError):
    """The named application, device, integration, key or template does not exist."""

    status = 404
    title = "Not found"

    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"{kind} {ident!r} does not exist")
        self.kind = kind
        self.ident = ident


class ConflictError(OrchestratorError):
    """The thing to create exists already, or the request clashes with the current state."""

    status = 409
    title = "Conflict"


class ValidationFailed(OrchestratorError):
    """Input is invalid; `errors` lists every problem with the field at fault."""

    status = 422
    title = "Invalid input"

    def __init__(self, errors: list[dict[str, str]], detail: str | None = None) -> None:
        summary = "; ".join(f"{error['field']}: {error['message']}" for error in errors)
        super().__init__(detail or summary)
        self.errors = errors


class AuthenticationError(OrchestratorError):
    """No credentials, or credentials that match no token or key."""

    status = 401
    title = "Unauthorized"


class PermissionDenied(OrchestratorError):
    """The key is valid but lacks the scope or application this request needs."""

    status = 403
    title = "Forbidden"


class TemplateFileError(OrchestratorError):
    """A template file is broken; `problems` names each mistake."""

    status = 422
    title = "Invalid template"

    def __init__(self, path: str, problems: list[str]) -> None:
        super().__init__(f"{path}: " + "; ".join(problems))
        self.path = path
        self.problems = problems


class RuntimeFailure(OrchestratorError):
    """A runtime could not start, stop or inspect a worker; recorded on the integration."""

    status = 502
    title = "Runtime failure"


class BrokerError(OrchestratorError):
    """The MQTT broker could not be started or reached."""

    status = 503
    title = "Broker unavailable"


class DatabaseUnavailable(OrchestratorError):
    """The database (and so the event log) cannot be read or written right now: down, locked or full."""

    status = 503
    title = "Database unavailable"


class NotLeader(OrchestratorError):
    """This instance does not hold the leader's lease (any more): it must not act on workers."""

    status = 503
    title = "Not the leader"
