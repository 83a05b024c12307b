"""``edgefleet rollout ...`` against the controller app (its REST answered by the test client):
templates, create from a TOML policy file (a wrong one names the file and the key), list, show
with stage bars and verdicts, the people's actions with a reason, and one-line refusals."""

from __future__ import annotations

import json

import pytest

from edgefleet.cloud.cli import deployments as cli_deployments
from edgefleet.cloud.cli import rollouts as cli_rollouts

from cloudkit import cli_runner
from simfleet import Sim

POLICY = """
[[stages]]
name = "canary"
select = "count"
count = 1
soak_s = 60

[[stages]]
name = "rest"
select = "rest"
"""


@pytest.fixture
def run(client, capsys, monkeypatch):
    return cli_runner(capsys, monkeypatch, client, cli_rollouts, cli_deployments)


@pytest.fixture
def sim(fleet, transport, clock, make_bundle, upload):
    old, new = make_bundle(name="det", version="1.0.0", build=1), make_bundle(name="det", version="1.1.0", build=2)
    upload(old)
    upload(new)
    return Sim(fleet, transport, clock, old, new, n=4)


def test_templates_are_listed_by_name_with_their_stages(run):
    out = run("rollout", "templates")
    assert "canary-half-rest" in out and "canary > half > rest" in out and "careful" in out
    assert set(json.loads(run("rollout", "templates", "--json"))) >= {"canary-half-rest", "careful", "all-at-once"}


def test_create_from_a_policy_file_then_show_act_and_list(run, sim, tmp_path):
    policy = tmp_path / "canary.toml"
    policy.write_text(POLICY)
    ro = json.loads(run("rollout", "create", "det:1.1.0", "--tag", "site", "--policy", str(policy),
                        "--note", "from the CLI", "--json"))
    assert ro["state"] == "running" and [s["name"] for s in ro["stages"]] == ["canary", "rest"]
    assert ro["bundle_digest"] == sim.new.digest and ro["note"] == "from the CLI"
    shown = run("rollout", "show", ro["id"])
    assert "canary" in shown and "running" in shown and "...." in shown   # the stage bars
    paused = json.loads(run("rollout", "pause", ro["id"], "--reason", "change freeze", "--json"))
    assert paused["state"] == "paused" and paused["reason"].endswith(": change freeze")
    assert json.loads(run("rollout", "list", "--state", "paused", "--json"))[0]["id"] == ro["id"]
    assert json.loads(run("rollout", "resume", ro["id"], "--json"))["state"] == "running"
    aborted = json.loads(run("rollout", "abort", ro["id"], "--reason", "tickets", "--json"))
    assert aborted["state"] == "aborted" and aborted["reason"].endswith(": tickets")
    listed = run("rollout", "list")
    assert ro["id"] in listed and "aborted" in listed and "det 1.1.0" in listed


def test_a_wrong_policy_file_is_named_with_the_key_and_nothing_is_created(run, sim, tmp_path, client):
    policy = tmp_path / "bad.toml"
    policy.write_text(POLICY.replace("count = 1", "count = 0"))
    err = run("rollout", "create", "det:1.1.0", "--tag", "site", "--policy", str(policy), rc=2)
    assert f"{policy}: stages.0.count" in err and len(err.strip().splitlines()) == 1
    policy.write_text("[[stages]\n")
    err = run("rollout", "create", "det:1.1.0", "--policy", str(policy), rc=2)
    assert "not valid TOML" in err and str(policy) in err
    assert client.get("/api/v1/rollouts").json() == []


def test_an_action_the_state_does_not_allow_is_one_line_and_changes_nothing(run, sim):
    ro = json.loads(run("rollout", "create", "det:1.1.0", "--tag", "site", "--template", "all-at-once", "--json"))
    err = run("rollout", "resume", ro["id"], rc=1)
    assert "is running: cannot resume" in err and len(err.strip().splitlines()) == 1
    assert json.loads(run("rollout", "show", ro["id"], "--json"))["state"] == "running"
