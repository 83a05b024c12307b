"""Retraining benchmark: the controller's retraining job for the digits MLP, phase by phase, against
calling the same training function in-process.

    python benchmarks/retraining.py [--rounds 5]

A controller (SQLite, in a temp dir, no broker) holds model ``digits`` 1.0.0 (the MLP of
``edgefleet sample-models``, 512-256), its reference dataset (the digits training split), 80
captured samples (60 labelled) and the recipe of firmware-bundles/digits-mlp.toml (entry point
``edgefleet.compression.samples:retrain_digits``, static int8 + 75 % pruning, the gate), and signs
with a delegated key. Each round runs one retraining job (gather, train in a subprocess, register,
compress, bundle) and, interleaved, the baseline: ``retrain_digits`` called in this process on the
same files. The ratio train phase / in-process is the cost of the subprocess isolation (interpreter
start, imports, the ``.npz`` round trip). Medians only: the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import statistics
import tempfile
import time
import tomllib
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.cloud.controller import Controller
from edgefleet.cloud.services import datasets, model_recipes, registry, retraining, trust
from edgefleet.cloud.services.retraining_runner import EntryPoint, run_training
from edgefleet.cloud.settings import ControllerSettings
from edgefleet.cloud.store.tables import CapturedDataset, RetrainingJob
from edgefleet.cloud.vocabulary import RetrainPhase, RetrainState
from edgefleet.compression.samples import load_digits_split, retrain_digits, train_mlp
from edgefleet.protocol import keys
from edgefleet.protocol.delegation import make_delegation, sign_delegations
from edgefleet.protocol.messages import DelegationsDocument
from edgefleet.protocol.training import TrainingRequest

RECIPE = Path(__file__).resolve().parents[1] / "firmware-bundles" / "digits-mlp.toml"
CAPTURED, LABELLED = 80, 60
ACTOR = "benchmark"
NO_OP = EntryPoint(callable="builtins:print")


class _NoBroker:
    connected = False

    def start(self) -> None: ...
    def stop(self) -> None: ...

    def publish(self, topic: str, payload: bytes) -> bool:
        return False


def _npz(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _captured() -> dict[str, np.ndarray]:
    split = load_digits_split(seed=1)
    label = split.y_test[:CAPTURED].copy()
    label[LABELLED:] = -1
    now = time.time()
    return {"input:input": split.x_test[:CAPTURED], "prediction_id": np.array([f"p{i}" for i in range(CAPTURED)]),
            "sample_index": np.zeros(CAPTURED, dtype=np.int64), "at": np.linspace(now - 60, now, CAPTURED),
            "predicted": np.clip(label, 0, None), "label": label, "bundle_digest": np.array("ab" * 32)}


def _controller(root: Path, model: bytes) -> Controller:
    release, delegated = keys.generate_private_key(), keys.generate_private_key()
    settings = ControllerSettings(data_dir=root / "controller", broker_url="mqtt://127.0.0.1:1",
                                  release_key_paths=[keys.save_public_key(release.public_key(), root / "release.pub")],
                                  delegated_signing_key_path=keys.save_private_key(delegated, root / "retrain.key"))
    controller = Controller(settings, transport_factory=lambda url, on_message: _NoBroker(),
                            reconcile_in_background=False)
    now = time.time()
    expires = int(now + 86400)
    doc = DelegationsDocument(version=1, expires_at=expires, delegations=[make_delegation(
        name="retrain", public_key=delegated.public_key(), name_patterns=["digits-*"], hardware_classes=["*"],
        expires_at=expires)])
    split = load_digits_split()
    with controller.session() as session:
        trust.push_delegations(session, document=sign_delegations(doc, [release]),
                               trusted=controller.trusted_release_keys(session), actor=ACTOR, now=now)
        registry.create_model(session, name="digits", actor=ACTOR, now=now)
        registry.create_model_version(session, model_name="digits", version="1.0.0", actor=ACTOR, now=now)
        registry.attach_artifact(session, model_name="digits", version="1.0.0",
                                 incoming=controller.artifacts.put(model), store=controller.artifacts, actor=ACTOR,
                                 now=now)
        datasets.store_dataset(session, model_name="digits", incoming=controller.artifacts.put(
            _npz(x=split.x_train, y=split.y_train)), store=controller.artifacts,
            max_unpacked=settings.max_dataset_bytes, actor=ACTOR, now=now)
        model_recipes.set_recipe(session, model_name="digits", document=tomllib.loads(RECIPE.read_text()),
                                 actor=ACTOR, now=now)
        blob = controller.captures.put(_npz(**_captured()))
        controller.captures.commit(blob)
        session.add(CapturedDataset(upload_id=uuid.uuid4().hex, device_id="cam-1", bundle_digest="ab" * 32,
                                    model_name="digits", t_from=now - 60, t_to=now, samples=CAPTURED,
                                    labelled=LABELLED, blob_digest=blob.digest, size=blob.size, stored_at=now))
    return controller


def _baseline_request(root: Path, model: bytes) -> tuple[TrainingRequest, Path]:
    """The files a job's gather phase writes, for calling the entry point in this process."""
    work = root / "baseline"
    work.mkdir()
    split = load_digits_split()
    (work / "reference.npz").write_bytes(_npz(x=split.x_train, y=split.y_train))
    captured = _captured()
    (work / "captured.npz").write_bytes(_npz(**{"input:input": captured["input:input"], "label": captured["label"]}))
    (work / "parent.onnx").write_bytes(model)
    request = TrainingRequest(model="digits", parent_version="1.0.0", format="onnx", job_id=0, incident_id=None,
                              reference_dataset="-", captured_datasets=[1], work_dir=str(work),
                              reference=str(work / "reference.npz"), captured=str(work / "captured.npz"),
                              parent=str(work / "parent.onnx"), output=str(work / "output.onnx"))
    return request, request.save(work / "request.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    model = train_mlp(load_digits_split())
    with tempfile.TemporaryDirectory(prefix="edgefleet-retrain-bench-") as tmp:
        root = Path(tmp)
        controller = _controller(root, model)
        request, request_path = _baseline_request(root, model)
        phases: dict[str, list[float]] = {p: [] for p in RetrainPhase}
        totals, baseline, startup = [], [], []
        try:
            for _ in range(args.rounds):
                with controller.session() as session:
                    job_id = retraining.create_job(session, model_name="digits", actor=ACTOR, now=time.time()).id
                started = time.perf_counter()
                controller.run_retraining_jobs()
                totals.append(time.perf_counter() - started)
                with controller.session() as session:
                    job = session.get(RetrainingJob, job_id)
                    assert job is not None
                    if job.state != RetrainState.SUCCEEDED:
                        raise SystemExit(f"retraining job {job_id} failed: {job.error_code}: {job.error_message}")
                    for phase, seconds in job.timings.items():
                        phases[phase].append(seconds)
                started = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()):
                    retrain_digits(request)
                baseline.append(time.perf_counter() - started)
                started = time.perf_counter()   # the runner alone: a subprocess calling a no-op entry point
                run_training(NO_OP, request_path, timeout_s=60, memory_mb=2048)
                startup.append(time.perf_counter() - started)
        finally:
            controller.stop()
    med = {p: statistics.median(v) for p, v in phases.items()}
    print(f"retraining benchmark: digits MLP 512-256, {len(load_digits_split().x_train)} reference + {CAPTURED} "
          f"captured samples ({LABELLED} labelled), recipe {RECIPE.name}, {args.rounds} rounds, medians")
    print(f"{'phase':<34}{'seconds':>9}")
    for phase in RetrainPhase:
        print(f"  {phase:<32}{med[phase]:>9.2f}")
    print(f"  {'whole job (claim to final state)':<32}{statistics.median(totals):>9.2f}")
    print(f"  {'retrain + compress + bundle':<32}{med['train'] + med['compress'] + med['bundle']:>9.2f}")
    print(f"{'baseline: retrain_digits in-process':<34}{statistics.median(baseline):>9.2f}")
    print(f"{'runner alone (no-op entry point)':<34}{statistics.median(startup):>9.2f}")
    ratio = med["train"] / statistics.median(baseline)
    print(f"{'train phase / in-process':<34}{ratio:>8.2f}x  (the cost of the subprocess isolation: the runner, "
          "the entry point's imports, the output checks)")


if __name__ == "__main__":
    main()
