"""The web API against an attacker: request bodies that lax JSON parsing
would misread, and clients that open connections and never finish their
requests.  Against the real gateway with its web server (the web_gateway
fixture of test_web_api.py), loopback addresses only."""
import json
import time

import pytest

from test_web_api import ADMIN, web_gateway  # noqa: F401
from webclient import WebSocket, WsClosed, check_error_body


# ---------------------------------------------------------------------------
# strict JSON bodies
# ---------------------------------------------------------------------------
# (why, raw body, a phrase the error message must contain)
BAD_BODIES = [
    ("duplicate key", b'{"entry":"dup-a","entry":"dup-b"}', "duplicate key"),
    ("duplicate key once decoded", b'{"entry":"dup-c","\\u0065ntry":"dup-d"}', "duplicate key"),
    ("NUL escape", b'{"entry":"nul\\u0000-a"}', "NUL"),
    ("raw NUL byte", b'{"entry":"nul-b"}\x00{"entry":"nul-c"}', "NUL"),
    ("trailing value", b'{"entry":"trail-a"} {"entry":"trail-b"}', "after the JSON value"),
    ("trailing garbage", b'{"entry":"trail-c"}xyz', "after the JSON value"),
    ("too deep", b'{"entry":"deep-a","x":' + b"[" * 20 + b"]" * 20 + b"}", "deeper than"),
    ("invalid UTF-8", b'{"entry":"utf-\xff"}', "UTF-8"),
    ("overlong UTF-8", b'{"entry":"utf-\xc0\xaf"}', "UTF-8"),
    ("encoded surrogate", b'{"entry":"utf-\xed\xa0\x80"}', "UTF-8"),
    ("unpaired surrogate escape", b'{"entry":"utf-\\ud800"}', "surrogate"),
    ("top level array", b'[{"entry":"arr-a"}]', "not a JSON object"),
    ("top level string", b'"arr-b"', "not a JSON object"),
    ("lax number", b'{"entry":"num-a","n":01}', "malformed JSON"),
]


def post_raw(api, path, body, content_type="application/json"):
    return api.request("POST", path, body=body, content_type=content_type)


def snapshot(wg):
    return (wg.api.ok("GET", "/api/v1/allowlist")["items"],
            wg.api.ok("GET", "/api/v1/audit?limit=1000")["total"])


def test_bad_json_bodies_are_refused_and_change_nothing(web_gateway):
    wg = web_gateway()
    wg.api.ok("POST", "/api/v1/allowlist", 201, json_body={"entry": "keep-me"})
    wg.pending_leaf("hard-p")
    before = snapshot(wg)
    assert [i["entry"] for i in before[0]] == ["keep-me"]

    for why, body, phrase in BAD_BODIES:
        # The allowlist's JSON body, and a command that ignores its body:
        # every body passes the same check.
        for path in ("/api/v1/allowlist", "/api/v1/devices/hard-p/approve"):
            r = post_raw(wg.api, path, body)
            err = check_error_body(r, 400, "bad_request")
            assert phrase in err["message"], (why, path, err)
            assert "at byte" in err["message"], (why, err)
        # Also without a Content-Type (the allowlist takes JSON by default).
        r = post_raw(wg.api, "/api/v1/allowlist", body, content_type=None)
        check_error_body(r, 400, "bad_request")

    # Nothing changed: no entry, no audit row, the device still pending.
    assert snapshot(wg) == before
    assert wg.device("hard-p")["state"] == "pending"

    # A text/csv import is not JSON and is not checked as JSON...
    r = post_raw(wg.api, "/api/v1/allowlist", b"entry\ncsv-1\n", content_type="text/csv")
    assert r.status == 200 and r.json() == {"added": 1, "skipped": 0}, r
    # ...but a CSV body sent to a command is (commands take no CSV).
    r = post_raw(wg.api, "/api/v1/devices/hard-p/approve", b"entry\nx\n", content_type="text/csv")
    check_error_body(r, 400, "bad_request")
    assert wg.device("hard-p")["state"] == "pending"

    # Valid bodies still work: strict is not fussy about blanks or escapes.
    r = post_raw(wg.api, "/api/v1/allowlist", b' \r\n{ "entry" : "ok-\\u00e9\xc3\xa9" }\n ')
    assert r.status == 201 and r.json()["entry"] == "ok-\u00e9\u00e9", r
    r = post_raw(wg.api, "/api/v1/devices/hard-p/approve", b"{}")
    assert r.status == 200 and r.json()["state"] == "approved", r
    entries = {i["entry"] for i in wg.api.ok("GET", "/api/v1/allowlist")["items"]}
    assert entries == {"keep-me", "csv-1", "ok-\u00e9\u00e9"}


def test_event_stream_token_message_is_strict(web_gateway):
    wg = web_gateway()
    # A duplicate "token" key: cJSON would read only one of them.
    for raw in ('{"token":"wrong","token":"%s"}' % ADMIN,
                '{"token":"%s","token":"wrong"}' % ADMIN,
                '{"token":"%s"} trailing' % ADMIN,
                '{"token":"%s\\u0000"}' % ADMIN):
        ws = WebSocket(wg.port, "/api/v1/events")
        try:
            ws.send_text(raw)
            with pytest.raises((WsClosed, ConnectionResetError, BrokenPipeError)):
                for _ in range(5):
                    assert ws.recv_json(timeout=5)["type"] != "hello", raw
        finally:
            ws.close()
    # The well-formed message still authenticates.
    ws = WebSocket(wg.port, "/api/v1/events")
    try:
        ws.send_text(json.dumps({"token": ADMIN}))
        assert ws.recv_json(timeout=5)["type"] == "hello"
    finally:
        ws.close()
