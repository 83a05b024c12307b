"""A small REST client for the controller, used by the CLI and the demo.

HTTP and connection failures are translated here (the boundary) into EdgeFleet errors that
carry the controller's error code, so the CLI can print one clear line.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from edgefleet.protocol.errors import ConfigError, EdgeFleetError, NotFoundError, TransportError

if TYPE_CHECKING:
    import httpx2 as httpx

DEFAULT_URL = "http://127.0.0.1:8080"
API_PREFIX = "/api/v1"

JSON = Any
"""A decoded JSON body (the shapes are the API's response schemas, see /docs)."""


def cli_config_path() -> Path:
    return Path(os.environ.get("EDGEFLEET_CLI_CONFIG", Path.home() / ".config" / "edgefleet" / "cli.toml"))


def resolve_endpoint(url: str | None = None, token: str | None = None) -> tuple[str, str | None]:
    """URL and token from arguments, then ``EDGEFLEET_URL``/``EDGEFLEET_TOKEN``, then the config file.
    A URL given with the API prefix (``http://host:8080/api/v1``) means the controller at ``http://host:8080``."""
    file_cfg: dict[str, Any] = {}
    path = cli_config_path()
    if path.exists():
        try:
            file_cfg = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"invalid TOML: {exc}", where=str(path)) from None
    url = url or os.environ.get("EDGEFLEET_URL") or file_cfg.get("url") or DEFAULT_URL
    token = token or os.environ.get("EDGEFLEET_TOKEN") or file_cfg.get("token")
    return str(url).rstrip("/").removesuffix(API_PREFIX), token


class ApiError(EdgeFleetError):
    """The controller refused a request; ``code`` is the controller's error code."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        err = body.get("error")
        err = err if isinstance(err, dict) else {}
        message = err.get("message") or body.get("detail") or f"HTTP {status}"
        super().__init__(f"controller answered {status}: {message}", code=err.get("code") or f"http_{status}",
                         where=err.get("where"), hint=err.get("hint"))
        self.status = status


class ControllerClient:
    def __init__(self, url: str, token: str | None, *, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        import httpx2 as httpx  # here, not at module level: the CLI starts without it

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url
        self._transport_error = httpx.TransportError
        self._http = httpx.Client(base_url=url, headers=headers, timeout=timeout, transport=transport)

    def __enter__(self) -> ControllerClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> JSON:
        try:
            resp = self._http.request(method, path, **kwargs)
        except self._transport_error as exc:
            raise TransportError(f"cannot reach the controller: {exc}", where=self.url,
                                 hint="is 'edgefleet serve' running? check --url / EDGEFLEET_URL") from None
        if resp.status_code >= 400:
            body = _error_body(resp)
            if resp.status_code == 404 and not isinstance(body.get("error"), dict):
                raise NotFoundError(f"{self.url}{path} not found", where=self.url,
                                    hint="is this the URL of an EdgeFleet controller (http://host:port)?")
            raise ApiError(resp.status_code, body)
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()

    def get(self, path: str, **params: Any) -> JSON:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None) -> JSON:
        return self.request("POST", path, json=body)

    def patch(self, path: str, body: Any) -> JSON:
        return self.request("PATCH", path, json=body)

    def download(self, path: str, dest: Path) -> int:
        """Stream the body of ``GET path`` into ``dest`` (written to a temp file, then moved into place);
        returns the bytes written."""
        tmp = dest.with_name(dest.name + ".part")
        try:
            with self._http.stream("GET", path) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise ApiError(resp.status_code, _error_body(resp))
                size = 0
                with open(tmp, "wb") as fh:
                    for chunk in resp.iter_bytes():
                        fh.write(chunk)
                        size += len(chunk)
        except self._transport_error as exc:
            tmp.unlink(missing_ok=True)
            raise TransportError(f"cannot reach the controller: {exc}", where=self.url) from None
        tmp.replace(dest)
        return size

    def upload_bundle(self, path: Path, *, model: str | None = None, model_version: str | None = None) -> JSON:
        """Upload a signed bundle; ``model``/``model_version`` link it to the registry version it packs."""
        link = {k: v for k, v in (("model", model), ("model_version", model_version)) if v is not None}
        with open(path, "rb") as fh:
            return self.request("POST", f"{API_PREFIX}/bundles", content=fh.read(), params=link,
                                headers={"Content-Type": "application/octet-stream"})


def _error_body(resp: httpx.Response) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        return {"detail": resp.text[:200]}
    return body if isinstance(body, dict) else {"detail": str(body)[:200]}


def client_from_env(url: str | None = None, token: str | None = None) -> ControllerClient:
    return ControllerClient(*resolve_endpoint(url, token))
