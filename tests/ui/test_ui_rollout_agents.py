"""A staged rollout created from the console in real Chromium, carried out by REAL agents (the controller
and the two agents of :mod:`test_ui_actions_browser`, both brought onto 2.0.0 first): an operator uploads
3.0.0 from the bundle list, opens the new rollout's form, chooses the bundle, the agents' tag and a pasted
two-stage policy (a canary of one device, a short soak, then the rest; judged on installs), sees the live
count (2 match, 2 compatible) and the confirmation step (2 stages of 1 device), and confirms. The rollout
succeeds: each agent itself serves 3.0.0, the canary's stage ended before the other device got its order,
the audit log has the operator's ``rollout.create``; no console error, and the finished rollout's page
passes axe at 1280 px."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import expect

from edgefleet.protocol.bundle import bundle_digest

from . import test_ui_console as console
from .axe import violations
from .test_ui_actions import api
from .test_ui_actions_browser import FAILING, ROLLING, Live, audited, browsing, live, variant  # noqa: F401
from .test_ui_cohort_rollback import succeeded
from .ui_support import screenshot
from testkit import wait_until

sys.path.insert(0, str(Path(__file__).parents[1] / "integration"))
from fleetkit import predict  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.integration]

axe = console.axe
"""axe-core from the npm registry (the console tests' fixture)."""

DEVICES = (FAILING, ROLLING)
POLICY = """device_timeout_s = 120

[[stages]]
name = "canary"
select = "count"
count = 1
soak_s = 2

[[stages]]
name = "rest"
select = "rest"

[gates.runtime]
enabled = false

[gates.behaviour]
enabled = false

[gates.accuracy]
enabled = false
"""
"""A canary of one device soaking two seconds, then the rest; only the install gate judges (the agents
serve no traffic here, so the telemetry gates would have nothing to compare)."""
STOPPED = {"succeeded", "aborted", "cancelled", "paused"}
"""States in which a rollout no longer moves on its own (paused: it waits for a person)."""


@pytest.fixture(scope="module")
def on_two(live) -> Path:  # noqa: F811
    """Both agents on 2.0.0 (``live`` leaves FAILING on 1.0.0 after its bad bundle); returns 3.0.0, built
    from 2.0.0 and signed with the release key, not yet on the controller."""
    forward = live.get("/api/v1/devices/" + ROLLING)["installed"]["digest"]
    assert forward == live.digests["2.0.0"]
    made = api(live.url, live.admin, "/api/v1/deployments", "POST",
               {"bundle": live.digests["2.0.0"], "device_ids": [FAILING]})
    wait_until(lambda: succeeded(live.url, live.admin, made["id"]), f"{FAILING} on 2.0.0", timeout=90)
    return variant(live.base / "v2.efb", live.base / "keys" / "release.key", live.base / "v3.efb", version="3.0.0",
                   build=4)


def serves(shared: Live, device_id: str) -> str:
    """The digest of the bundle the agent itself answers a prediction with (its local endpoint)."""
    batch = np.load(shared.base / "samples.npy")[:2]
    return predict(shared.base / "devices" / device_id, batch)["bundle"]["digest"]


def rollout_over(shared: Live, rollout_id: str) -> dict | None:
    """The rollout (``GET /api/v1/rollouts/{id}``) once it has stopped moving on its own, else ``None``."""
    shown = shared.get(f"/api/v1/rollouts/{rollout_id}")
    return shown if shown["state"] in STOPPED else None


def test_a_staged_rollout_from_the_ui_reaches_real_agents_stage_by_stage(live, on_two, browser, axe):  # noqa: F811
    old = live.digests["2.0.0"]
    assert {d: serves(live, d) for d in DEVICES} == {d: old for d in DEVICES}
    with browsing(browser, live) as page:
        page.goto("/ui/bundles")
        page.click("#upload summary")
        page.set_input_files("#bundle-file", str(on_two))
        page.click("#upload-submit")
        new = bundle_digest(on_two.read_bytes())
        assert new not in live.digests.values()
        expect(page.locator(f'#bundles a[href="/ui/bundles/{new}"]')).to_have_count(1)
        (uploaded,) = audited(live, "bundle.upload")
        assert uploaded["target"].endswith(new)

        page.goto("/ui/rollouts/new")
        count = page.locator("#rollout-count")
        page.select_option("#bundle", new)
        page.fill("#tags", "lab")
        page.select_option("#template", "custom")
        page.fill("#policy", POLICY)
        page.fill("#note", "3.0.0 to the lab, canary first")
        expect(count).to_have_attribute("data-matching", "2")
        expect(count).to_have_attribute("data-compatible", "2")
        expect(count).to_contain_text("2 devices match, 2 compatible")

        page.click("#rollout-next")
        expect(page).to_have_url(f"{live.url}/ui/rollouts/confirm")
        expect(page.locator("h1")).to_contain_text("3.0.0 to 2 devices?")
        expect(page.locator("#confirm-target")).to_contain_text("2 matching, 2 compatible")
        expect(page.locator("#confirm-policy")).to_contain_text("the pasted policy")
        stages = page.locator("#confirm-stages tbody tr")
        expect(stages).to_have_count(2)
        assert [(r.get_attribute("data-stage"), r.get_attribute("data-devices")) for r in stages.all()] == [
            ("canary", "1"), ("rest", "1")]
        assert sorted(page.locator("#confirm-devices li").all_inner_texts()) == sorted(DEVICES)
        assert live.get("/api/v1/rollouts") == []                       # the confirmation step stored nothing

        page.click("#rollout-confirm")
        expect(page).to_have_url(re.compile(rf"{re.escape(live.url)}/ui/rollouts/ro-[0-9a-f]+$"))
        rollout_id = page.url.rsplit("/", 1)[1]

        done = wait_until(lambda: rollout_over(live, rollout_id), "the rollout to stop moving", timeout=120)
        assert done["state"] == "succeeded", (done["state"], done["reason"])
        assert done["bundle_digest"] == new and done["created_by"] == "user:olga"

        # every agent itself serves 3.0.0, and the controller says so too
        assert {d: serves(live, d) for d in DEVICES} == {d: new for d in DEVICES}
        assert {d: live.get(f"/api/v1/devices/{d}")["installed"]["digest"] for d in DEVICES} == {
            d: new for d in DEVICES}

        # stage by stage: the canary's device installed, its stage soaked and passed, then the other was ordered
        canary, rest = done["stages"]
        assert (canary["name"], canary["state"], rest["name"], rest["state"]) == ("canary", "passed", "rest",
                                                                                    "passed")
        assert [(v["gate"], v["verdict"]) for v in canary["verdicts"]] == [("install", "pass")]
        assert len(done["device_rows"]) == 2
        rows = {r["stage_index"]: r for r in done["device_rows"]}
        assert sorted(rows) == [0, 1] and {r["device_id"] for r in rows.values()} == set(DEVICES)
        assert all(r["state"] == "succeeded" and r["attempts"] == 1 for r in rows.values())
        first, second = rows[0], rows[1]
        assert first["ordered_at"] <= first["finished_at"] <= canary["executed_at"]
        assert canary["soak_until"] <= canary["finished_at"] <= rest["started_at"] <= second["ordered_at"]
        assert first["finished_at"] < second["ordered_at"]

        (entry,) = audited(live, "rollout.create")
        assert entry["target"] == f"rollout:{rollout_id}"
        assert entry["details"]["bundle"] == new and entry["details"]["devices"] == 2

        # the finished rollout's page: its stages passed, both devices succeeded; axe at 1280 px
        page.reload()
        expect(page.locator("h1 .badge")).to_have_text("succeeded")
        assert [(s.get_attribute("data-stage"), s.get_attribute("data-state"))
                for s in page.locator("#stages li.stage").all()] == [("canary", "passed"), ("rest", "passed")]
        expect(page.locator("#rollout-devices tr[data-state=succeeded]")).to_have_count(2)
        assert page.viewport_size["width"] == 1280
        assert violations(page, axe) == []
        screenshot(page, "rollout-agents-1280")
