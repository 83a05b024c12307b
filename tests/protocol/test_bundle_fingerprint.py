"""The bundle fingerprint (protocol/bundle_reader.py ``Source.fingerprint``) and the check-only mode of
``verify_bundle_file(keep_files=False)``: what lets the agent verify a download in one sha256 pass and
bind its slot's copy to it without hashing the file twice. Any byte changed, added or cut off is refused
by a verification against the fingerprint, as by one against the whole-file digest."""

from __future__ import annotations

import hashlib
import io
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_bundle_streaming import _tamperings, outcome, split, write

from edgefleet.protocol import keys
from edgefleet.protocol.bundle import pack, verify_bundle, verify_bundle_file
from edgefleet.protocol.errors import ConfigError, DigestMismatchError, VerificationError

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.function_scoped_fixture])


def test_every_reader_computes_the_same_fingerprint_and_it_is_not_the_digest(built, trusted_release, tmp_path):
    path = write(tmp_path, built.data)
    fingerprints = {
        verify_bundle(built.data, trusted=trusted_release).fingerprint,
        verify_bundle(built.data, trusted=trusted_release, expected_digest=built.digest).fingerprint,
        verify_bundle_file(path, trusted=trusted_release).fingerprint,
        verify_bundle_file(path, trusted=trusted_release, keep_files=False).fingerprint,
        verify_bundle_file(path, trusted=trusted_release, out_dir=tmp_path / "staging").fingerprint,
        verify_bundle_file(path, trusted=trusted_release, expected_digest=built.digest).fingerprint,
    }
    assert len(fingerprints) == 1
    (fingerprint,) = fingerprints
    assert len(fingerprint) == 64 and fingerprint != built.digest != hashlib.sha256(b"").hexdigest()


def test_check_only_keeps_just_the_arrays_and_judges_like_every_other_reader(built, release_key, trusted_release,
                                                                             tmp_path):
    checked = verify_bundle_file(write(tmp_path, built.data), trusted=trusted_release, keep_files=False)
    assert checked.manifest == built.manifest
    assert sorted(checked.files) == sorted(f.path for f in built.manifest.files
                                           if f.path.startswith(("smoke/", "profile/")))
    assert checked.smoke_test().expected.keys() == built.smoke.expected.keys()
    for i, (what, data) in enumerate(_tamperings(built, release_key).items()):
        path = write(tmp_path, data, f"{i}.bundle")
        expected = outcome(lambda p=path: verify_bundle_file(p, trusted=trusted_release))
        assert isinstance(expected[0], type) and issubclass(expected[0], VerificationError), what
        assert outcome(lambda p=path: verify_bundle_file(p, trusted=trusted_release, keep_files=False)) == expected


def test_keep_files_false_with_an_out_dir_is_a_precise_error(built, trusted_release, tmp_path):
    with pytest.raises(ConfigError) as ei:
        verify_bundle_file(write(tmp_path, built.data), trusted=trusted_release, keep_files=False,
                           out_dir=tmp_path / "s")
    assert ei.value.where == "verify_bundle_file" and ei.value.hint and not (tmp_path / "s").exists()


def test_bytes_outside_the_members_change_the_fingerprint(built, trusted_release, tmp_path):
    """What a verification without the digest accepts (bundle_streaming ``test_bytes_outside_the_members...``)
    a verification against the fingerprint refuses: a cut end-of-archive block, bytes appended, a changed
    trailer byte, another genuine signature."""
    fingerprint = verify_bundle(built.data, trusted=trusted_release).fingerprint
    manifest, sigs, stored = split(built.data)
    trailer = bytearray(built.data)
    trailer[-3] = 7
    variants = {"cut": built.data[:-2], "appended": built.data + b"\0" * 512, "trailer": bytes(trailer),
                "signed again": pack(manifest, [*sigs, keys.sign(keys.generate_private_key(), manifest)], stored)}
    for what, data in variants.items():
        path = write(tmp_path, data, what)
        assert verify_bundle_file(path, trusted=trusted_release).manifest == built.manifest, what
        with pytest.raises(DigestMismatchError) as ei:
            verify_bundle_file(path, trusted=trusted_release, expected_fingerprint=fingerprint)
        assert ei.value.where == "bundle" and "recorded when it was verified" in str(ei.value), what
    assert verify_bundle_file(write(tmp_path, built.data), trusted=trusted_release,
                              expected_fingerprint=fingerprint).manifest == built.manifest


@FAST
@given(changes=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=3))
def test_any_changed_byte_is_refused_against_the_fingerprint(built, trusted_release, changes):
    data = bytearray(built.data)
    for where, value in changes:
        data[where % len(data)] = value
    fingerprint = verify_bundle(built.data, trusted=trusted_release).fingerprint
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), bytes(data))
        if bytes(data) == built.data:
            assert verify_bundle_file(path, trusted=trusted_release,
                                      expected_fingerprint=fingerprint).manifest == built.manifest
            return
        with pytest.raises(VerificationError):
            verify_bundle_file(path, trusted=trusted_release, expected_fingerprint=fingerprint)


def test_the_fingerprint_covers_the_headers_of_the_files(built, trusted_release, tmp_path):
    """A header field no check reads (mtime), rewritten with a valid checksum: accepted without a digest,
    refused against the fingerprint."""
    with tarfile.open(fileobj=io.BytesIO(built.data)) as tar:
        model = tar.getmember("files/model.onnx")
    data = bytearray(built.data)
    header = tarfile.TarInfo.frombuf(bytes(data[model.offset:model.offset + 512]), "utf-8", "surrogateescape")
    header.mtime = 12345
    data[model.offset:model.offset + 512] = header.tobuf(tarfile.USTAR_FORMAT)
    path = write(tmp_path, bytes(data))
    assert verify_bundle_file(path, trusted=trusted_release).manifest == built.manifest
    fingerprint = verify_bundle(built.data, trusted=trusted_release).fingerprint
    with pytest.raises(DigestMismatchError):
        verify_bundle_file(path, trusted=trusted_release, expected_fingerprint=fingerprint)
