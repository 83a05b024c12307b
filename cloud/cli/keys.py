"""``edgefleet keys ...``: generate and inspect Ed25519 signing keys; delegate a scoped signing key
with the (offline) release keys, push the delegations document to the controller, revoke a delegation
(docs/security.md §6, the key ceremony in docs/operations.md)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from edgefleet.cloud.cli.client import client_from_env
from edgefleet.cloud.cli.experiments import parse_duration
from edgefleet.cloud.cli.options import JSON, PASSPHRASE, TOKEN, URL
from edgefleet.cloud.cli.output import console, print_fields, print_json, print_table, short
from edgefleet.protocol.errors import ConfigError, NotFoundError
from edgefleet.protocol.files import atomic_write

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edgefleet.protocol.messages import Delegation, SignedDelegations

keys_app = typer.Typer(no_args_is_help=True, help="Generate and inspect Ed25519 signing keys; delegate, push and "
                                                  "revoke scoped signing keys.")
delegations_app = typer.Typer(invoke_without_command=True,
                              help="The controller's delegations document: show it (no command) or push one.")



def _duration(value: str) -> str:
    parse_duration(value)  # a usage error at once, before any key is loaded
    return value


RELEASE_KEYS = typer.Option(..., "--release-key", help="a release private key (repeat for a threshold)")
DOCUMENT_EXPIRES = typer.Option("365d", "--document-expires", callback=_duration,
                                help="lifetime of the whole document: devices refuse every delegated bundle once it "
                                     "passed, until the release keys sign a new version")


def register(app: typer.Typer) -> None:
    from edgefleet.cloud.cli import trust_root

    app.add_typer(keys_app, name="keys")
    keys_app.add_typer(delegations_app, name="delegations")
    trust_root.register(keys_app)


@keys_app.command("generate")
def keys_generate(
    name: str = typer.Argument(..., help="key name, e.g. 'release' or 'controller'"),
    out: Path = typer.Option(Path("keys"), help="directory for NAME.key (mode 0600) and NAME.pub"),
    passphrase: str = PASSPHRASE,
    json_out: bool = JSON,
) -> None:
    """Generate an Ed25519 key pair."""
    from edgefleet.protocol import keys as keylib

    private_path = out / f"{name}.key"
    if private_path.exists():
        raise ConfigError("refusing to overwrite an existing key", where=str(private_path),
                          hint="choose another name or directory")
    key = keylib.generate_private_key()
    keylib.save_private_key(key, private_path, passphrase)
    public_path = keylib.save_public_key(key.public_key(), out / f"{name}.pub")
    info = {"key_id": keylib.key_id(key.public_key()), "private": str(private_path), "public": str(public_path)}
    print_json(info) if json_out else print_fields(info)


@keys_app.command("show")
def keys_show(path: Path = typer.Argument(..., help="a public (.pub) or private (.key) PEM file"),
              passphrase: str = PASSPHRASE) -> None:
    """Print a key's id."""
    from edgefleet.protocol import keys as keylib

    text = path.read_bytes() if path.exists() else b""
    if b"PRIVATE KEY" in text:
        public = keylib.load_private_key(path, passphrase).public_key()
    else:
        public = keylib.load_public_key(path)
    console.print(keylib.key_id(public))


# --------------------------------------------------------------------------- delegations

def _release_keys(paths: list[Path], passphrase: str | None) -> list[Ed25519PrivateKey]:
    from edgefleet.protocol import keys as keylib

    return [keylib.load_private_key(p, passphrase) for p in paths]


def read_delegations(path: Path) -> SignedDelegations:
    """A signed delegations document from a file: as ``keys delegate --out`` writes it, or as
    ``keys delegations --json`` prints it (the ``document`` of that answer)."""
    from edgefleet.protocol.delegation import parse_delegations

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the delegations document: {exc.strerror}", where=str(path)) from None
    try:
        obj = json.loads(raw)
    except ValueError:
        raise ConfigError("not JSON", where=str(path),
                          hint="give a file written by 'edgefleet keys delegate'") from None
    if isinstance(obj, dict) and "document" in obj:
        raw = json.dumps(obj["document"]).encode()
    return parse_delegations(raw, where=str(path))


def _checked_base(current: SignedDelegations, keys: list[Ed25519PrivateKey], where: str) -> None:
    """Refuse to re-sign a document these release keys never signed: whoever could edit the file
    would otherwise slip their own delegation under the release keys' signature."""
    from edgefleet.protocol.delegation import verify_document
    from edgefleet.protocol.keys import TrustedKeys

    trusted = TrustedKeys.of([k.public_key() for k in keys], role="release")
    verify_document(current, trusted=trusted, known=None, now=None, where=where)


def _sign_next(current: SignedDelegations | None, delegations: list[Delegation], keys: list[Ed25519PrivateKey],
               document_expires: str, now: float) -> SignedDelegations:
    from pydantic import ValidationError

    from edgefleet.protocol.delegation import sign_delegations
    from edgefleet.protocol.errors import first_problem
    from edgefleet.protocol.messages import DelegationsDocument

    try:
        document = DelegationsDocument(version=current.signed.version + 1 if current else 1,
                                       expires_at=int(now + parse_duration(document_expires)), delegations=delegations)
    except ValidationError as exc:
        loc, problem = first_problem(exc)
        raise ConfigError(problem, where=loc or "delegations") from None
    return sign_delegations(document, keys)


def _show(doc: SignedDelegations, out: Path | None, json_out: bool, **extra: Any) -> None:
    if json_out:
        print_json({"version": doc.signed.version, "expires_at": doc.signed.expires_at,
                    **({"out": str(out)} if out else {}), **extra, "document": doc.model_dump(mode="json")})
        return
    print_fields({"version": doc.signed.version, "expires at": _when(doc.signed.expires_at),
                  "signed by": ", ".join(short(s.keyid) for s in doc.signatures), **({"written to": str(out)}
                                                                                       if out else {}), **extra})
    if not doc.signed.delegations:
        console.print("no delegations: no key but the release keys signs bundles")
        return
    print_table("delegations", ["name", "key", "bundle names", "hardware classes", "expires"],
                [(d.name, short(d.keyid), " ".join(d.name_patterns), " ".join(d.hardware_classes), _when(d.expires_at))
                 for d in doc.signed.delegations])


def _when(ts: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


@keys_app.command("delegate")
def keys_delegate(
    release_key: list[Path] = RELEASE_KEYS,
    public_key: Path = typer.Option(..., "--public-key", help="the public key to delegate (e.g. the retraining "
                                                              "job's)"),
    name: list[str] = typer.Option(..., "--name", help="bundle names it may sign, fnmatch pattern such as 'digits-*' "
                                                       "(repeatable)"),
    hardware_class: list[str] = typer.Option(..., "--hardware-class",
                                             help="hardware classes its bundles may target (repeatable; '*': any)"),
    expires: str = typer.Option("30d", "--expires", callback=_duration,
                                help="how long the delegation lasts, e.g. 30d, 12h"),
    label: str = typer.Option(None, "--label", help="the delegation's name, for revoke-delegation (default: the "
                                                    "public key's file name)"),
    base: Path = typer.Option(None, "--from", help="the current document to add to (a file written by this command "
                                                   "or by 'keys delegations --json'); without it: version 1"),
    out: Path = typer.Option(Path("delegations.json"), "--out", "-o", help="where to write the signed document"),
    document_expires: str = DOCUMENT_EXPIRES,
    passphrase: str = PASSPHRASE,
    json_out: bool = JSON,
) -> None:
    """Sign, with the release keys, the next delegations document: the current one plus a delegation
    that lets PUBLIC_KEY sign bundles named like --name for --hardware-class until --expires. Local:
    run it where the release keys are, then 'edgefleet keys delegations push'."""
    from edgefleet.protocol.delegation import delegations_json, make_delegation
    from edgefleet.protocol.keys import key_id, load_public_key

    keys = _release_keys(release_key, passphrase)
    current = read_delegations(base) if base else None
    if current is not None:
        _checked_base(current, keys, str(base))
    delegated = load_public_key(public_key)
    label = label or public_key.name.split(".")[0].lower()
    now = time.time()
    kid = key_id(delegated)
    kept = [d for d in (current.signed.delegations if current else []) if d.name != label]
    clash = next((d for d in kept if d.keyid == kid), None)
    if clash is not None:
        raise ConfigError(f"this key is already delegated as {clash.name!r}", where=str(public_key),
                          hint=f"use --label {clash.name} to replace that delegation")
    try:
        delegation = make_delegation(name=label, public_key=delegated, name_patterns=name,
                                     hardware_classes=hardware_class, expires_at=int(now + parse_duration(expires)))
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise ConfigError(_problem(exc), where="--label/--name/--hardware-class") from None
    doc = _sign_next(current, kept + [delegation], keys, document_expires, now)
    atomic_write(out, delegations_json(doc))
    _show(doc, out, json_out)


def _problem(exc: ValueError) -> str:
    from pydantic import ValidationError

    from edgefleet.protocol.errors import first_problem

    if isinstance(exc, ValidationError):
        loc, problem = first_problem(exc)
        return f"{loc}: {problem}" if loc else problem
    return str(exc)


@delegations_app.callback()
def keys_delegations(ctx: typer.Context, url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """The delegations document in force on the controller."""
    if ctx.invoked_subcommand is not None:
        return
    with client_from_env(url, token) as client:
        current = client.get("/api/v1/delegations")
    if current is None:
        print_json(None) if json_out else console.print("no delegations document on the controller")
        return
    if json_out:
        print_json(current)
        return
    from edgefleet.protocol.messages import SignedDelegations

    _show(SignedDelegations.model_validate(current["document"]), None, False,
          **{"pushed": f"{_when(int(current['pushed_at']))} by {current['pushed_by']}"})


@delegations_app.command("push")
def keys_delegations_push(
    document: Path = typer.Argument(..., help="a signed delegations document (from 'edgefleet keys delegate')"),
    url: str = URL, token: str = TOKEN, json_out: bool = JSON,
) -> None:
    """Upload a delegations document; the controller checks it against its release keys and sends it to every
    device."""
    doc = read_delegations(document)
    with client_from_env(url, token) as client:
        result = client.post("/api/v1/delegations", doc.model_dump(mode="json"))
    print_json(result) if json_out else console.print(
        f"delegations version {result['version']} in force: "
        + (", ".join(d["name"] for d in result["delegations"]) or "no delegations"))


@keys_app.command("revoke-delegation")
def keys_revoke_delegation(
    name: str = typer.Argument(..., help="the delegation to revoke (its --label)"),
    release_key: list[Path] = RELEASE_KEYS,
    out: Path = typer.Option(None, "--out", "-o", help="where to keep the new document (default "
                                                      "delegations-vVERSION.json)"),
    document_expires: str = DOCUMENT_EXPIRES,
    passphrase: str = PASSPHRASE,
    url: str = URL, token: str = TOKEN, json_out: bool = JSON,
) -> None:
    """Sign the next delegations document without NAME and push it: devices that get it refuse the
    key's bundles from then on (already installed ones keep serving until replaced)."""
    from edgefleet.protocol.delegation import delegations_json
    from edgefleet.protocol.messages import SignedDelegations

    keys = _release_keys(release_key, passphrase)
    with client_from_env(url, token) as client:
        answer = client.get("/api/v1/delegations")
        if answer is None:
            raise NotFoundError("the controller has no delegations document", where=client.url)
        current = SignedDelegations.model_validate(answer["document"])
        _checked_base(current, keys, f"{client.url} delegations")
        if all(d.name != name for d in current.signed.delegations):
            known = ", ".join(d.name for d in current.signed.delegations) or "none"
            raise NotFoundError(f"no delegation {name!r} in version {current.signed.version}", where=name,
                                hint=f"delegations: {known}")
        doc = _sign_next(current, [d for d in current.signed.delegations if d.name != name], keys,
                         document_expires, time.time())
        out = out or Path(f"delegations-v{doc.signed.version}.json")
        atomic_write(out, delegations_json(doc))
        client.post("/api/v1/delegations", doc.model_dump(mode="json"))
    _show(doc, out, json_out, revoked=name)
