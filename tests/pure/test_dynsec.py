"""Broker accounts as data: what each key needs, the commands that make it, the plugin's file."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime

from orchestrator import keys
from orchestrator.broker import dynsec
from orchestrator.db.models import ApiKey


def key(key_id: str, app: str, scopes: list[str], *, login: bool = False, integration: str | None = None) -> ApiKey:
    return ApiKey(
        id=key_id,
        application_id=app,
        name="",
        scopes=scopes,
        secret_hash="",
        mqtt_password_hash=keys.mosquitto_hash(key_id + ".secret"),
        key_sealed=None,
        application_login=login,
        integration_id=integration,
        created_at=datetime.now(UTC),
    )


def test_each_key_is_a_client_with_a_role_and_the_login_key_also_has_the_applications_names() -> None:
    records = [key("ik.a", "app", ["messages:read"], login=True), key("ik.b", "app", ["uplinks:write"])]
    want = dynsec.desired(records, tenant="ttn")
    assert set(want.clients) == {"ik.a", "ik.b", "app", "app@ttn"}
    assert want.clients["app@ttn"] == dynsec.Client("app@ttn", "ik.a", "ik.a")
    reader = want.roles["ik.a"].acls
    # Shared subscriptions are checked with their $share prefix, so they are granted by name.
    assert dynsec.Acl("subscribePattern", "v3/app/#") in reader
    assert dynsec.Acl("subscribePattern", "$share/+/v3/app/#") in reader
    assert not any(acl.acltype == "publishClientSend" for acl in reader)
    assert dynsec.Acl("publishClientSend", "v3/app/devices/+/up/push") in want.roles["ik.b"].acls
    assert set(dynsec.desired(records, tenant=None).clients) == {"ik.a", "ik.b", "app"}


def test_the_plan_makes_what_is_missing_and_removes_only_the_orchestrators_leftovers() -> None:
    want = dynsec.desired([key("ik.a", "app", ["messages:read"], login=True)], tenant=None)
    broker_clients = [
        {"username": "admin", "roles": [{"rolename": "admin"}]},  # the operator's: never touched
        {"username": "ik.gone", "textname": "orchestrator key ik.gone", "roles": [{"rolename": "ik.gone"}]},
        {"username": "app", "textname": "orchestrator key ik.old", "roles": [{"rolename": "ik.old"}]},
    ]
    broker_roles = [
        {"rolename": "admin", "acls": []},
        {"rolename": "ik.gone", "textname": "orchestrator key ik.gone", "acls": []},
        {"rolename": "ik.old", "textname": "orchestrator key ik.old", "acls": []},
    ]
    have = dynsec.existing(broker_clients, broker_roles)
    plan = dynsec.plan(want, have, lambda key_id: f"{key_id}.secret")
    commands = [(c["command"], c.get("username") or c.get("rolename")) for c in plan.commands]
    assert commands[0] == ("createRole", "ik.a")
    # A new role comes with its ACLs in one command (the plugin rewrites its file after every command).
    made_role = plan.commands[0]["acls"]
    assert {(a["acltype"], a["topic"]) for a in made_role} == {(a.acltype, a.topic) for a in want.roles["ik.a"].acls}
    assert not any(c["command"] == "addRoleACL" for c in plan.commands)
    assert ("createClient", "ik.a") in commands
    # The application's name moves to the new login key: deleted (its connections close), then made anew.
    assert commands.index(("deleteClient", "app")) < commands.index(("createClient", "app"))
    assert ("deleteClient", "ik.gone") in commands and ("deleteRole", "ik.gone") in commands
    assert ("deleteRole", "ik.old") in commands
    assert not any(name == "admin" for _, name in commands)
    created = next(c for c in plan.commands if c["command"] == "createClient" and c["username"] == "app")
    assert created["password"] == "ik.a.secret" and created["textname"] == "orchestrator key ik.a"
    # In step: nothing to do.
    made = dynsec.existing(
        [{"username": c.username, "textname": dynsec.MARK + c.key_id, "roles": [{"rolename": c.rolename}]}
         for c in want.clients.values()],
        [{"rolename": r.name, "textname": dynsec.MARK + r.name,
          "acls": [{"acltype": a.acltype, "topic": a.topic, "allow": True} for a in r.acls]}
         for r in want.roles.values()],
    )  # fmt: skip
    assert dynsec.plan(want, made, lambda key_id: None).commands == []


def test_a_key_without_a_kept_password_is_named_not_guessed() -> None:
    want = dynsec.desired([key("ik.legacy", "app", ["messages:read"])], tenant=None)
    plan = dynsec.plan(want, dynsec.Accounts({}, {}), lambda key_id: None)
    assert plan.unmakeable == ["ik.legacy"]
    assert not any(c["command"] == "createClient" for c in plan.commands)


def test_the_admin_gets_the_orchestrators_role_when_dynsec_init_granted_too_little() -> None:
    clients = [{"username": "orchestrator", "roles": [{"rolename": "admin"}]}, {"username": "ops", "roles": []}]
    roles = [{"rolename": "admin", "acls": [{"acltype": "subscribePattern", "topic": "#", "allow": True}]}]
    fixes = dynsec.admin_fixes("orchestrator", clients, roles)
    assert fixes[0] == {"command": "createRole", "rolename": dynsec.ADMIN_ROLE, "textname": "orchestrator"}
    added = {(c["acltype"], c["topic"]) for c in fixes if c["command"] == "addRoleACL"}
    assert ("publishClientSend", "#") in added and ("publishClientReceive", "$SYS/#") in added
    # The operator's `admin` role, which others may hold, stays as it was.
    assert all(c.get("rolename") == dynsec.ADMIN_ROLE for c in fixes)
    assert fixes[-1] == {"command": "addClientRole", "username": "orchestrator", "rolename": dynsec.ADMIN_ROLE}
    given = [{"rolename": dynsec.ADMIN_ROLE, "acls": [
        {"acltype": a.acltype, "topic": a.topic, "allow": True} for a in dynsec.admin_role().acls
    ]}]  # fmt: skip
    holder = [{"username": "orchestrator", "roles": [{"rolename": dynsec.ADMIN_ROLE}]}]
    assert dynsec.admin_fixes("orchestrator", holder, given) == []
    assert dynsec.admin_fixes("someone-else", clients, roles) == []


def test_no_key_takes_the_admins_username() -> None:
    record = key("ik.a", "orchestrator", ["messages:read"], login=True)  # an application named like the admin
    assert dynsec.usernames(record, None, reserved={"orchestrator"}) == ["ik.a"]
    assert "orchestrator" not in dynsec.desired([record], None, reserved={"orchestrator"}).clients


def test_a_client_that_cannot_be_made_again_is_left_alone() -> None:
    want = dynsec.desired([key("ik.a", "app", ["messages:read"])], tenant=None)
    have = dynsec.existing(
        [{"username": "ik.a", "textname": "orchestrator key ik.a", "roles": [{"rolename": "other"}]}], []
    )
    plan = dynsec.plan(want, have, lambda key_id: None)
    assert not any(c["command"] in ("deleteClient", "createClient") for c in plan.commands)
    assert plan.unmakeable == ["ik.a"]


def test_the_plugins_file_holds_hashes_the_plugin_checks() -> None:
    record = key("ik.a", "app", ["messages:read"])
    config = json.loads(dynsec.initial_config("orchestrator", "admin-pw", [record], tenant=None))
    clients = {client["username"]: client for client in config["clients"]}
    admin = clients["orchestrator"]
    salt = base64.b64decode(admin["salt"])
    assert len(salt) == 12  # the plugin skips a client with any other salt length, silently
    expected = hashlib.pbkdf2_hmac("sha512", b"admin-pw", salt, admin["iterations"])
    assert base64.b64decode(admin["password"]) == expected
    assert "admin-pw" not in json.dumps(config)
    assert clients["ik.a"]["roles"] == [{"rolename": "ik.a"}]
    renewed = json.loads(dynsec.with_admin(json.dumps(config), "orchestrator", "new-pw"))
    assert [c["username"] for c in renewed["clients"]].count("orchestrator") == 1
    assert {c["username"] for c in renewed["clients"]} == {"orchestrator", "ik.a"}
