"""RS256 tokens verified against keys served from a real local JWKS endpoint."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from mesh.auth import AuthError, verify_token
from mesh.config import Settings

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def jwks_url() -> Iterator[str]:
    jwk = json.loads(RSAAlgorithm.to_jwk(KEY.public_key()))
    jwk.update(kid="k1", use="sig", alg="RS256")
    body = json.dumps({"keys": [jwk]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/.well-known/jwks.json"
    finally:
        server.shutdown()
        server.server_close()


def _token(key, kid: str = "k1", **over) -> str:
    now = int(time.time())
    claims = {"sub": "ops@towerco", "tenant": "*", "roles": ["admin"], "iss": "towerco", "aud": "towerco",
              "iat": now, "exp": now + 300, **over}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


def test_rs256_token_verified_with_jwks(jwks_url: str) -> None:
    settings = Settings(jwt_algorithms=("RS256",), jwks_url=jwks_url)
    ident = verify_token(_token(KEY), settings)
    assert ident.subject == "ops@towerco" and ident.is_staff and ident.has_role("viewer")


def test_rs256_token_signed_by_another_key_is_refused(jwks_url: str) -> None:
    settings = Settings(jwt_algorithms=("RS256",), jwks_url=jwks_url)
    with pytest.raises(AuthError, match="bad signature"):
        verify_token(_token(OTHER_KEY), settings)
    with pytest.raises(AuthError, match="signing key not found"):
        verify_token(_token(OTHER_KEY, kid="unknown"), settings)


def test_rs256_needs_a_key_set_and_must_be_allowed(jwks_url: str) -> None:
    with pytest.raises(AuthError, match="no key set"):
        verify_token(_token(KEY), Settings(jwt_algorithms=("RS256",)))
    with pytest.raises(AuthError, match="RS256 is not accepted"):
        verify_token(_token(KEY), Settings(jwks_url=jwks_url))


def test_hs256_token_is_refused_when_only_rs256_is_allowed(jwks_url: str) -> None:
    settings = Settings(jwt_algorithms=("RS256",), jwks_url=jwks_url)
    forged = jwt.encode({"sub": "x", "tenant": "*", "roles": ["admin"], "iss": "towerco", "aud": "towerco",
                         "iat": int(time.time()), "exp": int(time.time()) + 60}, settings.jwt_secret, algorithm="HS256")
    with pytest.raises(AuthError, match="HS256 is not accepted"):
        verify_token(forged, settings)
