"""`agentstate serve`: the store over HTTP (agentstate.serve). Parses the options, checks them (exit 2
before the port is opened), and runs the server; needs the ``serve`` extra."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import EXIT_CODES, Opts, UsageError, WriteCommand, int_option, run

app = typer.Typer()

INSTALL = "agentstate serve needs the serve extra: pip install 'agentstate[serve]'"


@app.command(cls=WriteCommand, epilog=EXIT_CODES)
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, int_option("--port", "Port (0: any free port, named in the first log line).",
                                    maximum=65535)] = 8765,
    workers: Annotated[int, int_option("--workers", "Worker processes.", minimum=1, maximum=64)] = 1,
    auth: Annotated[str, typer.Option("--auth", help="jwt (default) or none (tenant 'default'; loopback only).")
                    ] = "jwt",
    jwt_secret_file: Annotated[str | None, typer.Option("--jwt-secret-file", metavar="FILE",
                                                        help="HS256 secret (at least 32 bytes).")] = None,
    jwt_public_key_file: Annotated[str | None, typer.Option("--jwt-public-key-file", metavar="FILE",
                                                            help="RS256/ES256 public key (PEM).")] = None,
    jwt_audience: Annotated[str | None, typer.Option("--jwt-audience", help="Required 'aud' claim.")] = None,
    jwt_issuer: Annotated[str | None, typer.Option("--jwt-issuer", help="Required 'iss' claim.")] = None,
    tenant_claim: Annotated[str, typer.Option("--tenant-claim", help="The claim naming the tenant.")] = "sub",
    agent: Annotated[str, typer.Option("--agent", metavar="MODULE:CALLABLE",
                                       help="The chat API's agent runner (messages -> reply text).")
                     ] = "agentstate.serve:echo",
    agent_timeout: Annotated[float, typer.Option("--agent-timeout", help="Seconds an agent reply may take (502 "
                                                                         "after).")] = 60.0,
    max_item_bytes: Annotated[int, int_option("--max-item-bytes", "Largest item or response.", minimum=1)] = 1 << 20,
    max_body_bytes: Annotated[int, int_option("--max-body-bytes", "Largest request body (413 past it).",
                                               minimum=1)] = 20 << 20,
) -> None:
    """Serve the store over HTTP: OpenAI Conversations/Responses routes and a chat API, one tenant per token."""

    def body(o: Opts) -> int:
        try:
            from ..serve import config as config_mod
            from ..serve import run as run_mod
        except ImportError as e:
            if getattr(e, "name", "") and e.name.split(".")[0] in ("fastapi", "uvicorn", "jwt", "prometheus_client",
                                                                   "starlette", "anyio", "cryptography"):
                raise UsageError(INSTALL) from None
            raise
        cfg = config_mod.Config(
            target=o.target, host=host, port=port, workers=workers, auth=auth, jwt_secret_file=jwt_secret_file,
            jwt_public_key_file=jwt_public_key_file, jwt_audience=jwt_audience, jwt_issuer=jwt_issuer,
            tenant_claim=tenant_claim, agent=agent, agent_timeout=agent_timeout, max_item_bytes=max_item_bytes,
            max_body_bytes=max_body_bytes, lock_timeout=o.lock_timeout(), log_format=o.log_format,
            cache=o.cache)
        try:
            config_mod.check(cfg)
            return run_mod.serve(cfg)
        except config_mod.ConfigError as e:
            raise UsageError(str(e)) from None

    run(body)
