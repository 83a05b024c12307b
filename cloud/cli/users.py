"""``edgefleet users ...`` (admin: people, their roles and passwords) and ``edgefleet tokens ...``
(your own personal API tokens), docs/security.md "People and roles".

The first admin: start the controller, then with the admin token it prints once
``edgefleet users create NAME --role admin --token eft_...``; that person signs in to the UI with the
password, or gets a personal token with ``edgefleet tokens create laptop --user NAME``.
"""

from __future__ import annotations

import base64
import sys
import time
from typing import Any
from urllib.parse import quote

import typer

from edgefleet.cloud.cli.client import API_PREFIX, client_from_env
from edgefleet.cloud.cli.experiments import parse_duration
from edgefleet.cloud.cli.options import JSON, TOKEN, URL
from edgefleet.cloud.cli.output import ago, console, print_json, print_table
from edgefleet.cloud.vocabulary import OPERATOR_ROLES
from edgefleet.protocol.errors import ConfigError

users_app = typer.Typer(no_args_is_help=True, help="People: create users, list them, change roles, disable, "
                                                   "set passwords (admin).")
tokens_app = typer.Typer(no_args_is_help=True, help="Your personal API tokens: create (expiring, scoped to a role), "
                                                    "list with their last use, revoke.")
ROLES = ", ".join(OPERATOR_ROLES)
PASSWORD_STDIN = typer.Option(False, "--password-stdin", help="read the password from the first line of stdin "
                                                              "(else it is asked for)")


def register(app: typer.Typer) -> None:
    app.add_typer(users_app, name="users")
    app.add_typer(tokens_app, name="tokens")


def _role(value: str | None) -> str | None:
    if value is not None and value not in OPERATOR_ROLES:
        raise typer.BadParameter(f"{value!r} is not a role; one of {ROLES}")
    return value


def _expires(value: str) -> str:
    parse_duration(value)
    return value


def read_password(from_stdin: bool, *, prompt: str = "Password", confirm: bool = True) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        password = line.rstrip("\r\n")
        if not password:
            raise ConfigError("no password on stdin", where="--password-stdin",
                              hint="pipe it in: printf '%s\\n' \"$PASSWORD\" | edgefleet ...")
        return password
    answer: str = typer.prompt(prompt, hide_input=True, confirmation_prompt=confirm)
    return answer


def _user_row(u: dict[str, Any]) -> tuple[str, ...]:
    state = f"disabled {ago(u['disabled_at'])}" if u["disabled_at"] else "active"
    return (u["name"], u["display_name"], u["role"], state, "yes" if u["has_password"] else "no",
            ago(u["last_login_at"]) if u["last_login_at"] else "never", u["created_by"])


def _show_user(u: dict[str, Any], json_out: bool, what: str) -> None:
    if json_out:
        print_json(u)
    else:
        console.print(f"user {u['name']} ({u['role']}) {what}", highlight=False)


@users_app.command("create")
def users_create(name: str = typer.Argument(..., help="the user name: lower case, e.g. alice"),
                 role: str = typer.Option(..., "--role", callback=_role, help=f"one of {ROLES}"),
                 display_name: str = typer.Option("", "--display-name", help="the name people read, e.g. 'Alice Li'"),
                 no_password: bool = typer.Option(False, "--no-password", help="no password for now (set it later "
                                                                               "with 'users passwd NAME')"),
                 password_stdin: bool = PASSWORD_STDIN, url: str = URL, token: str = TOKEN,
                 json_out: bool = JSON) -> None:
    """Create a user with a role and (asked for, or from stdin) a password."""
    password = None if no_password else read_password(password_stdin)
    with client_from_env(url, token) as c:
        created = c.post(f"{API_PREFIX}/users", {"name": name, "role": role, "display_name": display_name,
                                                 "password": password})
    _show_user(created, json_out, "created")


@users_app.command("list")
def users_list(url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """List users: role, active or disabled, last sign-in."""
    with client_from_env(url, token) as c:
        rows = c.get(f"{API_PREFIX}/users")
    if json_out:
        return print_json(rows)
    print_table(None, ["name", "display name", "role", "state", "password", "last sign-in", "created by"],
                [_user_row(u) for u in rows])


def _patch(name: str, body: dict[str, Any], url: str | None, token: str | None) -> Any:
    with client_from_env(url, token) as c:
        return c.request("PATCH", f"{API_PREFIX}/users/{quote(name, safe='')}", json=body)


@users_app.command("set-role")
def users_set_role(name: str, role: str = typer.Argument(..., callback=_role, help=f"one of {ROLES}"),
                   url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """Change a user's role (their tokens act with at most the new role at once)."""
    _show_user(_patch(name, {"role": role}, url, token), json_out, "now has this role")


@users_app.command("disable")
def users_disable(name: str, url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """Disable a user: no sign-in, and none of their tokens works (until 'users enable')."""
    _show_user(_patch(name, {"disabled": True}, url, token), json_out, "disabled")


@users_app.command("enable")
def users_enable(name: str, url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """Enable a disabled user again (their unexpired, unrevoked tokens work again)."""
    _show_user(_patch(name, {"disabled": False}, url, token), json_out, "enabled")


@users_app.command("passwd")
def users_passwd(name: str = typer.Argument(None, help="whose password (default: yours; another's needs admin)"),
                 password_stdin: bool = PASSWORD_STDIN, url: str = URL, token: str = TOKEN,
                 json_out: bool = JSON) -> None:
    """Set a password: your own (you give the current one first) or, as an admin, anyone's."""
    with client_from_env(url, token) as c:
        me = c.get(f"{API_PREFIX}/me")
        own = name is None or (me.get("user") or {}).get("name") == name
        if name is None and me.get("user") is None:
            raise ConfigError("this token is no person's: name the user", where="NAME",
                              hint="edgefleet users passwd NAME")
        name = name or me["user"]["name"]
        body: dict[str, Any] = {}
        if own and me["user"]["has_password"]:
            body["current_password"] = read_password(password_stdin, prompt="Current password", confirm=False)
        body["password"] = read_password(password_stdin, prompt="New password")
        changed = c.post(f"{API_PREFIX}/users/{quote(name, safe='')}/password", body)
    _show_user(changed, json_out, "has a new password")


@tokens_app.command("create")
def tokens_create(name: str = typer.Argument(..., help="what it is for, e.g. laptop or ci"),
                  role: str = typer.Option(None, "--role", callback=_role,
                                           help="its rights, at most yours (default: yours)"),
                  expires: str = typer.Option("30d", "--expires", callback=_expires,
                                              help="its lifetime, e.g. 12h, 30d (at most 366d)"),
                  user: str = typer.Option(None, "--user", help="sign in with this user name and password instead "
                                                                "of a token (to get your first token)"),
                  password_stdin: bool = PASSWORD_STDIN, url: str = URL, token: str = TOKEN,
                  json_out: bool = JSON) -> None:
    """Create a personal API token (shown once)."""
    body = {"name": name, "role": role, "expires_in_s": int(parse_duration(expires))}
    headers = {}
    if user is not None:
        secret = f"{user}:{read_password(password_stdin, confirm=False)}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(secret).decode()
    with client_from_env(url, token) as c:
        created = c.request("POST", f"{API_PREFIX}/me/tokens", json=body, headers=headers)
    if json_out:
        return print_json(created)
    console.print(f"token {created['id']} {created['name']!r} ({created['role']}), expires in {expires}",
                  highlight=False)
    console.print(f"token (shown once): [bold]{created['token']}[/]", highlight=False)


@tokens_app.command("list")
def tokens_list(url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """Your personal tokens and UI sign-ins: role, expiry, last use."""
    with client_from_env(url, token) as c:
        rows = c.get(f"{API_PREFIX}/me/tokens")
    if json_out:
        return print_json(rows)
    print_table(None, ["id", "name", "role", "state", "expires", "last used", "created"],
                [(t["id"], t["name"], t["role"], "revoked" if t["revoked_at"] else "live",
                  _when(t["expires_at"]), ago(t["last_used_at"]) if t["last_used_at"] else "never",
                  ago(t["created_at"])) for t in rows])


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts)) if ts else "never"


@tokens_app.command("revoke")
def tokens_revoke(token_id: int, url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """Revoke one of your tokens."""
    with client_from_env(url, token) as c:
        revoked = c.request("DELETE", f"{API_PREFIX}/me/tokens/{token_id}")
    print_json(revoked) if json_out else console.print(f"token {token_id} revoked")
