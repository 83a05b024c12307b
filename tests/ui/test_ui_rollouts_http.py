"""The rollout pages over plain HTTP (create_app with a stand-in MQTT transport, the fleet of
:mod:`ui_fleet`): sign-in, roles and origin on every form, the create form's refusals with their
location (and nothing created), and the action table."""

from __future__ import annotations

import time

import pytest

from edgefleet.cloud.services import auth
from edgefleet.cloud.services.rollouts import service as rollouts
from edgefleet.cloud.services.rollouts.gates import Verdict
from edgefleet.cloud.services.rollouts.policy import TEMPLATES
from edgefleet.cloud.ui.filters import STATE_CSS
from edgefleet.cloud.ui.rollouts import available_actions, choose_policy, describe_stages, parse_selector
from edgefleet.cloud.vocabulary import DeviceState, RolloutState, StageState
from edgefleet.protocol.errors import ConfigError

from .test_ui_http import login
from .ui_fleet import seed


@pytest.fixture
def fleet(app, client):
    return seed(app.state.controller, now=time.time())


def count(app) -> int:
    with app.state.controller.session() as session:
        return len(rollouts.list_rollouts(session, limit=1000))


def form(fleet, **fields) -> dict[str, str]:
    """The create post of the confirmation step (``confirm=yes``; the form's own post is a confirmation
    step: ``test_ui_rollout_confirm_http.py``)."""
    return {"bundle": fleet.bundles["1.3.0"].digest, "device_ids": "gate-02", "template": "all-at-once",
            "confirm": "yes"} | fields


def viewer(app) -> str:
    with app.state.controller.session() as session:
        return auth.create_token(session, name="viewer", role="viewer", actor="admin:test", now=time.time())[1]


def test_rollout_pages_need_a_sign_in(client):
    for path in ("/ui/rollouts", "/ui/rollouts/new", "/ui/rollouts/ro-x"):
        r = client.get(path)
        assert r.status_code == 303 and r.headers["location"].startswith("/ui/login?next=/ui/rollouts"), path
    r = client.post("/ui/rollouts/ro-x/pause")
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")


def test_empty_list_and_unknown_rollouts(client):
    login(client)
    assert "No rollout" in client.get("/ui/rollouts").text
    assert "No rollout in state paused" in client.get("/ui/rollouts?state=paused").text
    assert client.get("/ui/rollouts?state=bogus").status_code == 200        # an unknown filter shows all
    r = client.get("/ui/rollouts/ro-nope")
    assert r.status_code == 404 and "no rollout" in r.text
    assert client.post("/ui/rollouts/ro-nope/pause").status_code == 404


def test_a_pasted_json_policy_creates_the_rollout(client, app, fleet):
    login(client)
    policy = '{"stages": [{"name": "first", "select": "count", "count": 1}, {"name": "others", "select": "rest"}]}'
    r = client.post("/ui/rollouts", data=form(fleet, template="custom", policy=policy, device_ids="cam-01 gate-02"))
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/rollouts/ro-")
    page = client.get(r.headers["location"]).text
    assert 'data-stage="first"' in page and 'data-stage="others"' in page
    assert count(app) == 1


@pytest.mark.parametrize(("fields", "status", "where", "message"), [
    ({"bundle": ""}, 400, "bundle", "choose the bundle"),
    ({"bundle": "0" * 64}, 400, "digest", "no bundle"),
    ({"tags": "ok, not/ok"}, 400, "selector: tags.1", "should match pattern"),
    ({"device_ids": "nobody-here"}, 409, "selector", "no device matches the selector"),
    ({"template": "bogus"}, 400, "template", "no policy template 'bogus'"),
    ({"template": "careful", "policy": "[[stages]]"}, 400, "template", "a policy is pasted"),
    ({"template": "custom", "policy": "  "}, 400, "policy", "paste a policy"),
    ({"template": "custom", "policy": '{"stages": [}'}, 400, "policy", "not valid JSON: Expecting value (line 1"),
    ({"template": "custom", "policy": "stages = ["}, 400, "policy", "not valid TOML"),
    ({"template": "custom", "policy": "[1, 2]"}, 400, "policy", "not valid TOML"),
    ({"template": "custom", "policy": '{"stages": [{"name": "a", "select": "rest", "sise": 1}]}'}, 400,
     "policy: stages.0.sise", "Extra inputs are not permitted"),
    ({"template": "custom", "policy": '[[stages]]\nname = "a"\nselect = "count"\ncount = 2\n'}, 400, "policy",
     "must select 'rest'"),
])
def test_a_refused_form_says_where_and_creates_nothing(client, app, fleet, fields, status, where, message):
    login(client)
    for step in ("/ui/rollouts/confirm", "/ui/rollouts"):                 # the confirmation step, the create post
        r = client.post(step, data=form(fleet, **fields))
        assert r.status_code == status, (step, r.text[:400])
        assert f'data-where="{where}"' in r.text
    r = client.post("/ui/rollouts/confirm", data=form(fleet, **fields))
    assert f'data-where="{where}"' in r.text
    assert message in r.text.replace("&#39;", "'")
    assert "Nothing was created" in r.text
    assert count(app) == 0


def test_a_refused_form_keeps_what_was_typed_escaped(client, fleet):
    login(client)
    r = client.post("/ui/rollouts/confirm", data=form(fleet, template="custom",
                                                      policy='{"x": "</textarea><b>hi</b>"}', note="<i>n</i>"))
    assert r.status_code == 400
    assert "</textarea><b>" not in r.text and "&lt;/textarea&gt;&lt;b&gt;hi" in r.text
    assert 'value="&lt;i&gt;n&lt;/i&gt;"' in r.text
    assert 'id="policy" rows="10"' in r.text and 'aria-invalid="true"' in r.text


def test_viewers_may_not_create_or_act(client, app, fleet):
    login(client, token=viewer(app))
    assert client.get("/ui/rollouts/new").status_code == 403
    for step in ("/ui/rollouts/confirm", "/ui/rollouts"):
        r = client.post(step, data=form(fleet))
        assert r.status_code == 403 and "needs operator" in r.text, step
    assert count(app) == 0
    assert 'id="new-rollout"' not in client.get("/ui/rollouts").text


def test_forms_from_another_origin_are_refused(client, app, fleet):
    login(client)
    evil = {"Origin": "http://evil.example"}
    assert client.post("/ui/rollouts", data=form(fleet), headers=evil).status_code == 403
    assert count(app) == 0
    r = client.post("/ui/rollouts", data=form(fleet), headers={"Origin": "http://testserver"})
    assert r.status_code == 303
    rollout_id = r.headers["location"].rsplit("/", 1)[1]
    assert client.post(f"/ui/rollouts/{rollout_id}/pause", headers=evil).status_code == 403
    with app.state.controller.session() as session:
        assert rollouts.get_rollout(session, rollout_id=rollout_id).state == RolloutState.RUNNING


def test_an_action_the_state_does_not_allow_is_a_conflict_shown_on_the_page(client, app, fleet):
    login(client)
    rollout_id = client.post("/ui/rollouts", data=form(fleet)).headers["location"].rsplit("/", 1)[1]
    r = client.post(f"/ui/rollouts/{rollout_id}/resume")
    assert r.status_code == 409
    assert 'id="action-error"' in r.text and "is running: cannot resume" in r.text
    assert client.post(f"/ui/rollouts/{rollout_id}/explode").status_code == 404
    r = client.post(f"/ui/rollouts/{rollout_id}/cancel", data={"reason": "wrong bundle"})
    assert r.status_code == 303
    page = client.get(f"/ui/rollouts/{rollout_id}").text
    assert "cancelled by admin:admin: wrong bundle" in page and 'class="action' not in page


@pytest.mark.parametrize(("state", "actions"), [
    (RolloutState.WAITING_APPROVAL, ["approve", "cancel"]),
    (RolloutState.RUNNING, ["pause", "abort", "cancel"]),
    (RolloutState.PAUSED, ["resume", "promote", "abort", "cancel"]),
    (RolloutState.SUCCEEDED, []),
    (RolloutState.ABORTED, []),
    (RolloutState.CANCELLED, []),
])
def test_the_state_table_decides_the_buttons(state, actions):
    assert [a.event.value for a in available_actions(state)] == actions


def test_form_parsing():
    assert choose_policy("careful", "") == TEMPLATES["careful"][1]
    assert choose_policy("custom", '[[stages]]\nname = "all"\nselect = "rest"\n').stages[0].name == "all"
    selector = parse_selector(tags="a, b c", device_ids="", exclude_tags="x", exclude_device_ids="d-1,d-2",
                              dynamic=True)
    assert (selector.tags, selector.exclude_tags, selector.exclude_device_ids, selector.dynamic) == (
        ["a", "b", "c"], ["x"], ["d-1", "d-2"], True)
    with pytest.raises(ConfigError) as refused:
        parse_selector(tags="", device_ids="bad/id", exclude_tags="", exclude_device_ids="", dynamic=False)
    assert refused.value.where == "selector: device_ids.0"
    assert describe_stages(TEMPLATES["canary-half-rest"][1]) == (
        "canary (1 device, soak 5 min) → half (50% of the remaining devices, soak 5 min) → rest (every remaining "
        "device)")


def test_every_rollout_state_has_a_colour():
    for vocabulary in (RolloutState, StageState, DeviceState, Verdict):
        assert {s: STATE_CSS.get(s) for s in vocabulary if s not in STATE_CSS} == {}, vocabulary
    assert STATE_CSS[RolloutState.ABORTED] == STATE_CSS[Verdict.FAIL] == "st-bad"
