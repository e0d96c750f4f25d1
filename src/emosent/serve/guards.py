"""What a browser must not be able to do to a service on this machine: cross-site requests and
DNS rebinding (issue 28, point 3).

* A Host allow-list (Starlette's TrustedHostMiddleware): a page at http://evil.example whose name
  is made to resolve to 127.0.0.1 reaches the server with "Host: evil.example" and gets 400, so it
  never reads an answer. Default: the loopback names and the address the server is bound to.
* State-changing requests (POST, DELETE) from a browser are taken only from the server's own page:
  their Origin (else Referer) must name the host the request was sent to, or one of the hosts the
  operator allowed. A client that sends neither (curl, httpx, a script) is not a browser page and
  is let through; the API token, when set, still applies. CORS alone would stop a foreign page
  from reading the answer, not from submitting a job.
"""

from __future__ import annotations

import ipaddress
import json
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
WILDCARD_ADDRESSES = ("0.0.0.0", "::", "")
STATE_CHANGING = ("POST", "PUT", "PATCH", "DELETE")


def host_name(host: str) -> str:
    """A bound address or name as a Host header spells it: IPv6 literals in brackets."""
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host.lower()


def allowed_hosts(bound: str, allowed: str | None) -> list[str]:
    """The Host allow-list: `allowed` (--allowed-hosts, comma-separated; "*" for any) when given,
    else the loopback names and the bound address. Bound to every interface (0.0.0.0, ::), which
    needs a token, the names clients use are not known here: any host, unless --allowed-hosts."""
    if allowed is not None:
        hosts = [h.strip().lower() for h in allowed.split(",") if h.strip()]
        if not hosts:
            raise ValueError("--allowed-hosts: empty; give comma-separated host names (example.org,*.example.org) or *")
        for h in hosts:
            if "*" in h[1:] or (h.startswith("*") and h != "*" and not h.startswith("*.")):
                raise ValueError(f"--allowed-hosts: {h!r} is not a host name or a pattern like *.example.org")
        return hosts
    if bound in WILDCARD_ADDRESSES:
        return ["*"]
    return list(dict.fromkeys([*LOOPBACK_HOSTS, host_name(bound)]))


class SameOriginMiddleware:
    """403 for a POST/PUT/PATCH/DELETE whose Origin (else Referer) is not this server: another
    site's page. `extra` are the hosts the operator allowed (--allowed-hosts), for a proxy that
    hands the server another Host than the one the page was loaded from."""

    def __init__(self, app: ASGIApp, extra: list[str] | None = None):
        self.app = app
        self.extra = [h for h in (extra or []) if h != "*"]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in STATE_CHANGING:
            headers = Headers(scope=scope)
            problem = self.foreign(headers)
            if problem is not None:
                await refuse(send, 403, problem)
                return
        await self.app(scope, receive, send)

    def foreign(self, headers: Headers) -> str | None:
        """Why the request comes from another site, or None when it does not."""
        origin = headers.get("origin")
        sent_by = "Origin"
        if origin is None:
            origin, sent_by = headers.get("referer"), "Referer"
        if origin is None:
            return None  # not a browser page: nothing to forge
        host = headers.get("host", "").lower()
        netloc = urlsplit(origin).netloc.lower() if origin != "null" else ""
        if netloc and (netloc == host or self.trusted(netloc)):
            return None
        shown = origin if len(origin) < 200 else origin[:200] + "..."
        return (f"cross-site request refused: {sent_by} {shown!r} is not this server ({host or 'no Host header'}); "
                "submit from this server's own page, or from a client that sends no Origin")

    def trusted(self, netloc: str) -> bool:
        name = netloc.rsplit(":", 1)[0] if not netloc.endswith("]") else netloc
        return any(name == h or (h.startswith("*.") and name.endswith(h[1:])) for h in self.extra)


async def refuse(send: Send, status: int, detail: str) -> None:
    """A JSON {"detail": ...} answer, as FastAPI's own errors look. Connection: close, since the
    body (an upload) is left unread."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def protect(app, bound: str, allowed: str | None) -> None:
    """Put both checks in front of the FastAPI `app` served on address `bound`: the Host first,
    then the origin of state-changing requests. Hosts the operator named also count as this server's
    origin (a proxy may hand the server another Host than the page was loaded from)."""
    hosts = allowed_hosts(bound, allowed)
    app.add_middleware(SameOriginMiddleware, extra=hosts if allowed is not None else None)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts, www_redirect=False)  # the last added runs first
