"""Storing a batch of status reports and heartbeats from many devices ends every deployment target as
storing them one message at a time does (final states, outcomes, history, the deployments' roll-up and
its time), on SQLite and PostgreSQL; and the statements a batch issues do not grow with its reports
(the targets are loaded in one query, each deployment is rolled up once: issue 12); and a second controller
storing a report of a target a batch holds waits for that batch, then sees what it stored."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from edgefleet.cloud.mqtt.decoding import Decoded
from edgefleet.cloud.mqtt.ingest import BatchResult, store_batch
from edgefleet.cloud.services import deployments
from edgefleet.cloud.store.engine import create_schema, make_engine, session_scope
from edgefleet.cloud.store.tables import Bundle, Deployment, DeploymentTarget, Device
from edgefleet.cloud.vocabulary import DeploymentStatus, TargetState
from edgefleet.protocol.messages import Message, State, StatusReport
from edgefleet.protocol.vocabulary import DeviceStatus, Outcome, UpdateState

from testkit import postgres_database, wait_until

T0 = 1000.0
"""When the targets were last updated (their orders sent); the messages arrive from ``T0 + 100``."""
HEARTBEAT_S = 30.0


@pytest.fixture(params=["sqlite", "postgresql"])
def new_engine(request, tmp_path) -> Iterator[Callable[[], Engine]]:
    """Engines on fresh databases of one kind, at head."""
    with contextlib.ExitStack() as stack:
        def make() -> Engine:
            if request.param == "sqlite":
                url = f"sqlite:///{tmp_path / f'controller-{len(engines)}.db'}"
            else:
                url = stack.enter_context(postgres_database())
            engine = make_engine(url)
            stack.callback(engine.dispose)
            create_schema(engine)
            engines.append(engine)
            return engine

        engines: list[Engine] = []
        yield make


def _fleet(engine: Engine, layout: dict[str, int]) -> dict[str, list[str]]:
    """One deployment per ``layout`` entry with that many devices, every target sent at ``T0``, sequence 7;
    the device ids of each deployment."""
    members: dict[str, list[str]] = {}
    with session_scope(engine) as session:
        bundle = Bundle(digest="b" * 64, name="batch", version="1.0.0", build=1, runtime="onnx", size=1,
                        uploaded_at=T0)
        session.add(bundle)
        session.flush()
        for deployment_id, n in layout.items():
            session.add(Deployment(id=deployment_id, bundle_id=bundle.id, bundle_digest=bundle.digest,
                                   selector={"tag": deployment_id}, created_at=T0, timeout_s=3600.0))
            members[deployment_id] = [f"{deployment_id}-{i:03d}" for i in range(n)]
            for device_id in members[deployment_id]:
                session.add(Device(id=device_id, mqtt_password_hash="$7$test", online=True, last_seen=T0,
                                   enrolled_at=T0))
        session.flush()
        for deployment_id, device_ids in members.items():
            for device_id in device_ids:
                session.add(DeploymentTarget(deployment_id=deployment_id, device_id=device_id, sequence=7,
                                             state=TargetState.SENT, published_at=T0, created_at=T0, updated_at=T0))
    return members


def _status(device_id: str, deployment_id: str, state: UpdateState, **fields: Any) -> StatusReport:
    return StatusReport(**{"device_id": device_id, "deployment_id": deployment_id, "sequence": 7, "state": state,
                           "sent_at": T0, **fields})


def _heartbeat(device_id: str, deployment_id: str, outcome: Outcome | None, sequence: int = 7) -> State:
    return State(device_id=device_id, status=DeviceStatus.ONLINE, update_state=UpdateState.COMMITTED,
                 deployment_id=deployment_id, sequence=sequence, outcome=outcome, heartbeat_interval_s=HEARTBEAT_S,
                 sent_at=T0)


def _committed(device_id: str, deployment_id: str) -> StatusReport:
    return _status(device_id, deployment_id, UpdateState.COMMITTED, final=True, outcome=Outcome.COMMITTED)


def _messages(members: dict[str, list[str]]) -> list[Message]:
    """Every path of a report through the target table, interleaved across devices as a fleet sends them."""
    mixed, done, still = members["dep-mixed"], members["dep-done"], members["dep-open"]
    rounds: list[list[Message]] = [[], [], [], []]
    for i, d in enumerate(mixed):
        kind = i % 6
        if kind == 0:    # progress, then committed
            rounds[0].append(_status(d, "dep-mixed", UpdateState.DOWNLOADING, bytes_done=10, bytes_total=100))
            rounds[1].append(_status(d, "dep-mixed", UpdateState.ACTIVATING, detail="health check: 3/5"))
            rounds[2].append(_committed(d, "dep-mixed"))
        elif kind == 1:  # failed
            rounds[1].append(_status(d, "dep-mixed", UpdateState.FAILED, final=True, outcome=Outcome.FAILED,
                                     reason="smoke_test_failed", detail="output shape"))
        elif kind == 2:  # committed, then the same final report again (ignored, in the history)
            rounds[0].append(_committed(d, "dep-mixed"))
            rounds[3].append(_committed(d, "dep-mixed"))
        elif kind == 3:  # the final report never arrives: the heartbeat ends the target
            rounds[2].append(_heartbeat(d, "dep-mixed", Outcome.COMMITTED))
        elif kind == 4:  # committed, then heartbeats naming the ended order (nothing to do), an older one
            rounds[0].append(_committed(d, "dep-mixed"))
            rounds[1].append(_heartbeat(d, "dep-mixed", Outcome.COMMITTED))
            rounds[2].append(_status(d, "dep-mixed", UpdateState.DOWNLOADING, sequence=3))
        else:            # rolled back, and a report for a deployment the controller does not know
            rounds[1].append(_status(d, "dep-mixed", UpdateState.ROLLED_BACK, final=True,
                                     outcome=Outcome.ROLLED_BACK, reason="health_check_failed"))
            rounds[2].append(_status(d, "dep-gone", UpdateState.DOWNLOADING))
    for d in done:
        rounds[0].append(_status(d, "dep-done", UpdateState.DOWNLOADING, bytes_done=1, bytes_total=2))
        rounds[2].append(_committed(d, "dep-done"))
    for i, d in enumerate(still):   # a heartbeat naming another order, one without an outcome: the targets stay open
        rounds[1].append(_heartbeat(d, "dep-open", Outcome.COMMITTED, sequence=6) if i % 2
                         else _heartbeat(d, "dep-open", None))
        rounds[2].append(_status(d, "dep-open", UpdateState.VERIFYING))
    return [m for r in rounds for m in r]


def _decoded(messages: list[Message]) -> list[Decoded]:
    return [Decoded(m.device_id, m.type, m.msg_id, T0 + 100 + k * 0.25, message=m) for k, m in enumerate(messages)]


def _store(engine: Engine, items: list[Decoded]) -> BatchResult:
    result = BatchResult()
    with session_scope(engine) as session:
        store_batch(session, items, result)
    return result


def _outcome(engine: Engine) -> dict[str, Any]:
    """Everything a report can change, of every target and deployment."""
    with Session(engine) as session:
        targets = {(t.deployment_id, t.device_id): (t.state, t.final, t.outcome, t.reason, t.detail, t.bytes_done,
                                                    t.bytes_total, t.updated_at, t.history)
                   for t in session.exec(select(DeploymentTarget))}
        deps = {d.id: (d.status, d.finished_at) for d in session.exec(select(Deployment))}
        seen = {d.id: (d.online, d.last_seen, d.update_state) for d in session.exec(select(Device))}
        progress = {d: deployments.progress(deployments.targets_of(session, deployment_id=d)) for d in deps}
    return {"targets": targets, "deployments": deps, "devices": seen, "progress": progress}


LAYOUT = {"dep-mixed": 36, "dep-done": 12, "dep-open": 4}


def test_one_batch_ends_every_target_as_one_message_at_a_time(new_engine):
    """The same messages stored one a transaction (each report rolled up as it comes), all in one batch,
    and in batches of 7: the same targets, deployments and devices; and the outcomes the reports say."""
    outcomes, stored = [], []
    for size in (1, 10_000, 7):
        engine = new_engine()
        items = _decoded(_messages(_fleet(engine, LAYOUT)))
        for start in range(0, len(items), size):
            result = _store(engine, items[start:start + size])
            assert result.rejected == {} and result.duplicates == 0
        outcomes.append(_outcome(engine))
        stored.append(items)
    alone, *batched = outcomes
    for other in batched:
        assert other == alone

    deps, progress, targets = alone["deployments"], alone["progress"], alone["targets"]
    last_done = max(i.received_at for i in stored[0]
                    if isinstance(i.message, StatusReport) and i.message.deployment_id == "dep-done")
    assert deps["dep-done"] == (DeploymentStatus.SUCCEEDED, last_done)
    assert deps["dep-mixed"][0] == DeploymentStatus.PARTIAL
    assert deps["dep-open"] == (DeploymentStatus.ACTIVE, None)
    assert progress["dep-mixed"] == {Outcome.COMMITTED: 24, Outcome.FAILED: 6, Outcome.ROLLED_BACK: 6}
    assert progress["dep-done"] == {Outcome.COMMITTED: 12}
    assert progress["dep-open"] == {UpdateState.VERIFYING: 4}
    _, final, outcome, _, detail, *_ = targets[("dep-mixed", "dep-mixed-003")]
    assert (final, outcome) == (True, Outcome.COMMITTED) and "heartbeat" in (detail or "")
    assert [e.get("ignored") for e in targets[("dep-mixed", "dep-mixed-002")][8][-2:]] == [None, True]
    older = targets[("dep-mixed", "dep-mixed-004")]
    assert older[2] == Outcome.COMMITTED and older[8][-1]["ignored"] is True and older[8][-1]["sequence"] == 3
    assert targets[("dep-mixed", "dep-mixed-000")][:3] == (UpdateState.COMMITTED, True, Outcome.COMMITTED)


def _statements(engine: Engine, items: list[Decoded]) -> int:
    count = 0

    def counted(*_args: Any) -> None:
        nonlocal count
        count += 1

    event.listen(engine, "before_cursor_execute", counted)
    try:
        _store(engine, items)
    finally:
        event.remove(engine, "before_cursor_execute", counted)
    return count


def _final_reports(members: list[str], deployment_id: str) -> list[Decoded]:
    messages: list[Message] = []
    for d in members:
        messages += [_status(d, deployment_id, UpdateState.VERIFYING), _committed(d, deployment_id),
                     _heartbeat(d, deployment_id, Outcome.COMMITTED)]
    return _decoded(messages)


def test_the_statements_of_a_batch_do_not_grow_with_its_reports(new_engine):
    """Progress, final report and heartbeat from each of N devices of a deployment, stored as one batch:
    as many statements for 60 devices as for 6 (executemany counts once), the deployment ended by both."""
    engine = new_engine()
    members = _fleet(engine, {"dep-small": 6, "dep-large": 60})
    counts = {d: _statements(engine, _final_reports(members[d], d)) for d in ("dep-small", "dep-large")}
    assert counts["dep-large"] == counts["dep-small"], counts
    with Session(engine) as session:
        assert {d.id: d.status for d in session.exec(select(Deployment))} == {
            "dep-small": DeploymentStatus.SUCCEEDED, "dep-large": DeploymentStatus.SUCCEEDED}


def _waiting_on_locks(engine: Engine) -> int:
    with engine.connect() as conn:   # a new transaction each time: pg_stat_activity is read once a transaction
        return int(conn.exec_driver_sql("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                        "AND datname = current_database()").scalar() or 0)


@pytest.mark.postgres
def test_a_second_controller_waits_for_the_batch_that_holds_a_target():
    """PostgreSQL, two controllers: one stores a device's final report and has not committed yet, the other
    gets that device's earlier progress report (shared subscriptions split one device's messages). The second
    waits on the target's row lock, then reads the final target and only notes the late report in its
    history, instead of writing 'downloading' over the committed target from what it read before."""
    with postgres_database() as url:
        engine = make_engine(url)
        create_schema(engine)
        try:
            device = _fleet(engine, {"dep-locks": 1})["dep-locks"][0]
            final, late = _decoded([_committed(device, "dep-locks"),
                                    _status(device, "dep-locks", UpdateState.DOWNLOADING, bytes_done=5)])
            second: list[BaseException | None] = []

            def store_late() -> None:
                try:
                    _store(engine, [late])
                    second.append(None)
                except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                    second.append(exc)

            with session_scope(engine) as session:
                store_batch(session, [final], BatchResult())
                waiter = threading.Thread(target=store_late)
                waiter.start()
                wait_until(lambda: _waiting_on_locks(engine), "the second batch waiting on the row lock")
            waiter.join(30)
            assert second == [None]
            with Session(engine) as session:
                target = session.exec(select(DeploymentTarget)).one()
                deployment = session.exec(select(Deployment)).one()
            assert (target.state, target.final, target.outcome) == (UpdateState.COMMITTED, True, Outcome.COMMITTED)
            assert target.history[-1]["ignored"] is True and target.history[-1]["state"] == UpdateState.DOWNLOADING
            assert (deployment.status, deployment.finished_at) == (DeploymentStatus.SUCCEEDED, final.received_at)
        finally:
            engine.dispose()
