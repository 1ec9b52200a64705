"""Auth of `agentstate serve`: every 401 case (with WWW-Authenticate), 403 on a path/user mismatch,
RS256/ES256 keys, aud/iss, and cross-tenant 404 on every route, indistinguishable from a missing id."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.serve_proc import ServeProc


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    srv = ServeProc(tmp_path_factory.mktemp("auth")).start()
    yield srv
    assert srv.stop() == 0


def _b64(obj: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def _unsigned(claims: dict) -> str:
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."


def _hs256(claims: dict, secret: bytes) -> str:
    """An HS256 token signed with any bytes (PyJWT refuses a PEM key as a secret; an attacker does not)."""
    import hashlib
    import hmac

    head = f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{_b64(claims)}"
    sig = base64.urlsafe_b64encode(hmac.new(secret, head.encode(), hashlib.sha256).digest()).rstrip(b"=").decode()
    return f"{head}.{sig}"


def _rsa_pem() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()),
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def _cases(srv: ServeProc) -> dict[str, dict[str, str]]:
    exp = int(time.time()) + 600
    private, _ = _rsa_pem()
    return {
        "missing": {},
        "not bearer": {"Authorization": "Basic YWxpY2U6cHc="},
        "empty bearer": {"Authorization": "Bearer"},
        "malformed": {"Authorization": "Bearer not.a.jwt"},
        "garbage": {"Authorization": "Bearer abc"},
        "alg none": {"Authorization": f"Bearer {_unsigned({'sub': 'alice', 'exp': exp})}"},
        "other key": {"Authorization": f"Bearer {srv.token('alice', key='x' * 64)}"},
        "expired": {"Authorization": f"Bearer {srv.token('alice', exp_in=-10)}"},
        "no exp": {"Authorization": f"Bearer {jwt.encode({'sub': 'alice'}, srv.secret, algorithm='HS256')}"},
        "RS256 on an HS256 server": {"Authorization": "Bearer " + jwt.encode({"sub": "alice", "exp": exp}, private,
                                                                             algorithm="RS256")},
        "bad tenant": {"Authorization": f"Bearer {srv.token('../etc')}"},
        "tenant not a string": {"Authorization": f"Bearer {srv.token(12)}"},
        "no tenant claim": {"Authorization": f"Bearer {srv.token(None)}"},
        "tampered": {"Authorization": f"Bearer {srv.token('alice')[:-3]}AAA"},
    }


@pytest.mark.parametrize("path", ["/v1/conversations", "/v1/responses/resp_x", "/api/alice/conversations"])
def test_every_401_case(server: ServeProc, path: str) -> None:
    for name, headers in _cases(server).items():
        r = httpx.get(server.url + path, headers=headers)
        assert r.status_code == 401, (name, r.text)
        assert r.headers["www-authenticate"].startswith("Bearer"), name
        body = r.json()
        message = body["message"] if path.startswith("/api/") else body["error"]["message"]
        assert message.startswith("unauthorized: ") and "\n" not in message, (name, message)
        token = headers.get("Authorization", "").partition(" ")[2]
        if token:
            assert token not in r.text and (token.split(".")[-1] or "zzz") not in r.text, name
    assert httpx.get(server.url + "/healthz").status_code == 200  # health checks need no token


def test_messages_say_what_was_wrong(server: ServeProc) -> None:
    said = {name: httpx.get(server.url + "/v1/conversations", headers=h).json()["error"]["message"]
            for name, h in _cases(server).items()}
    assert "expired" in said["expired"]
    assert "signature" in said["other key"]
    assert "algorithm" in said["alg none"] and "algorithm" in said["RS256 on an HS256 server"]
    assert "'exp'" in said["no exp"]
    assert "tenant" in said["bad tenant"]


def test_path_user_mismatch_is_403_on_every_chat_route(server: ServeProc) -> None:
    with server.client("alice") as http:
        for method, path, body in [("POST", "/api/bob/chat", {"message": "hi"}), ("GET", "/api/bob/conversations", None),
                                   ("GET", "/api/bob/conversations/conv_1", None),
                                   ("DELETE", "/api/bob/conversations/conv_1", None)]:
            r = http.request(method, path, json=body)
            assert r.status_code == 403 and r.json()["error"] == "forbidden", (path, r.text)


def test_cross_tenant_is_404_on_every_route_like_a_missing_id(server: ServeProc) -> None:
    with server.client("owner") as owner:
        conv = owner.post("/v1/conversations", json={"items": [{"role": "user", "content": "secret"}]}).json()["id"]
        item = owner.get(f"/v1/conversations/{conv}/items").json()["data"][0]["id"]
        owner.put("/v1/responses/resp_owned", json={"id": "resp_owned", "input": "x"}).raise_for_status()
        chat = owner.post("/api/owner/chat", json={"message": "mine"}).json()["conversation_id"]
    routes = [
        ("GET", "/v1/conversations/{c}", None), ("POST", "/v1/conversations/{c}", {"metadata": {"a": "b"}}),
        ("DELETE", "/v1/conversations/{c}", None), ("GET", "/v1/conversations/{c}/items", None),
        ("POST", "/v1/conversations/{c}/items", {"items": [{"role": "user", "content": "intrude"}]}),
        ("GET", "/v1/conversations/{c}/items/{i}", None), ("DELETE", "/v1/conversations/{c}/items/{i}", None),
        ("GET", "/v1/responses/{r}", None), ("DELETE", "/v1/responses/{r}", None),
        ("GET", "/v1/responses/{r}/input_items", None), ("GET", "/v1/responses/{r}/chain", None),
        ("PUT", "/v1/responses/resp_new", {"id": "resp_new", "previous_response_id": "{r}"}),
        ("GET", "/api/intruder/conversations/{h}", None), ("DELETE", "/api/intruder/conversations/{h}", None),
        ("POST", "/api/intruder/chat", {"message": "hi", "conversation_id": "{h}"}),
    ]
    real = {"c": conv, "i": item, "r": "resp_owned", "h": chat}
    fake = {"c": "conv_" + "0" * 32, "i": "0" * 36, "r": "resp_fakeid", "h": "conv_" + "1" * 32}
    with server.client("intruder") as http:
        for method, path, body in routes:
            theirs, missing = (_call(http, method, path, body, ids) for ids in (real, fake))
            assert theirs.status_code == 404, (method, path, theirs.text)
            assert missing.status_code == 404, (method, path, missing.text)
            norm = theirs.text
            for k in real:
                norm = norm.replace(real[k], fake[k])
            assert json.loads(norm) == json.loads(missing.text), (path, theirs.text, missing.text)
    with server.client("owner") as owner:  # nothing of the owner's changed
        items = owner.get(f"/v1/conversations/{conv}/items").json()["data"]
        assert [it["content"] for it in items] == ["secret"]
        assert owner.get("/v1/responses/resp_owned").status_code == 200
        assert owner.get(f"/v1/conversations/{conv}").json()["metadata"] == {}


def _call(http: httpx.Client, method: str, path: str, body: dict | None, ids: dict[str, str]) -> httpx.Response:
    text = json.dumps(body).replace("{r}", ids["r"]).replace("{h}", ids["h"]) if body else None
    return http.request(method, path.format(**ids), content=text)


def test_public_key_servers_and_audience_issuer(tmp_path: Path) -> None:
    private, public = _rsa_pem()
    (tmp_path / "rsa.pub").write_bytes(public)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "ec.pub").write_bytes(ec_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    exp = int(time.time()) + 600
    for pub, key, alg in ((tmp_path / "rsa.pub", private, "RS256"), (tmp_path / "ec.pub", ec_key, "ES256")):
        srv = ServeProc(tmp_path, store=tmp_path / f"s-{alg}")
        srv.extra = ["--jwt-public-key-file", str(pub), "--jwt-audience", "agents", "--jwt-issuer", "idp"]
        _start_without_secret(srv)
        try:
            def get(claims: dict, signing: object = key, algorithm: str = alg, srv: ServeProc = srv) -> int:
                tok = _hs256(claims, signing) if algorithm == "HS256" else jwt.encode(claims, signing,
                                                                                        algorithm=algorithm)
                headers = {"Authorization": f"Bearer {tok}"}
                return httpx.get(srv.url + "/v1/conversations", headers=headers).status_code

            good = {"sub": "alice", "exp": exp, "aud": "agents", "iss": "idp"}
            assert get(good) == 200
            assert get({**good, "aud": "other"}) == 401
            assert get({k: v for k, v in good.items() if k != "aud"}) == 401
            assert get({**good, "iss": "evil"}) == 401
            assert get(good, signing=pub.read_bytes(), algorithm="HS256") == 401  # the public key as an HMAC secret
        finally:
            assert srv.stop() == 0


def _start_without_secret(srv: ServeProc) -> None:
    import subprocess

    from tests.serve_proc import CLI, free_port

    srv.port = free_port()
    srv.logf = open(srv.log, "ab")
    srv.proc = subprocess.Popen([*CLI, "serve", "--dir", str(srv.store), "--port", str(srv.port), *srv.extra],
                                stdout=srv.logf, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert srv.proc.poll() is None, srv.log.read_text()
        try:
            if httpx.get(srv.url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise AssertionError("server did not start")
