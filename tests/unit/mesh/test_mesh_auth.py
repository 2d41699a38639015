"""JWT verification and role rules (mesh.auth)."""

from __future__ import annotations

import re
import time

import jwt
import pytest

from mesh import auth
from mesh.auth import AuthError, Identity, mint_token, verify_token
from mesh.config import Settings
from mesh.errors import NotFound, PermissionDenied, Unauthenticated

S = Settings()


def _claims(**over) -> dict:
    now = int(time.time())
    claims = {"sub": "alice", "tenant": "safaricom", "roles": ["tenant_viewer"], "iss": S.jwt_issuer,
              "aud": S.jwt_audience, "iat": now, "exp": now + 300}
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def _sign(claims: dict, key: str = S.jwt_secret, alg: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=alg)


def test_minted_token_round_trips() -> None:
    token = mint_token(subject="alice", tenant="safaricom", roles=["tenant_viewer"], settings=S)
    ident = verify_token(token, S)
    assert ident == Identity("alice", "safaricom", frozenset({"tenant_viewer"}), token)
    assert not ident.is_staff
    assert verify_token(mint_token(subject="ops", tenant="*", roles=["admin"], settings=S), S).is_staff


def test_expired_token_is_refused() -> None:
    token = mint_token(subject="alice", tenant="*", roles=["viewer"], ttl_s=-60, settings=S)
    with pytest.raises(AuthError, match="expired"):
        verify_token(token, S)


def test_alg_none_is_refused_even_when_listed() -> None:
    token = jwt.encode(_claims(), None, algorithm="none")
    with pytest.raises(AuthError, match="unsigned"):
        verify_token(token, S)
    lax = Settings(jwt_algorithms=("HS256", "none"))
    with pytest.raises(AuthError, match="unsigned"):
        verify_token(token, lax)


def test_algorithm_must_be_configured() -> None:
    long_secret = "k" * 64
    token = _sign(_claims(), key=long_secret, alg="HS512")
    with pytest.raises(AuthError, match="HS512 is not accepted"):
        verify_token(token, Settings(jwt_secret=long_secret))
    assert verify_token(token, Settings(jwt_secret=long_secret, jwt_algorithms=("HS256", "HS512"))).subject == "alice"


def test_wrong_secret_is_refused() -> None:
    with pytest.raises(AuthError, match="bad signature"):
        verify_token(_sign(_claims(), key="some-other-secret-that-is-long-enough"), S)


def test_wrong_audience_and_issuer_are_refused() -> None:
    with pytest.raises(AuthError, match="audience"):
        verify_token(_sign(_claims(aud="someone-else")), S)
    with pytest.raises(AuthError, match="issuer"):
        verify_token(_sign(_claims(iss="evil")), S)


@pytest.mark.parametrize("claim", ["sub", "tenant", "roles", "exp", "aud", "iss"])
def test_missing_claims_are_refused(claim: str) -> None:
    with pytest.raises(AuthError, match="missing claim"):
        verify_token(_sign(_claims(**{claim: None})), S)


def test_empty_or_malformed_claims_are_refused() -> None:
    with pytest.raises(AuthError, match="missing claim roles"):
        verify_token(_sign(_claims(roles=[])), S)
    with pytest.raises(AuthError, match="missing claim roles"):
        verify_token(_sign(_claims(roles="admin")), S)
    with pytest.raises(AuthError, match="missing claim sub"):
        verify_token(_sign(_claims(sub="")), S)
    with pytest.raises(AuthError, match="malformed"):
        verify_token("a.b", S)
    with pytest.raises(AuthError, match="empty"):
        verify_token("", S)


def test_unknown_role_is_refused() -> None:
    with pytest.raises(AuthError, match="unknown role superuser"):
        verify_token(_sign(_claims(roles=["viewer", "superuser"])), S)
    with pytest.raises(ValueError, match="unknown role root"):
        mint_token(subject="a", tenant="*", roles=["root"], settings=S)


def test_role_implication() -> None:
    def ident(*roles: str) -> Identity:
        return Identity("x", "*", frozenset(roles))

    assert ident("admin").has_role("viewer") and ident("admin").has_role("tenant_viewer")
    assert ident("service").has_role("admin", "noc_operator")
    assert ident("noc_operator").has_role("viewer")
    assert not ident("noc_operator").has_role("admin")
    assert not ident("viewer").has_role("noc_operator")
    assert not ident("tenant_viewer").has_role("viewer")
    assert ident("tenant_viewer").has_role("viewer", "tenant_viewer")
    assert ident("noc_operator").effective_roles == {"noc_operator", "viewer"}


def test_current_identity_and_require_role() -> None:
    with pytest.raises(Unauthenticated):
        auth.current_identity()
    with auth.acting_as(Identity("bob", "airtel", frozenset({"tenant_viewer"}))) as me:
        assert auth.current_identity() is me
        assert auth.require_role("tenant_viewer", "viewer") is me
        with pytest.raises(PermissionDenied, match="requires role admin"):
            auth.require_role("admin")
    with pytest.raises(Unauthenticated):
        auth.current_identity()


def test_service_token_is_cached_and_staff(monkeypatch: pytest.MonkeyPatch) -> None:
    from mesh.config import reset_settings

    reset_settings()
    try:
        t1 = auth.service_token("kpi")
        assert auth.service_token("kpi") == t1
        ident = verify_token(t1)
        assert ident.subject == "service:kpi" and ident.is_staff and ident.roles == {"service"}
    finally:
        reset_settings()


def test_authenticator_caches_good_tokens_only_until_expiry() -> None:
    a = auth.Authenticator(S)
    token = mint_token(subject="alice", tenant="*", roles=["viewer"], settings=S)
    assert a.verify(token) is a.verify(token)
    with pytest.raises(AuthError):
        a.verify(token + "x")
    expired = mint_token(subject="alice", tenant="*", roles=["viewer"], ttl_s=-60, settings=S)
    with pytest.raises(AuthError, match="expired"):
        a.verify(expired)


def test_bearer_parsing() -> None:
    assert auth.bearer_token("Bearer abc") == "abc"
    assert auth.bearer_token("bearer  abc ") == "abc"
    assert auth.bearer_token("Basic abc") == ""
    assert auth.bearer_token("abc") == ""


def test_authenticator_caches_by_authorization_value(monkeypatch: pytest.MonkeyPatch) -> None:
    a = auth.Authenticator(S)
    token = mint_token(subject="alice", tenant="airtel", roles=["tenant_viewer"], ttl_s=60, settings=S)
    first = a.verify_authorization(f"Bearer {token}")
    assert first.subject == "alice" and first.tenant == "airtel" and first.token == token
    # A repeat caller is answered from the cache: no JWT work at all.
    monkeypatch.setattr(auth, "_verify", lambda *_a, **_k: pytest.fail("verified again"))
    assert a.verify_authorization(f"Bearer {token}") is first
    # ...and the same token spelled differently shares the token cache.
    assert a.verify_authorization(f"bearer  {token} ") is first
    # Until it expires (exp + leeway): then it is verified again (and PyJWT refuses it).
    later = time.time() + 400
    monkeypatch.setattr(auth.time, "time", lambda: later)
    verified: list[str] = []

    def refuse(tok: str, *_a: object) -> None:
        verified.append(tok)
        raise AuthError("token expired")

    monkeypatch.setattr(auth, "_verify", refuse)
    with pytest.raises(AuthError, match="expired"):
        a.verify_authorization(f"Bearer {token}")
    assert verified == [token]


def test_authenticator_refusals_are_never_cached() -> None:
    a = auth.Authenticator(S)
    for value in ("", "Basic abc", "Bearer", "token-without-scheme"):
        with pytest.raises(auth.MissingBearer):
            a.verify_authorization(value)
    bad = "Bearer " + mint_token(subject="alice", tenant="*", roles=["viewer"], settings=S) + "x"
    for _ in range(2):
        with pytest.raises(AuthError, match="bad signature"):
            a.verify_authorization(bad)
    assert not a._by_header and not a._cache


def test_authenticator_cache_stays_bounded() -> None:
    a = auth.Authenticator(S, max_entries=3)
    for i in range(10):
        a.verify_authorization("Bearer " + mint_token(subject=f"u{i}", tenant="*", roles=["viewer"], settings=S))
    assert len(a._by_header) <= 3 and len(a._cache) <= 3


# Every role x tenant combination the claims allow: which are accepted, which refused (issue #9).
_COMBINATIONS = [
    # (tenant, roles, accepted)
    ("*", ["viewer"], True),
    ("*", ["noc_operator"], True),
    ("*", ["admin"], True),
    ("*", ["service"], True),
    ("*", ["viewer", "noc_operator", "admin"], True),
    ("*", ["tenant_viewer"], False),  # the probe's token: a tenant role read every tenant
    ("*", ["tenant_viewer", "viewer"], False),
    ("airtel", ["tenant_viewer"], True),
    ("airtel", ["viewer"], False),
    ("airtel", ["noc_operator"], False),
    ("airtel", ["admin"], False),
    ("airtel", ["service"], False),
    ("airtel", ["tenant_viewer", "admin"], False),
    ("Not-A-Tenant", ["tenant_viewer"], False),
    ("a", ["tenant_viewer"], False),
]


@pytest.mark.parametrize(("tenant", "roles", "accepted"), _COMBINATIONS)
def test_role_tenant_combinations_are_one_rule_at_mint_and_at_verify(tenant, roles, accepted) -> None:
    problem = auth.claims_problem(tenant, roles)
    assert (problem is None) == accepted
    # minting refuses what verification would refuse...
    if accepted:
        ident = verify_token(mint_token(subject="u", tenant=tenant, roles=roles, settings=S), S)
        assert ident.tenant == tenant and ident.is_staff == (tenant == "*")
    else:
        with pytest.raises(ValueError, match=re.escape(problem)):
            mint_token(subject="u", tenant=tenant, roles=roles, settings=S)
        # ...and a validly signed token with such claims (another issuer's) is refused on use
        with pytest.raises(AuthError, match=re.escape(problem)):
            verify_token(_sign({**_claims(), "tenant": tenant, "roles": roles}), S)


def test_tenant_scope_is_not_found_for_another_tenant() -> None:
    staff = Identity("ops", "*", frozenset({"viewer"}))
    tenant = Identity("t", "airtel", frozenset({"tenant_viewer"}))
    assert auth.tenant_scope(staff) is None
    assert auth.tenant_scope(staff, "airtel") == "airtel"
    assert auth.tenant_scope(tenant) == "airtel"
    assert auth.tenant_scope(tenant, "airtel") == "airtel"
    with pytest.raises(NotFound):
        auth.tenant_scope(tenant, "safaricom")
    assert auth.can_see(staff, []) and auth.can_see(tenant, ["x", "airtel"])
    assert not auth.can_see(tenant, ["safaricom"]) and not auth.can_see(tenant, [])
