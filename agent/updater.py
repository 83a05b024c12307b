"""Runs the update state machine: verified orders in, side effects and status reports out.

Every move goes through :meth:`Updater._move`, which consults ``TRANSITIONS``, persists the
record (fsync + ``os.replace``) and enqueues a status report, and only then lets the new
state's side effect run. On start, :meth:`Updater.boot` looks at the persisted record and
resumes (download, verify, stage are idempotent) or rolls back (a restart during activation or
health check never trusts the half-activated model). Clock, sleep, randomness and the
downloader are injected.
"""

from __future__ import annotations

import hashlib
import logging
import random
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.agent.backoff import delay
from edgefleet.agent.delegations import DelegationStore
from edgefleet.agent.download import download
from edgefleet.agent.inference import LoadedModel, Predictor, load_model, smoke_test
from edgefleet.agent.memory import release_memory
from edgefleet.agent.slots import Slots
from edgefleet.agent.statemachine import POST_ACTIVATION, PRE_ACTIVATION, TERMINAL, E, RecordStore, next_state
from edgefleet.agent.url_policy import UrlPolicy
from edgefleet.protocol.bundle import BundleLimits, VerifiedBundle, verify_bundle_file
from edgefleet.protocol.errors import (
    DigestMismatchError,
    EdgeFleetError,
    InferenceError,
    NoSpaceError,
    SizeLimitError,
    TransportError,
    VerificationError,
)
from edgefleet.protocol.files import atomic_write
from edgefleet.protocol.keys import TrustedKeys
from edgefleet.protocol.manifest import DeviceFacts, check_target
from edgefleet.protocol.messages import DeploymentOrder, SignedOrder, StatusReport
from edgefleet.protocol.orders import verify_order
from edgefleet.protocol.vocabulary import OrderAction, Outcome, Reason, UpdateState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpdatePolicy:
    update_timeout_s: float = 3600.0
    download_attempts: int = 8
    download_timeout_s: float = 30.0
    retry_base_s: float = 1.0
    retry_cap_s: float = 60.0
    health_check_inferences: int = 10
    health_check_timeout_s: float = 60.0
    max_bundle_bytes: int = 512 * 1024 * 1024
    pause_in: frozenset[str] = frozenset()
    """Fault injection for tests: after persisting one of these states, stop before its side
    effect (so a test can kill the process exactly there)."""
    urls: UrlPolicy | None = None
    """Where bundle URLs may point (agent/url_policy.py); None: not checked (unit tests with a fake
    downloader). The daemon always sets it."""


def report_id(device_id: str, deployment_id: str, sequence: int, state: str, attempt: int, final: bool) -> str:
    """Deterministic message id: a re-sent report after a restart de-duplicates. The device id is
    part of it: devices of one deployment share deployment id and sequence numbers."""
    key = f"{device_id}\0{deployment_id}\0{sequence}\0{state}\0{attempt}\0{final}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


class Updater:
    def __init__(self, *, device_id: str, state_dir: Path, slots: Slots, predictor: Predictor,
                 release_keys: TrustedKeys, controller_keys: TrustedKeys, facts: DeviceFacts,
                 report: Callable[[StatusReport], None], policy: UpdatePolicy = UpdatePolicy(),
                 clock: Callable[[], float] = time.time, rng: random.Random | None = None,
                 downloader: Callable[..., Path] = download, sleep: Callable[[float], object] | None = None,
                 threaded: bool = True, max_binned_rows: int = 16384) -> None:
        self.device_id = device_id
        self.store = RecordStore(state_dir / "update.json")
        self.downloads = state_dir / "downloads"
        self.downloads.mkdir(parents=True, exist_ok=True)
        self.slots = slots
        self.predictor = predictor
        self.release_keys = release_keys
        self.controller_keys = controller_keys
        self.delegations = DelegationStore(state_dir / "delegations.json", trusted=release_keys, clock=clock)
        """The newest delegations document accepted: bundles signed by a delegated key are judged with it."""
        self.facts = facts
        self.report = report
        self.policy = policy
        self.clock = clock
        self.rng = rng or random.Random()
        self.downloader = downloader
        self.max_binned_rows = max_binned_rows
        self.record = self.store.load()
        self.trace: list[str] = []
        self._stop = threading.Event()
        self.sleep = sleep or self._stop.wait
        self.threaded = threaded
        self._cancel = threading.Event()
        self._lock = threading.RLock()
        self._worker: threading.Thread | None = None
        self._bytes_done: int | None = None

    # ------------------------------------------------------------------ bookkeeping

    @property
    def busy(self) -> bool:
        return self.record.state not in TERMINAL

    def _order(self) -> DeploymentOrder:
        return SignedOrder.model_validate(self.record.order).signed

    def _move(self, event: E, **changes: Any) -> UpdateState:
        old = self.record.state
        new = next_state(old, event)
        final = new in TERMINAL
        with self._lock:
            record = self.record.model_copy(update={**changes, "state": new, "final_reported": not final})
            self.store.save(record)          # persisted BEFORE the new state's side effect
            self.record = record
        self.trace.append(new.value)
        log.info("update %s -> %s on %s device=%s deployment=%s attempt=%d%s", old.value, new.value, event.value,
                 self.device_id, record.deployment_id, record.attempt,
                 f" reason={record.reason}" if record.reason else "")
        if not final:
            self._send_report(final=False)
        return new

    def _send_report(self, *, final: bool) -> None:
        r = self.record
        order = self._order() if r.order else None
        report = StatusReport(
            msg_id=report_id(self.device_id, r.deployment_id or "", r.sequence, r.state.value, r.attempt, final),
            device_id=self.device_id, deployment_id=r.deployment_id or "", sequence=r.sequence,
            state=r.state, final=final, outcome=r.outcome if final else None,
            reason=r.reason if final else None, detail=r.detail or None,
            bytes_done=self._bytes_done, bytes_total=order.bundle_size if order else None,
            bundle_digest=order.bundle_digest if order else None, attempt=r.attempt)
        self.report(report)

    def _finish(self) -> None:
        """Terminal-state side effects (idempotent), then the final report, exactly once."""
        r = self.record
        if r.final_reported:
            return
        if r.state == UpdateState.ROLLED_BACK:
            self._restore_previous()
        if r.state in (UpdateState.COMMITTED, UpdateState.FAILED, UpdateState.ROLLED_BACK, UpdateState.CANCELLED):
            for leftover in self.downloads.iterdir():
                if leftover.is_dir():  # a staging directory an older agent's verification left
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)
        self._send_report(final=True)
        with self._lock:
            self.record = self.record.model_copy(update={"final_reported": True})
            self.store.save(self.record)
        log.info("update finished: %s outcome=%s reason=%s device=%s deployment=%s", r.state.value, r.outcome,
                 r.reason, self.device_id, r.deployment_id)

    def _refuse(self, deployment_id: str, sequence: int, exc: EdgeFleetError) -> None:
        log.warning("order refused: %s (%s) device=%s deployment=%s", exc.code, exc, self.device_id, deployment_id)
        self.report(StatusReport(
            msg_id=report_id(self.device_id, deployment_id, sequence, Outcome.REFUSED, 0, True),
            device_id=self.device_id, deployment_id=deployment_id or "?", sequence=sequence, state=self.record.state,
            final=True, outcome=Outcome.REFUSED, reason=exc.code, detail=str(exc)[:2000]))

    # ------------------------------------------------------------------ entry points

    def boot(self) -> None:
        """Bring the device to a consistent state after a start (or a power cut)."""
        r = self.record
        if r.state in POST_ACTIVATION:
            can_roll_back = self.slots.has_bundle(r.previous_slot)
            if can_roll_back or r.attempt + 1 >= self.policy.download_attempts:
                self._move(E.INTERRUPTED, outcome=Outcome.ROLLED_BACK, reason=Reason.INTERRUPTED,
                           detail=f"agent restarted during {r.state.value}; "
                                  + ("previous model restored" if can_roll_back else "no previous model to restore"))
            else:  # nothing to roll back to: activate and health-check the new bundle again
                self._move(E.REACTIVATE, attempt=r.attempt + 1)
        if self.record.state == UpdateState.ROLLED_BACK and not self.record.final_reported:
            # Switch back BEFORE loading anything: the new model may be what crashed us.
            prev = self.record.previous_slot
            self.slots.switch(prev if self.slots.has_bundle(prev) else None)
        if self.predictor.model is None:
            self._load_active()
        if self.record.state in TERMINAL:
            self._finish()
        else:
            if self.record.state in PRE_ACTIVATION:
                if self.record.attempt + 1 >= self.policy.download_attempts:
                    self._move(E.FAIL, outcome=Outcome.FAILED, reason=Reason.INTERRUPTED,
                               detail="agent restarted too often during this update")
                    self._finish()
                    return
                self._move(E.INTERRUPTED, attempt=self.record.attempt + 1)
            self._start_worker()

    def submit(self, signed: SignedOrder) -> None:
        """Handle a signed order from the cmd topic (never raises)."""
        order = signed.signed
        with self._lock:
            if self.record.order is not None and self.record.order == signed.model_dump(mode="json"):
                # The controller re-sends an order the device may have missed (e.g. one published
                # before its first connection). Already accepted: answer with where it stands.
                log.info("order %s/%d received again; re-reporting state %s device=%s", order.deployment_id,
                         order.sequence, self.record.state.value, self.device_id)
                self._send_report(final=self.record.state in TERMINAL)
                return
            try:
                verified = verify_order(signed, trusted=self.controller_keys, device_id=self.device_id,
                                        last_sequence=self.record.last_sequence, now=self.clock())
            except VerificationError as exc:
                self._refuse(order.deployment_id, order.sequence, exc)
                return
            if verified.action == OrderAction.CANCEL:
                self.record = self.record.model_copy(update={"last_sequence": verified.sequence})
                self.store.save(self.record)
                if self.busy and self.record.deployment_id == verified.deployment_id \
                        and self.record.state in PRE_ACTIVATION:
                    self._cancel.set()
                else:
                    log.info("cancel for %s ignored: not in progress (state %s)", verified.deployment_id,
                             self.record.state.value)
                return
            if self.busy:
                self._refuse(verified.deployment_id, verified.sequence,
                             EdgeFleetError(f"update {self.record.deployment_id} is in progress", code=Reason.BUSY))
                return
            now = self.clock()
            current = self.slots.active()
            self._cancel.clear()
            self._bytes_done = None
            self._move(E.ACCEPT, last_sequence=verified.sequence, deployment_id=verified.deployment_id,
                       sequence=verified.sequence, order=signed.model_dump(mode="json"), attempt=0,
                       started_at=now, deadline=now + self.policy.update_timeout_s,
                       previous_slot=current, target_slot=self.slots.inactive(), outcome=None, reason=None,
                       detail=None)
            self._start_worker()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        worker = self._worker
        if worker is not None:
            worker.join(timeout)

    # ------------------------------------------------------------------ the loop

    def _start_worker(self) -> None:
        if not self.threaded:
            return  # the caller drives run() (unit tests)
        self._worker = threading.Thread(target=self.run, name="updater", daemon=True)
        self._worker.start()

    def run(self) -> None:
        """Step until a terminal state (or until stopped: the record is already persisted)."""
        steps = {UpdateState.DOWNLOADING: self._download, UpdateState.VERIFYING: self._verify,
                 UpdateState.STAGED: self._stage, UpdateState.ACTIVATING: self._activate,
                 UpdateState.HEALTH_CHECK: self._health_check}
        while not self._stop.is_set():
            state = self.record.state
            if state in TERMINAL:
                if state.value in self.policy.pause_in:
                    return self._pause(state)
                self._finish()
                return
            if state.value in self.policy.pause_in:
                return self._pause(state)
            if self.clock() >= self.record.deadline:
                self._move(E.TIMEOUT, outcome=Outcome.FAILED if state in PRE_ACTIVATION else Outcome.ROLLED_BACK,
                           reason=Reason.TIMEOUT,
                           detail=f"update did not finish within {self.policy.update_timeout_s:g} s")
                continue
            if self._cancel.is_set() and state in PRE_ACTIVATION:
                self._move(E.CANCEL, outcome=Outcome.CANCELLED, reason=Reason.CANCELLED,
                           detail="cancelled by the controller")
                continue
            try:
                steps[state]()
            except Exception as exc:  # a bug must still end in a reported final state
                log.exception("update step %s crashed device=%s deployment=%s", state.value, self.device_id,
                              self.record.deployment_id)
                event = E.FAIL if state in PRE_ACTIVATION else E.UNHEALTHY
                self._move(event, outcome=Outcome.FAILED if event is E.FAIL else Outcome.ROLLED_BACK,
                           reason=Reason.INTERNAL_ERROR, detail=f"{type(exc).__name__}: {exc}"[:2000])

    def _pause(self, state: UpdateState) -> None:
        log.warning("fault injection: pausing in state %s", state.value)
        (self.downloads.parent / f"paused-{state.value}").touch()
        if self.threaded:
            self._stop.wait()

    def _bundle_file(self) -> Path:
        return self.downloads / f"{self._order().bundle_digest}.bundle"

    def _fingerprint_file(self) -> Path:
        """The fingerprint the verifying step recorded for the download (the staging step puts it in the slot)."""
        return self.downloads / f"{self._order().bundle_digest}.fingerprint"

    def _fail(self, exc: EdgeFleetError) -> None:
        outcome = Outcome.REFUSED if isinstance(exc, VerificationError) else Outcome.FAILED
        self._move(E.FAIL, outcome=outcome, reason=exc.code, detail=str(exc)[:2000])

    def _download(self) -> None:
        order = self._order()
        # verify_order refuses install orders without a size or a URL
        assert order.bundle_size is not None and order.bundle_url is not None
        if order.bundle_size > self.policy.max_bundle_bytes:
            self._fail(SizeLimitError(f"bundle of {order.bundle_size} bytes exceeds this device's limit of "
                                      f"{self.policy.max_bundle_bytes}", where="order.bundle_size"))
            return
        deadline = self.record.deadline

        def progress(n: int) -> None:
            self._bytes_done = n

        urls = self.policy.urls
        checked = {"check_url": urls.check} if urls is not None else {}
        try:
            if urls is not None:   # before anything is read, and again for every redirect
                urls.check(order.bundle_url)
            self.downloader(order.bundle_url, self._bundle_file(), expected_size=order.bundle_size,
                            expected_sha256=order.bundle_digest, timeout=self.policy.download_timeout_s,
                            progress=progress, **checked,
                            should_stop=lambda: self._stop.is_set() or self.clock() >= deadline
                            or self._cancel.is_set())
        except (VerificationError, NoSpaceError) as exc:   # not retried (a full disk rarely frees itself)
            self._bundle_file().with_name(self._bundle_file().name + ".part").unlink(missing_ok=True)
            self._fail(exc)
            return
        except TransportError as exc:
            if self._stop.is_set() or exc.code == "stopped":
                return
            attempt = self.record.attempt + 1
            if attempt >= self.policy.download_attempts:
                self._fail(exc)
                return
            wait = delay(attempt - 1, self.rng, base=self.policy.retry_base_s, cap=self.policy.retry_cap_s)
            log.info("download failed (%s); retry %d in %.1f s device=%s deployment=%s", exc, attempt, wait,
                     self.device_id, self.record.deployment_id)
            self._move(E.RETRY, attempt=attempt, reason=exc.code, detail=str(exc)[:2000])
            self.sleep(min(wait, max(0.0, deadline - self.clock())))
            return
        self._bytes_done = order.bundle_size
        self._move(E.DOWNLOADED, reason=None, detail=None)

    def _verify_file(self, path: Path, order: DeploymentOrder, *, digest: str | None = None,
                     fingerprint: str | None = None, keep_files: bool = True) -> VerifiedBundle:
        bundle = verify_bundle_file(path, trusted=self.release_keys, expected_digest=digest,
                                    expected_fingerprint=fingerprint, expected_size=order.bundle_size,
                                    keep_files=keep_files,
                                    limits=BundleLimits(max_bundle_bytes=self.policy.max_bundle_bytes),
                                    delegation=self.delegations.check(hardware_class=self.facts.hardware_class))
        check_target(bundle.manifest, self.facts)
        if bundle.delegated is not None:  # a newer document inside the bundle is kept (verified above)
            self.delegations.offer(bundle.delegated.document, source=f"{bundle.manifest.name} delegations.json")
        return bundle

    def _verify(self) -> None:
        order = self._order()
        try:
            # Streamed from disk, each file hashed as it goes by and dropped: memory does not grow with the
            # bundle, and the slot keeps the bundle file, loaded (and verified) from there. The downloader
            # hashed these bytes while streaming and only moved them into place once size and sha256
            # matched the order: no whole-file pass here (docs/security.md §2 says why that is enough).
            bundle = self._verify_file(self._bundle_file(), order, keep_files=False)
        except FileNotFoundError:
            self._fail(TransportError("downloaded bundle vanished", code=Reason.MISSING_DOWNLOAD))
            return
        except VerificationError as exc:
            self._bundle_file().unlink(missing_ok=True)
            self._fail(exc)
            return
        assert bundle.fingerprint is not None  # every verification of a file computes it
        atomic_write(self._fingerprint_file(), bundle.fingerprint.encode())
        m = bundle.manifest
        via = f" delegation {bundle.delegated.delegation.name!r}" if bundle.delegated is not None else ""
        log.info("bundle %s %s build %d verified (signed by %s%s) device=%s deployment=%s", m.name, m.version,
                 m.build, ",".join(sorted(bundle.signed_by)), via, self.device_id, self.record.deployment_id)
        self._move(E.VERIFIED)

    def _stage(self) -> None:
        slot, digest = self.record.target_slot, self._order().bundle_digest
        assert slot is not None and digest is not None  # set on accept; verify_order refuses orders without a digest
        try:
            fingerprint: str | None = self._fingerprint_file().read_text().strip()
        except FileNotFoundError:
            fingerprint = None   # verified by an agent that recorded none: loads check the whole digest
        try:
            self.slots.install(slot, self._bundle_file(), digest, fingerprint)
        except FileNotFoundError:
            self._fail(TransportError("downloaded bundle vanished", code=Reason.MISSING_DOWNLOAD))
            return
        except OSError as exc:
            self._fail(EdgeFleetError(f"cannot write slot {self.record.target_slot}: {exc.strerror}",
                                      code=Reason.INSTALL_FAILED))
            return
        self._move(E.INSTALLED)

    def _activate(self) -> None:
        slot = self.record.target_slot
        assert slot is not None  # set when the order was accepted
        try:
            model = self._load_slot(slot, self._order())
        except (EdgeFleetError, OSError) as exc:
            code = exc.code if isinstance(exc, EdgeFleetError) else Reason.LOAD_FAILED
            self._move(E.UNHEALTHY, outcome=Outcome.ROLLED_BACK, reason=code, detail=str(exc)[:2000])
            return
        self.slots.switch(slot)
        self.predictor.activate(model)
        release_memory()
        n, timeout = self._health_window()
        wait = f", then up to {n} live inferences within {timeout:g} s" if n else ""
        self._move(E.ACTIVATED, reason=None,
                   detail=f"health check: the bundle's smoke test{wait}; commits when they pass")

    def _health_window(self) -> tuple[int, float]:
        """How many live inferences to wait for after the smoke test, and for how long at most: the
        order's ``health_check`` if it has one, else this device's configuration; never past the
        update's deadline."""
        spec = self._order().health_check
        n, timeout = (spec.inferences, float(spec.timeout_s)) if spec is not None else \
            (self.policy.health_check_inferences, self.policy.health_check_timeout_s)
        return n, min(timeout, max(0.0, self.record.deadline - self.clock()))

    def _health_check(self) -> None:
        model = self.predictor.model
        if model is None or model.installed.slot != self.record.target_slot:
            self._move(E.UNHEALTHY, outcome=Outcome.ROLLED_BACK, reason=Reason.NOT_ACTIVE,
                       detail="new model is not serving")
            return
        try:
            smoke_test(model)
        except InferenceError as exc:
            self._move(E.UNHEALTHY, outcome=Outcome.ROLLED_BACK, reason=exc.code, detail=str(exc)[:2000])
            return
        n, timeout = self._health_window()
        if n:
            end = time.monotonic() + timeout
            ok, errors = model.wait_live(n, 0)
            while ok < n and not errors and not self._stop.is_set() and time.monotonic() < end:
                ok, errors = model.wait_live(n, min(0.5, end - time.monotonic()))
            if self._stop.is_set():
                return
            if errors:
                self._move(E.UNHEALTHY, outcome=Outcome.ROLLED_BACK, reason=Reason.LIVE_INFERENCE_FAILED,
                           detail=f"{errors} of the first {ok + errors} live inferences failed")
                return
            if ok < n:
                log.info("health check: %d of %d live inferences seen in %.0f s, none failed; committing "
                         "device=%s deployment=%s", ok, n, timeout, self.device_id, self.record.deployment_id)
        self._move(E.HEALTHY, outcome=Outcome.COMMITTED,
                   detail=f"{model.installed.name} {model.installed.version} serving")

    # ------------------------------------------------------------------ models on disk

    def _load_slot(self, slot: str, order: DeploymentOrder | None = None) -> LoadedModel:
        # Streamed from the slot's bundle file and verified again (signature, archive, every file's size and
        # sha256), bound to the bundle verified at download by the fingerprint recorded then: one pass over
        # the bytes. A slot without a fingerprint (staged by an older agent) is checked with its whole-file
        # digest instead, and gets one. The files (the model the runtime loads) come back in memory, the
        # archive is never held.
        path = self.slots.bundle_path(slot)
        fingerprint = self.slots.fingerprint(slot)
        if order is not None:
            digest = order.bundle_digest
            held = self.slots.digest(slot)
            if held != digest:
                raise DigestMismatchError(f"slot {slot} holds bundle {held}, the order names {digest}",
                                          where=f"slot {slot}", hint="stage the bundle again")
            bundle = self._verify_file(path, order, digest=None if fingerprint else digest, fingerprint=fingerprint)
        else:
            digest = self.slots.digest(slot)
            limits = BundleLimits(max_bundle_bytes=max(self.policy.max_bundle_bytes, path.stat().st_size))
            bundle = verify_bundle_file(path, trusted=self.release_keys, expected_fingerprint=fingerprint,
                                        expected_digest=None if fingerprint else digest, limits=limits,
                                        delegation=self.delegations.check(hardware_class=self.facts.hardware_class,
                                                                          installing=False))
        # An accepted order carries a digest (verify_order); a slot is only loaded with one (has_bundle).
        assert digest is not None and bundle.fingerprint is not None
        if fingerprint is None:
            self.slots.record_fingerprint(slot, bundle.fingerprint)
        return load_model(bundle, digest=digest, slot=slot, window_start=self.clock(),
                          max_binned_rows=self.max_binned_rows)

    def _load_active(self) -> None:
        slot = self.slots.active()
        if slot is None or not self.slots.has_bundle(slot):
            log.info("no model installed device=%s", self.device_id)
            return
        try:
            model = self._load_slot(slot)
            self.predictor.activate(model)
            release_memory()
            log.info("serving %s %s from slot %s device=%s", model.installed.name, model.installed.version, slot,
                     self.device_id)
        except (EdgeFleetError, OSError) as exc:
            log.error("cannot load the model in slot %s: %s device=%s", slot, exc, self.device_id)

    def _restore_previous(self) -> None:
        prev = self.record.previous_slot
        current = self.predictor.model
        self.slots.switch(prev if self.slots.has_bundle(prev) else None)
        if current is not None and current.installed.slot == prev:
            return
        self.predictor.activate(None)
        if prev is not None:
            self._load_active()
