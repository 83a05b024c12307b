"""Compression from the model page in real Chromium, on the seeded controller with its background
compression worker: an admin picks a source version, a mode and a variant, confirms, and the page shows
the job; once the worker is done (reload) the job is ``succeeded``, the variant is in the lineage and its
compression report is rendered as tables. The page with its jobs passes axe at 1280 and 400 px."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import expect

from edgefleet.cloud.services import audit, compression_jobs, registry
from edgefleet.compression.samples import load_digits_split, train_mlp

from . import test_ui_console as console
from testkit import wait_until

pytestmark = pytest.mark.browser

MODEL = "digits-ui"
axe = console.axe


@pytest.fixture(scope="module")
def model(ui_server) -> str:
    """A model with a source version holding a real ONNX model file, on the seeded controller."""
    controller = ui_server.controller
    with controller.session() as session:
        now = time.time()
        registry.create_model(session, name=MODEL, description="digits, compressed from the UI", actor="admin:test",
                              now=now)
        registry.create_model_version(session, model_name=MODEL, version="1.0.0", actor="admin:test", now=now)
        blob = controller.artifacts.put(train_mlp(load_digits_split(), hidden=(16,)))
        registry.attach_artifact(session, model_name=MODEL, version="1.0.0", incoming=blob,
                                 store=controller.artifacts, actor="admin:test", now=now)
    return MODEL


def job_state(server, job_id: int) -> str:
    with server.controller.session() as session:
        return compression_jobs.get_job(session, job_id=job_id).state


def test_compress_a_version_from_the_model_page(logged_in, ui_server, model, axe, browser):
    page = logged_in
    page.goto(f"/ui/models/{model}")
    expect(page.locator("#compression .empty")).to_have_text("No compression job yet.")
    page.select_option("#c-version", "1.0.0")
    page.fill("#c-variant", "1.0.0-fp16")
    page.select_option("#c-mode", "fp16")
    page.check("#c-confirm")
    page.click("#compress")
    page.wait_for_url(f"{ui_server.url}/ui/models/{model}#job-*")
    job_id = int(page.url.rsplit("#job-", 1)[1])
    row = page.locator(f"#job-{job_id}")
    expect(row).to_contain_text("1.0.0 → 1.0.0-fp16")
    expect(row).to_contain_text("fp16")
    wait_until(lambda: job_state(ui_server, job_id) in ("succeeded", "failed"), "the worker runs the job", timeout=60)
    page.reload()
    expect(row).to_have_attribute("data-state", "succeeded")
    row.get_by_role("link", name="1.0.0-fp16").click()
    expect(page.locator("#lineage .node.compressed")).to_contain_text("1.0.0-fp16")
    variant = page.locator("#v-1\\.0\\.0-fp16")
    expect(variant.locator("h3")).to_have_text("Compression report")
    expect(variant.locator(".verdict")).to_have_attribute("data-verdict", "passed")
    with ui_server.controller.session() as session:
        (entry,) = [e for e in audit.list_entries(session, action="compression_job.create")
                    if e.target == f"compression_job:{job_id}"]
        assert entry.actor.startswith("admin") and entry.details["mode"] == "fp16"
    for width in console.WIDTHS:
        console.check_pages(browser, ui_server, axe, [(f"/ui/models/{model}", 200)], width, "compress")
