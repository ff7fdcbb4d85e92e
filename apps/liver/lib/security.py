"""Who may talk to the liver app's server, and how: one ASGI middleware in front of everything monailabel serves.

monailabel 0.8.5 answers any web page (its CORS middleware echoes every ``Origin`` with credentials allowed), does not
check ``Host`` (DNS rebinding), and its token auth needs Keycloak and fails with the installed PyJWT. The
:class:`AccessMiddleware` here replaces its CORS middleware and checks, in this order:

1. ``Host``: the host name must be one the server is reached by (loopback names, the bound address, the machine's
   names when bound to all interfaces, and ``LIVERSEG_ALLOWED_HOSTS``); otherwise 400. A DNS-rebinding page reaches the
   server under its own host name and stops here.
2. ``Origin``: a browser request from a page of another origin is refused (403) unless that origin is allowed
   (default: the server's own origin under each allowed host; more with ``LIVERSEG_ALLOWED_ORIGINS``). Requests
   without ``Origin`` (curl, 3D Slicer, Python clients) pass; a mutating request marked ``Sec-Fetch-Site:
   cross-site`` by the browser is refused even without ``Origin``. Allowed origins get CORS headers (credentials
   included); nobody else gets any.
3. Request size: ``Content-Length`` above ``LIVERSEG_MAX_UPLOAD_MB`` (default 2048) is answered 413 before the body is
   read; a chunked body is cut off at the same size.
4. Token: required for every path but the public ones (the API docs, the OHIF viewer's static files, ``/auth/``) when
   the server is bound beyond loopback, or when tokens are configured. ``Authorization: Bearer <token>`` (or the
   ``liverseg_token`` cookie that ``POST /auth/token`` sets, SameSite=Strict); 401 without a valid token.
5. The dangerous operations are off by default and admin-only when turned on: model upload / delete
   (``PUT``/``DELETE /model/...``, ``LIVERSEG_ALLOW_MODEL_UPLOAD=1``) and session archives
   (``PUT /session/?uncompress=true``, ``LIVERSEG_ALLOW_ARCHIVES=1``): 403 otherwise. Removing images and reading
   the server log need the admin role when tokens are in use.

Tokens: ``LIVERSEG_TOKEN`` (one admin token, the simple mode), and/or ``LIVERSEG_TOKENS_FILE``, a JSON file
``{"users": [{"user": "alice", "token_sha256": "<hex>", "roles": ["annotator"]}]}`` (roles ``admin`` or
``annotator``; only hashes are stored). ``/auth/``, ``/auth/token`` and ``/auth/token/valid`` answer as monailabel's
Keycloak routes do, so the MONAI Label client of 3D Slicer logs in with user name and token as password.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import os
import socket
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, Mapping, Optional, Sequence
from urllib.parse import parse_qs, urlsplit

from starlette.requests import Request  # resolved by FastAPI in the auth routes' signatures

logger = logging.getLogger(__name__)

ADMIN, ANNOTATOR = "admin", "annotator"
ROLES = (ADMIN, ANNOTATOR)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
TOKEN_COOKIE = "liverseg_token"
DEFAULT_MAX_UPLOAD_MB = 2048
# paths anyone who passed the Host / Origin checks may read without a token: the viewer's and the docs' static files
PUBLIC_EXACT = frozenset({"/", "/docs", "/openapi.json", "/favicon.ico", "/auth", "/auth/", "/auth/login"})
PUBLIC_PREFIXES = ("/static/", "/ohif/", "/liverseg-docs/")
LOGIN_PATHS = ("/auth/token", "/auth/login")  # POSTs that carry the token in their body
CORS_ALLOW_HEADERS = "Authorization, Content-Type, Accept, X-Requested-With"
CORS_ALLOW_METHODS = "GET, POST, PUT, DELETE, OPTIONS"


class ConfigError(ValueError):
    """A security setting that cannot be used (the server does not start with it)."""


@dataclass(frozen=True)
class Principal:
    user: str
    roles: FrozenSet[str]

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.roles


def token_hash(token: str) -> str:
    """The SHA-256 hex digest under which a token is stored in a tokens file."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _split(value: Optional[str]) -> list:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    return host.strip("[]") in ("0.0.0.0", "::", "")


def _argv_option(argv: Sequence[str], name: str) -> Optional[str]:
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def _primary_address() -> Optional[str]:
    """The address of the interface of the default route (a UDP socket's local end; nothing is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.254.254.254", 9))
            return s.getsockname()[0]
    except OSError:
        return None


def _machine_names() -> set:
    """Names and addresses this machine is reached by (for a server bound to all interfaces)."""
    names = {a for a in [_primary_address()] if a}
    for n in (socket.gethostname(), socket.getfqdn()):
        if n:
            names.add(n.lower())
            try:
                names.update(info[4][0].lower() for info in socket.getaddrinfo(n, None))
            except OSError:
                pass
    return names


def parse_host_header(value: str) -> str:
    """Host name of a ``Host`` header value, lower case, without port (``[::1]:8000`` -> ``::1``); '' if malformed."""
    value = (value or "").strip().lower()
    if not value or any(c in value for c in "/@?#\\ "):
        return ""
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else ""
    if value.count(":") == 1:
        value, port = value.split(":")
        if not port.isdigit():
            return ""
    return value


def normalize_origin(origin: str) -> str:
    """``scheme://host[:port]`` in lower case without default port or trailing slash ('' if not an origin)."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return ""
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        return ""
    host = parts.hostname.lower()
    host = f"[{host}]" if ":" in host else host
    default = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")


def _cors_origins_env(value: Optional[str]) -> list:
    """``MONAI_LABEL_CORS_ORIGINS`` as a list, whether given as a JSON list (monailabel's format) or comma-separated
    (what people write; monailabel 0.8.5 then fails to start)."""
    if not value:
        return []
    value = value.strip()
    if value.startswith("["):
        try:
            return [str(v) for v in json.loads(value)]
        except json.JSONDecodeError as e:
            raise ConfigError(f"MONAI_LABEL_CORS_ORIGINS is not a JSON list: {e}") from e
    return _split(value)


def load_tokens(environ: Mapping[str, str]) -> Dict[str, Principal]:
    """Token hash -> principal, from ``LIVERSEG_TOKEN`` (admin) and ``LIVERSEG_TOKENS_FILE``.

    Raises:
        ConfigError: unreadable tokens file, a user without a 64-hex-digit ``token_sha256``, an unknown role, or a
            token shorter than 16 characters.
    """
    tokens: Dict[str, Principal] = {}
    simple = environ.get("LIVERSEG_TOKEN", "").strip()
    if simple:
        if len(simple) < 16:
            raise ConfigError("LIVERSEG_TOKEN is too short: use at least 16 random characters")
        tokens[token_hash(simple)] = Principal("admin", frozenset({ADMIN, ANNOTATOR}))
    path = environ.get("LIVERSEG_TOKENS_FILE", "").strip()
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                users = json.load(f).get("users")
        except (OSError, ValueError, AttributeError) as e:
            raise ConfigError(f"LIVERSEG_TOKENS_FILE {path}: cannot be read as JSON with a 'users' list ({e})") from e
        if not isinstance(users, list):
            raise ConfigError(f"LIVERSEG_TOKENS_FILE {path}: 'users' must be a list")
        for i, u in enumerate(users):
            if not isinstance(u, dict):
                raise ConfigError(f"LIVERSEG_TOKENS_FILE {path}: users[{i}] is not an object")
            digest = str(u.get("token_sha256", "")).lower()
            roles = u.get("roles") or [ANNOTATOR]
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ConfigError(f"LIVERSEG_TOKENS_FILE {path}: users[{i}] needs 'token_sha256' (64 hex digits)")
            bad = [r for r in roles if r not in ROLES] if isinstance(roles, list) else [roles]
            if bad:
                raise ConfigError(f"LIVERSEG_TOKENS_FILE {path}: users[{i}] has unknown roles {bad}; valid: {ROLES}")
            tokens[digest] = Principal(str(u.get("user") or f"user{i}"), frozenset(roles))
    return tokens


def _flag(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass
class AccessPolicy:
    """What :class:`AccessMiddleware` enforces; :meth:`from_env` reads it from the server's environment."""

    bind_host: str = "127.0.0.1"
    port: int = 8000
    allowed_hosts: FrozenSet[str] = LOOPBACK_NAMES
    allowed_origins: FrozenSet[str] = frozenset()
    tokens: Dict[str, Principal] = field(default_factory=dict)
    auth_required: bool = False
    allow_model_upload: bool = False
    allow_archives: bool = False
    max_body_bytes: int = DEFAULT_MAX_UPLOAD_MB * 1024 * 1024

    @property
    def exposed(self) -> bool:
        return not is_loopback(self.bind_host)

    @classmethod
    def from_env(
        cls, environ: Optional[Mapping[str, str]] = None, argv: Optional[Sequence[str]] = None
    ) -> "AccessPolicy":
        """The policy for a server bound to ``LIVERSEG_HOST`` (else ``--host`` of the command line, else monailabel's
        default ``0.0.0.0``) and ``LIVERSEG_PORT`` (else ``--port``, else 8000).

        Raises:
            ConfigError: see :func:`load_tokens`; ``LIVERSEG_AUTH=off`` on a server bound beyond loopback; a bad
                port, origin or size.
        """
        environ = os.environ if environ is None else environ
        argv = sys.argv if argv is None else argv
        host = (environ.get("LIVERSEG_HOST") or _argv_option(argv, "--host") or "0.0.0.0").strip().lower()
        port_s = environ.get("LIVERSEG_PORT") or _argv_option(argv, "--port") or "8000"
        try:
            port = int(port_s)
        except ValueError as e:
            raise ConfigError(f"invalid port {port_s!r}") from e
        hosts = set(LOOPBACK_NAMES)
        if is_wildcard(host):
            hosts |= _machine_names()
        else:
            hosts.add(host.strip("[]"))
        hosts |= {h.lower().strip("[]") for h in _split(environ.get("LIVERSEG_ALLOWED_HOSTS"))}
        origins = set()
        for h in hosts:
            h = f"[{h}]" if ":" in h else h
            origins |= {f"http://{h}:{port}", f"https://{h}:{port}"}
            if port in (80, 443):
                origins.add(f"{'http' if port == 80 else 'https'}://{h}")
        extra = _split(environ.get("LIVERSEG_ALLOWED_ORIGINS")) + _cors_origins_env(
            environ.get("MONAI_LABEL_CORS_ORIGINS")
        )
        for o in extra:
            if o.strip() == "*":
                raise ConfigError("'*' is not an allowed origin: list the origins of the viewers you use")
            n = normalize_origin(o)
            if not n:
                raise ConfigError(f"invalid allowed origin {o!r}: expected scheme://host[:port]")
            origins.add(n)
        tokens = load_tokens(environ)
        mode = environ.get("LIVERSEG_AUTH", "auto").strip().lower() or "auto"
        if mode not in ("auto", "required", "off"):
            raise ConfigError(f"LIVERSEG_AUTH={mode!r}; valid: auto, required, off")
        exposed = not is_loopback(host)
        if mode == "off" and exposed:
            raise ConfigError(f"LIVERSEG_AUTH=off is refused for a server bound to {host} (beyond this machine)")
        required = mode == "required" or (mode == "auto" and (exposed or bool(tokens)))
        if required and not tokens:
            raise ConfigError(
                f"the server is bound to {host} (beyond this machine) and needs a token: set LIVERSEG_TOKEN "
                "(liverseg serve makes one) or LIVERSEG_TOKENS_FILE"
            )
        try:
            max_mb = float(environ.get("LIVERSEG_MAX_UPLOAD_MB") or DEFAULT_MAX_UPLOAD_MB)
        except ValueError as e:
            raise ConfigError(f"LIVERSEG_MAX_UPLOAD_MB={environ['LIVERSEG_MAX_UPLOAD_MB']!r} is not a number") from e
        if max_mb <= 0:
            raise ConfigError("LIVERSEG_MAX_UPLOAD_MB must be positive")
        return cls(
            bind_host=host,
            port=port,
            allowed_hosts=frozenset(hosts),
            allowed_origins=frozenset(origins),
            tokens=tokens,
            auth_required=required,
            allow_model_upload=_flag(environ, "LIVERSEG_ALLOW_MODEL_UPLOAD"),
            allow_archives=_flag(environ, "LIVERSEG_ALLOW_ARCHIVES"),
            max_body_bytes=int(max_mb * 1024 * 1024),
        )

    def principal(self, token: Optional[str]) -> Optional[Principal]:
        """The principal of a presented token (constant-time comparison of the hashes), or None."""
        if not token:
            return None
        digest = token_hash(token)
        found = None
        for known, p in self.tokens.items():
            if hmac.compare_digest(known, digest):
                found = p
        return found


def _header(scope: Mapping[str, Any], name: bytes) -> Optional[str]:
    for k, v in scope.get("headers") or ():
        if k == name:
            return v.decode("latin-1")
    return None


def _cookie(scope: Mapping[str, Any], name: str) -> Optional[str]:
    raw = _header(scope, b"cookie") or ""
    for part in raw.split(";"):
        k, _, v = part.strip().partition("=")
        if k == name:
            return v
    return None


def bearer_token(scope: Mapping[str, Any]) -> Optional[str]:
    auth = _header(scope, b"authorization") or ""
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return _cookie(scope, TOKEN_COOKIE)


def is_public(path: str) -> bool:
    return path in PUBLIC_EXACT or path.startswith(PUBLIC_PREFIXES)


def dangerous_operation(method: str, path: str, query: str) -> Optional[str]:
    """The setting that turns on this operation when it is one of the off-by-default admin operations, else None."""
    parts = [p for p in path.split("/") if p]
    if method in ("PUT", "DELETE") and parts[:1] == ["model"]:
        return "LIVERSEG_ALLOW_MODEL_UPLOAD"
    if method == "PUT" and parts == ["session"]:
        values = parse_qs(query).get("uncompress", [])
        if any(v.strip().lower() in ("1", "true", "yes", "on") for v in values):
            return "LIVERSEG_ALLOW_ARCHIVES"
    return None


def admin_only(method: str, path: str) -> bool:
    """Operations for the admin role only when tokens are in use: removing images (with their labels), reading the
    server log, and the dangerous operations of :func:`dangerous_operation`."""
    parts = [p for p in path.split("/") if p]
    return (method == "DELETE" and parts[:2] == ["datastore", "image"]) or parts[:1] == ["logs"]


class BodyTooLarge(Exception):
    pass


class AccessMiddleware:
    """The checks of the module docstring, then CORS headers for allowed origins."""

    def __init__(self, app: Any, policy: AccessPolicy, prefix: str = ""):
        self.app = app
        self.policy = policy
        self.prefix = prefix.rstrip("/")

    async def _deny(self, scope, receive, send, status: int, msg: str, headers: Optional[Dict[str, str]] = None):
        from starlette.responses import JSONResponse

        await JSONResponse({"detail": msg}, status_code=status, headers=headers)(scope, receive, send)

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        p = self.policy
        method = scope.get("method", "GET").upper()
        path = scope.get("path", "")
        if self.prefix and path.startswith(self.prefix):
            path = path[len(self.prefix) :] or "/"
        host = parse_host_header(_header(scope, b"host") or "")
        if host not in p.allowed_hosts:
            logger.warning("refused %s %s: Host %r is not an allowed host", method, path, _header(scope, b"host"))
            await self._deny(
                scope, receive, send, 400,
                f"invalid Host header; this server answers to: {', '.join(sorted(p.allowed_hosts))} "
                "(add names with LIVERSEG_ALLOWED_HOSTS)",
            )  # fmt: skip
            return
        origin_raw = _header(scope, b"origin")
        origin = normalize_origin(origin_raw) if origin_raw else ""
        if origin_raw is not None and origin not in p.allowed_origins:
            logger.warning("refused %s %s: cross-origin request from %r", method, path, origin_raw)
            await self._deny(
                scope, receive, send, 403,
                f"cross-origin request from {origin_raw!r} refused; allowed origins are the server's own "
                "(add others with LIVERSEG_ALLOWED_ORIGINS)",
            )  # fmt: skip
            return
        site = (_header(scope, b"sec-fetch-site") or "").lower()
        if origin_raw is None and method not in SAFE_METHODS and site in ("cross-site", "same-site"):
            await self._deny(scope, receive, send, 403, f"{site} request refused")
            return
        cors = {}
        if origin:
            cors = {"access-control-allow-origin": origin, "access-control-allow-credentials": "true", "vary": "Origin"}
            if method == "OPTIONS" and _header(scope, b"access-control-request-method"):
                from starlette.responses import PlainTextResponse

                headers = dict(cors)
                headers["access-control-allow-methods"] = CORS_ALLOW_METHODS
                headers["access-control-allow-headers"] = CORS_ALLOW_HEADERS
                headers["access-control-max-age"] = "600"
                await PlainTextResponse("OK", headers=headers)(scope, receive, send)
                return
        length = _header(scope, b"content-length")
        if length is not None:
            if not length.strip().isdigit():
                await self._deny(scope, receive, send, 400, "invalid Content-Length")
                return
            if int(length) > p.max_body_bytes:
                await self._deny(
                    scope, receive, send, 413,
                    f"request body of {int(length)} bytes exceeds the limit of {p.max_body_bytes} bytes "
                    "(LIVERSEG_MAX_UPLOAD_MB)",
                )  # fmt: skip
                return
        principal = None
        if p.auth_required and not (method in SAFE_METHODS and is_public(path)) and path not in LOGIN_PATHS:
            principal = p.principal(bearer_token(scope))
            if principal is None:
                await self._deny(
                    scope, receive, send, 401,
                    "authentication required: send 'Authorization: Bearer <token>'",
                    headers={"WWW-Authenticate": "Bearer", **cors},
                )  # fmt: skip
                return
        setting = dangerous_operation(method, path, scope.get("query_string", b"").decode("latin-1"))
        if setting:
            enabled = p.allow_model_upload if setting == "LIVERSEG_ALLOW_MODEL_UPLOAD" else p.allow_archives
            if not enabled:
                await self._deny(
                    scope, receive, send, 403,
                    f"{method} {path} is turned off on this server (start it with {setting}=1 to allow it, for admins)",
                    headers=cors,
                )  # fmt: skip
                return
            if p.auth_required and not (principal and principal.is_admin):
                await self._deny(scope, receive, send, 403, f"{method} {path} needs the admin role", headers=cors)
                return
        if p.auth_required and admin_only(method, path) and not principal.is_admin:
            await self._deny(scope, receive, send, 403, f"{method} {path} needs the admin role", headers=cors)
            return
        scope.setdefault("state", {})["liverseg_principal"] = principal

        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
                if received > p.max_body_bytes:
                    raise BodyTooLarge()
            return message

        async def send_with_cors(message):
            nonlocal started
            if message.get("type") == "http.response.start":
                started = True
                if cors:
                    headers = [
                        (k, v) for k, v in message.get("headers", []) if not k.lower().startswith(b"access-control-")
                    ]
                    headers += [(k.encode(), v.encode()) for k, v in cors.items()]
                    message = dict(message, headers=headers)
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_cors)
        except BodyTooLarge:
            if started:
                raise
            await self._deny(scope, receive, send, 413, f"request body exceeds the limit of {p.max_body_bytes} bytes")


LOGIN_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>liverseg: log in</title></head>
<body style="font-family: sans-serif; max-width: 28em; margin: 4em auto">
<h2>Liver CT segmentation server</h2><p>This server needs a token (ask its administrator).</p><!--error-->
<form method="post" action="login"><p><label>User <input name="username" value="admin"></label></p>
<p><label>Token <input name="password" type="password" autofocus></label></p><p><button>Log in</button></p></form>
<p>Then the OHIF viewer opens; 3D Slicer asks for the same user and token.</p></body></html>
"""


def install_auth_routes(fastapi_app: Any, policy: AccessPolicy, api_prefix: str = "") -> None:
    """``/auth/``, ``/auth/token`` and ``/auth/token/valid`` as monailabel's client expects them, in front of the
    app's routes; the token is the password (the user name is checked against the token's user)."""
    from fastapi import APIRouter, Form
    from fastapi.responses import JSONResponse

    router = APIRouter(prefix="/auth", tags=["Auth"])

    @router.get("/", summary="Is authentication required")
    async def auth_enabled():
        return {"enabled": policy.auth_required, "client_id": "liverseg", "realm": "liverseg-token"}

    @router.post("/token", summary="Log in: user name and token (as password) -> bearer token")
    async def access_token(username: str = Form(""), password: str = Form("")):
        principal = policy.principal(password)
        if not policy.auth_required:
            return {"access_token": None, "token_type": None}
        if principal is None or (username and username != principal.user):
            return JSONResponse({"detail": "invalid user name or token"}, status_code=401)
        response = JSONResponse({"access_token": password, "token_type": "bearer"})
        response.set_cookie(TOKEN_COOKIE, password, httponly=True, samesite="strict")
        return response

    @router.get("/login", include_in_schema=False)
    async def login_page():
        from fastapi.responses import HTMLResponse

        return HTMLResponse(LOGIN_PAGE)

    @router.post("/login", include_in_schema=False)
    async def login(username: str = Form(""), password: str = Form("")):
        from fastapi.responses import HTMLResponse, RedirectResponse

        principal = policy.principal(password)
        if principal is None or (username and username != principal.user):
            return HTMLResponse(LOGIN_PAGE.replace("<!--error-->", "<p>Invalid user name or token.</p>"), 401)
        response = RedirectResponse(f"{api_prefix}/ohif/", status_code=303)
        response.set_cookie(TOKEN_COOKIE, password, httponly=True, samesite="strict")
        return response

    @router.get("/token/valid", summary="Is the presented token valid")
    async def valid_token(request: Request):
        principal = policy.principal(bearer_token(request.scope)) if policy.auth_required else None
        if policy.auth_required and principal is None:
            return JSONResponse({"detail": "invalid token"}, status_code=401)
        if principal is None:
            return {"username": "admin", "roles": list(ROLES)}
        return {"username": principal.user, "roles": sorted(principal.roles)}

    routes = fastapi_app.router.routes
    before = len(routes)
    fastapi_app.include_router(router, prefix=api_prefix)
    added = routes[before:]
    del routes[before:]
    routes[0:0] = added


def install(fastapi_app: Any, policy: AccessPolicy, api_prefix: str = "") -> None:
    """Replace monailabel's CORS middleware by :class:`AccessMiddleware` (outermost) and add the auth routes."""
    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware

    fastapi_app.user_middleware[:] = [m for m in fastapi_app.user_middleware if m.cls is not CORSMiddleware]
    fastapi_app.user_middleware.insert(0, Middleware(AccessMiddleware, policy=policy, prefix=api_prefix))
    install_auth_routes(fastapi_app, policy, api_prefix)
    logger.info(
        "access: bound to %s, hosts %s, %d extra origins, token %s, model upload %s, archives %s",
        policy.bind_host,
        ", ".join(sorted(policy.allowed_hosts)),
        len(policy.allowed_origins),
        "required" if policy.auth_required else "not required (loopback)",
        "on" if policy.allow_model_upload else "off",
        "on" if policy.allow_archives else "off",
    )
