"""Device uploads of captured samples (docs/protocol.md, "Sample upload"): ``HEAD`` says how many bytes
arrived (``Upload-Offset``), ``PUT`` with ``Content-Range`` appends a chunk there. Authorized only by the
signed, expiring ``token`` of the device's upload grant, which names the device, the upload and its size."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from edgefleet.cloud.api.params import IdPath
from edgefleet.cloud.api.schemas import CapturedDatasetOut
from edgefleet.cloud.api.transfer import OCTET_BODY
from edgefleet.cloud.deps import ControllerDep, SessionDep
from edgefleet.cloud.services import captures
from edgefleet.cloud.vocabulary import UploadState

uploads = APIRouter(prefix="/api/v1")
"""Included with the upload body limit instead of the API's."""

Token = Annotated[str | None, Query(max_length=256, description="the token of the upload grant's URL")]
OFFSET = "Upload-Offset"


@uploads.head("/uploads/{upload_id}", tags=["captures"],
              responses={200: {"description": "Upload-Offset: bytes received; EdgeFleet-Dataset-Id once stored"}})
def upload_offset(upload_id: IdPath, controller: ControllerDep, session: SessionDep, token: Token = None) -> Response:
    upload = captures.get_upload(session, upload_id=upload_id, token=token, key=controller.controller_key,
                                 now=controller.now())
    headers = {OFFSET: str(captures.received(upload, upload_dir=controller.upload_dir)),
               "Upload-Length": str(upload.size), "Cache-Control": "no-store"}
    if upload.state == UploadState.STORED:
        headers["EdgeFleet-Dataset-Id"] = str(upload.dataset_id)
    return Response(status_code=200, headers=headers)


@uploads.put("/uploads/{upload_id}", tags=["captures"], openapi_extra=OCTET_BODY, status_code=201,
             responses={200: {"description": "Already stored (a repeat): the same dataset"},
                        204: {"description": "Chunk appended; Upload-Offset says where the next one starts"},
                        409: {"description": "The chunk does not start at Upload-Offset"},
                        413: {"description": "More bytes than the grant allows (nothing stored)"},
                        422: {"description": "Wrong sha256 or content at the end (the bytes are discarded)"}})
async def upload_chunk(upload_id: IdPath, request: Request, controller: ControllerDep, session: SessionDep,
                       token: Token = None) -> Response:
    """Append the body at ``Content-Range: bytes <first>-<last>/<total>`` (``first`` must be the offset
    ``HEAD`` gives). The last chunk stores the captured dataset (201, its JSON)."""
    upload = await run_in_threadpool(lambda: captures.get_upload(
        session, upload_id=upload_id, token=token, key=controller.controller_key, now=controller.now()))
    repeat = upload.state == UploadState.STORED
    try:
        result = await captures.receive_chunk(
            session, upload=upload, content_range=request.headers.get("content-range"), chunks=request.stream(),
            upload_dir=controller.upload_dir, store=controller.captures,
            max_unpacked=controller.settings.max_capture_bytes, now=controller.now())
    except captures.OffsetMismatchError as exc:
        return JSONResponse({"error": exc.to_dict()}, status_code=409, headers={OFFSET: str(exc.offset)})
    except ClientDisconnect:  # the bytes that arrived are kept; nobody reads this answer
        return Response(status_code=400)
    if isinstance(result, int):
        return Response(status_code=204, headers={OFFSET: str(result)})
    return JSONResponse(CapturedDatasetOut.model_validate(result).model_dump(mode="json"),
                        status_code=200 if repeat else 201, headers={OFFSET: str(upload.size)})
