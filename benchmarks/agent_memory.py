"""Resident memory of the real agent daemon with a model loaded, minus a bare Python process
holding the same ONNX Runtime session (both after one inference).

    .venv/bin/python benchmarks/agent_memory.py

Uses the shared Mosquitto on 127.0.0.1:1883 when it is up (the agent keeps retrying otherwise;
memory is measured either way).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from agent_common import mlp_onnx, signed_bundle  # noqa: E402

from edgefleet.agent.slots import Slots  # noqa: E402
from edgefleet.protocol.bundle import bundle_digest  # noqa: E402
from edgefleet.protocol.keys import generate_private_key, save_public_key  # noqa: E402

BARE = """
import sys, numpy as np, onnxruntime as ort
opts = ort.SessionOptions(); opts.intra_op_num_threads = 1; opts.inter_op_num_threads = 1
s = ort.InferenceSession(open(sys.argv[1], "rb").read(), sess_options=opts, providers=["CPUExecutionProvider"])
s.run(None, {"x": np.zeros((1, 256), np.float32)})
print([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1])
"""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main() -> None:
    model = mlp_onnx(256, 1024, 10, 3)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "model.onnx").write_bytes(model)
        bare = int(subprocess.run([sys.executable, "-c", BARE, str(tmp / "model.onnx")], capture_output=True,
                                  text=True, check=True).stdout.strip())

        key = generate_private_key()
        save_public_key(key.public_key(), tmp / "release.pub")
        data = signed_bundle(model, 256, key)
        (tmp / "b").write_bytes(data)
        slots = Slots(tmp / "state" / "slots")  # pre-installed, as after an update
        slots.install("a", tmp / "b", bundle_digest(data))
        slots.switch("a")
        (tmp / "agent.toml").write_text(
            f'device_id = "bench-mem"\nstate_dir = "{tmp / "state"}"\nrelease_keys = ["{tmp / "release.pub"}"]\n'
            'inference_listen = "127.0.0.1:0"\ntelemetry_interval_s = 1.0\n')
        proc = subprocess.Popen([sys.executable, "-m", "edgefleet.agent.daemon", "--config", str(tmp / "agent.toml"),
                                 "--log-level", "WARNING"])
        try:
            addr = tmp / "state" / "inference.addr"
            while not addr.exists():
                time.sleep(0.05)
            body = json.dumps({"inputs": {"x": [[0.0] * 256]}}).encode()
            for _ in range(200):
                req = urllib.request.Request(f"http://{addr.read_text()}/v1/predict", data=body,
                                             headers={"Content-Type": "application/json"})
                urllib.request.urlopen(req).read()
            time.sleep(1.5)  # one telemetry window flushed
            agent = rss_kib(proc.pid)
        finally:
            proc.terminate()
            proc.wait(20)
    print(f"model {len(model) / 1e6:.1f} MB (onnx)")
    print(f"  bare python + ORT session   {bare / 1024:7.1f} MiB")
    print(f"  edgefleet-agent (serving)   {agent / 1024:7.1f} MiB")
    print(f"  agent overhead              {(agent - bare) / 1024:7.1f} MiB   (target <= 40 MiB)")


if __name__ == "__main__":
    main()
