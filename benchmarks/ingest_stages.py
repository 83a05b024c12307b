"""Where the controller's ingest CPU goes, per telemetry window, stage by stage (no broker): the
strict decode (the reference decoder, Python's json + validation, is the baseline; the fast path is
pydantic-core's one-pass strict JSON validation), the device-signature check (libsodium through
PyNaCl; OpenSSL through ``cryptography``, the previous verifier, as its baseline), the whole decode
step of a batch (topic, size, signature, decode, table row), the batched store (SQLite file, or
``--database-url``) and one signed delivery acknowledgement (what the controller publishes per device
and committed batch). CPU time of this process (``time.process_time``), so a busy machine inflates the
figures less than wall time would; medians of ``--repeats`` rounds.

    python benchmarks/ingest_stages.py [--messages 3000] [--devices 1000] [--repeats 3] [--database-url URL]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from ingest import device_key, payloads

from edgefleet.cloud.metrics import ControllerMetrics
from edgefleet.cloud.mqtt.decoding import Raw, decode_many
from edgefleet.cloud.mqtt.ingest import Ingestor
from edgefleet.cloud.services import devices
from edgefleet.cloud.store.engine import create_schema, make_engine, session_scope
from edgefleet.protocol import device_signatures, messages
from edgefleet.protocol.acks import ack_messages
from edgefleet.protocol.keys import generate_private_key, public_key_pem

PREFIX = "edgefleet/v1"
BATCH = 1000


def each(fn, items) -> None:
    """``fn`` over ``items``, keeping no result alive (a list of thousands of messages would make the
    garbage collector's passes part of the figure)."""
    for item in items:
        fn(item)


def cpu_us(fn, n: int) -> float:
    started = time.process_time()
    fn()
    return (time.process_time() - started) / n * 1e6


def one_round(ingestor: Ingestor, raws: list[Raw], batches: list[list[Raw]], keys: list, *,
              first: bool) -> dict[str, float]:
    n = len(raws)
    raw_keys = {k: v for ks in keys for k, v in ks.keys.items()}
    openssl_keys = {k: Ed25519PublicKey.from_public_bytes(v) for k, v in raw_keys.items()}
    unsealed = [(r.topic.split("/")[-2], *device_signatures.unseal(r.topic, r.payload)) for r in raws]
    controller_key = generate_private_key()
    decoded: list = []
    figures = {
        "reference decode (json + validation)": cpu_us(
            lambda: each(lambda r: messages.decode_reference("telemetry", r.payload), raws), n),
        "decode (fast path)": cpu_us(lambda: each(lambda r: messages.decode("telemetry", r.payload), raws), n),
        "device signature check": cpu_us(
            lambda: each(lambda r: device_signatures.verify(raw_keys[r.topic.split("/")[-2]], r.topic, r.payload),
                         raws), n),
        "signature check, OpenSSL (cryptography; before)": cpu_us(
            lambda: each(lambda u: openssl_keys[u[0]].verify(u[2], u[1]), unsealed), n),
        "decode step (topic, size, signature, decode, row)": cpu_us(
            lambda: decoded.extend(decode_many(b, PREFIX, k) for b, k in zip(batches, keys, strict=True)), n),
    }
    figures["store, batches of 1000" if first else "store, all duplicates"] = cpu_us(
        lambda: [ingestor._store(d) for d in decoded], n)
    acked = {r.topic.split("/")[-2]: [f"{i:032x}"] for i, r in enumerate(raws)}
    figures["signed acknowledgement, per device acknowledged"] = cpu_us(
        lambda: ack_messages(acked, key=controller_key, prefix=PREFIX, issued_at=1), len(acked))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--database-url", default=None, help="an empty database (default: a new SQLite file)")
    args = parser.parse_args()
    url = args.database_url or f"sqlite:///{Path(tempfile.mkdtemp(prefix='edgefleet-stages-')) / 'c.db'}"
    engine = make_engine(url)
    create_schema(engine)
    with session_scope(engine) as session:
        for i in range(args.devices):
            device_id = f"dev-{i:05d}"
            _, token = devices.create_enrollment_token(session, actor="bench", now=time.time(), device_id=device_id)
            devices.enroll(session, token=token, device_id=device_id, now=time.time(), require_key=True,
                           public_key_pem=public_key_pem(device_key(device_id).public_key()).decode())
    raws = [Raw(t, p, time.time()) for t, p in payloads(PREFIX, args.messages, args.devices)]
    ingestor = Ingestor(engine=engine, prefix=PREFIX, metrics=ControllerMetrics(), on_acked=lambda acked: None)
    batches = [raws[i:i + BATCH] for i in range(0, len(raws), BATCH)]
    keys = [ingestor._keys(b) for b in batches]
    n = len(raws)
    stages: dict[str, list[float]] = {}
    for round_ in range(args.repeats):
        for name, value in one_round(ingestor, raws, batches, keys, first=round_ == 0).items():
            stages.setdefault(name, []).append(value)
    print(f"{n} telemetry windows of {len(raws[0].payload)} bytes, {args.devices} devices, {engine.dialect.name}, "
          f"CPU per message (acknowledgement: per device), medians of {args.repeats} rounds "
          "(store: first round stores, later ones re-store):")
    for name, values in stages.items():
        print(f"  {name:52s} {statistics.median(values):7.1f} us")
    ref, fast = (statistics.median(stages[k]) for k in ("reference decode (json + validation)", "decode (fast path)"))
    print(f"  fast decode / reference decode: {fast / ref:.2f}x the CPU")
    sodium, openssl = (statistics.median(stages[k]) for k in ("device signature check",
                                                              "signature check, OpenSSL (cryptography; before)"))
    print(f"  libsodium check / OpenSSL check: {sodium / openssl:.2f}x the CPU")


if __name__ == "__main__":
    main()
