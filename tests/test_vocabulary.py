"""One vocabulary: states, outcomes, statuses, levels and roles are the enums of
``edgefleet.protocol.vocabulary`` (device-facing) and ``edgefleet.cloud.vocabulary`` (controller),
never bare strings compared or assigned in code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from edgefleet.cloud import vocabulary as cloud_vocabulary
from edgefleet.protocol import vocabulary as protocol_vocabulary

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("protocol", "agent", "compression", "cloud") for p in sorted((ROOT / d).rglob("*.py"))
           if p.name != "vocabulary.py"]
DEVICE_ENUMS = [protocol_vocabulary.UpdateState, protocol_vocabulary.Outcome, protocol_vocabulary.DeviceStatus,
                protocol_vocabulary.DriftLevel]
CLOUD_ENUMS = [cloud_vocabulary.DeploymentStatus, cloud_vocabulary.TargetState, cloud_vocabulary.JobState,
               cloud_vocabulary.Role, cloud_vocabulary.RolloutState, cloud_vocabulary.StageState,
               cloud_vocabulary.DeviceState, cloud_vocabulary.ExperimentState, cloud_vocabulary.ArmDeviceState,
               cloud_vocabulary.UploadState]
DEVICE_WORDS = {member.value for enum in DEVICE_ENUMS for member in enum}
WORDS = DEVICE_WORDS | {member.value for enum in CLOUD_ENUMS for member in enum}
"""The controller's code is held to both vocabularies, the rest (protocol, agent, compression) to the
device-facing one: a word of the controller's means nothing there (e.g. an error code "stopped")."""
FIELDS = {"state", "status", "outcome", "level", "role", "update_state", "drift_level"}
"""Keyword arguments and attributes that hold one of those words."""


def bare_words(path: Path, words: set[str] = WORDS) -> list[str]:
    """``line: text`` of every comparison with, or assignment of, a vocabulary word as a string literal."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        literals: list[ast.expr] = []
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            literals = [o for o in operands if isinstance(o, ast.Constant)]
            literals += [e for o in operands if isinstance(o, ast.Tuple | ast.List | ast.Set) for e in o.elts
                         if isinstance(e, ast.Constant)]
        elif isinstance(node, ast.keyword) and node.arg in FIELDS:
            literals = [node.value] if isinstance(node.value, ast.Constant) else []
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Attribute) and t.attr in FIELDS for t in targets) \
                    and isinstance(node.value, ast.Constant):
                literals = [node.value]
        found += [f"{lit.lineno}: {lit.value!r}" for lit in literals
                  if isinstance(lit.value, str) and lit.value in words]
    return sorted(found, key=lambda entry: int(entry.split(":")[0]))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_bare_vocabulary_words(path):
    in_cloud = path.relative_to(ROOT).parts[0] == "cloud"
    assert bare_words(path, WORDS if in_cloud else DEVICE_WORDS) == []


def test_the_checker_sees_bare_words(tmp_path):
    source = tmp_path / "x.py"
    source.write_text('if t.state == "committed": pass\nx.status = "active"\nf(outcome="failed")\n'
                      'ok = s in ("pending", "running")\nlabel = "committed work"\n')
    assert bare_words(source) == ["1: 'committed'", "2: 'active'", "3: 'failed'", "4: 'pending'", "4: 'running'"]
