"""``edgefleet keys ...``: generate and inspect Ed25519 signing keys."""

from __future__ import annotations

from pathlib import Path

import typer

from edgefleet.cloud.cli.options import JSON, PASSPHRASE
from edgefleet.cloud.cli.output import console, print_fields, print_json
from edgefleet.protocol.errors import ConfigError

keys_app = typer.Typer(no_args_is_help=True, help="Generate and inspect Ed25519 signing keys.")


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")


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
