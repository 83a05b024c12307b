"""One controller process for tests/cloud/test_rollout_postgres_locking.py: on the database given,
say it is ready, wait for the go file, then run ``advance_rollouts`` passes (each followed by publishing what it
stored, as the reconciler does) and write every order it published as a JSON line."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from edgefleet.cloud.controller import Controller
from edgefleet.cloud.services.rollouts import service as rollouts
from edgefleet.cloud.settings import ControllerSettings
from edgefleet.protocol.messages import decode


class RecordingTransport:
    connected = True

    def __init__(self) -> None:
        self.orders: list[dict[str, object]] = []

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def publish(self, topic: str, payload: bytes) -> bool:
        signed = decode("cmd", payload).order.signed
        self.orders.append({"device_id": signed.device_id, "deployment_id": signed.deployment_id,
                            "sequence": signed.sequence})
        return True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--go", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--passes", type=int, default=20)
    args = parser.parse_args()
    transport = RecordingTransport()
    controller = Controller(ControllerSettings(data_dir=args.data_dir, database_url=args.database_url,
                                               broker_url="mqtt://127.0.0.1:1", public_url="http://controller.test"),
                            transport_factory=lambda url, on_message: transport, reconcile_in_background=False)
    controller.start()
    with controller.session() as session:   # connected, schema and mappings warm: ready to race
        rollouts.list_rollouts(session)
    args.out.with_suffix(".ready").touch()
    deadline = time.monotonic() + 60
    while not args.go.exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    advanced = [len(controller.advance_rollouts()) for _ in range(args.passes)]
    controller.stop()
    args.out.write_text(json.dumps({"orders": transport.orders, "advanced": advanced}))


if __name__ == "__main__":
    main()
