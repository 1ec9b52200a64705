"""The server's settings, checked at start: anything wrong here is exit 2 before the port is opened
(a missing key file is never a 500 later)."""

from __future__ import annotations

import importlib
import inspect
import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MIN_SECRET_BYTES = 32
DEFAULT_PORT = 8765


class ConfigError(Exception):
    """A bad setting: one line, exit 2."""


@dataclass
class Config:
    target: str | None = None  # a store directory or a postgresql:// URL (None: ./.agentstate)
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    workers: int = 1
    auth: str = "jwt"  # "jwt" or "none"
    jwt_secret_file: str | None = None
    jwt_public_key_file: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    tenant_claim: str = "sub"
    agent: str = "agentstate.serve:echo"
    agent_timeout: float = 60.0
    max_item_bytes: int = 1 << 20
    max_body_bytes: int = 20 << 20
    lock_timeout: float | None = None
    log_format: str = "text"
    cache: str | None = None  # a Redis hot tier for the sessions (the global --cache / AGENTSTATE_CACHE)
    # resolved by check()
    key: Any = field(default=None, repr=False)
    algorithms: list[str] = field(default_factory=list)
    runner: Callable[..., Any] | None = field(default=None, repr=False)

    def __repr__(self) -> str:  # never a key
        return f"Config(target={self.target!r}, host={self.host!r}, port={self.port}, auth={self.auth!r})"

    def to_env(self) -> dict[str, Any]:
        """The settings a worker process re-checks (``--workers N``): everything but the resolved key."""
        return {k: v for k, v in self.__dict__.items() if k not in ("key", "algorithms", "runner")}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check(cfg: Config) -> Config:
    """Resolve and check every setting (ConfigError with one line if any is bad)."""
    if cfg.auth not in ("jwt", "none"):
        raise ConfigError(f"--auth must be jwt or none, not {cfg.auth!r}")
    if not 0 <= cfg.port <= 65535:
        raise ConfigError(f"--port {cfg.port} is not a port number (0-65535)")
    if cfg.workers < 1:
        raise ConfigError(f"--workers {cfg.workers} must be at least 1")
    if not 0 < cfg.agent_timeout < float("inf"):  # NaN fails this too
        raise ConfigError(f"--agent-timeout must be a positive number of seconds, not {cfg.agent_timeout!r}")
    if cfg.max_item_bytes < 1 or cfg.max_body_bytes < 1:
        raise ConfigError("--max-item-bytes and --max-body-bytes must be at least 1")
    if cfg.auth == "none":
        if not is_loopback(cfg.host):
            raise ConfigError(f"--auth none serves every request as tenant 'default'; it is refused on {cfg.host} "
                              "(only a loopback address such as 127.0.0.1 may serve without tokens)")
        if cfg.jwt_secret_file or cfg.jwt_public_key_file:
            raise ConfigError("--auth none takes no --jwt-secret-file or --jwt-public-key-file")
    else:
        cfg.key, cfg.algorithms = _load_key(cfg)
    from ..errors import InvalidInput
    from ..names import check_name

    try:
        check_name(cfg.tenant_claim, "--tenant-claim")
    except InvalidInput as e:
        raise ConfigError(str(e)) from None
    cfg.runner = load_agent(cfg.agent)
    return cfg


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)
    except OSError as e:
        raise ConfigError(f"cannot read the {what} {path}: {e.strerror or e}") from None


def _load_key(cfg: Config) -> tuple[Any, list[str]]:
    if cfg.jwt_secret_file and cfg.jwt_public_key_file:
        raise ConfigError("give one of --jwt-secret-file and --jwt-public-key-file, not both")
    if cfg.jwt_secret_file:
        secret = _read(cfg.jwt_secret_file, "JWT secret file").strip()
        if len(secret) < MIN_SECRET_BYTES:
            raise ConfigError(f"the JWT secret in {cfg.jwt_secret_file} is {len(secret)} bytes; HS256 needs at least "
                              f"{MIN_SECRET_BYTES} (e.g. python -c 'import secrets; print(secrets.token_hex(32))')")
        return secret, ["HS256"]
    if cfg.jwt_public_key_file:
        pem = _read(cfg.jwt_public_key_file, "JWT public key file")
        try:
            from cryptography.hazmat.primitives.asymmetric import ec, rsa
            from cryptography.hazmat.primitives.serialization import load_pem_public_key
        except ImportError:
            raise ConfigError("RS256/ES256 tokens need the cryptography package: pip install 'agentstate[serve]'"
                              ) from None
        try:
            key = load_pem_public_key(pem)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{cfg.jwt_public_key_file} is not a PEM public key ({e})") from None
        if isinstance(key, rsa.RSAPublicKey):
            return key, ["RS256"]
        if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1":
            return key, ["ES256"]
        raise ConfigError(f"{cfg.jwt_public_key_file} is neither an RSA nor a P-256 public key (RS256 or ES256)")
    raise ConfigError("--auth jwt (the default) needs --jwt-secret-file or --jwt-public-key-file "
                      "(or --auth none on a loopback address)")


def load_agent(spec: str) -> Callable[..., Any]:
    """The agent runner ``MODULE:CALLABLE`` (a callable taking the message list, returning the reply)."""
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ConfigError(f"--agent takes MODULE:CALLABLE (e.g. agentstate.serve:echo), not {spec!r}")
    try:
        obj: Any = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - any failure to import is the user's module: say which
        raise ConfigError(f"--agent {spec}: cannot import {module}: {type(e).__name__}: {e}") from None
    for part in name.split("."):
        obj = getattr(obj, part, None)
    if not callable(obj):
        raise ConfigError(f"--agent {spec}: {name} is not a callable in {module}")
    return obj


def is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


def env_name() -> str:
    return "AGENTSTATE_SERVE_CONFIG"


def from_env() -> Config:
    """The config a ``--workers N`` child gets from its parent (JSON in the environment), re-checked."""
    import orjson

    raw = os.environ.get(env_name())
    if not raw:
        raise ConfigError(f"{env_name()} is not set")
    return check(Config(**orjson.loads(raw)))
