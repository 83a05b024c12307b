"""Create a deployment from the UI: the form (bundle, target: device ids, a tag or every device), the live
count of matching and compatible devices (``/ui/deploy/count``, polled by ``static/deploy.js``), a
confirmation step listing the devices, then the deployment -- made by the same service call as
``POST /api/v1/deployments`` (which writes the audit entry) -- and a redirect to its page. Also: retry
a deployment's failed devices (``POST /api/v1/deployments/{id}/retry``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlmodel import Session

from edgefleet.cloud.deps import ControllerDep, SessionDep
from edgefleet.cloud.services import deployments, devices, registry
from edgefleet.cloud.services.auth import Principal
from edgefleet.cloud.ui.csrf import CsrfField
from edgefleet.cloud.ui.render import SECURITY_HEADERS, base_path, forbidden, not_found, render
from edgefleet.cloud.ui.session import posted_by, signed_in, to_login
from edgefleet.cloud.vocabulary import Role
from edgefleet.protocol.errors import ConfigError, ConflictError, EdgeFleetError, NotFoundError

log = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)

Short = Annotated[str, Form(max_length=200)]
Long = Annotated[str, Form(max_length=20_000)]


@dataclass
class DeployForm:
    """What was typed into the form (shown again as typed when it is refused)."""

    bundle: str = ""
    device_ids: str = ""
    tag: str = ""
    all: bool = False
    note: str = ""

    def ids(self) -> list[str]:
        return [w for w in self.device_ids.replace(",", " ").split() if w]

    def the_tag(self) -> str | None:
        return self.tag.strip() or None


def plan(session: Session, form: DeployForm) -> deployments.TargetPlan:
    """The devices the form's target would order (nothing stored); refusals as the service raises them."""
    if not form.bundle:
        raise ConfigError("choose the bundle to deploy", where="bundle")
    bundle = registry.get_bundle(session, digest=form.bundle)
    return deployments.plan_targets(session, bundle=bundle, device_ids=form.ids() or None, tag=form.the_tag(),
                                     all_devices=form.all)


def count_of(session: Session, form: DeployForm) -> dict[str, object]:
    """The live count: matching and compatible devices, or the problem with the target as it stands."""
    try:
        found = plan(session, form)
    except EdgeFleetError as exc:
        return {"matching": 0, "compatible": 0, "problem": exc.message, "where": exc.where or ""}
    return {"matching": found.matching, "compatible": len(found.chosen), "problem": "", "where": "",
            "skipped": found.skipped[:20]}


def _form_page(request: Request, session: Session, controller: ControllerDep, user: Principal, form: DeployForm,
               problem: EdgeFleetError | None = None, status_code: int = 200) -> Response:
    fleet = devices.list_devices(session)
    return render(request, "deploy_new.html", status_code=status_code, user=user, now=controller.now(), form=form,
                  problem=problem, bundles=registry.list_bundles(session), n_devices=len(fleet),
                  known_tags=sorted({t for d in fleet for t in d.tags}))


@router.get("/ui/deploy", response_class=HTMLResponse)
def deploy_form(request: Request, session: SessionDep, controller: ControllerDep, bundle: str = "",
                tag: str = "", device_ids: str = "") -> Response:
    user = signed_in(request, session)
    if user is None:
        return to_login(request)
    refusal = user.refusal(Role.OPERATOR)
    if refusal is not None:
        return forbidden(request, user, refusal)
    return _form_page(request, session, controller, user, DeployForm(bundle=bundle, tag=tag, device_ids=device_ids))


@router.get("/ui/deploy/count")
def deploy_count(request: Request, session: SessionDep, bundle: str = "", device_ids: str = "", tag: str = "",
                 all: str = "") -> Response:
    """How many devices the target matches and how many of them would get the order (operators only)."""
    user = signed_in(request, session)
    if user is None or user.refusal(Role.OPERATOR) is not None:
        return JSONResponse({"problem": "sign in as an operator"}, status_code=403, headers=SECURITY_HEADERS)
    form = DeployForm(bundle=bundle[:200], device_ids=device_ids[:20_000], tag=tag[:200], all=bool(all))
    return JSONResponse(count_of(session, form), headers=SECURITY_HEADERS)


@router.post("/ui/deploy/confirm", response_class=HTMLResponse)
def deploy_confirm(request: Request, controller: ControllerDep, bundle: Short = "", device_ids: Long = "",
                   tag: Short = "", all: Short = "", note: Long = "", csrf_token: CsrfField = "") -> Response:
    """The confirmation step: the devices that would get the order and those skipped; nothing is stored."""
    user = posted_by(request, controller, csrf_token, "deployment create")
    if isinstance(user, Response):
        return user
    form = DeployForm(bundle=bundle.strip(), device_ids=device_ids, tag=tag, all=bool(all), note=note.strip())
    with controller.session() as session:
        try:
            found = plan(session, form)
            if not found.chosen:
                raise ConflictError("no compatible device matches the target", where="target",
                                    hint="change the target, or choose another bundle")
            if form.ids() and found.skipped:
                first = found.skipped[0]
                raise ConflictError(f"device {first['device_id']}: {first['reason']}", where="device_ids",
                                    hint="remove the device, or choose a bundle it can run")
        except EdgeFleetError as exc:
            return _form_page(request, session, controller, user, form, problem=exc,
                              status_code=409 if isinstance(exc, ConflictError) else 400)
        return render(request, "deploy_confirm.html", user=user, now=controller.now(), form=form, plan=found,
                      bundle=registry.get_bundle(session, digest=form.bundle),
                      target=deployments.describe_selector(found.selector))


@router.post("/ui/deploy")
def deploy_create(request: Request, controller: ControllerDep, bundle: Short = "", device_ids: Long = "",
                  tag: Short = "", all: Short = "", note: Long = "", confirm: Short = "",
                  csrf_token: CsrfField = "") -> Response:
    """Create the deployment (operator or admin) once confirmed; signed orders go out at once."""
    user = posted_by(request, controller, csrf_token, "deployment create")
    if isinstance(user, Response):
        return user
    form = DeployForm(bundle=bundle.strip(), device_ids=device_ids, tag=tag, all=bool(all), note=note.strip())
    try:
        if confirm != "yes":
            raise ConfigError("the deployment was not confirmed", where="confirm",
                              hint="check the devices on the confirmation step and press Deploy")
        if not form.bundle:
            raise ConfigError("choose the bundle to deploy", where="bundle")
        with controller.session() as session:
            deployment = deployments.create_deployment(
                session, bundle_digest=form.bundle, issuer=controller.issuer, actor=user.actor, now=controller.now(),
                timeout_s=controller.settings.deployment_timeout_s, note=form.note,
                device_ids=form.ids() or None, tag=form.the_tag(), all_devices=form.all)
            deployment_id = deployment.id
    except EdgeFleetError as exc:
        log.info("UI deployment create by %s refused: %s", user.actor, exc)
        with controller.session() as session:
            return _form_page(request, session, controller, user, form, problem=exc,
                              status_code=409 if isinstance(exc, ConflictError) else 400)
    log.info("deployment %s created from the UI by %s", deployment_id, user.actor)
    controller.publish_pending()
    return RedirectResponse(f"{base_path(request)}/ui/deployments/{quote(deployment_id)}", status_code=303)


@router.post("/ui/deployments/{deployment_id}/retry")
def retry_deployment(request: Request, deployment_id: str, controller: ControllerDep,
                     csrf_token: CsrfField = "") -> Response:
    """Order the failed devices again (operator or admin), as ``POST /api/v1/deployments/{id}/retry``;
    a refusal (nothing failed, cancelled, owned by a rollout) is shown on the deployment's page."""
    user = posted_by(request, controller, csrf_token, f"retry of {deployment_id}")
    if isinstance(user, Response):
        return user
    try:
        with controller.session() as session:
            deployments.retry_failed(session, deployment_id=deployment_id, issuer=controller.issuer,
                                     actor=user.actor, now=controller.now())
    except NotFoundError as exc:
        return not_found(request, user, exc)
    except ConflictError as exc:
        return render(request, "error.html", status_code=409, user=user, title="Not retried", status=409,
                      message=exc.message, where=exc.where, hint=exc.hint)
    log.info("deployment %s: failed devices retried from the UI by %s", deployment_id, user.actor)
    controller.publish_pending()
    return RedirectResponse(f"{base_path(request)}/ui/deployments/{quote(deployment_id)}", status_code=303)
