"""Mosquitto's dynamic security plugin as data: the accounts the orchestrator needs, and the commands that make them.

Every application key is a broker client (username = key id) with one role holding the key's ACLs. The key
an application chose as its login (`application_login`) is also the clients `{application id}` and
`{application id}@{tenant}`, as The Things Stack's MQTT server names them. Clients and roles the
orchestrator owns carry a text name starting with `MARK`; nothing else on a shared broker is touched.
Pure functions only: `accounts.py` sends the commands.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .. import keys as key_rules
from ..db.models import ApiKey

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
MARK = "orchestrator key "
ADMIN_ROLE = "orchestrator-admin"
# Mosquitto's defaults: clients publish and subscribe only where a role allows; delivery is not filtered.
DEFAULT_ACL_ACCESS = {"publishClientSend": False, "publishClientReceive": True, "subscribe": False, "unsubscribe": True}


@dataclass(frozen=True, order=True)
class Acl:
    """One ACL entry of a role: `acltype` is publishClientSend, publishClientReceive or subscribePattern."""

    acltype: str
    topic: str


@dataclass(frozen=True)
class Role:
    """A role: its name and its ACLs (all `allow`)."""

    name: str
    acls: frozenset[Acl]


@dataclass(frozen=True)
class Client:
    """A broker client the orchestrator owns: its username, the key it stands for, and that key's role."""

    username: str
    key_id: str
    rolename: str


@dataclass
class Accounts:
    """Every role and client the orchestrator's keys need, by name."""

    roles: dict[str, Role]
    clients: dict[str, Client]


def grants_to_acls(grants: Iterable[tuple[str, str]]) -> frozenset[Acl]:
    """ACLs for (`read`|`write`|`readwrite`, topic filter) grants: reading is subscribing and receiving.

    The plugin checks a shared subscription's whole filter (`$share/group/...`), so it is granted by name.
    """
    acls = set()
    for access, topic in grants:
        if "read" in access:
            acls |= {
                Acl("subscribePattern", topic),
                Acl("subscribePattern", f"$share/+/{topic}"),
                Acl("publishClientReceive", topic),
            }
        if "write" in access:
            acls.add(Acl("publishClientSend", topic))
    return frozenset(acls)


def admin_role() -> Role:
    """The orchestrator's own role: every topic, the broker's `$SYS` topics and the plugin's control topics."""
    # `#` matches no topic that starts with `$`: those are granted by name.
    grants = [("readwrite", "#"), ("read", "$SYS/#"), ("readwrite", f"{CONTROL_TOPIC}/#"), ("write", CONTROL_TOPIC)]
    return Role(ADMIN_ROLE, grants_to_acls(grants))


def login_usernames(app_id: str, tenant: str | None) -> list[str]:
    """The usernames of an application's login key: `{app}`, and `{app}@{tenant}` when a tenant is set."""
    return [app_id] + ([f"{app_id}@{tenant}"] if tenant else [])


def usernames(record: ApiKey, tenant: str | None, reserved: Iterable[str] = ()) -> list[str]:
    """Every username a key logs in with: its id, and the application's names if it is the login key.

    A reserved name (the orchestrator's own admin account) is never given to a key.
    """
    names = [record.id] + (login_usernames(record.application_id, tenant) if record.application_login else [])
    return [name for name in names if name not in set(reserved)]


def affected_usernames(
    app_id: str, key_ids: Iterable[str], tenant: str | None, reserved: Iterable[str] = ()
) -> list[str]:
    """The usernames a change to these keys of one application can touch: their ids and the application's login."""
    names = [*key_ids, *login_usernames(app_id, tenant)]
    return sorted(set(names) - set(reserved))


def desired(records: Iterable[ApiKey], tenant: str | None, reserved: Iterable[str] = ()) -> Accounts:
    """The roles and clients the keys need."""
    accounts = Accounts({}, {})
    for record in records:
        grants = key_rules.mqtt_grants(record.application_id, record.scopes, record.integration_id)
        accounts.roles[record.id] = Role(record.id, grants_to_acls(grants))
        for username in usernames(record, tenant, reserved):
            accounts.clients[username] = Client(username, record.id, record.id)
    return accounts


def existing(clients: list[dict[str, Any]], roles: list[dict[str, Any]]) -> Accounts:
    """The orchestrator's roles and clients as `listClients`/`listRoles` (verbose) describe them."""
    accounts = Accounts({}, {})
    for role in roles:
        if str(role.get("textname", "")).startswith(MARK):
            acls = frozenset(
                Acl(acl["acltype"], acl["topic"]) for acl in role.get("acls", []) if acl.get("allow", False)
            )
            accounts.roles[role["rolename"]] = Role(role["rolename"], acls)
    for client in clients:
        if str(client.get("textname", "")).startswith(MARK):
            names = sorted(role["rolename"] for role in client.get("roles", []))
            key_id = str(client["textname"])[len(MARK) :]
            accounts.clients[client["username"]] = Client(client["username"], key_id, ",".join(names))
    return accounts


@dataclass
class Plan:
    """The commands that turn the broker's accounts into the desired ones, and clients that cannot be made."""

    commands: list[dict[str, Any]]
    unmakeable: list[str]  # usernames of keys whose password is not known (made before broker accounts)


def plan(want: Accounts, have: Accounts, password_of: Callable[[str], str | None]) -> Plan:
    """Commands, in a safe order: roles first, then clients; removals last. `password_of(key_id)`."""
    commands: list[dict[str, Any]] = []
    unmakeable: list[str] = []
    for name, role in want.roles.items():
        current = have.roles.get(name)
        if current is None:
            # The ACLs inside the one command: the plugin rewrites its whole file after every command, so a key
            # made with one command per ACL cost ten rewrites of a file that grows with every key.
            commands.append(
                {"command": "createRole", "rolename": name, "textname": MARK + name, "acls": _file_role(role)["acls"]}
            )
            continue
        for acl in sorted(role.acls - current.acls):
            commands.append(_acl_command("addRoleACL", name, acl) | {"allow": True, "priority": 0})
        for acl in sorted(current.acls - role.acls):
            commands.append(_acl_command("removeRoleACL", name, acl))
    for username, client in want.clients.items():
        current_client = have.clients.get(username)
        if current_client == client:
            continue
        password = password_of(client.key_id)
        if password is None:  # what the broker has stays: better an old account than none
            unmakeable.append(username)
            continue
        if current_client is not None:  # another key's login now, or wrong roles: made anew (its connections end)
            commands.append({"command": "deleteClient", "username": username})
        commands.append(
            {
                "command": "createClient",
                "username": username,
                "password": password,
                "textname": MARK + client.key_id,
                "roles": [{"rolename": client.rolename}],
            }
        )
    commands += [{"command": "deleteClient", "username": name} for name in have.clients if name not in want.clients]
    commands += [{"command": "deleteRole", "rolename": name} for name in have.roles if name not in want.roles]
    return Plan(commands, unmakeable)


def admin_fixes(
    admin_username: str, clients: list[dict[str, Any]], roles: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Commands giving the admin account the orchestrator's own role, when it lacks what that role grants.

    `mosquitto_ctrl dynsec init` makes an admin that may not publish outside `$CONTROL`. The orchestrator's
    role is added beside the account's own roles, which stay as they are for whoever else holds them.
    Mosquitto 2.0 disconnects a client whose roles change: this happens once, on the first connect.
    """
    client = next((item for item in clients if item.get("username") == admin_username), None)
    if client is None:
        return []  # listing clients needs the admin role: with it we are there; without it, nothing to do
    names = {role["rolename"] for role in client.get("roles", [])}
    granted = {
        Acl(acl["acltype"], acl["topic"])
        for role in roles
        if role.get("rolename") in names
        for acl in role.get("acls", [])
        if acl.get("allow", False)
    }
    admin = admin_role()
    if admin.acls <= granted:
        return []
    ours = next((role for role in roles if role.get("rolename") == ADMIN_ROLE), None)
    commands: list[dict[str, Any]] = []
    if ours is None:
        commands.append({"command": "createRole", "rolename": ADMIN_ROLE, "textname": "orchestrator"})
    held = {Acl(acl["acltype"], acl["topic"]) for acl in (ours or {}).get("acls", [])}
    commands += [
        _acl_command("addRoleACL", ADMIN_ROLE, acl) | {"allow": True, "priority": 0}
        for acl in sorted(admin.acls - held)
    ]
    if ADMIN_ROLE not in names:
        commands.append({"command": "addClientRole", "username": admin_username, "rolename": ADMIN_ROLE})
    return commands


def _acl_command(command: str, rolename: str, acl: Acl) -> dict[str, Any]:
    return {"command": command, "rolename": rolename, "acltype": acl.acltype, "topic": acl.topic}


def initial_config(admin_username: str, admin_password: str, records: Iterable[ApiKey], tenant: str | None) -> str:
    """A plugin configuration file with the admin and every key (from their stored Mosquitto hashes)."""
    want = desired(records, tenant, reserved={admin_username})
    hashes = {record.id: record.mqtt_password_hash for record in records if record.mqtt_password_hash}
    admin = admin_role()
    roles = [admin, *want.roles.values()]
    clients = [_file_client(admin_username, key_rules.mosquitto_hash(admin_password), "orchestrator", ADMIN_ROLE)]
    clients += [
        _file_client(client.username, hashes[client.key_id], MARK + client.key_id, client.rolename)
        for client in want.clients.values()
        if client.key_id in hashes
    ]
    config = {
        "defaultACLAccess": DEFAULT_ACL_ACCESS,
        "clients": clients,
        "groups": [],
        "roles": [_file_role(role) for role in roles],
    }
    return json.dumps(config, indent=2)


def with_admin(config_text: str, admin_username: str, admin_password: str) -> str:
    """A plugin configuration with the admin's password and role set anew (the rest as the broker saved it)."""
    config = json.loads(config_text)
    admin = admin_role()
    config["roles"] = [role for role in config.get("roles", []) if role.get("rolename") != ADMIN_ROLE]
    config["roles"].append(_file_role(admin))
    # The admin account is ours (text name "orchestrator"): one, under the configured name.
    config["clients"] = [
        client
        for client in config.get("clients", [])
        if client.get("username") != admin_username and client.get("textname") != "orchestrator"
    ]
    config["clients"].append(
        _file_client(admin_username, key_rules.mosquitto_hash(admin_password), "orchestrator", ADMIN_ROLE)
    )
    return json.dumps(config, indent=2)


def _file_role(role: Role) -> dict[str, Any]:
    """A role entry of the plugin's file."""
    return {
        "rolename": role.name,
        "textname": "orchestrator" if role.name == ADMIN_ROLE else MARK + role.name,
        "acls": [
            {"acltype": acl.acltype, "topic": acl.topic, "priority": 0, "allow": True} for acl in sorted(role.acls)
        ],
    }


def _file_client(username: str, mosquitto_hash: str, textname: str, rolename: str) -> dict[str, Any]:
    """A client entry of the plugin's file; `$7$iterations$salt$hash` is the plugin's PBKDF2-SHA512 too."""
    _, _, iterations, salt, digest = mosquitto_hash.split("$")
    return {
        "username": username,
        "textname": textname,
        "password": digest,
        "salt": salt,
        "iterations": int(iterations),
        "roles": [{"rolename": rolename}],
    }
