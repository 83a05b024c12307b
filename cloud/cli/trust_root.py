"""``edgefleet keys root|rotate|revoke``: the trust root (docs/security.md §9) — sign its first version
with the (offline) root keys, rotate the release, controller or root keys, revoke a key — each a new
root version that devices follow without re-enrollment. The root private keys are read here, on the
operator's machine; the controller only ever sees signed roots."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from edgefleet.cloud.cli.client import client_from_env
from edgefleet.cloud.cli.experiments import parse_duration
from edgefleet.cloud.cli.options import JSON, PASSPHRASE, TOKEN, URL
from edgefleet.cloud.cli.output import console, print_json, print_table
from edgefleet.protocol.errors import ConfigError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edgefleet.cloud.cli.client import ControllerClient
    from edgefleet.protocol.messages import RootDocument, SignedRoot

root_app = typer.Typer(no_args_is_help=True, help="The trust root: which keys devices trust for each role.")
rotate_app = typer.Typer(no_args_is_help=True, help="Rotate the release, controller or root keys (a new root).")

ROOT_KEYS = typer.Option(..., "--root-key", help="a root private key of the root in force (repeat for a threshold)")
EXPIRES = typer.Option("365d", "--expires", help="lifetime of the new root version")


def register(keys_app: typer.Typer) -> None:
    keys_app.add_typer(root_app, name="root")
    keys_app.add_typer(rotate_app, name="rotate")
    keys_app.command("revoke")(keys_revoke)


def _private(paths: list[Path], passphrase: str | None) -> list[Ed25519PrivateKey]:
    from edgefleet.protocol.keys import load_private_key

    return [load_private_key(p, passphrase) for p in paths]


def _hex(path: Path) -> str:
    from edgefleet.protocol.delegation import raw_public_key
    from edgefleet.protocol.keys import load_public_key

    return raw_public_key(load_public_key(path))


def _current(client: ControllerClient) -> SignedRoot:
    from edgefleet.protocol.messages import SignedRoot

    current = client.get("/api/v1/trust/root")
    if current is None:
        raise ConfigError("the controller has no trust root yet", where="trust root",
                          hint="sign its first version: edgefleet keys root init --root-key ...")
    return SignedRoot.model_validate(current)


def _push(client: ControllerClient, document: RootDocument, keys: list[Ed25519PrivateKey], json_out: bool) -> None:
    from edgefleet.protocol.root import sign_root

    signed = sign_root(document, keys)
    result = client.post("/api/v1/trust/roots", signed.model_dump(mode="json"))
    if json_out:
        print_json(result)
        return
    console.print(f"trust root version {document.version} in force; devices follow it at their next message")
    _table(document)


def _table(document: RootDocument) -> None:
    roles = [(name, getattr(document, name)) for name in ("root", "release", "controller")]
    rows = [[name, f"{keys.threshold} of {len(keys.keys)}", ", ".join(_kid(k)[:16] for k in keys.keys)]
            for name, keys in roles]
    print_table(None, ["role", "threshold", "key ids"], rows)


def _kid(hex_key: str) -> str:
    import hashlib

    return hashlib.sha256(bytes.fromhex(hex_key)).hexdigest()


def _next(current: RootDocument, expires: str, **roles: Any) -> RootDocument:
    from edgefleet.protocol.messages import RoleKeys, RootDocument

    data = current.model_dump(mode="json") | {"version": current.version + 1,
                                             "expires_at": int(time.time() + parse_duration(expires))}
    for role, keys in roles.items():
        threshold = min(getattr(current, role).threshold, len(keys)) if keys else 1
        data[role] = RoleKeys(keys=sorted(keys), threshold=threshold).model_dump()
    try:
        return RootDocument.model_validate(data)
    except ValueError as exc:
        raise ConfigError(f"the new root would be invalid: {exc}", where="trust root") from None


@root_app.command("show")
def root_show(url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """The trust root in force on the controller."""
    with client_from_env(url, token) as client:
        current = client.get("/api/v1/trust/root")
    if json_out or current is None:
        print_json(current) if json_out else console.print("no trust root on the controller")
        return
    from edgefleet.protocol.messages import SignedRoot

    document = SignedRoot.model_validate(current).signed
    console.print(f"trust root version {document.version}, expires "
                  f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(document.expires_at))}")
    _table(document)


@root_app.command("init")
def root_init(root_keys: list[Path] = ROOT_KEYS, threshold: int = typer.Option(1, help="root signatures required"),
              expires: str = EXPIRES, passphrase: str = PASSPHRASE, url: str = URL, token: str = TOKEN,
              json_out: bool = JSON) -> None:
    """Sign the first trust root: the given keys as root keys, the release keys the controller trusts
    and its order-signing key. Devices enrolled from now on pin it; devices enrolled before adopt it
    when it is also signed by their release keys (give those as --root-key too)."""
    from edgefleet.protocol.delegation import raw_public_key
    from edgefleet.protocol.keys import load_public_key_pem
    from edgefleet.protocol.messages import RoleKeys, RootDocument

    keys = _private(root_keys, passphrase)
    with client_from_env(url, token) as client:
        info = client.get("/api/v1/info")
        release = sorted({raw_public_key(load_public_key_pem(k["pem"].encode()))
                          for k in client.get("/api/v1/release-keys")})
        if not release:
            raise ConfigError("the controller trusts no release key", where="release keys")
        root_hex = sorted({raw_public_key(k.public_key()) for k in keys})
        document = RootDocument(version=1, expires_at=int(time.time() + parse_duration(expires)),
                                root=RoleKeys(keys=root_hex, threshold=threshold),
                                release=RoleKeys(keys=release, threshold=1),
                                controller=RoleKeys(keys=[raw_public_key(load_public_key_pem(
                                    info["controller_public_key_pem"].encode()))], threshold=1))
        _push(client, document, keys, json_out)


@rotate_app.command("release")
def rotate_release(root_keys: list[Path] = ROOT_KEYS,
                   add: list[Path] = typer.Option([], "--add", help="a release public key (.pub) to trust"),
                   remove: list[str] = typer.Option([], "--remove", help="key id (or its prefix) to stop trusting"),
                   expires: str = EXPIRES, passphrase: str = PASSPHRASE, url: str = URL, token: str = TOKEN,
                   json_out: bool = JSON) -> None:
    """A new root whose release keys gain --add and lose --remove: bundles signed by a removed key are
    refused by every device that follows the root."""
    with client_from_env(url, token) as client:
        current = _current(client).signed
        keys = (set(current.release.keys) | {_hex(p) for p in add}) - _matching(current.release.keys, remove)
        _push(client, _next(current, expires, release=keys), _private(root_keys, passphrase), json_out)


@rotate_app.command("controller")
def rotate_controller(root_keys: list[Path] = ROOT_KEYS, expires: str = EXPIRES, passphrase: str = PASSPHRASE,
                      url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """A new root that trusts the controller's next order-signing key instead of its current one; the
    controller switches to the new key as soon as it holds the root."""
    with client_from_env(url, token) as client:
        current = _current(client).signed
        nxt = client.post("/api/v1/trust/controller-key/next", {})
        _push(client, _next(current, expires, controller={nxt["public_key"]}), _private(root_keys, passphrase),
              json_out)


@rotate_app.command("root")
def rotate_root(root_keys: list[Path] = ROOT_KEYS,
                new_root_keys: list[Path] = typer.Option(..., "--new-root-key", help="a private key of the new root "
                                                          "role (repeat); it signs too"),
                expires: str = EXPIRES, passphrase: str = PASSPHRASE, url: str = URL, token: str = TOKEN,
                json_out: bool = JSON) -> None:
    """A new root whose root keys are --new-root-key, signed by the old root keys and the new ones."""
    from edgefleet.protocol.delegation import raw_public_key

    new = _private(new_root_keys, passphrase)
    with client_from_env(url, token) as client:
        current = _current(client).signed
        document = _next(current, expires, root={raw_public_key(k.public_key()) for k in new})
        _push(client, document, _private(root_keys, passphrase) + new, json_out)


def keys_revoke(key: str = typer.Argument(..., help="key id (or its prefix) of a release or controller key"),
                root_keys: list[Path] = ROOT_KEYS, expires: str = EXPIRES, passphrase: str = PASSPHRASE,
                url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """A new root without KEY in any role: devices refuse what it signs from the moment they follow it."""
    with client_from_env(url, token) as client:
        current = _current(client).signed
        roles = {role: set(getattr(current, role).keys) - _matching(getattr(current, role).keys, [key])
                 for role in ("release", "controller")}
        changed = {role: keys for role, keys in roles.items() if keys != set(getattr(current, role).keys)}
        if not changed:
            raise ConfigError(f"no release or controller key {key} in trust root version {current.version}",
                              where="key")
        for role, keys in changed.items():
            if not keys:
                raise ConfigError(f"revoking {key} leaves no {role} key", where="key",
                                  hint=f"rotate first: edgefleet keys rotate {role}")
        _push(client, _next(current, expires, **changed), _private(root_keys, passphrase), json_out)


def _matching(keys: list[str], ids: list[str]) -> set[str]:
    return {k for k in keys for wanted in ids if _kid(k).startswith(wanted.lower()) and len(wanted) >= 8}
