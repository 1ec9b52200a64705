"""Running the server: uvicorn on a socket bound here, SIGTERM draining in-flight requests, exit 0.

uvicorn, on SIGTERM or SIGINT, stops accepting, lets the requests in flight finish, runs the app's
shutdown (the stores are closed), then re-raises the signal so the process dies of it. Here the
signal is not re-raised: a server stopped by SIGTERM has drained and exits 0. The socket is bound
before uvicorn starts, so an address in use is one error line (exit 1), and ``--port 0`` works
(the line "listening on ..." names the port the kernel chose).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn

from .config import Config, ConfigError, env_name

log = logging.getLogger("agentstate.serve")


class Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)
        # uvicorn re-raises the captured signal here; drained and stopped on request is a clean exit.

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and sockets:
            host, port = sockets[0].getsockname()[:2]
            log.info("listening on http://%s:%d (pid %d)", _shown_host(host), port, os.getpid())


def _shown_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say they are TCP,
    # and with Nagle on, a response's body waits ~40 ms for the client's delayed ACK of its headers.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def request_logging() -> None:
    """The request log at INFO whatever --log-level says (it is the server's output), and uvicorn's own
    warnings (a malformed request line, ...) through the same handler and format."""
    from .. import logs

    logs.ready()  # the CLI's handler, if it is still only asked for
    for name in ("agentstate.serve", "agentstate.serve.access"):
        logging.getLogger(name).setLevel(logging.INFO)
    ours = [h for h in logging.getLogger("agentstate").handlers if getattr(h, "_agentstate", False)]
    uv = logging.getLogger("uvicorn")
    uv.handlers = ours
    uv.setLevel(logging.WARNING)
    uv.propagate = False
    # a record per request: not the thread's or the multiprocessing process's name, which no format here
    # shows (the JSON lines' pid stays); ~4% of the server's CPU per append
    logging.logThreads = False
    logging.logMultiprocessing = False


def serve(cfg: Config) -> int:
    """Serve until SIGTERM/SIGINT; 0 once drained."""
    request_logging()
    common: dict[str, Any] = dict(log_config=None, access_log=False, lifespan="on", server_header=False,
                                  timeout_keep_alive=30, proxy_headers=False)
    sock = bind(cfg.host, cfg.port)
    if cfg.workers == 1:
        from .app import create_app

        config = uvicorn.Config(create_app(cfg), **common)
        Server(config).run(sockets=[sock])
        return 0
    import orjson
    from uvicorn.supervisors import Multiprocess

    os.environ[env_name()] = orjson.dumps(cfg.to_env()).decode()
    config = uvicorn.Config("agentstate.serve.app:from_env", factory=True, workers=cfg.workers, **common)
    import inspect

    if "target" in inspect.signature(Multiprocess.__init__).parameters:  # uvicorn before 0.36
        Multiprocess(config, target=Server(config).run, sockets=[sock]).run()  # type: ignore[call-arg]
    else:
        Multiprocess(config, sockets=[sock]).run()
    return 0
