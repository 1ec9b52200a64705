"""The bearer token -> the request's tenant.

``Authorization: Bearer <JWT>``, verified with the configured key: HS256 with a secret file, RS256 or
ES256 with a public key file (the algorithm follows the key, so a token whose header names another
one, ``none`` included, is refused). ``exp`` is required; ``aud`` and ``iss`` are checked when
configured. The tenant is the ``tenant_claim`` claim and must be a valid tenant name.

Any failure is 401 with ``WWW-Authenticate: Bearer``; the message says what was wrong with the token
(missing, malformed, expired, bad signature...) and never repeats it. With ``--auth none`` every
request is tenant ``default`` (only on a loopback address; see config).
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request

from ..errors import InvalidInput
from ..names import check_tenant
from .errors import ApiError

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="agentstate"'}


def _denied(why: str) -> ApiError:
    return ApiError(401, f"unauthorized: {why}", code="invalid_token",
                    headers={"WWW-Authenticate": 'Bearer realm="agentstate", error="invalid_token"'})


CACHE_SIZE = 10_000


class Verifier:
    """Verifies tokens for one configuration (the key is read once, at start).

    A token that verified is remembered (token -> tenant, exp) so a client's next requests skip the
    signature check; its expiry is still checked on every request. The cache holds at most
    CACHE_SIZE tokens and starts over when full."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.none = config.auth == "none"
        self._seen: dict[str, tuple[str, float]] = {}

    def tenant(self, request: Request) -> str:
        """The tenant of the request (401 if its token is not good); kept in ``request.state.tenant``
        for the request log."""
        tenant = self.tenant_of(None if self.none else request.headers.get("authorization"))
        request.state.tenant = tenant
        return tenant

    def tenant_of(self, header: str | None) -> str:
        """The tenant of a request whose Authorization header is ``header`` (401 if its token is not good)."""
        if self.none:
            return "default"
        seen = self._seen.get(header) if header else None
        if seen is not None and seen[1] > time.time():
            return seen[0]
        return self._verify(header)

    def _verify(self, header: str | None) -> str:
        import jwt

        if not header:
            raise ApiError(401, "unauthorized: no bearer token (send Authorization: Bearer <JWT>)",
                           headers=_CHALLENGE)
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _denied("the Authorization header is not 'Bearer <JWT>'")
        cfg = self.config
        try:
            claims = jwt.decode(
                token, cfg.key, algorithms=cfg.algorithms, audience=cfg.jwt_audience, issuer=cfg.jwt_issuer,
                options={"require": ["exp"], "verify_aud": cfg.jwt_audience is not None}, leeway=0,
            )
        except jwt.ExpiredSignatureError:
            raise _denied("the token has expired") from None
        except jwt.MissingRequiredClaimError as e:
            raise _denied(f"the token has no {e.claim!r} claim") from None
        except jwt.InvalidAudienceError:
            raise _denied("the token's audience is not this server's") from None
        except jwt.InvalidIssuerError:
            raise _denied("the token's issuer is not the one configured") from None
        except jwt.InvalidAlgorithmError:
            raise _denied(f"the token's algorithm is not allowed (this server takes {', '.join(cfg.algorithms)})"
                          ) from None
        except jwt.InvalidSignatureError:
            raise _denied("the token's signature does not verify") from None
        except jwt.DecodeError:
            raise _denied("the token is malformed") from None
        except jwt.InvalidTokenError as e:
            raise _denied(f"the token is not valid ({type(e).__name__})") from None
        value = claims.get(cfg.tenant_claim)
        try:
            tenant = check_tenant(value) if isinstance(value, str) else check_tenant(object())
        except InvalidInput:
            raise _denied(f"the token's {cfg.tenant_claim!r} claim is not a valid tenant name") from None
        exp = claims.get("exp")
        if isinstance(exp, (int, float)) and not isinstance(exp, bool):
            if len(self._seen) >= CACHE_SIZE:
                self._seen.clear()
            self._seen[header] = (tenant, float(exp))
        return tenant


def check_user(tenant: str, user_id: str) -> None:
    """403 when the path's ``{user_id}`` is not the token's tenant."""
    if user_id != tenant:
        raise ApiError(403, "forbidden: the token is not for this user")
