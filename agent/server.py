"""Local inference endpoint (stdlib ``ThreadingHTTPServer``, loopback by default).

* ``POST /v1/predict`` JSON ``{"inputs": {"name": [[...], ...]}}`` (a batch per input) ->
  ``{"outputs": {"name": [...]}, "bundle": {"name", "version", "build", "digest"}}``
* ``POST /v1/predict`` with ``Content-Type: application/x-npy`` (one ``.npy`` array for a
  single-input model) or ``application/x-npz`` (one array per input name) -> an ``.npz`` of
  the outputs, bundle in ``X-EdgeFleet-Bundle-*`` headers (JSON instead with
  ``Accept: application/json``).
* Every answer carries a ``prediction_id`` (JSON body; ``X-EdgeFleet-Prediction-Id`` header).
* ``POST /v1/feedback`` JSON ``{"prediction_id": "...", "labels": [3, 1, ...]}`` (one label per
  sample of that request) -> ``{"labelled": n, "correct": k}``; 404 ``unknown_prediction``,
  409 ``already_labelled``, 410 ``bundle_replaced``, 400 ``bad_input`` (docs/agent.md).
* ``GET /v1/health`` -> 200 when a model serves, 503 otherwise; ``GET /v1/stats``.

Errors are JSON ``{"error": {"code", "message"}}`` with a 4xx/5xx status.
"""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from edgefleet.agent.feedback import FeedbackError, FeedbackJournal
from edgefleet.agent.inference import Predictor
from edgefleet.protocol.errors import EdgeFleetError, InferenceError
from edgefleet.protocol.messages import InstalledBundle
from edgefleet.protocol.vocabulary import Reason

log = logging.getLogger(__name__)
DISCARD_LIMIT = 16 * 1024 * 1024
"""Refused request bodies up to this size are read and dropped before the error answer."""


def bundle_info(installed: InstalledBundle) -> dict[str, Any]:
    return {"name": installed.name, "version": installed.version, "build": installed.build,
            "digest": installed.digest}


class _Handler(BaseHTTPRequestHandler):
    server: InferenceServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:  # route to logging, quietly
        log.debug("%s %s", self.address_string(), fmt % args)

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _error(self, status: int, code: str, message: str) -> None:
        self._json(status, {"error": {"code": code, "message": message}})

    def do_GET(self) -> None:  # noqa: N802 (stdlib naming)
        if self.path == "/v1/health":
            model = self.server.predictor.model
            if model is None:
                self._json(503, {"status": "no_model"})
            else:
                self._json(200, {"status": "ok", "bundle": bundle_info(model.installed)})
        elif self.path == "/v1/stats":
            self._json(200, self.server.stats_provider())
        else:
            self._error(404, "not_found", f"no endpoint {self.path}")

    def _discard(self, length: int) -> None:
        """Read and drop a refused body (up to a bound) so the client sees the 413 instead of a
        reset connection; anything larger is cut off by closing the connection."""
        left = min(length, DISCARD_LIMIT)
        while left > 0:
            chunk = self.rfile.read(min(left, 64 * 1024))
            if not chunk:
                break
            left -= len(chunk)

    def do_POST(self) -> None:  # noqa: N802
        if self.path not in ("/v1/predict", "/v1/feedback"):
            self._error(404, "not_found", f"no endpoint {self.path}")
            return
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self._error(411, "length_required", "Content-Length is required")
            return
        if int(length) > self.server.max_request_bytes:
            self._discard(int(length))
            self._error(413, "too_large", f"request exceeds {self.server.max_request_bytes} bytes")
            self.close_connection = True
            return
        body = self.rfile.read(int(length))
        if self.path == "/v1/feedback":
            self._feedback(body)
            return
        ctype = (self.headers.get("Content-Type") or "application/json").split(";")[0].strip()
        binary = ctype in ("application/x-npy", "application/x-npz")
        try:
            inputs = self._parse(ctype, body)
            prediction = self.server.predictor.predict(inputs)
        except InferenceError as exc:
            status = 503 if exc.code == "no_model" else 400 if exc.code == "bad_input" else 422
            self._error(status, exc.code, str(exc))
            return
        except EdgeFleetError as exc:
            self._error(400, exc.code, str(exc))
            return
        bundle = bundle_info(prediction.bundle)
        if binary and "application/json" not in (self.headers.get("Accept") or ""):
            buf = io.BytesIO()
            # allow_pickle=True is numpy's default; explicit, an output of that name cannot be taken for it
            np.savez(buf, allow_pickle=True, **prediction.outputs)
            headers = {f"X-EdgeFleet-Bundle-{k.capitalize()}": str(v) for k, v in bundle.items()}
            headers["X-EdgeFleet-Prediction-Id"] = prediction.prediction_id
            self._send(200, buf.getvalue(), "application/x-npz", headers)
        else:
            self._json(200, {"outputs": {k: v.tolist() for k, v in prediction.outputs.items()}, "bundle": bundle,
                             "prediction_id": prediction.prediction_id})

    def _feedback(self, body: bytes) -> None:
        journal = self.server.feedback
        if journal is None:
            self._error(404, "not_found", "feedback is off on this device (feedback_window_s = 0)")
            return
        try:
            obj = json.loads(body)
        except ValueError as exc:
            self._error(400, Reason.BAD_INPUT, f"cannot parse the request body: {exc}")
            return
        if not isinstance(obj, dict) or type(obj.get("prediction_id")) is not str or "labels" not in obj:
            self._error(400, Reason.BAD_INPUT, 'body must be {"prediction_id": "...", "labels": [...]}')
            return
        try:
            accepted = journal.label(obj["prediction_id"], obj["labels"])
        except FeedbackError as exc:
            self._error(exc.status, exc.code, str(exc))
            return
        self._json(200, {"labelled": accepted.labelled, "correct": accepted.correct})

    def _parse(self, ctype: str, body: bytes) -> dict[str, Any]:
        try:
            if ctype == "application/x-npy":
                model = self.server.predictor.model
                if model is None:
                    raise InferenceError("no model is installed", code=Reason.NO_MODEL)
                if len(model.session.inputs) != 1:
                    raise InferenceError("application/x-npy needs a single-input model; send application/x-npz",
                                         code=Reason.BAD_INPUT)
                return {model.session.inputs[0].name: np.load(io.BytesIO(body), allow_pickle=False)}
            if ctype == "application/x-npz":
                with np.load(io.BytesIO(body), allow_pickle=False) as npz:
                    return {k: npz[k] for k in npz.files}
            if ctype != "application/json":
                raise InferenceError(f"unsupported Content-Type {ctype!r}", code=Reason.BAD_INPUT)
            obj = json.loads(body)
        except (ValueError, OSError, EOFError) as exc:
            raise InferenceError(f"cannot parse the request body: {exc}", code=Reason.BAD_INPUT) from None
        if not isinstance(obj, dict) or not isinstance(obj.get("inputs"), dict):
            raise InferenceError('body must be {"inputs": {"<name>": [...]}}', code=Reason.BAD_INPUT)
        inputs: dict[str, Any] = obj["inputs"]
        return inputs


class InferenceServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], predictor: Predictor, stats_provider: Callable[[], dict[str, Any]],
                 *, max_request_bytes: int, feedback: FeedbackJournal | None = None) -> None:
        self.predictor = predictor
        self.feedback = feedback
        self.stats_provider = stats_provider
        self.max_request_bytes = max_request_bytes
        super().__init__(address, _Handler)
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host = self.server_address[0]
        assert isinstance(host, str)  # the host of an AF_INET/AF_INET6 address
        return host, self.server_address[1]

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="inference-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
