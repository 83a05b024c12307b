"""Running the controller app under uvicorn: in the foreground (``edgefleet serve``) or in a
background thread (the demo, end-to-end tests)."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable

import uvicorn

from edgefleet.cloud.app import create_app
from edgefleet.cloud.controller import Controller
from edgefleet.cloud.settings import ControllerSettings
from edgefleet.protocol.errors import TransportError


def serve_forever(settings: ControllerSettings, *, announce: Callable[[str], object] | None = None) -> None:
    """Run the controller in the foreground until interrupted. ``announce`` gets the lines a
    person needs: where it listens and, on the first start, the admin token (once)."""
    announce = announce or functools.partial(print, flush=True)  # flushed: stdout may be a log file
    logging.getLogger("edgefleet").setLevel(logging.INFO)
    app = create_app(settings)
    controller = app.state.controller
    announce(f"EdgeFleet controller on http://{settings.listen_host}:{settings.listen_port} "
             f"(UI at /, API docs at /docs; data in {settings.data_dir}); Ctrl-C stops it")
    if controller.initial_admin_token:
        announce(f"admin API token (shown once, store it): {controller.initial_admin_token}")
    uvicorn.run(app, host=settings.listen_host, port=settings.listen_port, log_level="warning")


class BackgroundServer:
    """The controller in a daemon thread; ``start()`` returns once ``/healthz`` answers."""

    def __init__(self, settings: ControllerSettings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self._server = uvicorn.Server(uvicorn.Config(self.app, host=settings.listen_host,
                                                     port=settings.listen_port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, name="controller", daemon=True)

    @property
    def controller(self) -> Controller:
        controller: Controller = self.app.state.controller
        return controller

    @property
    def url(self) -> str:
        return f"http://{self.settings.listen_host}:{self.settings.listen_port}"

    def start(self, timeout_s: float = 30.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise TransportError("the controller did not start", where=self.url,
                                     hint="is the port free? see the log above")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)
