"""`emosent serve`: checks, the data directory's lock, the model, then uvicorn on one socket."""

from __future__ import annotations

import errno
import ipaddress
import socket
from pathlib import Path

import uvicorn

from emosent.builtin import load_model, model_name
from emosent.config import ServeConfig
from emosent.files import exclusive
from emosent.runtime import pick_device
from emosent.serve.app import create_app
from emosent.serve.guards import allowed_hosts


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def check_options(host: str, config: ServeConfig) -> None:
    """Refuse, before any work, options that cannot work or would expose the service."""
    if config.token is not None and not config.token.strip():
        raise ValueError("--token: empty; give a secret string, or leave the option out")
    if config.token is None and not is_loopback(host):
        raise ValueError(f"--host {host}: beyond this machine anyone could use the service: set an API token with "
                         "--token or EMOSENT_TOKEN, or listen on 127.0.0.1")
    allowed_hosts(host, config.allowed_hosts)
    pick_device(config.device)
    if config.data_dir.exists() and not config.data_dir.is_dir():
        raise ValueError(f"--data-dir {config.data_dir}: not a folder; name a folder for the jobs and results")


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, or one line saying why not. Bound here rather than by uvicorn so that a
    taken port is a clear error before the model loads, and --port 0 can report the port it got."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as err:
        raise ValueError(f"--host {host}: not an address of this machine ({err.strerror})") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise ValueError(f"--port {port}: already in use on {host}; choose another (--port 0 picks a free one)") from None
        raise ValueError(f"--host {host} --port {port}: cannot listen there ({err.strerror})") from None
    return sock


def serve(model_dir: str | Path | None, config: ServeConfig, *, host: str = "127.0.0.1", port: int = 8000,
          access_log: bool = False) -> None:
    """Run the service until SIGINT/SIGTERM. Prints one line with its address once it listens."""
    check_options(host, config)
    data_dir = Path(config.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    # One server per data folder: a second one would report the first one's jobs as interrupted.
    with exclusive(data_dir / "serve.lock", wait=False, holder=f"the data folder {data_dir}"):
        sock = listen(host, port)
        model = load_model(model_dir).to(pick_device(config.device)).eval()  # None: the built-in model
        app = create_app(model, config, model_name=model_name(model_dir), host=host)
        server = uvicorn.Server(uvicorn.Config(app, access_log=access_log, timeout_graceful_shutdown=5, log_level="info"))
        shown = f"[{host}]" if ":" in host else host
        print(f"emosent serve: listening on http://{shown}:{sock.getsockname()[1]}/ (API docs at /docs); "
              f"data in {data_dir}", flush=True)
        server.run(sockets=[sock])
