"""The device list's test fleet (tests/ui/test_ui_device_list*.py): 130 devices stored directly -- the list
reads rows, not agents -- with tags, online state, installed bundles, update states, last-seen times and
a few judged drift windows."""

from __future__ import annotations

from edgefleet.cloud.store.tables import Device, TelemetryRecord

N = 130
SPAN_S = 3600.0


def device_id(i: int) -> str:
    return f"node-{i:03d}"


def seed_devices(controller, *, now: float) -> dict[str, dict]:
    """130 devices stored directly (the list reads rows, not agents): tags north/south and gpu (every 10th),
    online unless i % 3 == 0, animals 1.2.0 (1.3.0 from 100 on), failed when i % 25 == 0, seen i minutes ago;
    drift: node-007 alarm, node-008 warn, node-009 an alarm older than the span."""
    specs = {}
    with controller.session() as session:
        for i in range(N):
            tags = ["north" if i % 2 == 0 else "south"] + (["gpu"] if i % 10 == 0 else [])
            version = "1.3.0" if i >= 100 else "1.2.0"
            spec = {"tags": tags, "online": i % 3 != 0, "version": version,
                    "state": "failed" if i % 25 == 0 else "committed", "last_seen": now - 60 * i}
            specs[device_id(i)] = spec
            session.add(Device(id=device_id(i), tags=tags, online=spec["online"], update_state=spec["state"],
                               last_seen=spec["last_seen"], enrolled_at=now - 86400, arch="aarch64", runtimes=["onnx"],
                               installed={"name": "animals", "version": version, "build": 3, "digest": "a" * 64,
                                          "runtime": "onnx", "slot": "a"}))
        for i, level, psi, age in ((7, "alarm", 0.41, 120), (8, "warn", 0.13, 120), (9, "alarm", 0.5, 2 * SPAN_S)):
            end = now - age
            session.add(TelemetryRecord(msg_id=f"w-{i}", device_id=device_id(i), window_seq=1, window_start=end - 60,
                                        window_end=end, drift_level=level, drift_psi=psi, received_at=end))
        session.commit()
    return specs
