"""Who is calling: JWT verification, the caller's identity and role checks.

Tokens are JWTs with the claims sub, tenant ("*" for towerco staff), roles (a list), iss, aud,
exp and iat. On the embedded stack they are HS256 with settings.jwt_secret; in production RS256
keys come from settings.jwks_url. Only the algorithms in settings.jwt_algorithms are accepted and
"none" never is.

Roles: viewer, noc_operator, admin, tenant_viewer, service, file_download. admin and service imply
every role; noc_operator implies viewer. file_download is held only by the Files service's signed
download links: it opens one file and grants nothing anywhere else.

Which tenant a role may be held for is one rule, `claims_problem`, applied when a token is minted
and again when one is verified: the staff roles (viewer, noc_operator, admin, service) only with
tenant "*", the tenant roles (tenant_viewer, file_download) only with one concrete tenant id. A
token mixing them, or naming a tenant-scoped role for "*", is refused (UNAUTHENTICATED). What a
caller then sees is the other rule, `tenant_scope`/`can_see`: staff see every tenant, a tenant only
its own, and what it may not see is NOT_FOUND (never PERMISSION_DENIED, so existence does not leak).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any, Protocol

import jwt

from mesh.config import Settings, get_settings
from mesh.errors import NotFound, PermissionDenied, Unauthenticated

ROLES: frozenset[str] = frozenset({"viewer", "noc_operator", "admin", "tenant_viewer", "service", "file_download"})
STAFF_ROLES: frozenset[str] = frozenset({"viewer", "noc_operator", "admin", "service"})
TENANT_ROLES: frozenset[str] = frozenset({"tenant_viewer", "file_download"})
STAFF_TENANT = "*"
TENANT_ID = re.compile(r"^[a-z][a-z0-9-]{1,31}$")  # the Tenant.id pattern of sites.proto
_ALL_ROLES_IMPLIED_BY = frozenset({"admin", "service"})
_IMPLIES: dict[str, frozenset[str]] = {"noc_operator": frozenset({"viewer"})}
_REQUIRED_CLAIMS = ("sub", "tenant", "roles", "iss", "aud", "exp", "iat")
LEEWAY_S = 5


class AuthError(Exception):
    """The token cannot be trusted; the message says why (safe to show the caller)."""


def claims_problem(tenant: str, roles: Iterable[str]) -> str | None:
    """Why this tenant and these roles cannot go together in one token (None: they can).

    Staff roles act for every tenant, so they need tenant "*"; tenant_viewer is scoped to one
    tenant, so it needs a concrete tenant id. Anything else would either widen a tenant role to
    every tenant or let a tenant hold a staff role (a noc_operator of one tenant could open
    calendar windows that excuse its own outages).
    """
    role_set = set(roles)
    unknown = sorted(role_set - ROLES)
    if unknown:
        return f"unknown role {unknown[0]}"
    if not role_set:
        return "no roles"
    if tenant == STAFF_TENANT:
        scoped = sorted(role_set & TENANT_ROLES)
        if scoped:
            return f"role {scoped[0]} is scoped to one tenant and needs a concrete tenant, not '*'"
        return None
    if not TENANT_ID.fullmatch(tenant):
        return f"tenant must be '*' or a tenant id matching {TENANT_ID.pattern}"
    staff = sorted(role_set & STAFF_ROLES)
    if staff:
        return f"role {staff[0]} is a towerco staff role and needs tenant '*'"
    return None


def _effective(roles: frozenset[str]) -> frozenset[str]:
    if roles & _ALL_ROLES_IMPLIED_BY:
        return ROLES
    out = set(roles)
    for role in roles:
        out |= _IMPLIES.get(role, frozenset())
    return frozenset(out)


@dataclass(frozen=True)
class Identity:
    subject: str
    tenant: str
    roles: frozenset[str]
    token: str = ""

    @property
    def is_staff(self) -> bool:
        """Towerco staff (tenant "*") see every tenant's data."""
        return self.tenant == STAFF_TENANT

    @property
    def effective_roles(self) -> frozenset[str]:
        return _effective(self.roles)

    def has_role(self, *roles: str) -> bool:
        """True when the caller holds (or is implied to hold) at least one of `roles`."""
        effective = self.effective_roles
        return any(r in effective for r in roles)


# ----------------------------------------------------------------------------------------------
# Tokens


def mint_token(
    *,
    subject: str,
    tenant: str,
    roles: list[str] | tuple[str, ...] | frozenset[str] | set[str],
    ttl_s: int = 86400,
    settings: Settings | None = None,
) -> str:
    """An HS256 token signed with settings.jwt_secret (the embedded stack's dev issuer)."""
    settings = settings or get_settings()
    role_list = sorted(set(roles))
    if not subject or not tenant:
        raise ValueError("subject and tenant must not be empty")
    problem = claims_problem(tenant, role_list)
    if problem:
        raise ValueError(problem)
    now = int(time.time())
    claims = {
        "sub": subject,
        "tenant": tenant,
        "roles": role_list,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "iat": now,
        "exp": now + int(ttl_s),
    }
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")


_jwk_clients: dict[str, jwt.PyJWKClient] = {}


def _key_for(token: str, alg: str, settings: Settings) -> object:
    if alg.startswith("HS"):
        if not settings.jwt_secret:
            raise AuthError("no shared secret configured")
        return settings.jwt_secret
    if not settings.jwks_url:
        raise AuthError(f"no key set configured for algorithm {alg}")
    client = _jwk_clients.get(settings.jwks_url)
    if client is None:
        client = _jwk_clients[settings.jwks_url] = jwt.PyJWKClient(settings.jwks_url, cache_keys=True)
    try:
        return client.get_signing_key_from_jwt(token).key
    except jwt.PyJWKClientError as exc:
        raise AuthError(f"signing key not found: {exc}") from None


def verify_token(token: str, settings: Settings | None = None) -> Identity:
    """Check signature, algorithm, expiry, issuer, audience and claims; return the caller."""
    return _verify(token, settings)[0]


def _verify(token: str, settings: Settings | None = None) -> tuple[Identity, dict[str, Any]]:
    """verify_token, also returning the verified claims."""
    settings = settings or get_settings()
    if not token:
        raise AuthError("empty token")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise AuthError("malformed token") from None
    alg = header.get("alg")
    if not isinstance(alg, str) or alg.lower() == "none":
        raise AuthError("unsigned tokens are not accepted")
    if alg not in settings.jwt_algorithms:
        raise AuthError(f"algorithm {alg} is not accepted")
    key = _key_for(token, alg, settings)
    try:
        claims = jwt.decode(
            token,
            key,  # type: ignore[arg-type]
            algorithms=[alg],
            audience=settings.jwt_audience or None,
            issuer=settings.jwt_issuer or None,
            leeway=LEEWAY_S,
            options={"require": [c for c in _REQUIRED_CLAIMS if c not in ("iss", "aud")] + ["exp"]},
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired") from None
    except jwt.InvalidAudienceError:
        raise AuthError("wrong audience") from None
    except jwt.InvalidIssuerError:
        raise AuthError("wrong issuer") from None
    except jwt.MissingRequiredClaimError as exc:
        raise AuthError(f"missing claim {exc.claim}") from None
    except jwt.InvalidSignatureError:
        raise AuthError("bad signature") from None
    except jwt.PyJWTError as exc:
        raise AuthError(f"invalid token: {type(exc).__name__}") from None
    return _identity_from_claims(claims, token), claims


def _identity_from_claims(claims: dict[str, Any], token: str) -> Identity:
    sub = claims.get("sub")
    tenant = claims.get("tenant")
    roles = claims.get("roles")
    if not isinstance(sub, str) or not sub:
        raise AuthError("missing claim sub")
    if not isinstance(tenant, str) or not tenant:
        raise AuthError("missing claim tenant")
    if not isinstance(roles, list) or not roles or not all(isinstance(r, str) for r in roles):
        raise AuthError("missing claim roles")
    problem = claims_problem(tenant, roles)
    if problem:
        raise AuthError(problem)
    return Identity(subject=sub, tenant=tenant, roles=frozenset(roles), token=token)


class MissingBearer(AuthError):
    """The authorization value carries no Bearer token at all."""


class Authenticator:
    """verify_token with a bounded cache of good tokens (until they expire): a hot-path helper.

    `verify(token)` caches by token; `verify_authorization(value)` caches by the raw
    "Bearer <token>" metadata value, so a repeat caller costs one dict lookup and a clock read.
    Refused tokens are never cached (each refusal is verified again and says why).
    """

    def __init__(self, settings: Settings, max_entries: int = 4096):
        self.settings = settings
        self._max = max_entries
        self._cache: dict[str, tuple[Identity, float]] = {}
        self._by_header: dict[str, tuple[Identity, float]] = {}

    def _verified(self, token: str) -> tuple[Identity, float]:
        hit = self._cache.get(token)
        if hit is not None:
            if time.time() < hit[1]:
                return hit
            del self._cache[token]
        identity, claims = _verify(token, self.settings)
        entry = (identity, float(claims["exp"]) + LEEWAY_S)  # exp is required and numeric
        if len(self._cache) >= self._max:
            self._cache.clear()
        self._cache[token] = entry
        return entry

    def verify(self, token: str) -> Identity:
        return self._verified(token)[0]

    def verify_authorization(self, authorization: str) -> Identity:
        """The caller named by an "authorization" metadata value ("Bearer <jwt>").

        Raises MissingBearer when there is no Bearer token, AuthError when the token is refused.
        """
        hit = self._by_header.get(authorization)
        if hit is not None:
            if time.time() < hit[1]:
                return hit[0]
            del self._by_header[authorization]
        token = bearer_token(authorization)
        if not token:
            raise MissingBearer("missing bearer token")
        entry = self._verified(token)
        if len(self._by_header) >= self._max:
            self._by_header.clear()
        self._by_header[authorization] = entry
        return entry[0]


def bearer_token(authorization: str) -> str:
    """The token in an "authorization: Bearer <token>" value ("" when the scheme is not Bearer)."""
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return ""
    return token.strip()


# ----------------------------------------------------------------------------------------------
# The caller of the current RPC

_identity: ContextVar[Identity | None] = ContextVar("towerco_identity", default=None)


def set_identity(identity: Identity | None) -> Token[Identity | None]:
    """Set the caller for this task (the auth interceptor does this)."""
    return _identity.set(identity)


def reset_identity(token: Token[Identity | None]) -> None:
    _identity.reset(token)


@contextlib.contextmanager
def acting_as(identity: Identity) -> Iterator[Identity]:
    """Run a block as `identity` (workers and tests that call domain code directly)."""
    tok = _identity.set(identity)
    try:
        yield identity
    finally:
        _identity.reset(tok)


def current_identity() -> Identity:
    """The caller of the current RPC; Unauthenticated when there is none."""
    identity = _identity.get()
    if identity is None:
        raise Unauthenticated("authentication required")
    return identity


def require_role(*roles: str) -> Identity:
    """The caller, if it holds one of `roles` (or a role implying one); PermissionDenied otherwise."""
    identity = current_identity()
    if not identity.has_role(*roles):
        raise PermissionDenied(f"requires role {' or '.join(roles)}")
    return identity


class _Tenanted(Protocol):
    tenant: str


def tenant_scope(identity: _Tenanted, requested: str = "") -> str | None:
    """The tenant a read is limited to: None means every tenant (staff not naming one).

    A tenant-scoped caller naming another tenant as the resource it reads (`tenants/{id}/...`)
    gets NotFound: for it, that tenant's data does not exist. A list merely *filtered* on another
    tenant answers an empty page instead (check with `can_see`), as for a tenant that does not
    exist. Every service applies these rules in its store queries.
    """
    if identity.tenant == STAFF_TENANT:
        return requested or None
    if requested and requested != identity.tenant:
        raise NotFound(f"tenant {requested!r} not found")
    return identity.tenant


def can_see(identity: Identity, tenant_ids: Iterable[str]) -> bool:
    """True when a row leased to `tenant_ids` is visible to the caller (staff see every row)."""
    return identity.is_staff or identity.tenant in tenant_ids


_service_tokens: dict[tuple[str, str], tuple[str, float]] = {}
SERVICE_TOKEN_TTL_S = 86400


def service_token(service: str) -> str:
    """A token for internal calls made by `service` itself (role service, tenant "*"), cached."""
    settings = get_settings()
    key = (service, settings.jwt_secret)
    hit = _service_tokens.get(key)
    now = time.time()
    if hit is not None and now < hit[1]:
        return hit[0]
    token = mint_token(
        subject=f"service:{service}",
        tenant=STAFF_TENANT,
        roles=["service"],
        ttl_s=SERVICE_TOKEN_TTL_S,
        settings=settings,
    )
    _service_tokens[key] = (token, now + SERVICE_TOKEN_TTL_S / 2)
    return token
