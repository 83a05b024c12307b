"""``edgefleet bundle ...``: build, sign, verify and inspect bundles locally; push and list them on a controller."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from edgefleet.cloud.cli.client import client_from_env
from edgefleet.cloud.cli.native_logs import quiet_native_logs
from edgefleet.cloud.cli.options import JSON, PASSPHRASE, TOKEN, URL
from edgefleet.cloud.cli.output import console, print_fields, print_json, print_table, short
from edgefleet.protocol.errors import ConfigError
from edgefleet.protocol.files import atomic_write

if TYPE_CHECKING:
    import numpy as np
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edgefleet.protocol.bundle import BundleRecipe
    from edgefleet.protocol.manifest import BundleManifest
    from edgefleet.protocol.messages import SignedDelegations

# The bundle format, keys and numpy are imported by the commands that use them, so that the CLI
# starts fast (tests/cloud/test_cli_usage.py checks what importing it loads).

bundle_app = typer.Typer(no_args_is_help=True, help="Build, sign, verify, inspect and push bundles.")


def register(app: typer.Typer) -> None:
    app.add_typer(bundle_app, name="bundle")


def load_samples(spec: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Sample inputs (and labels when known): ``digits`` (the bundled scikit-learn digits,
    held-out split) or a .npy file, or a .npz file with arrays ``x`` (and ``y``) or one array."""
    import numpy as np

    if spec == "digits":
        from edgefleet.compression.samples import load_digits_split

        data = load_digits_split()
        return data.x_test, data.y_test
    path = Path(spec)
    if not path.exists():
        raise ConfigError("sample file not found", where=spec, hint="give a .npy/.npz file or 'digits'")
    try:
        data = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise ConfigError(f"cannot read samples: {exc}", where=spec) from None
    if isinstance(data, np.lib.npyio.NpzFile):
        x = data["x"] if "x" in data.files else data[data.files[0]]
        y = data["y"] if "y" in data.files else None
        return np.asarray(x, dtype=np.float32), y
    return np.asarray(data, dtype=np.float32), None


@bundle_app.command("build")
def bundle_build(
    recipe: Path = typer.Argument(..., help="bundle recipe (TOML, see firmware-bundles/)"),
    key: Path = typer.Option(..., "--key", "-k", help="release private key (or, with --delegation, a delegated key)"),
    delegation: Path = typer.Option(None, "--delegation", help="the delegations document that delegates --key "
                                                               "(from 'edgefleet keys delegate'); it goes into the "
                                                               "bundle"),
    model: Path = typer.Option(None, help="model file (default: [bundle].model of the recipe)"),
    samples: str = typer.Option("digits", help="sample inputs for the drift profile, smoke tests and compression: "
                                               ".npy, .npz (x and optional labels y) or 'digits'"),
    compress_model: bool = typer.Option(False, "--compress",
                                        help="compress the model first, as the recipe's [compression] table says "
                                             "(gated; report in the manifest)"),
    compression_report: Path = typer.Option(None, help="a report from 'edgefleet compress --json' to embed"),
    out: Path = typer.Option(None, "--out", "-o", help="output file (default NAME-VERSION+BUILD.efb)"),
    passphrase: str = PASSPHRASE,
    json_out: bool = JSON,
) -> None:
    """Build and sign a bundle from a recipe and a model (byte-reproducible)."""
    from edgefleet.cloud.cli.keys import read_delegations
    from edgefleet.protocol import keys as keylib
    from edgefleet.protocol.bundle import build_bundle, bundle_digest, load_recipe
    from edgefleet.protocol.manifest import Lineage

    r = load_recipe(recipe)
    signing_key = keylib.load_private_key(key, passphrase)
    delegations = read_delegations(delegation) if delegation else None
    if delegations is not None:
        _check_delegated(r, signing_key, delegations, where=str(delegation))
    model_path = model or r.model_path()
    if model_path is None:
        raise ConfigError("no model given", where=f"{recipe}: bundle.model", hint="set it or pass --model")
    try:
        model_bytes = Path(model_path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read model: {exc.strerror}", where=str(model_path)) from None
    x, y = load_samples(samples)
    report = _read_report(compression_report) if compression_report else None
    lineage = Lineage(source=str(model_path))
    if compress_model:
        from edgefleet.compression import compress, load_compression_recipe

        with quiet_native_logs():
            result = compress(model_bytes, r.bundle.runtime, load_compression_recipe(recipe),
                              calibration=x, eval_x=x, eval_y=y)
        lineage = lineage.model_copy(update={"parent_digest": bundle_digest(model_bytes)})
        model_bytes, report = result.model, result.report.manifest_dict()
    built = build_bundle(r, model_bytes, samples=x, release_key=signing_key, compression_report=report,
                         lineage=lineage, delegations=delegations)
    out = out or Path(f"{r.bundle.name}-{r.bundle.version}+{r.bundle.build}.efb")
    atomic_write(out, built.data)
    info = {"bundle": str(out), "name": r.bundle.name, "version": r.bundle.version, "build": r.bundle.build,
            "runtime": r.bundle.runtime, "digest": built.digest, "size": len(built.data),
            "compression": (report or {}).get("mode", "none")}
    print_json(info) if json_out else print_fields(info)


def _check_delegated(recipe: BundleRecipe, key: Ed25519PrivateKey, delegations: SignedDelegations, *,
                     where: str) -> None:
    """Refuse, before building, a bundle every device would refuse: the key is not delegated by the
    document, or the recipe's name or hardware classes are outside its delegation, or it has expired."""
    import time

    from edgefleet.protocol.delegation import DelegationCheck, check_scope
    from edgefleet.protocol.keys import key_id

    kid = key_id(key.public_key())
    found = delegations.signed.by_keyid(kid)
    if found is None:
        raise ConfigError(f"key {kid[:16]}... is not delegated by this document (version "
                          f"{delegations.signed.version})", where=where,
                          hint="delegate it: edgefleet keys delegate --public-key ...")
    check_scope(found, name=recipe.bundle.name, target_classes=recipe.target.hardware_classes,
                check=DelegationCheck(now=time.time()))


def _read_report(path: Path) -> dict[str, Any]:
    try:
        report = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read the compression report: {exc.strerror}", where=str(path)) from None
    except ValueError:
        raise ConfigError("the compression report is not JSON", where=str(path),
                          hint="write it with: edgefleet compress ... --json > report.json") from None
    if not isinstance(report, dict):
        raise ConfigError("the compression report is not a JSON object", where=str(path))
    return report


@bundle_app.command("sign")
def bundle_sign(bundle: Path = typer.Argument(...), key: Path = typer.Option(..., "--key", "-k"),
                passphrase: str = PASSPHRASE) -> None:
    """Add a release signature to a bundle (threshold signing, re-signing)."""
    from edgefleet.protocol import keys as keylib
    from edgefleet.protocol.bundle import add_signature, bundle_digest

    data = add_signature(bundle.read_bytes(), keylib.load_private_key(key, passphrase))
    atomic_write(bundle, data)
    console.print(f"signed {bundle} -> {bundle_digest(data)}")


@bundle_app.command("verify")
def bundle_verify(
    bundle: Path = typer.Argument(...),
    trusted: list[Path] = typer.Option(..., "--trusted", "-t", help="trusted release public key(s)"),
    threshold: int = typer.Option(1, min=1),
    json_out: bool = JSON,
) -> None:
    """Verify signatures and every file digest, as a device would (a bundle signed by a delegated key:
    the chain from the release keys, and the delegation's scope for the classes the bundle targets)."""
    import time

    from edgefleet.protocol import keys as keylib
    from edgefleet.protocol.bundle import BundleLimits, bundle_digest, verify_bundle
    from edgefleet.protocol.delegation import DelegationCheck

    data = bundle.read_bytes()
    verified = verify_bundle(data, trusted=keylib.TrustedKeys.from_files(trusted, role="release", threshold=threshold),
                             limits=BundleLimits(), delegation=DelegationCheck(now=time.time()))
    m = verified.manifest
    via = verified.delegated
    info = {"ok": True, "name": m.name, "version": m.version, "build": m.build, "digest": bundle_digest(data),
            "signed_by": sorted(verified.signed_by),
            "delegation": {"name": via.delegation.name, "version": via.document.signed.version} if via else None}
    print_json(info) if json_out else console.print(
        f"[green]OK[/] {m.name} {m.version}+{m.build} signed by {', '.join(short(k) for k in verified.signed_by)}"
        + (f" (delegation {via.delegation.name!r}, delegations version {via.document.signed.version})" if via else ""))


@bundle_app.command("inspect")
def bundle_inspect(bundle: Path = typer.Argument(...), json_out: bool = JSON) -> None:
    """Show a bundle's manifest (NOT verified: use 'verify' for that)."""
    from edgefleet.protocol.bundle import bundle_digest, read_manifest

    data = bundle.read_bytes()
    m = read_manifest(data)
    if json_out:
        print_json({"digest": bundle_digest(data), "size": len(data), "manifest": m.model_dump(mode="json")})
        return
    print_fields({"name": m.name, "version": f"{m.version} (build {m.build})", "runtime": m.runtime,
                  "digest": bundle_digest(data), "size": f"{len(data)} bytes",
                  "targets": f"archs={m.target.archs or 'any'} classes={m.target.hardware_classes or 'any'} "
                             f"agent>={m.target.min_agent_version}",
                  "inputs": ", ".join(f"{s.name}{s.shape}:{s.dtype}" for s in m.inputs),
                  "outputs": ", ".join(f"{s.name}{s.shape}:{s.dtype}" for s in m.outputs),
                  "format": m.format_version,
                  "smoke vectors": m.smoke_test.vectors() if m.smoke_test else 0,
                  "drift profile": _profile_line(m),
                  "compression": (m.compression or {}).get("mode", "none")})
    print_table("files", ["path", "size", "stored", "encoding", "sha256"],
                [(f.path, f.size, f.stored_size, f.encoding, short(f.sha256, 16)) for f in m.files])


def _profile_line(m: BundleManifest) -> str:
    """Features and samples of the drift profile, inline (format 1) or in files (format 2)."""
    if m.profile_files is not None:
        return f"{m.profile_files.features} features, {m.profile_files.profile.get('samples')} samples (in files)"
    if m.reference_profile is not None:
        return f"{len(m.reference_profile.features)} features, {m.reference_profile.samples} samples"
    return "none"


@bundle_app.command("push")
def bundle_push(
    bundle: Path = typer.Argument(...),
    url: str = URL, token: str = TOKEN, json_out: bool = JSON,
) -> None:
    """Upload a bundle to the controller (its signature is checked there)."""
    with client_from_env(url, token) as client:
        result = client.upload_bundle(bundle)
    print_json(result) if json_out else console.print(
        f"pushed {result.get('name')} {result.get('version')} digest {short(result.get('digest'), 16)}")


@bundle_app.command("list")
def bundle_list(url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """Bundles registered on the controller."""
    with client_from_env(url, token) as client:
        bundles = client.get("/api/v1/bundles")
    if json_out:
        print_json(bundles)
        return
    print_table(None, ["name", "version", "build", "runtime", "size", "digest"],
                [(b.get("name"), b.get("version"), b.get("build"), b.get("runtime"), b.get("size"),
                  short(b.get("digest"))) for b in bundles])
