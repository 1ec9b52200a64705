"""Bad input over HTTP: every case is a 4xx with one message in the API's error shape, the stored
bytes are unchanged, and the server still answers."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.serve_proc import ServeProc, store_bytes

ITEM_LIMIT = 50_000
BODY_LIMIT = 200_000
U = '{"role":"user","content":"x"}'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    srv = ServeProc(tmp_path_factory.mktemp("bad"),
                    extra=["--max-item-bytes", str(ITEM_LIMIT), "--max-body-bytes", str(BODY_LIMIT)]).start()
    with srv.client() as http:
        conv = http.post("/v1/conversations", json={"items": [{"role": "user", "content": "kept"}]}).json()["id"]
        http.put("/v1/responses/resp_kept", json={"id": "resp_kept", "input": "x"}).raise_for_status()
    srv.conv = conv  # type: ignore[attr-defined]
    yield srv
    assert srv.stop() == 0


C = "/v1/conversations"
ITEMS = "/v1/conversations/{conv}/items"
CHAT = "/api/alice/chat"
CASES: list[tuple[str, str, str | bytes | None, int]] = [
    # malformed bodies
    ("POST", C, "not json", 400),
    ("POST", C, "", 400),
    ("POST", C, "[]", 400),
    ("POST", C, '"a string"', 400),
    ("POST", C, "{", 400),
    ("POST", C, b'{"items": [\xff]}', 400),
    ("POST", C, "[" * 100_000, 400),
    ("POST", C, '{"items": [], "items": []}', 400),
    ("POST", C, '{"metadata": {"a": "1", "a": "2"}}', 400),
    ("POST", C, '{"foo": 1}', 400),
    # items
    ("POST", C, '{"items": "x"}', 400),
    ("POST", C, '{"items": [1]}', 400),
    ("POST", C, '{"items": [{}]}', 400),
    ("POST", C, '{"items": [{"type": 5}]}', 400),
    ("POST", C, '{"items": [{"type": "message", "content": "no role"}]}', 400),
    ("POST", C, '{"items": [{"role": "wizard", "content": "x"}]}', 400),
    ("POST", C, '{"items": [{"role": "user", "content": ""}]}', 400),
    ("POST", C, '{"items": [{"role": "user", "content": "   "}]}', 400),
    ("POST", C, '{"items": [{"role": "user", "content": 5}]}', 400),
    ("POST", C, '{"items": [{"role": "user", "content": "x", "n": NaN}]}', 400),
    ("POST", C, '{"items": [{"role": "user", "content": "x", "n": Infinity}]}', 400),
    ("POST", C, '{"items": [{"role": "user", "content": "x", "n": 1e400}]}', 400),
    ("POST", C, '{"items": [{"role": "user", "content": "x", "n": 18446744073709551616}]}', 400),
    ("POST", C, '{"items": [{"role": "user", "content": "x", "n": -9223372036854775809}]}', 400),
    ("POST", C, '{"items": [{"role": "user", "role": "user", "content": "x"}]}', 400),
    ("POST", C, '{"items": [' + ",".join([U] * 21) + "]}", 400),
    ("POST", C, '{"items": [{"role": "user", "content": "' + "x" * (ITEM_LIMIT + 10) + '"}]}', 413),
    ("POST", C, '{"items": [{"role": "user", "content": "' + "x" * (BODY_LIMIT + 10) + '"}]}', 413),
    # metadata
    ("POST", C, '{"metadata": []}', 400),
    ("POST", C, '{"metadata": {"a": 1}}', 400),
    ("POST", C, json.dumps({"metadata": {f"k{i}": "v" for i in range(17)}}), 400),
    ("POST", C, json.dumps({"metadata": {"k" * 65: "v"}}), 400),
    ("POST", C, json.dumps({"metadata": {"k": "v" * 513}}), 400),
    ("POST", "/v1/conversations/{conv}", "{}", 400),
    ("POST", "/v1/conversations/{conv}", '{"metadata": "x"}', 400),
    # adding items to an existing conversation
    ("POST", ITEMS, "{}", 400),
    ("POST", ITEMS, '{"items": null}', 400),
    ("POST", ITEMS, '{"items": {"role": "user", "content": "x"}}', 400),
    ("POST", ITEMS, "true", 400),
    ("POST", ITEMS, '{"items": [' + U + ', {"role": "user", "content": ""}]}', 400),  # all or nothing
    ("POST", "/v1/conversations/conv_missing/items", '{"items": [' + U + "]}", 404),
    # query parameters
    ("GET", ITEMS + "?limit=0", None, 400),
    ("GET", ITEMS + "?limit=101", None, 400),
    ("GET", ITEMS + "?limit=abc", None, 400),
    ("GET", ITEMS + "?limit=-1", None, 400),
    ("GET", ITEMS + "?limit=%C2%B2", None, 400),  # a superscript two: isdigit() but not a number
    ("GET", ITEMS + "?order=up", None, 400),
    ("GET", ITEMS + "?after=no-such-item", None, 404),
    ("GET", ITEMS + "?after=" + "a" * 300, None, 400),
    ("GET", C + "?limit=1000", None, 400),
    ("GET", C + "?after=conv_missing", None, 404),
    ("GET", "/v1/responses/resp_kept/input_items?order=sideways", None, 400),
    ("GET", "/api/alice/conversations?offset=-1", None, 400),
    # responses
    ("PUT", "/v1/responses/resp_a", '{"output": []}', 400),
    ("PUT", "/v1/responses/resp_a", '{"id": "resp_b"}', 400),
    ("PUT", "/v1/responses/resp_a", '{"id": "resp_a", "previous_response_id": "resp_none"}', 404),
    ("PUT", "/v1/responses/resp_kept", '{"id": "resp_kept"}', 409),
    ("PUT", "/v1/responses/resp_a", '{"id": "resp_a", "x": NaN}', 400),
    ("PUT", "/v1/responses/bad%20id", '{"id": "bad id"}', 400),
    ("PUT", "/v1/responses/resp_a", '{"id": "resp_a", "x": "' + "y" * (ITEM_LIMIT + 10) + '"}', 413),
    # chat
    ("POST", CHAT, '{"message": ""}', 400),
    ("POST", CHAT, '{"message": "   \\n "}', 400),
    ("POST", CHAT, json.dumps({"message": "x" * 10_001}), 400),
    ("POST", CHAT, '{"message": 5}', 400),
    ("POST", CHAT, '{"message": null}', 400),
    ("POST", CHAT, "{}", 400),
    ("POST", CHAT, '{"message": "hi", "conversation_id": 5}', 400),
    ("POST", CHAT, '{"message": "hi", "extra": true}', 400),
    ("POST", CHAT, '{"message": "hi", "message": "again"}', 400),
    ("POST", CHAT, "nope", 400),
    # routes and methods
    ("GET", "/v1/nothing", None, 404),
    ("PATCH", C, "{}", 405),
]


def test_there_are_at_least_40_cases() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize("method, path, body, status", CASES, ids=[f"{i}-{c[0]}-{c[1][:30]}" for i, c in
                                                                    enumerate(CASES)])
def test_bad_input_is_4xx_one_message_nothing_stored(server: ServeProc, method: str, path: str,
                                                     body: str | bytes | None, status: int) -> None:
    before = store_bytes(server.store)
    with server.client() as http:
        r = http.request(method, path.format(conv=server.conv), content=body,  # type: ignore[attr-defined]
                         headers={"Content-Type": "application/json"})
        assert r.status_code == status, r.text[:500]
        err = r.json()
        message = err["message"] if path.startswith("/api/") else err["error"]["message"]
        assert isinstance(message, str) and message and "\n" not in message and "Traceback" not in message
        if not path.startswith("/api/"):
            assert set(err["error"]) == {"message", "type", "param", "code"}
        assert store_bytes(server.store) == before
        assert http.get(f"/v1/conversations/{server.conv}/items").json()["data"][0]["content"] == "kept"  # type: ignore
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_the_comparison_sees_a_real_change(server: ServeProc) -> None:
    before = store_bytes(server.store)
    assert before["session_items"]
    with server.client() as http:
        http.post(f"/v1/conversations/{server.conv}/items",  # type: ignore[attr-defined]
                  json={"items": [{"role": "user", "content": "changed"}]}).raise_for_status()
        assert store_bytes(server.store) != before
        items = http.get(f"/v1/conversations/{server.conv}/items", params={"order": "asc"}).json()["data"]  # type: ignore
        http.delete(f"/v1/conversations/{server.conv}/items/{items[-1]['id']}").raise_for_status()  # type: ignore
