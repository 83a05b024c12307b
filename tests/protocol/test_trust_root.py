"""Trust roots (docs/security.md §9): a new version needs the old root keys and its own; a device
walks several; rollbacks, gaps, attacker-made and expired roots are refused."""

from __future__ import annotations

import pytest

from edgefleet.protocol.delegation import raw_public_key
from edgefleet.protocol.errors import ExpiredError, RootError, RootRollbackError
from edgefleet.protocol.keys import TrustedKeys, generate_private_key
from edgefleet.protocol.messages import RoleKeys, RootDocument
from edgefleet.protocol.root import adopt_first, sign_root, trusted, verify_next, verify_self, walk

NOW = 1_800_000_000
ROOT_A, ROOT_B, RELEASE_1, RELEASE_2, CONTROLLER = (generate_private_key() for _ in range(5))


def role(*keys, threshold: int = 1) -> RoleKeys:
    return RoleKeys(keys=sorted(raw_public_key(k.public_key()) for k in keys), threshold=threshold)


def doc(version: int, *, root=(ROOT_A,), release=(RELEASE_1,), expires_at: int = NOW + 86400) -> RootDocument:
    return RootDocument(version=version, expires_at=expires_at, root=role(*root), release=role(*release),
                        controller=role(CONTROLLER))


V1 = sign_root(doc(1), [ROOT_A])
V2 = sign_root(doc(2, release=(RELEASE_2,)), [ROOT_A])                       # release key rotated
V3 = sign_root(doc(3, root=(ROOT_B,), release=(RELEASE_2,)), [ROOT_A, ROOT_B])   # root keys rotated


def test_a_device_offline_through_two_rotations_walks_them_in_order():
    newest = walk([V3, V2], known=V1.signed, now=NOW)
    assert newest.version == 3 and trusted(newest, "release").keys == TrustedKeys.of(
        [RELEASE_2.public_key()], role="release").keys
    assert walk([V1, V2, V3], known=V1.signed, now=NOW).version == 3   # what it holds again: skipped


def test_the_next_version_needs_the_old_root_keys_and_its_own():
    own_only = sign_root(doc(3, root=(ROOT_B,), release=(RELEASE_2,)), [ROOT_B])   # an attacker with the new key
    with pytest.raises(RootError, match="root keys of version 2"):
        verify_next(own_only, known=V2.signed)
    old_only = sign_root(doc(3, root=(ROOT_B,), release=(RELEASE_2,)), [ROOT_A])
    with pytest.raises(RootError, match="its own root keys"):
        verify_next(old_only, known=V2.signed)


def test_an_attacker_made_root_is_refused():
    attacker = generate_private_key()
    forged = sign_root(doc(2, root=(attacker,), release=(attacker,)), [attacker])
    with pytest.raises(RootError):
        walk([forged], known=V1.signed, now=NOW)


def test_rollbacks_and_gaps_are_refused():
    with pytest.raises(RootRollbackError):
        verify_next(sign_root(doc(2), [ROOT_A]), known=V2.signed)   # same version, other content
    assert verify_next(V2, known=V2.signed) == V2.signed              # the same root again: nothing new
    with pytest.raises(RootRollbackError):
        verify_next(V1, known=V2.signed)                               # an older version
    with pytest.raises(RootError, match="does not follow"):
        walk([V3], known=V1.signed, now=NOW)                           # version 2 missing


def test_the_newest_must_not_have_expired_but_those_between_may():
    old = sign_root(doc(2, release=(RELEASE_2,), expires_at=NOW - 10), [ROOT_A])
    fresh = sign_root(doc(3, release=(RELEASE_2,)), [ROOT_A])
    assert walk([old, fresh], known=V1.signed, now=NOW).version == 3
    with pytest.raises(ExpiredError):
        walk([old], known=V1.signed, now=NOW)


def test_a_device_without_a_root_adopts_one_its_release_keys_signed():
    release = TrustedKeys.of([RELEASE_1.public_key()], role="release")
    with pytest.raises(RootError, match="release keys this device trusts"):
        adopt_first(V1, release=release)
    co_signed = sign_root(doc(1), [ROOT_A, RELEASE_1])
    assert adopt_first(co_signed, release=release).version == 1
    assert walk([co_signed, V2], known=None, now=NOW, release=release).version == 2
    with pytest.raises(RootError):
        walk([V2], known=None, now=NOW)


def test_a_threshold_above_the_keys_listed_cannot_be_written():
    with pytest.raises(ValueError, match="threshold 2"):
        RoleKeys(keys=[raw_public_key(ROOT_A.public_key())], threshold=2)
    assert verify_self(V1) == V1.signed
