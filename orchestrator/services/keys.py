"""Keys: create, list and revoke application keys; authenticate callers; keep the broker's accounts in step."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass

import orjson

from .. import keys as key_rules
from ..broker import dynsec
from ..broker.accounts import BrokerAccounts
from ..bus import Bus
from ..db import Database
from ..db.models import ApiKey
from ..errors import AuthenticationError, OrchestratorError, PermissionDenied
from ..schemas import KeyCreate, KeyCreated, KeyPublic
from ..secretbox import SecretBox
from ..store import keys as store

log = logging.getLogger(__name__)
KEYS_TOPIC = "orchestrator/changed/keys"  # between instances on one database
STREAM_TOKEN_PREFIX = "st."


@dataclass(frozen=True)
class Principal:
    """The caller: the admin, or a key of one application with some scopes."""

    admin: bool
    application_id: str | None = None
    scopes: frozenset[str] = frozenset()
    key_id: str | None = None

    def require(self, app_id: str, scope: str) -> None:
        """PermissionDenied unless the caller may do `scope` on this application."""
        if self.admin:
            return
        if self.application_id != app_id:
            raise PermissionDenied(f"key {self.key_id} belongs to application {self.application_id}, not {app_id}")
        if scope not in self.scopes:
            raise PermissionDenied(f"key {self.key_id} lacks the {scope} scope")

    def require_admin(self) -> None:
        """PermissionDenied unless the caller holds the admin token."""
        if not self.admin:
            raise PermissionDenied("this needs the admin token, not an application key")


@dataclass(frozen=True)
class CachedKey:
    """What authentication needs of a key, kept in memory so requests do not touch the database."""

    key_id: str
    secret_hash: str
    application_id: str
    scopes: frozenset[str]


class KeyService:
    """Application keys, the in-memory key cache, and the broker accounts that follow them."""

    def __init__(self, db: Database, bus: Bus, accounts: BrokerAccounts, box: SecretBox, admin_token: str) -> None:
        self.db = db
        self.bus = bus
        self.accounts = accounts
        self.box = box
        self.admin_token = admin_token
        self._cache: dict[str, CachedKey] = {}
        self._resync: asyncio.Task[None] | None = None
        # Another instance on the same database made or revoked a key: this one's cache follows.
        bus.subscribe(KEYS_TOPIC, self._on_keys_changed, no_local=True)

    def start_resync(self, interval: float) -> None:
        """With other instances: reload the cache now and then too, so a lost change notice is not for ever
        (a key revoked elsewhere stops working here within `interval`)."""

        async def loop() -> None:
            while True:
                await asyncio.sleep(interval)
                try:
                    await self.refresh()
                except OrchestratorError as err:
                    log.warning("could not reload the keys: %s", err.detail)

        self._resync = asyncio.create_task(loop())

    async def stop(self) -> None:
        """Stop reloading."""
        if self._resync is not None:
            self._resync.cancel()
            await asyncio.gather(self._resync, return_exceptions=True)

    async def _on_keys_changed(self, topic: str, payload: bytes) -> None:
        try:
            key_ids = orjson.loads(payload).get("key_ids")
        except (orjson.JSONDecodeError, AttributeError):
            key_ids = None
        if isinstance(key_ids, list):
            await self._reload([str(key_id) for key_id in key_ids])
        else:
            await self.refresh()

    async def refresh(self) -> None:
        """Reload every key into the cache (at start, now and then with other instances, and when an application
        goes)."""
        self._cache = {row[0]: _cached(*row) for row in await self.db.read(store.credentials)}

    async def _reload(self, key_ids: Collection[str]) -> None:
        """Reload these keys into the cache (a key that no longer exists leaves it)."""
        rows = await self.db.read(store.credentials, list(key_ids))
        for key_id in key_ids:
            self._cache.pop(key_id, None)
        self._cache.update((row[0], _cached(*row)) for row in rows)

    async def changed(self, app_id: str | None = None, key_ids: Collection[str] = ()) -> None:
        """Keys were made or revoked (these of one application; with no application, any: one was deleted).

        The API knows at once; the broker before this returns if it is connected, else (or if that fails) in the
        background as soon as it can be.
        """
        if app_id is None:
            await self.refresh()
        else:
            await self._reload(key_ids)
        if not self.bus.connected:
            self.accounts.sync_soon()
            return
        notice = {"key_ids": list(key_ids)} if app_id is not None else {}
        self.bus.publish_nowait(KEYS_TOPIC, orjson.dumps(notice))  # the other instances' caches
        try:
            report = await (self.accounts.sync() if app_id is None else self.accounts.sync_keys(app_id, key_ids))
        except OrchestratorError as err:  # the key stands; the background sync keeps trying
            log.error("could not update the broker's accounts now (retrying): %s", err.detail)
            self.accounts.sync_soon()
            return
        if report.errors:
            self.accounts.sync_soon()

    def public(self, record: ApiKey) -> KeyPublic:
        """A key as the API shows it, with the MQTT usernames it logs in with."""
        shown = KeyPublic.model_validate(record)
        shown.mqtt_usernames = dynsec.usernames(record, self.accounts.tenant, {self.accounts.admin_username})
        return shown

    def authenticate(self, token: str | None) -> Principal:
        """The caller behind a bearer token: the admin token, or a key checked against its hash."""
        if not token:
            raise AuthenticationError("send Authorization: Bearer <admin token or application key>")
        if hmac.compare_digest(token.encode(), self.admin_token.encode()):
            return Principal(admin=True)
        key_id = key_rules.key_id_of(token)
        cached = self._cache.get(key_id) if key_id else None
        if cached is None or not key_rules.matches(token, cached.secret_hash):
            raise AuthenticationError("the token is neither the admin token nor a valid application key")
        return Principal(False, cached.application_id, cached.scopes, cached.key_id)

    def stream_token(self, who: Principal, app_id: str, ttl_seconds: int) -> tuple[str, float]:
        """A token that opens this application's event stream only (EventSource cannot send a header), for
        `ttl_seconds`; sealed with the secret key, so any instance takes it. Returns it and its expiry."""
        who.require(app_id, "messages:read")
        expires = time.time() + ttl_seconds
        payload = {"kind": "stream", "app": app_id, "key": None if who.admin else who.key_id, "exp": expires}
        return STREAM_TOKEN_PREFIX + self.box.seal(payload), expires

    def authenticate_stream(self, token: str) -> Principal:
        """The reader behind a stream token: only `messages:read`, only its application, only until it expires,
        and only while the key that asked for it is not revoked."""
        try:
            payload = (
                self.box.open(token.removeprefix(STREAM_TOKEN_PREFIX))
                if token.startswith(STREAM_TOKEN_PREFIX)
                else None
            )
        except OrchestratorError:
            payload = None
        if not isinstance(payload, dict) or payload.get("kind") != "stream":
            raise AuthenticationError("the stream token is not valid")
        if float(payload.get("exp", 0)) < time.time():
            raise AuthenticationError("the stream token expired: ask for a new one (POST …/events/tokens)")
        key_id = payload.get("key")
        if key_id is not None and key_id not in self._cache:
            raise AuthenticationError("the key that asked for this stream token was revoked")
        return Principal(False, str(payload["app"]), frozenset({"messages:read"}), key_id or "stream-token")

    async def create(self, app_id: str, data: KeyCreate) -> KeyCreated:
        """Create a key; the answer is the only place the key itself appears."""
        record, key = await self.db.run(
            store.create_key,
            box=self.box,
            app_id=app_id,
            name=data.name,
            scopes=list(data.scopes),
            application_login=data.application_login,
        )
        await self.changed(app_id, [record.id])
        return KeyCreated(**self.public(record).model_dump(), key=key)

    async def list(self, app_id: str) -> list[KeyPublic]:
        """Keys of an application (never the keys themselves)."""
        return [self.public(record) for record in await self.db.read(store.list_keys, app_id=app_id)]

    async def delete(self, app_id: str, key_id: str) -> None:
        """Revoke a key (the API at once; the broker for new connections and every publish or subscribe)."""
        await self.db.run(store.delete_key, app_id=app_id, key_id=key_id)
        await self.changed(app_id, [key_id])


def _cached(key_id: str, secret_hash: str, application_id: str, scopes: list[str]) -> CachedKey:
    return CachedKey(key_id, secret_hash, application_id, frozenset(key_rules.expand(scopes)))
