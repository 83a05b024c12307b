"""The example payloads in docs/protocol.md are real: each decodes, and the example order verifies
with the documented key (so a port to another language can use them as test vectors)."""

import json
import re
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgefleet.protocol import device_signatures, keys, messages, topics
from edgefleet.protocol.orders import order_bytes, verify_order

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
EXAMPLE = re.compile(r"Topic `([^`]+)`\n\n```json\n(.*?)\n```", re.S)


def _examples():
    found = EXAMPLE.findall(DOC.read_text())
    assert len(found) >= 8
    return found


def test_examples_decode():
    for topic, body in _examples():
        device_id, kind = topics.parse_device_topic(topic)
        payload = json.dumps(json.loads(body), separators=(",", ":")).encode()
        msg = messages.decode(kind, payload)
        assert msg.device_id == device_id
        assert messages.decode(kind, messages.encode(msg)) == msg


def test_example_order_verifies_with_documented_key():
    text = DOC.read_text()
    raw = bytes.fromhex(re.search(r"public key of the example order, raw, is\n`([0-9a-f]{64})`", text).group(1))
    pub = Ed25519PublicKey.from_public_bytes(raw)
    documented_id = re.search(r"its key id \(sha256 of those\n32 bytes\) is `([0-9a-f]{64})`", text).group(1)
    assert keys.key_id(pub) == documented_id
    (body,) = [b for t, b in _examples() if t.endswith("/cmd")]
    order = messages.decode("cmd", json.dumps(json.loads(body)).encode()).order
    signed_bytes = re.search(r"signed \(§6\.2\):\n```\n(.*?)\n```", text, re.S).group(1).encode()
    assert order_bytes(order.signed) == signed_bytes
    trusted = keys.TrustedKeys.of([pub], role="controller")
    got = verify_order(order, trusted=trusted, device_id=order.signed.device_id, last_sequence=0,
                       now=order.signed.issued_at)
    assert got.sequence == order.signed.sequence


def _section(title: str) -> str:
    text = DOC.read_text()
    start = text.index(title)
    end = text.find("\n## ", start + len(title))
    return text[start:end if end != -1 else None]


def _first_column(section: str) -> set[str]:
    """Backticked names in the first column of the markdown table(s) of ``section``."""
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([a-z_]+)`", row.split("|")[1])}


def test_error_code_table_is_the_reason_enum():
    from edgefleet.protocol.vocabulary import Reason

    assert _first_column(_section("## 8. Error codes")) == {r.value for r in Reason}


def test_every_error_class_code_is_a_reason():
    import inspect

    from edgefleet.protocol import errors
    from edgefleet.protocol.vocabulary import Reason

    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, errors.EdgeFleetError)]
    assert classes and {c.code for c in classes} <= {r.value for r in Reason}


def test_outcome_table_is_the_outcome_enum():
    from edgefleet.protocol.vocabulary import Outcome, UpdateState

    section = _section("## 7.")
    assert _first_column(section) == {o.value for o in Outcome}
    diagram = re.search(r"```mermaid\n(.*?)```", section, re.S).group(1)
    states = set(re.findall(r"\b([a-z_]+) -->", diagram)) | set(re.findall(r"--> ([a-z_]+)", diagram))
    assert states == {s.value for s in UpdateState}


def test_the_sealed_hello_is_a_test_vector_for_device_signatures():
    text = DOC.read_text()
    raw = bytes.fromhex(re.search(r"the public key of the\nexample device, raw, is\n`([0-9a-f]{64})`", text).group(1))
    sealed = re.search(r"sealed, is exactly\n\n```\n(.*?)\n```", text, re.S).group(1).encode()
    topic = "edgefleet/v1/devices/cam-0042/hello"
    device_signatures.verify(raw, topic, sealed)
    (body,) = [b for t, b in _examples() if t == topic]
    assert sealed.startswith(json.dumps(json.loads(body), separators=(",", ":")).encode()[:-1])
