"""More of the console's actions in real Chromium against one real controller (``edgefleet serve``, its
embedded broker) with REAL agents, shared by the module: retry a deployment's failed device (an agent
whose install fails its smoke test is ordered again and reports on the new order); roll ONE device back
from its page (the agent returns to the bundle it ran before); edit a device's tags (shown, audited);
enrollment tokens (created and shown once, copied to the clipboard, a real agent enrolls with it; a
revoked one is refused); people (an admin creates a user, changes the role, disables them: their sign-in
is refused) and personal API tokens (shown once; revoked, the REST API answers 401). Every page: no
console error; every action: its audit entry."""

from __future__ import annotations

import contextlib
import io
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from edgefleet.compression.samples import load_digits_split, train_mlp
from edgefleet.protocol import keys

from .test_ui_actions import PASSWORD, api
from .test_ui_cohort_rollback import recipe, succeeded
from .ui_support import sign_in, watched_page
from testkit import wait_until

sys.path.insert(0, str(Path(__file__).parents[1] / "integration"))
from fleetkit import AGENT_SETTINGS, Agents, ControllerProcess, cli_json, run_cli  # noqa: E402

from agentkit.bundles import replace_smoke_expected, resign, split  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.integration]

FAILING, ROLLING = "ab-1", "ab-2"
"""The agent whose install of the bad bundle fails; the agent on 2.0.0 that is rolled back."""


class Captured:
    """Stands in for ``capsys`` (which a module's fixture cannot have) for fleetkit's ``run_cli``: the
    CLI's output goes to these buffers while :meth:`capturing`."""

    def __init__(self) -> None:
        self.out, self.err = io.StringIO(), io.StringIO()

    @contextlib.contextmanager
    def capturing(self) -> Iterator[Captured]:
        with contextlib.redirect_stdout(self.out), contextlib.redirect_stderr(self.err):
            yield self

    def readouterr(self) -> SimpleNamespace:
        out, err = self.out.getvalue(), self.err.getvalue()
        for buffer in (self.out, self.err):
            buffer.seek(0)
            buffer.truncate()
        return SimpleNamespace(out=out, err=err)


@dataclass
class Live:
    controller: ControllerProcess
    admin: str
    digests: dict[str, str]
    """``1.0.0``, ``2.0.0`` and ``bad`` (2.0.1: its smoke test's expected outputs are wrong, then re-signed)."""
    bad_deployment: str
    base: Path

    @property
    def url(self) -> str:
        return self.controller.url

    def get(self, path: str) -> Any:
        return api(self.url, self.admin, path)


def variant(good: Path, release_key: Path, out: Path, *, version: str, build: int, failing: bool = False) -> Path:
    """``good`` as another release (``version``, ``build``), signed again with the release key (quicker than a
    second build). ``failing``: its smoke test expects other outputs than the model gives, so the controller
    takes it (signature and files check out) and an agent installs it and rolls back (``smoke_test_failed``)."""
    manifest, _, stored = split(good.read_bytes())
    manifest |= {"version": version, "build": build}
    if failing:
        replace_smoke_expected(manifest, stored, next(iter(manifest["smoke_test"]["expected"])), lambda a: a + 0.5)
    out.write_bytes(resign(manifest, stored, keys.load_private_key(release_key)))
    return out


def target(live: Live, deployment_id: str, device_id: str) -> dict:
    shown = live.get(f"/api/v1/deployments/{deployment_id}")
    return next(t for t in shown["targets"] if t["device_id"] == device_id)


@pytest.fixture(scope="module")
def live(tmp_path_factory, chromium_path) -> Iterator[Live]:
    """The controller, bundles 1.0.0, 2.0.0 and the failing 2.0.1 pushed, two agents (tag ``lab``) on
    1.0.0; then at once: 2.0.0 to ``ab-2`` (installed) and the failing bundle to ``ab-1`` (rolled back).
    An operator ``olga``."""
    base = tmp_path_factory.mktemp("ui-actions-browser")
    captured = Captured()
    admin = "efa_ui_" + secrets.token_urlsafe(12)
    (base / "keys").mkdir()
    with captured.capturing():
        assert run_cli(captured, "keys", "generate", "release", "--out", str(base / "keys"))[0] == 0
    controller = ControllerProcess(base, admin_token=admin, broker_url=None, prefix=f"uiab-{secrets.token_hex(4)}/v1",
                                   release_pub=base / "keys" / "release.pub", reconcile_interval_s=0.5,
                                   heartbeat_timeout_s=30)
    agents = Agents(base)
    with pytest.MonkeyPatch.context() as env:
        try:
            with ThreadPoolExecutor(1) as pool, captured.capturing():
                starting = pool.submit(controller.start)       # it starts while the bundles are built
                try:
                    data = load_digits_split()
                    np.save(base / "samples.npy", data.x_train[:200])
                    folder = base / "model"
                    folder.mkdir()
                    (folder / "model.onnx").write_bytes(train_mlp(data, hidden=(16,), seed=0))
                    (folder / "recipe.toml").write_text(recipe("1.0.0", 1))
                    release_key = base / "keys" / "release.key"
                    good = Path(cli_json(captured, "bundle", "build", str(folder / "recipe.toml"), "--key",
                                          str(release_key), "--samples", str(base / "samples.npy"),
                                          "--out", str(base / "v1.efb"))["bundle"])
                    built = {"1.0.0": good,
                             "2.0.0": variant(good, release_key, base / "v2.efb", version="2.0.0", build=2),
                             "bad": variant(good, release_key, base / "bad.efb", version="2.0.1", build=3,
                                            failing=True)}
                finally:
                    starting.result()
            env.setenv("EDGEFLEET_URL", controller.url)
            env.setenv("EDGEFLEET_TOKEN", admin)
            env.setenv("EDGEFLEET_CLI_CONFIG", str(base / "no-cli.toml"))
            with captured.capturing():
                digests = {name: cli_json(captured, "bundle", "push", str(path))["digest"]
                           for name, path in built.items()}
                for device_id in (FAILING, ROLLING):
                    agents.start(captured, controller.url, device_id, "lab")
            api(controller.url, admin, "/api/v1/users", "POST",
                {"name": "olga", "role": "operator", "password": PASSWORD})
            wait_until(lambda: all(api(controller.url, admin, f"/api/v1/devices/{d}")["online"]
                                   for d in (FAILING, ROLLING)), "both agents online", timeout=90)
            first = api(controller.url, admin, "/api/v1/deployments", "POST",
                        {"bundle": digests["1.0.0"], "tag": "lab"})
            wait_until(lambda: succeeded(controller.url, admin, first["id"]), "both agents on 1.0.0", timeout=120)
            forward = api(controller.url, admin, "/api/v1/deployments", "POST",
                          {"bundle": digests["2.0.0"], "device_ids": [ROLLING]})
            bad = api(controller.url, admin, "/api/v1/deployments", "POST",
                      {"bundle": digests["bad"], "device_ids": [FAILING]})
            made = Live(controller=controller, admin=admin, digests=digests, bad_deployment=bad["id"], base=base)
            wait_until(lambda: succeeded(controller.url, admin, forward["id"]), f"{ROLLING} on 2.0.0", timeout=120)
            wait_until(lambda: target(made, bad["id"], FAILING)["final"], f"{FAILING} fails the bad bundle",
                       timeout=120)
            yield made
        finally:
            agents.stop()
            controller.stop()


@contextlib.contextmanager
def browsing(browser, live: Live, *, username: str = "olga", password: str = PASSWORD,
             token: str | None = None) -> Iterator[Any]:
    """A watched page signed in (as ``olga`` unless told); fails on any page or console error."""
    context, page, problems = watched_page(browser, live.url)
    try:
        if token is not None:
            sign_in(page, live.url, token=token)
        else:
            sign_in(page, live.url, username=username, password=password)
        yield page
    finally:
        context.close()
    assert not problems, problems


def submit(page, button) -> None:
    """Click a form's submit ``button`` (a locator) and wait for the page the post leads to (often the same
    address as before, so waiting for the URL would not do)."""
    with page.expect_navigation():
        button.click()


def audited(live: Live, action: str, actor: str = "user:olga") -> list[dict]:
    return [e for e in live.get(f"/api/v1/audit?action={action}") if e["actor"] == actor]


def test_retry_the_failed_device_from_the_ui_orders_the_agent_again(live, browser):
    failed = target(live, live.bad_deployment, FAILING)
    assert (failed["outcome"], failed["reason"]) == ("rolled_back", "smoke_test_failed")
    with browsing(browser, live) as page:
        page.goto(f"/ui/deployments/{live.bad_deployment}")
        page.click("#retry summary")
        button = page.locator("#retry button[type=submit]")
        assert button.inner_text() == "Retry on 1 device"
        submit(page, button)
        assert page.url == f"{live.url}/ui/deployments/{live.bad_deployment}"
        again = target(live, live.bad_deployment, FAILING)
        assert again["sequence"] > failed["sequence"]         # a new order (the device's next sequence number)
        # the agent got the new order: it reports on its sequence (and fails the bad bundle again)
        wait_until(lambda: target(live, live.bad_deployment, FAILING)["final"], "the agent's report on the new order",
                   timeout=120)
        done = target(live, live.bad_deployment, FAILING)
        assert (done["sequence"], done["outcome"], done["reason"]) == (again["sequence"], "rolled_back",
                                                                       "smoke_test_failed")
        (entry,) = audited(live, "deployment.retry")
        assert entry["target"] == f"deployment:{live.bad_deployment}" and entry["details"]["devices"] == [FAILING]
    assert live.get(f"/api/v1/devices/{FAILING}")["installed"]["digest"] == live.digests["1.0.0"]


def test_roll_one_device_back_from_its_page_and_the_agent_returns_to_the_old_bundle(live, browser):
    old, new = live.digests["1.0.0"], live.digests["2.0.0"]
    assert live.get(f"/api/v1/devices/{ROLLING}")["installed"]["digest"] == new
    with browsing(browser, live) as page:
        page.goto(f"/ui/devices/{ROLLING}")
        page.click("#rollback summary")
        assert "1.0.0" in page.inner_text("#rollback form")
        page.click("#rollback button[type=submit]")
        page.wait_for_url(f"{live.url}/ui/deployments/dep-*")
        back = page.url.rsplit("/", 1)[1]
        shown = live.get(f"/api/v1/deployments/{back}")
        assert shown["bundle_digest"] == old and [t["device_id"] for t in shown["targets"]] == [ROLLING]
        wait_until(lambda: succeeded(live.url, live.admin, back), f"{ROLLING} back on 1.0.0", timeout=120)
        assert live.get(f"/api/v1/devices/{ROLLING}")["installed"]["digest"] == old
        assert live.get(f"/api/v1/devices/{FAILING}")["installed"]["digest"] == old       # the other untouched
        (entry,) = audited(live, "device.rollback")
        assert entry["target"] == f"device:{ROLLING}"


def test_edit_a_devices_tags_from_its_page_and_the_audit_log_shows_it(live, browser):
    with browsing(browser, live) as page:
        page.goto(f"/ui/devices/{FAILING}")
        page.click("#edit-tags summary")
        assert page.input_value("#new-tags") == "lab"
        page.fill("#new-tags", "lab, hall-b")
        submit(page, page.locator("#edit-tags button[type=submit]"))
        assert page.url == f"{live.url}/ui/devices/{FAILING}"
        assert "hall-b" in page.inner_text("main")
        assert sorted(live.get(f"/api/v1/devices/{FAILING}")["tags"]) == ["hall-b", "lab"]
        page.goto("/ui/audit?action=device.tags")
        rows = page.locator('#audit tr[data-action="device.tags"]')
        assert rows.count() == 1
        text = rows.first.inner_text()
        assert f"device:{FAILING}" in text and "user:olga" in text
    (entry,) = audited(live, "device.tags")
    assert entry["target"] == f"device:{FAILING}"


def agent_enroll(live: Live, token: str, device_id: str) -> subprocess.CompletedProcess[str]:
    """``edgefleet-agent enroll`` with a token handed out in the UI (fleetkit's ``Agents`` makes its own)."""
    settings = [a for s in AGENT_SETTINGS for a in ("--set", s)]
    return subprocess.run([sys.executable, "-m", "edgefleet.agent.daemon", "enroll", "--controller", live.url,
                           "--token", token, "--device-id", device_id, "--state-dir",
                           str(live.base / "devices" / device_id), *settings],
                          capture_output=True, text=True, timeout=60)


def create_enrollment_token(page, device_id: str) -> str:
    page.goto("/ui/enrollment")
    page.fill("#device_id", device_id)
    page.fill("#tags", "lab")
    page.check("#confirm")
    page.click("#create-token")
    page.wait_for_selector("#secret-once")
    return page.inner_text("#secret-value").strip()


def test_an_enrollment_token_from_the_ui_is_shown_once_copied_and_enrolls_a_real_agent(live, browser):
    with browsing(browser, live) as page:
        page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live.url)
        secret = create_enrollment_token(page, "ab-new")
        assert len(secret) >= 16
        copy = page.locator("#secret-once button[data-copy]")
        copy.click()
        page.wait_for_function("document.querySelector('#secret-once button[data-copy]').textContent === 'Copied'")
        assert page.evaluate("navigator.clipboard.readText()") == secret
        page.goto("/ui/enrollment")                                 # again: the secret is gone
        assert page.locator("#secret-once").count() == 0 and secret not in page.content()
        (made,) = audited(live, "enrollment_token.create")
        assert made["details"]["device_id"] == "ab-new" and made["details"]["tags"] == ["lab"]

        enrolled = agent_enroll(live, secret, "ab-new")
        assert enrolled.returncode == 0, enrolled.stderr
        device = live.get("/api/v1/devices/ab-new")
        assert device["tags"] == ["lab"]
        page.reload()
        assert page.locator('#enrollment-tokens a[href="/ui/devices/ab-new"]').count() == 1   # used by ab-new

        # another, revoked from the page: enrolling with it is refused
        second = create_enrollment_token(page, "ab-never")
        tokens = live.get("/api/v1/enrollment-tokens")
        (row,) = [t for t in tokens if t["device_id"] == "ab-never"]
        page.goto("/ui/enrollment")
        page.click(f"#revoke-{row['id']} >> xpath=ancestor::details/summary")
        submit(page, page.locator(f"#revoke-{row['id']}"))
        assert page.url == f"{live.url}/ui/enrollment"
        assert page.locator(f"#revoke-{row['id']}").count() == 0
        (revoked,) = audited(live, "enrollment_token.revoke")
        assert revoked["target"] == f"enrollment_token:{row['id']}"
        refused = agent_enroll(live, second, "ab-never")
        assert refused.returncode != 0 and "unknown, used or expired" in refused.stderr + refused.stdout, refused
        with pytest.raises(urllib.error.HTTPError) as missing:
            live.get("/api/v1/devices/ab-never")
        assert missing.value.code == 404


def signs_in(page, live: Live, username: str, password: str) -> bool:
    """Whether the sign-in page lets ``username`` in (else it shows its refusal)."""
    page.goto("/ui/login")
    page.fill("#username", username)
    page.fill("#password", password)
    submit(page, page.locator("button[type=submit]"))
    if page.url == f"{live.url}/":
        return True
    assert page.locator("p.error[role=alert]").count() == 1
    return False


def test_an_admin_manages_a_user_and_a_user_makes_and_revokes_a_personal_token(live, browser):
    password = "uma-" + secrets.token_urlsafe(12)
    with browsing(browser, live, token=live.admin) as page:
        page.goto("/ui/people")
        page.fill("#name", "uma")
        page.select_option("#role", "viewer")
        page.fill("#password", password)
        page.check("#user-form input[name=confirm]")
        page.click("#create-user")
        page.wait_for_selector("#user-uma")
        assert page.inner_text("#user-uma td:nth-child(2)") == "viewer"
        page.click("#user-uma summary")
        page.select_option("#role-uma", "operator")
        submit(page, page.locator("#user-uma button:has-text('Set role of uma')"))
        assert page.inner_text("#user-uma td:nth-child(2)") == "operator"
        users = {u["name"]: u for u in api(live.url, live.admin, "/api/v1/users")}
        assert users["uma"]["role"] == "operator" and users["uma"]["disabled_at"] is None

        # uma signs in (another browser context), then is disabled and no longer can
        context, other, problems = watched_page(browser, live.url, ignore_failed_loads=True)
        try:
            assert signs_in(other, live, "uma", password)
            page.click("#user-uma summary")
            submit(page, page.locator("#user-uma button:has-text('Disable uma')"))
            assert page.inner_text("#user-uma td:nth-child(3)").startswith("disabled")
            other.context.clear_cookies()
            assert not signs_in(other, live, "uma", password)
        finally:
            context.close()
        assert not problems, problems
    (created,) = [e for e in live.get("/api/v1/audit?action=user.create") if e["target"] == "user:uma"]
    assert created["actor"].startswith("admin:") and created["details"]["role"] == "viewer"
    updates = [e for e in live.get("/api/v1/audit?action=user.update") if e["target"] == "user:uma"]
    assert sorted(map(str, (e["details"] for e in updates))) == sorted(
        [str({"role": ["viewer", "operator"]}), str({"disabled": True})])
    assert all(e["actor"] == created["actor"] for e in updates)

    # olga makes a personal token (shown once), uses it, revokes it: the API refuses it from then on
    with browsing(browser, live) as page:
        page.goto("/ui/tokens")
        page.fill("#name", "laptop")
        page.click("#create-token")
        page.wait_for_selector("#secret-once")
        secret = page.inner_text("#secret-value").strip()
        assert api(live.url, secret, "/api/v1/me")["actor"] == "user:olga"
        page.goto("/ui/tokens")
        assert page.locator("#secret-once").count() == 0 and secret not in page.content()
        row = page.locator("#tokens tr", has_text="laptop")
        row.locator("summary").click()
        submit(page, row.locator("button[type=submit]"))
        assert page.url == f"{live.url}/ui/tokens"
        assert "revoked" in page.locator("#tokens tr", has_text="laptop").inner_text()
        with pytest.raises(urllib.error.HTTPError) as refused:
            api(live.url, secret, "/api/v1/me")
        assert refused.value.code == 401
    (made,) = [e for e in audited(live, "token.create") if e["details"].get("name") == "laptop"]
    (revoked,) = audited(live, "token.revoke")
    assert revoked["target"] == made["target"]
