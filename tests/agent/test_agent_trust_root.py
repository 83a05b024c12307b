"""The device's trust root store: it replaces the keys every part of the agent holds, in place, keeps
the newest root across restarts, and refuses (counts, changes nothing) what does not continue it."""

from __future__ import annotations

import time

from edgefleet.agent.trust_root import RootStore
from edgefleet.protocol.delegation import raw_public_key
from edgefleet.protocol.keys import TrustedKeys, generate_private_key, key_id
from edgefleet.protocol.messages import RoleKeys, RootDocument
from edgefleet.protocol.root import root_json, sign_root

ROOT, OLD_RELEASE, NEW_RELEASE, CONTROLLER = (generate_private_key() for _ in range(4))


def _root(version: int, release) -> RootDocument:
    def role(k):
        return RoleKeys(keys=[raw_public_key(k.public_key())])
    return RootDocument(version=version, expires_at=int(time.time()) + 3600, root=role(ROOT), release=role(release),
                        controller=role(CONTROLLER))


def test_a_new_root_replaces_the_keys_the_agent_holds_and_survives_a_restart(tmp_path):
    path = tmp_path / "root.json"
    path.write_bytes(root_json(sign_root(_root(1, OLD_RELEASE), [ROOT])))
    release = TrustedKeys.of([OLD_RELEASE.public_key()], role="release")
    controller = TrustedKeys.of([], role="controller")
    store = RootStore(path, release=release, controller=controller)
    assert store.version == 1 and set(controller.keys) == {key_id(CONTROLLER.public_key())}
    assert store.offer([sign_root(_root(2, NEW_RELEASE), [ROOT])], source="test") is None
    assert set(release.keys) == {key_id(NEW_RELEASE.public_key())}   # the same object the updater holds
    again = RootStore(path, release=TrustedKeys.of([], role="release"), controller=TrustedKeys.of([], role="c"))
    assert again.version == 2 and set(again.release.keys) == {key_id(NEW_RELEASE.public_key())}


def test_a_forged_root_is_refused_and_changes_nothing(tmp_path):
    path = tmp_path / "root.json"
    path.write_bytes(root_json(sign_root(_root(1, OLD_RELEASE), [ROOT])))
    release = TrustedKeys.of([OLD_RELEASE.public_key()], role="release")
    store = RootStore(path, release=release, controller=TrustedKeys.of([], role="controller"))
    forged = sign_root(_root(2, NEW_RELEASE), [NEW_RELEASE])
    refusal = store.offer([forged], source="test")
    assert refusal is not None and refusal.code == "root_chain_broken" and store.refused == 1
    assert store.version == 1 and set(release.keys) == {key_id(OLD_RELEASE.public_key())}
