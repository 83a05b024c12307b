"""The device's delegations store (agent/delegations.py): only a valid, newer document replaces the
current one; it survives a restart; anything else is refused, counted and changes nothing."""

from __future__ import annotations

from edgefleet.agent.delegations import DelegationStore
from edgefleet.protocol.delegation import delegations_json, make_delegation, sign_delegations
from edgefleet.protocol.keys import generate_private_key
from edgefleet.protocol.messages import DelegationsDocument
from edgefleet.protocol.vocabulary import Reason

NOW = 1_800_000_000


def doc(keys, version: int, *, expires_at: int = NOW + 3600, signer=None):
    delegated = generate_private_key()
    body = DelegationsDocument(version=version, expires_at=expires_at, delegations=[
        make_delegation(name="retrain", public_key=delegated.public_key(), name_patterns=["tiny*"],
                        hardware_classes=["*"], expires_at=expires_at)])
    return sign_delegations(body, [signer or keys.release])


def test_newer_valid_documents_replace_the_current_one_and_survive_a_restart(tmp_path, keys):
    path = tmp_path / "delegations.json"
    store = DelegationStore(path, trusted=keys.trusted_release, clock=lambda: NOW)
    assert store.current is None
    v1, v2 = doc(keys, 1), doc(keys, 2)
    assert store.offer(v1, source="test") is None and store.current == v1
    assert store.offer(v2, source="test") is None and store.current == v2
    assert path.read_bytes() == delegations_json(v2)
    assert store.offer(v2, source="test") is None and store.refused == 0  # the same again: nothing to refuse
    again = DelegationStore(path, trusted=keys.trusted_release, clock=lambda: NOW)
    assert again.current == v2


def test_older_invalid_or_expired_documents_are_refused_counted_and_change_nothing(tmp_path, keys):
    path = tmp_path / "delegations.json"
    store = DelegationStore(path, trusted=keys.trusted_release, clock=lambda: NOW)
    v2 = doc(keys, 2)
    store.offer(v2, source="test")
    refusals = [store.offer(d, source="test") for d in (doc(keys, 1), doc(keys, 3, signer=generate_private_key()),
                                                        doc(keys, 4, expires_at=NOW))]
    assert [r.code for r in refusals] == [Reason.DELEGATION_ROLLBACK, Reason.UNKNOWN_KEY, Reason.DELEGATION_EXPIRED]
    assert store.refused == 3 and store.current == v2 and path.read_bytes() == delegations_json(v2)


def test_a_tampered_stored_document_is_ignored(tmp_path, keys):
    path = tmp_path / "delegations.json"
    path.write_bytes(delegations_json(doc(keys, 1)).replace(b'"tiny*"', b'"*"'))
    assert DelegationStore(path, trusted=keys.trusted_release).current is None
