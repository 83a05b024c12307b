import base64
import hashlib
import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization

from edgefleet.protocol import keys
from edgefleet.protocol.errors import ConfigError, SignatureError, UnknownKeyError, VerificationError
from edgefleet.protocol.messages import Signature


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_private_key_file_is_0600(tmp_path):
    path = keys.save_private_key(keys.generate_private_key(), tmp_path / "sub" / "release.pem")
    assert _mode(path) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_private_key_mode_not_widened_when_replacing_a_wider_file(tmp_path):
    path = tmp_path / "k.pem"
    path.write_bytes(b"junk")
    path.chmod(0o666)
    keys.save_private_key(keys.generate_private_key(), path)
    assert _mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.pem"]


def test_save_and_load_round_trip(tmp_path):
    key = keys.generate_private_key()
    keys.save_private_key(key, tmp_path / "k.pem")
    keys.save_public_key(key.public_key(), tmp_path / "k.pub")
    loaded = keys.load_private_key(tmp_path / "k.pem")
    assert keys.key_id(loaded.public_key()) == keys.key_id(key.public_key())
    assert keys.key_id(keys.load_public_key(tmp_path / "k.pub")) == keys.key_id(key.public_key())


def test_passphrase(tmp_path):
    key = keys.generate_private_key()
    path = keys.save_private_key(key, tmp_path / "k.pem", passphrase="correct horse")
    assert b"ENCRYPTED" in path.read_bytes()
    assert _mode(path) == 0o600
    loaded = keys.load_private_key(path, passphrase="correct horse")
    assert keys.key_id(loaded.public_key()) == keys.key_id(key.public_key())


def test_wrong_or_missing_passphrase(tmp_path):
    path = keys.save_private_key(keys.generate_private_key(), tmp_path / "k.pem", passphrase="secret")
    with pytest.raises(ConfigError) as ei:
        keys.load_private_key(path, passphrase="wrong")
    assert ei.value.where == str(path)
    assert "passphrase" in ei.value.message
    with pytest.raises(ConfigError) as ei:
        keys.load_private_key(path)
    assert "encrypted" in ei.value.message and ei.value.hint


def test_passphrase_for_unencrypted_key_says_so(tmp_path):
    path = keys.save_private_key(keys.generate_private_key(), tmp_path / "k.pem")
    with pytest.raises(ConfigError) as ei:
        keys.load_private_key(path, passphrase="unneeded")
    assert "not encrypted" in ei.value.message


def test_bad_key_files(tmp_path):
    with pytest.raises(ConfigError) as ei:
        keys.load_private_key(tmp_path / "missing.pem")
    assert ei.value.where == str(tmp_path / "missing.pem")
    (tmp_path / "junk.pem").write_bytes(b"junk")
    with pytest.raises(ConfigError):
        keys.load_private_key(tmp_path / "junk.pem")
    with pytest.raises(ConfigError):
        keys.load_public_key(tmp_path / "junk.pem")
    with pytest.raises(ConfigError):
        keys.load_public_key(tmp_path / "missing.pub")


def test_non_ed25519_keys_refused(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ec
    ec_key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "ec.pem").write_bytes(ec_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (tmp_path / "ec.pub").write_bytes(ec_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(ConfigError, match="not Ed25519"):
        keys.load_private_key(tmp_path / "ec.pem")
    with pytest.raises(ConfigError, match="not Ed25519"):
        keys.load_public_key(tmp_path / "ec.pub")


def test_key_id_is_sha256_of_raw_public_key_and_stable(tmp_path):
    key = keys.generate_private_key()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    kid = keys.key_id(key.public_key())
    assert kid == hashlib.sha256(raw).hexdigest() and len(raw) == 32
    keys.save_private_key(key, tmp_path / "k.pem", passphrase="p")
    keys.save_public_key(key.public_key(), tmp_path / "k.pub")
    assert keys.key_id(keys.load_private_key(tmp_path / "k.pem", "p").public_key()) == kid
    assert keys.key_id(keys.load_public_key(tmp_path / "k.pub")) == kid
    assert keys.key_id(keys.generate_private_key().public_key()) != kid


def test_sign_format():
    key = keys.generate_private_key()
    sig = keys.sign(key, b"data")
    assert sig.keyid == keys.key_id(key.public_key())
    raw = base64.b64decode(sig.sig, validate=True)
    assert len(raw) == 64
    key.public_key().verify(raw, b"data")  # plain Ed25519 over the bytes, no prehash
    assert keys.sign(key, b"data") == sig  # Ed25519 is deterministic


def test_trusted_keys_from_files(tmp_path):
    a, b = keys.generate_private_key(), keys.generate_private_key()
    keys.save_public_key(a.public_key(), tmp_path / "a.pub")
    keys.save_public_key(b.public_key(), tmp_path / "b.pub")
    t = keys.TrustedKeys.from_files([tmp_path / "a.pub", tmp_path / "b.pub"], role="controller", threshold=2)
    assert set(t.keys) == {keys.key_id(a.public_key()), keys.key_id(b.public_key())}
    assert t.verify(b"m", [keys.sign(a, b"m"), keys.sign(b, b"m")]) == set(t.keys)


class TestThreshold:
    @pytest.fixture()
    def trio(self):
        return [keys.generate_private_key() for _ in range(3)]

    def test_single_signature(self, trio):
        t = keys.TrustedKeys.of([trio[0].public_key()], role="release")
        assert t.verify(b"m", [keys.sign(trio[0], b"m")]) == {keys.key_id(trio[0].public_key())}

    def test_threshold_two_of_three(self, trio):
        t = keys.TrustedKeys.of([k.public_key() for k in trio], role="release", threshold=2)
        assert len(t.verify(b"m", [keys.sign(trio[0], b"m"), keys.sign(trio[2], b"m")])) == 2
        with pytest.raises(SignatureError) as ei:
            t.verify(b"m", [keys.sign(trio[0], b"m")])
        assert ei.value.where == "release signatures"

    def test_duplicate_signatures_count_once(self, trio):
        t = keys.TrustedKeys.of([k.public_key() for k in trio], role="release", threshold=2)
        s = keys.sign(trio[0], b"m")
        with pytest.raises(SignatureError):
            t.verify(b"m", [s, s, s])

    def test_untrusted_signatures_do_not_count(self, trio):
        t = keys.TrustedKeys.of([trio[0].public_key()], role="release", threshold=2)
        with pytest.raises(SignatureError):
            t.verify(b"m", [keys.sign(trio[0], b"m"), keys.sign(trio[1], b"m")])

    def test_unknown_key_vs_bad_signature(self, trio):
        t = keys.TrustedKeys.of([trio[0].public_key()], role="controller")
        with pytest.raises(UnknownKeyError) as ei:
            t.verify(b"m", [keys.sign(trio[1], b"m")])
        assert ei.value.code == "unknown_key" and ei.value.where == "controller signatures"
        with pytest.raises(SignatureError) as ei:
            t.verify(b"tampered", [keys.sign(trio[0], b"m")])
        assert ei.value.code == "bad_signature"
        assert not isinstance(ei.value, UnknownKeyError)

    def test_no_signatures_at_all(self, trio):
        t = keys.TrustedKeys.of([trio[0].public_key()], role="release")
        with pytest.raises(UnknownKeyError):
            t.verify(b"m", [])

    def test_no_trusted_keys(self, trio):
        with pytest.raises(UnknownKeyError):
            keys.TrustedKeys(role="release").verify(b"m", [keys.sign(trio[0], b"m")])

    @pytest.mark.parametrize("sig", ["!!!not base64!!!", "", base64.b64encode(b"short").decode(),
                                     base64.b64encode(bytes(64)).decode()])
    def test_corrupt_signature_is_bad_signature(self, trio, sig):
        t = keys.TrustedKeys.of([trio[0].public_key()], role="release")
        with pytest.raises(SignatureError):
            t.verify(b"m", [Signature(keyid=keys.key_id(trio[0].public_key()), sig=sig)])

    def test_valid_signature_beside_corrupt_one_still_counts(self, trio):
        t = keys.TrustedKeys.of([trio[0].public_key()], role="release")
        kid = keys.key_id(trio[0].public_key())
        assert t.verify(b"m", [Signature(keyid=kid, sig="AAAA"), keys.sign(trio[0], b"m")]) == {kid}

    def test_zero_threshold_never_accepts_unsigned(self, trio):
        t = keys.TrustedKeys.of([trio[0].public_key()], role="release", threshold=0)
        with pytest.raises((ConfigError, VerificationError)):
            t.verify(b"m", [])
