"""The web API against an attacker: request bodies that lax JSON parsing
would misread, and clients that open connections and never finish their
requests.  Against the real gateway with its web server (the web_gateway
fixture of test_web_api.py), loopback addresses only."""
import http.client
import json
import socket
import time

import pytest

from conftest import LOOPBACK, wait_until
from test_web_api import ADMIN, READ, web_gateway  # noqa: F401
from webclient import WebSocket, WsClosed, check_error_body, parse_prometheus


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


# ---------------------------------------------------------------------------
# slow HTTP: half-sent requests, connection bounds
# ---------------------------------------------------------------------------
# web/web_int.h
CONN_MAX = 128
CONN_PER_IP = 16
HEADER_TIMEOUT_S = 5
BODY_TIMEOUT_S = 5
HALF_REQUEST = b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n"
LOG_BURST = 5  # common/log.c: lines per call site per 10 s


def half_sent(port, source, n, data=HALF_REQUEST):
    """n connections from `source` that each send `data` and then nothing."""
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((source, 0))
        s.settimeout(5)
        s.connect((LOOPBACK, port))
        try:
            s.sendall(data)
        except OSError:
            pass  # already refused
        socks.append(s)
    return socks


def is_closed(s):
    """True once the gateway closed s (EOF or reset); False while it is open."""
    s.setblocking(False)
    try:
        return s.recv(4096) == b""   # an answer would be a bug: the request is incomplete
    except BlockingIOError:
        return False
    except (ConnectionResetError, BrokenPipeError):
        return True
    finally:
        s.settimeout(5)


def close_all(socks):
    for s in socks:
        s.close()


def wait_all_closed(socks, timeout):
    """Seconds until every socket was closed by the gateway; fails after
    timeout.  Returns the time each one closed."""
    t0 = time.monotonic()
    closed_at = [None] * len(socks)
    while time.monotonic() - t0 < timeout:
        for i, s in enumerate(socks):
            if closed_at[i] is None and is_closed(s):
                closed_at[i] = time.monotonic()
        if all(c is not None for c in closed_at):
            return closed_at
        time.sleep(0.05)
    still = sum(c is None for c in closed_at)
    raise AssertionError("%d of %d half-sent connections still open after %.1f s"
                         % (still, len(socks), timeout))


def web_metrics(wg, source="127.0.0.4"):
    """The web server's counters, fetched from a client address of its own
    (127.0.0.1 may be at its bound)."""
    conn = http.client.HTTPConnection(LOOPBACK, wg.port, timeout=5, source_address=(source, 0))
    try:
        conn.request("GET", "/metrics", headers={"Authorization": "Bearer " + READ})
        r = conn.getresponse()
        text = r.read().decode()
        assert r.status == 200, (r.status, text[:300])
    finally:
        conn.close()
    fams = parse_prometheus(text)
    return {
        "open": fams["fleetgw_web_connections"].value(),
        "refused_total": fams["fleetgw_web_connections_refused_total"].value(reason="total"),
        "refused_per_ip": fams["fleetgw_web_connections_refused_total"].value(reason="per_ip"),
        "timeout_headers": fams["fleetgw_web_request_timeouts_total"].value(phase="headers"),
        "timeout_body": fams["fleetgw_web_request_timeouts_total"].value(phase="body"),
    }


def settled_metrics(wg):
    """The counters once the gateway has let go of earlier connections (only
    the /metrics request itself is open)."""
    assert wait_until(lambda: web_metrics(wg)["open"] == 1, 5), web_metrics(wg)
    return web_metrics(wg)


def timed_health(port, source):
    t0 = time.monotonic()
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=5, source_address=(source, 0))
    try:
        conn.request("GET", "/api/v1/health")
        r = conn.getresponse()
        r.read()
        return r.status, time.monotonic() - t0
    finally:
        conn.close()


def test_half_sent_requests_do_not_delay_others_and_are_closed(web_gateway):
    wg = web_gateway()
    base = settled_metrics(wg)
    t_open = time.monotonic()
    ones = half_sent(wg.port, "127.0.0.1", 80)
    twos = half_sent(wg.port, "127.0.0.2", 20)
    try:
        time.sleep(0.3)  # the gateway has accepted (or refused) them all
        # A fresh client is answered at once.
        status, took = timed_health(wg.port, "127.0.0.3")
        assert status == 200 and took < 1.0, (status, took)
        # Each client holds at most CONN_PER_IP connections; the rest were
        # closed at accept.
        admitted = [s for s in ones + twos if not is_closed(s)]
        assert sum(s in admitted for s in ones) == CONN_PER_IP
        assert sum(s in admitted for s in twos) == CONN_PER_IP
        # The health request's connection is closed by the client; the
        # gateway counts it gone once its loop has seen the FIN.
        # One snapshot for every check: each /metrics read is a connection
        # of its own, and the previous one may still be counted open until
        # the gateway's loop sees its FIN (a second read saw 34 for 33).
        want_open = 2 * CONN_PER_IP + 1  # and the /metrics request
        m = {}
        assert wait_until(lambda: m.update(web_metrics(wg)) or m["open"] == want_open, 2), m
        assert m["refused_per_ip"] - base["refused_per_ip"] == (80 - CONN_PER_IP) + (20 - CONN_PER_IP)
        assert m["refused_total"] == base["refused_total"]
        assert m["open"] == want_open

        # The admitted ones are closed by the gateway at their deadline, not
        # before, and each is counted.
        closed_at = wait_all_closed(admitted, HEADER_TIMEOUT_S + 3)
        assert min(closed_at) - t_open >= HEADER_TIMEOUT_S - 0.5, min(closed_at) - t_open
        assert max(closed_at) - t_open <= HEADER_TIMEOUT_S + 2, max(closed_at) - t_open
        m = settled_metrics(wg)
        assert m["timeout_headers"] - base["timeout_headers"] == 2 * CONN_PER_IP
        assert m["timeout_body"] == base["timeout_body"]
        # And the server is as good as new.
        assert timed_health(wg.port, "127.0.0.1")[0] == 200
    finally:
        close_all(ones + twos)
    # 68 refusals and 32 time-outs, but a peer gets only a few log lines.
    log = wg.gw.log_text()
    assert 1 <= log.count("refused a connection from") <= LOG_BURST, log[-3000:]
    assert 1 <= log.count("closed a connection from") <= LOG_BURST, log[-3000:]


def test_connections_are_bounded_in_all(web_gateway):
    wg = web_gateway()
    base = settled_metrics(wg)
    socks = []
    try:
        # CONN_PER_IP from each of enough clients to pass CONN_MAX.
        clients = CONN_MAX // CONN_PER_IP + 2
        for i in range(clients):
            socks += half_sent(wg.port, "127.0.1.%d" % (i + 1), CONN_PER_IP)
        time.sleep(0.3)
        assert sum(not is_closed(s) for s in socks) == CONN_MAX
        # Full: even a new client is refused now, and it is counted...
        late = half_sent(wg.port, "127.0.0.9", 1)[0]
        socks.append(late)
        assert wait_all_closed([late], 2)
        # ...until the deadline frees the room.
        wait_all_closed(socks, HEADER_TIMEOUT_S + 3)
        m = settled_metrics(wg)
        assert m["refused_total"] - base["refused_total"] == clients * CONN_PER_IP - CONN_MAX + 1
        assert m["refused_per_ip"] == base["refused_per_ip"]
        assert m["timeout_headers"] - base["timeout_headers"] == CONN_MAX
    finally:
        close_all(socks)


def test_a_trickled_body_has_one_deadline(web_gateway):
    wg = web_gateway()
    base = settled_metrics(wg)
    s = socket.create_connection((LOOPBACK, wg.port), timeout=5)
    try:
        s.sendall(b"POST /api/v1/allowlist HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                  + ADMIN.encode() + b"\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{")
        t0 = time.monotonic()
        # One byte a second: each would restart a per-read timeout.
        closed = False
        while time.monotonic() - t0 < BODY_TIMEOUT_S + 3:
            try:
                s.sendall(b" ")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if is_closed(s):
                closed = True
                break
            time.sleep(0.5)
        took = time.monotonic() - t0
        assert closed, "a trickled body kept the connection for %.1f s" % took
        assert BODY_TIMEOUT_S - 0.5 <= took <= BODY_TIMEOUT_S + 1.5, took
        m = settled_metrics(wg)
        assert m["timeout_body"] - base["timeout_body"] == 1
        assert m["timeout_headers"] == base["timeout_headers"]
        # Nothing was added.
        assert wg.api.ok("GET", "/api/v1/allowlist")["total"] == 0
    finally:
        s.close()


def test_slow_but_complete_clients_are_served(web_gateway):
    """Headers and body that arrive in pieces, within the deadlines, are
    fine; and a kept-alive connection is not cut by the first deadline."""
    wg = web_gateway()
    s = socket.create_connection((LOOPBACK, wg.port), timeout=10)
    try:
        body = json.dumps({"entry": "slow-1"}).encode()
        req = (b"POST /api/v1/allowlist HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
               + ADMIN.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: "
               + str(len(body)).encode() + b"\r\n\r\n" + body)
        for i in range(0, len(req), 16):
            s.sendall(req[i:i + 16])
            time.sleep(0.05)
        f = s.makefile("rb")
        assert f.readline().startswith(b"HTTP/1.1 201"), "the slow request was not served"
        length = 0
        while True:
            line = f.readline()
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
            if line in (b"\r\n", b""):
                break
        f.read(length)
        # Past the first request's header deadline, the same connection
        # still takes a request.
        time.sleep(HEADER_TIMEOUT_S + 0.5)
        s.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert f.readline().startswith(b"HTTP/1.1 200")
    finally:
        s.close()
    assert web_metrics(wg)["timeout_headers"] == 0


# ---------------------------------------------------------------------------
# logs: rate-limited, never a token
# ---------------------------------------------------------------------------
def test_peer_made_log_lines_are_limited_and_carry_no_token(web_gateway):
    wg = web_gateway()
    wg.pending_leaf("log-p")
    # Tokens everywhere a request can carry them, in requests that fail in
    # every way the web side logs or lws complains about.
    for _ in range(20):
        for path in ("/api/v1/events?token=" + ADMIN, "/api/v1/nope?token=" + READ):
            s = socket.create_connection((LOOPBACK, wg.port), timeout=5)
            try:
                s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                           "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                           "Authorization: Bearer %s\r\nX-Big: %s\r\n\r\n"
                           % (path, ADMIN, "y" * 9000)).encode())
                s.recv(4096)
            except OSError:
                pass
            finally:
                s.close()
        ws = WebSocket(wg.port, "/api/v1/events")
        try:
            ws.send_text('{"token":"%s","token":"%s"}' % (READ, ADMIN))
            try:
                ws.recv(timeout=5)
            except (WsClosed, OSError):
                pass
        finally:
            ws.close()
        # Commands succeed and are logged: at a limited rate.
        wg.api.ok("POST", "/api/v1/devices/log-p/block")
        wg.api.ok("POST", "/api/v1/devices/log-p/unblock")
        wg.api.ok("POST", "/api/v1/allowlist", 201, json_body={"entry": "log-%d" % _})
    assert wg.api.get("/api/v1/health").status == 200
    log = wg.gw.log_text()
    assert ADMIN not in log and READ not in log, "a token reached the log"
    assert log.count("block log-p by") <= LOG_BURST, log[-3000:]
    assert log.count("allowlist add by") <= LOG_BURST, log[-3000:]
    assert log.count("refused a client with a bad token") <= LOG_BURST, log[-3000:]
    assert log.count("web: lws:") <= LOG_BURST + 1, log[-3000:]
