"""The CLI on an admin's own machine: the same commands through a remote control plane's REST API.

`shiftdesk login --server https://cp.example:8600 --ca ca.pem` binds to AD as the admin (through
the API) and keeps the short-lived token in ~/.config/shiftdesk/credentials.json (0600, in a
0700 directory), together with the CA certificate it was given: every later call validates
the server against that CA alone (pinning; the system's CAs are not consulted), so a network
that can issue a publicly trusted certificate for the name still cannot stand in for the
control plane. Commands act remotely when SHIFTDESK_URL (or `--server`) names a server that has
credentials. Errors come back as the same typed errors the local services raise, so the CLI
prints them the same way (field named, exit 2).
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from controlplane.errors import (
    Conflict,
    ExpectedError,
    Forbidden,
    InvalidInput,
    NotFound,
    PermanentError,
    TemporaryError,
)
from controlplane.private_files import write_private

ENV_URL = "SHIFTDESK_URL"
MAX_CA_BYTES = 64 * 1024


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "shiftdesk"


@dataclass(frozen=True)
class Credentials:
    server: str  # https://host:port, no trailing slash
    username: str
    token: str
    expires_at: int
    ca_pem: str  # the pinned CA ("" : the system's CAs, for a server with a public certificate)

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.ca_pem) if self.ca_pem else ssl.create_default_context()


def normalise(server: str) -> str:
    url = httpx.URL(server.strip().rstrip("/"))
    if url.scheme != "https" or not url.host:
        raise InvalidInput(f"server: {server!r} is not an https:// URL", field="server")
    return str(url).rstrip("/")


def _file() -> Path:
    return config_dir() / "credentials.json"


def _load_all() -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(_file().read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {}  # unreadable: as if signed out
    return data if isinstance(data, dict) else {}


def _save_all(data: dict[str, dict[str, Any]]) -> None:
    write_private(_file(), json.dumps(data, indent=2))


def saved(server: str) -> Credentials | None:
    entry = _load_all().get(normalise(server))
    try:
        return Credentials(**entry) if entry else None
    except TypeError:
        return None


def login(server: str, username: str, password: str, ca_file: Path | None) -> Credentials:
    """Sign in at SERVER (validated against CA_FILE, then pinned) and keep the token."""
    url = normalise(server)
    ca_pem = ""
    if ca_file is not None:
        try:
            ca_pem = ca_file.read_bytes()[:MAX_CA_BYTES].decode("ascii")
            ssl.create_default_context(cadata=ca_pem)
        except (OSError, UnicodeDecodeError, ssl.SSLError) as err:
            raise InvalidInput(f"ca: {ca_file} is not a readable PEM certificate ({err})", field="ca") from None
    elif (previous := saved(url)) is not None:
        ca_pem = previous.ca_pem  # the CA pinned at the first sign-in stays pinned
    pending = Credentials(server=url, username=username, token="", expires_at=0, ca_pem=ca_pem)
    body = Client(pending).call("POST", "/api/v1/auth/login", json={"username": username, "password": password})
    creds = Credentials(server=url, username=body["username"], token=body["token"], expires_at=body["expires_at"],
                        ca_pem=ca_pem)
    data = _load_all()
    data[url] = asdict(creds)
    _save_all(data)
    return creds


def logout(server: str) -> bool:
    """End the sign-in at the server (best effort) and forget the token. True if there was one."""
    url = normalise(server)
    creds = saved(url)
    if creds is None:
        return False
    with contextlib.suppress(ExpectedError, TemporaryError, PermanentError):  # expired or unreachable:
        Client(creds).call("POST", "/api/v1/auth/logout")  # forgetting the token is what matters here
    data = _load_all()
    data.pop(url, None)
    _save_all(data)
    return True


class Client:
    """JSON over HTTPS to one control plane, with its pinned CA and the admin's token."""

    def __init__(self, creds: Credentials, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {creds.token}"} if creds.token else {}
        self.creds = creds
        self.http = httpx.Client(base_url=creds.server, verify=creds.tls(), headers=headers, timeout=timeout)

    def call(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
             read_timeout: float | None = None) -> Any:
        """The answer's JSON (its text if it is not JSON; None for 204). READ_TIMEOUT: seconds to wait for
        an answer that takes long to make (an image build), instead of the client's timeout."""
        response = self._send(method, path, json=json, params=params, read_timeout=read_timeout)
        if response.status_code == 204:
            return None
        return response.json() if "json" in response.headers.get("content-type", "") else response.text

    def content(self, method: str, path: str, *, params: dict[str, Any] | None = None) -> bytes:
        """The answer's bytes as the server sent them (a PNG, say)."""
        return self._send(method, path, params=params).content

    def _send(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
              read_timeout: float | None = None) -> httpx.Response:
        """A successful response; a failure raises the typed error the local services would raise."""
        timeout = self.http.timeout if read_timeout is None else httpx.Timeout(self.http.timeout.connect,
                                                                                read=read_timeout)
        try:
            response = self.http.request(method, path, json=json, timeout=timeout,
                                         params={k: v for k, v in (params or {}).items() if v is not None})
        except httpx.ConnectError as err:
            if isinstance(err.__cause__, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY" in str(err):
                raise PermanentError(f"{self.creds.server}: its certificate is not signed by the pinned CA "
                                     "(shiftdesk login --ca FILE to pin another)") from None
            raise TemporaryError(f"{self.creds.server} is unreachable: {err}") from None
        except httpx.HTTPError as err:
            raise TemporaryError(f"{self.creds.server}: {err}") from None
        if not response.is_success:
            raise _error(response)
        return response


class FilesInvalid(InvalidInput):
    """Policy or roster files the server refused: each problem as file:line: field: message."""

    def __init__(self, errors: list[str], *, field: str) -> None:
        super().__init__("\n".join(errors), field=field)
        self.errors = errors


def _error(response: httpx.Response) -> Exception:
    try:
        body = response.json()
    except ValueError:
        body = {}
    detail = body.get("detail") if isinstance(body.get("detail"), str) else response.reason_phrase
    field = body.get("field")
    status = response.status_code
    if status == 401:
        return ExpectedError(f"{detail}: sign in again (shiftdesk login)", field="credentials")
    if status == 403:
        return Forbidden(detail)
    if status == 404:
        return NotFound(detail, field=field) if field else NotFound(detail)
    if status == 409:
        return Conflict(detail, field=field) if field else Conflict(detail)
    if 400 <= status < 500:
        listed = [e for e in body.get("errors", []) if isinstance(e, dict) and "file" in e]
        if listed:  # policy or roster files: every problem, as `shiftdesk policy validate` prints them
            return FilesInvalid([f"{e.get('file')}:{e.get('line')}: {e.get('field')}: {e.get('message')}"
                                 for e in listed], field=field or "files")
        return InvalidInput(detail, field=field or "request")
    return TemporaryError(f"server answered {status}: {detail}")
