"""``edgefleet deploy --wait --json`` prints one JSON document: what a device waits for (its health
window) is told on the console only when a person reads it, never into the JSON."""

from __future__ import annotations

from edgefleet.cloud.cli.deployments import follow_deployment


class Answers:
    """A controller that answers the deployment twice: waiting on its health check, then final."""

    def __init__(self) -> None:
        waiting = {"device_id": "d1", "state": "installing", "final": False, "outcome": None,
                   "detail": "health check: the bundle's smoke test; commits when they pass"}
        done = dict(waiting, state="committed", final=True, outcome="committed", detail=None)
        self.bodies = [{"id": "dep-1", "targets": [waiting]}, {"id": "dep-1", "targets": [done]}]

    def get(self, path: str) -> dict:
        assert path == "/api/v1/deployments/dep-1"
        return self.bodies.pop(0) if len(self.bodies) > 1 else self.bodies[0]


def test_quiet_follow_prints_nothing(capsys):
    dep = follow_deployment(Answers(), "dep-1", quiet=True, poll_s=0)  # type: ignore[arg-type]
    assert dep["targets"][0]["final"]
    assert capsys.readouterr().out == ""


def test_a_person_following_is_told_what_a_device_waits_for(capsys):
    follow_deployment(Answers(), "dep-1", quiet=False, poll_s=0)  # type: ignore[arg-type]
    assert "d1: health check: the bundle's smoke test; commits when they pass" in capsys.readouterr().out
