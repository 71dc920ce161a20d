"""DTLS pre-shared keys for leaves through the REST API, against the real
gateway with its web server (the `web_gateway` fixture of test_web_api.py):
one key at a time (create, import, rotate, revoke), a production batch in
CSV, and the rule that a key is shown once and nowhere else - not in the
device, the audit log, the event stream, /metrics or the gateway's log -
while the registry holds it sealed (its bytes are not in the database
files).

The answers are checked against web/openapi.json as in test_web_api.py.  The
last test runs a leaf over DTLS (tests/leaf's fleetgw-dtls-bridge, with the
batch answer as its key file) and shows that rotating and revoking close its
association and that the old key opens no new one."""
import csv
import io
import os
import re
import signal
import socket
import sqlite3
import subprocess
import threading
from pathlib import Path

import pytest

import mqttsn_leaf as sn
from conftest import (LOOPBACK, REPO, connect_until_accepted, free_port, registry_audit,
                      registry_db, wait_until)
from test_web_api import (ADMIN, READ, check_device, conforms, web_gateway, wg,  # noqa: F401
                          WebGw)
from webclient import WebSocket, check_error_body, quote

HEX64 = re.compile(r"[0-9a-f]{64}")
PSK = "/api/v1/devices/{clientId}/psk"
ROTATE = "/api/v1/devices/{clientId}/psk/rotate"
BULK = "/api/v1/psks"


def psk_url(cid, rotate=False):
    return "/api/v1/devices/%s/psk%s" % (quote(cid), "/rotate" if rotate else "")


def create(wg, cid, status=201, **kw):
    r = wg.api.request("POST", psk_url(cid), **kw)
    body = conforms(r, PSK, "POST", status)
    return r, body


def psk_rows(wg):
    """{ClientId: (key_blob, created_at)} of the registry's psks table."""
    with registry_db(wg.reg) as con:
        return {r[0]: (bytes(r[1]), r[2]) for r in con.execute(
            "SELECT d.client_id, p.key_blob, p.created_at FROM psks p"
            " JOIN devices d ON d.id = p.device_id")}


def registry_ids(wg):
    with registry_db(wg.reg) as con:
        return {r[0] for r in con.execute("SELECT client_id FROM devices")}


def registry_bytes(wg):
    """The database file and its WAL, as they are on disk."""
    out = b""
    for suffix in ("", "-wal"):
        try:
            out += (wg.reg.parent / (wg.reg.name + suffix)).read_bytes()
        except FileNotFoundError:
            pass
    return out


def assert_sealed(wg, hexkey):
    data = registry_bytes(wg)
    assert bytes.fromhex(hexkey) not in data, "the raw key is in the registry file"
    assert hexkey.encode() not in data and hexkey.upper().encode() not in data, \
        "the hex key is in the registry file"


def bulk(wg, text, api=None, content_type="text/csv"):
    return (api or wg.api).request("POST", BULK, body=text, content_type=content_type)


# ---------------------------------------------------------------------------
# one key at a time
# ---------------------------------------------------------------------------
def test_create_shows_the_key_once_and_makes_an_unknown_device_approved(wg):
    assert wg.api.get("/api/v1/devices/line1-plc-01").status == 404
    r, k = create(wg, "line1-plc-01")
    assert set(k) == {"client_id", "psk_identity", "key", "created_at"}, k
    assert k["client_id"] == k["psk_identity"] == "line1-plc-01"
    assert HEX64.fullmatch(k["key"]), k["key"]        # 32 random bytes
    assert r.header("Cache-Control") == "no-store", r.headers
    assert k["created_at"] > 0

    # The device: created approved, shows that a key exists, never the key.
    d = check_device(wg.device("line1-plc-01"), detail=True)
    assert d["state"] == "approved" and d["psk"] is True and d["lan_security"] is None, d
    listed = wg.api.ok("GET", "/api/v1/devices?q=line1-plc-01")
    assert [x["psk"] for x in listed["items"]] == [True]
    for path in ("/api/v1/devices/line1-plc-01", "/api/v1/devices", "/api/v1/audit?limit=1000",
                 "/api/v1/status"):
        r2 = wg.api.get(path)
        assert r2.status == 200 and k["key"].encode() not in r2.body, path
        assert r2.header("Cache-Control") == "no-cache", (path, r2.headers)

    # A second create is refused and points at rotation; the key stays.
    before = psk_rows(wg)["line1-plc-01"]
    r, body = create(wg, "line1-plc-01", status=409)
    check_error_body(r, 409, "conflict")
    assert "rotate" in body["message"], body
    assert psk_rows(wg)["line1-plc-01"] == before

    # Stored, sealed: a row whose blob is not the key, in a file without it.
    blob, created_at = before
    assert created_at == k["created_at"] and len(blob) > 32
    assert bytes.fromhex(k["key"]) not in blob
    assert_sealed(wg, k["key"])

    # Audited as an operator's naming of the identity, without the key.
    audit = wg.api.ok("GET", "/api/v1/audit?client_id=line1-plc-01&limit=1000")["items"]
    rows = [a for a in audit if a["action"] == "operator.psk_create"]
    assert len(rows) == 1 and rows[0]["actor"] == "api:admin", audit
    assert "approved" in rows[0]["detail"] and "generated" in rows[0]["detail"], rows
    assert k["key"] not in rows[0]["detail"]


def test_read_token_and_no_token_are_refused(wg):
    for method, path in (("POST", psk_url("ro-1")), ("POST", psk_url("ro-1", rotate=True)),
                         ("DELETE", psk_url("ro-1"))):
        r = wg.ro.request(method, path)
        check_error_body(r, 403, "forbidden")
        conforms(r, ROTATE if path.endswith("rotate") else PSK, method, 403)
        check_error_body(wg.anon.request(method, path), 401, "unauthorized")
    check_error_body(bulk(wg, "client_id\nro-2\n", api=wg.ro), 403, "forbidden")
    check_error_body(bulk(wg, "client_id\nro-2\n", api=wg.anon), 401, "unauthorized")
    assert registry_ids(wg) == set() and psk_rows(wg) == {}


def test_rotate_gives_a_new_key_and_revoke_takes_it_away(wg):
    _, k1 = create(wg, "rot-1")
    blob1 = psk_rows(wg)["rot-1"][0]
    r = wg.api.request("POST", psk_url("rot-1", rotate=True))
    k2 = conforms(r, ROTATE, "POST", 200)
    assert set(k2) == {"client_id", "psk_identity", "key", "created_at"}
    assert r.header("Cache-Control") == "no-store"
    assert HEX64.fullmatch(k2["key"]) and k2["key"] != k1["key"]
    assert psk_rows(wg)["rot-1"][0] != blob1
    assert_sealed(wg, k1["key"])
    assert_sealed(wg, k2["key"])
    # Rotating to an imported key.
    mine = "00112233445566778899aabbccddeeff"
    k3 = wg.api.ok("POST", psk_url("rot-1", rotate=True), 200, json_body={"key": mine.upper()})
    assert k3["key"] == mine
    assert wg.device("rot-1")["psk"] is True

    r = wg.api.delete(psk_url("rot-1"))
    conforms(r, PSK, "DELETE", 204)
    assert r.body == b""
    d = wg.device("rot-1")
    assert d["psk"] is False and d["state"] == "approved", d
    assert "rot-1" not in psk_rows(wg)
    # Nothing left to revoke or rotate; a new key may be made again.
    check_error_body(wg.api.delete(psk_url("rot-1")), 404, "not_found")
    r = wg.api.request("POST", psk_url("rot-1", rotate=True))
    conforms(r, ROTATE, "POST", 404)
    assert "has no key" in check_error_body(r, 404, "not_found")["message"]
    check_error_body(wg.api.request("POST", psk_url("nobody", rotate=True)), 404, "not_found")
    assert "nobody" not in registry_ids(wg)
    create(wg, "rot-1")
    actions = [a for a in registry_audit(wg.reg, "rot-1") if a.startswith("operator.psk")]
    assert actions == ["operator.psk_create", "operator.psk_rotate", "operator.psk_rotate",
                       "operator.psk_revoke", "operator.psk_create"], actions


def test_import_a_key_and_refuse_bad_bodies(wg):
    key = bytes(range(16)).hex()
    _, k = create(wg, "imp-1", json_body={"key": key})
    assert k["key"] == key
    _, k = create(wg, "imp-64", json_body={"key": "ab" * 64})
    assert k["key"] == "ab" * 64
    assert "imported" in wg.api.ok("GET", "/api/v1/audit?client_id=imp-1")["items"][0]["detail"]
    bad = [{"key": "00" * 15}, {"key": "00" * 65}, {"key": "abc"}, {"key": "zz" * 16},
           {"key": 5}, {"key": ""}, {"kye": key}, {"key": key, "extra": 1}, {"key": None}]
    for i, b in enumerate(bad):
        cid = "imp-bad-%d" % i
        r, body = create(wg, cid, status=400, json_body=b)
        check_error_body(r, 400, "bad_request")
        assert "key" in body["message"], (b, body)
        assert cid not in registry_ids(wg), b
    r, _ = create(wg, "imp-bad-x", status=400, body=b"{not json",
                  content_type="application/json")
    check_error_body(r, 400, "bad_request")
    assert set(psk_rows(wg)) == {"imp-1", "imp-64"}
    # {} is no body: a generated key.
    _, k = create(wg, "imp-empty", json_body={})
    assert HEX64.fullmatch(k["key"])


def test_client_ids_no_leaf_could_use_are_refused(wg):
    for cid in ("has space", "x" * 24, "tab\tid", "caf\u00e9"):
        r, body = create(wg, cid, status=400)
        check_error_body(r, 400, "bad_request")
        assert "ClientId" in body["message"], body
    assert registry_ids(wg) == set()
    # 23 octets (lan.max_client_id_len's default) is fine.
    create(wg, "y" * 23)


def test_blocked_and_revoked_devices_are_refused_pending_ones_keep_their_state(wg):
    wg.pending_leaf("blk-psk")
    wg.pending_leaf("dec-psk")
    wg.pending_leaf("pen-psk")
    wg.api.ok("POST", "/api/v1/devices/blk-psk/block")
    wg.api.ok("DELETE", "/api/v1/devices/dec-psk")
    for cid, word in (("blk-psk", "blocked"), ("dec-psk", "decommissioned")):
        r, body = create(wg, cid, status=409)
        check_error_body(r, 409, "conflict")
        assert word in body["message"], body
    assert psk_rows(wg) == {}
    # A pending device gets its key and stays pending: approval is another
    # decision.
    create(wg, "pen-psk")
    d = wg.device("pen-psk")
    assert d["state"] == "pending" and d["psk"] is True, d
    # A blocked device with a key may be re-keyed (before it is unblocked); a
    # decommissioned one may not.
    wg.api.ok("POST", "/api/v1/devices/pen-psk/block")
    wg.api.ok("POST", psk_url("pen-psk", rotate=True))
    wg.api.ok("DELETE", "/api/v1/devices/pen-psk")
    r = wg.api.request("POST", psk_url("pen-psk", rotate=True))
    check_error_body(r, 409, "conflict")
    conforms(r, ROTATE, "POST", 409)
    # Revoking is always possible.
    assert wg.api.delete(psk_url("pen-psk")).status == 204


def test_lan_security_is_shown_and_filters_the_list(wg):
    lf = wg.leaf("plain-1")
    wg.api.ok("POST", "/api/v1/allowlist", 201, json_body={"entry": "plain-1"})
    assert connect_until_accepted(lf) == sn.RC_ACCEPTED
    create(wg, "keyed-1")
    d = wg.device("plain-1")
    assert d["lan_security"] == "plain" and d["psk"] is False, d

    def ids(q):
        return [x["client_id"] for x in wg.api.ok("GET", "/api/v1/devices?" + q)["items"]]
    assert ids("lan_security=plain") == ["plain-1"]
    assert ids("lan_security=none") == ["keyed-1"]
    assert ids("lan_security=dtls-psk") == []
    assert ids("lan_security=") == ["keyed-1", "plain-1"]
    assert ids("lan_security=none&state=approved&q=keyed") == ["keyed-1"]
    r = wg.api.get("/api/v1/devices?lan_security=telnet")
    check_error_body(r, 400, "bad_request")
    conforms(r, "/api/v1/devices", "GET", 400)


# ---------------------------------------------------------------------------
# a production batch
# ---------------------------------------------------------------------------
def parse_answer(r):
    assert r.status == 201, r
    assert r.content_type == "text/csv", r.headers
    assert r.header("Cache-Control") == "no-store", r.headers
    lines = r.text.split("\n")
    assert lines[0] == "client_id,key" and lines[-1] == "", lines[:3]
    rows = [ln.split(",") for ln in lines[1:-1]]
    assert all(len(x) == 2 and HEX64.fullmatch(x[1]) for x in rows), rows
    # The csv module reads it the same way (what a simulator would do).
    assert list(csv.reader(io.StringIO(r.text)))[1:] == rows
    return rows


def test_bulk_csv_in_input_order(wg):
    wg.pending_leaf("bulk-known")
    text = ("\ufeffclient_id\r\nbulk-c\r\n\r\n  bulk-a  \r\nbulk-known\r\n\nbulk-b")
    rows = parse_answer(bulk(wg, text.encode()))
    assert [x[0] for x in rows] == ["bulk-c", "bulk-a", "bulk-known", "bulk-b"]
    assert len({x[1] for x in rows}) == 4
    stored = psk_rows(wg)
    assert set(stored) == {"bulk-a", "bulk-b", "bulk-c", "bulk-known"}
    for cid, hexkey in rows:
        d = check_device(wg.device(cid), detail=True)
        assert d["psk"] is True and d["state"] == ("pending" if cid == "bulk-known"
                                                   else "approved"), d
        assert_sealed(wg, hexkey)
    # One audit row for the batch, with the count; none per id, no key.
    audit = wg.api.ok("GET", "/api/v1/audit?limit=1000")["items"]
    batch = [a for a in audit if a["action"] == "operator.psk_bulk"]
    assert len(batch) == 1 and batch[0]["client_id"] == "", batch
    assert "4 keys" in batch[0]["detail"] and "3 new devices" in batch[0]["detail"], batch
    assert not [a for a in audit if a["action"] == "operator.psk_create"]
    text_all = wg.api.get("/api/v1/audit?limit=1000").text
    assert not any(h in text_all for _, h in rows)
    # Without a header line, and as a second batch.
    rows2 = parse_answer(bulk(wg, "bulk-d\nbulk-e\n"))
    assert [x[0] for x in rows2] == ["bulk-d", "bulk-e"]


def test_bulk_is_all_or_nothing(wg):
    create(wg, "aon-2")
    wg.pending_leaf("aon-blk")
    wg.api.ok("POST", "/api/v1/devices/aon-blk/block")
    before_ids, before_psks = registry_ids(wg), psk_rows(wg)
    before_audit = wg.api.ok("GET", "/api/v1/audit?limit=1")["total"]
    r = bulk(wg, "client_id\naon-1\naon-2\naon-3\naon-blk\naon-4\n")
    body = check_error_body(r, 409, "conflict")
    conforms(r, BULK, "POST", 409)
    assert "aon-2" in body["message"] and "aon-blk" in body["message"], body
    assert "aon-1" not in body["message"] and "nothing was written" in body["message"], body
    # The registry file itself: not one of the new ids, no new key, no row.
    assert registry_ids(wg) == before_ids and psk_rows(wg) == before_psks
    with sqlite3.connect("file:%s?mode=ro" % wg.reg, uri=True) as con:
        assert con.execute("SELECT count(*) FROM devices WHERE client_id LIKE 'aon-%'"
                           ).fetchone()[0] == 2
        assert con.execute("SELECT count(*) FROM psks").fetchone()[0] == 1
    assert wg.api.ok("GET", "/api/v1/audit?limit=1")["total"] == before_audit
    # Many offenders: the first few are named.
    for i in range(8):
        create(wg, "many-%d" % i)
    r = bulk(wg, "\n".join("many-%d" % i for i in range(8)))
    body = check_error_body(r, 409, "conflict")
    assert "8 of the ClientIds" in body["message"] and "many-0" in body["message"]
    assert "many-7" not in body["message"] and "..." in body["message"], body


def test_bulk_limits_and_bad_bodies(wg):
    # 1,000 ids are one batch; 1,001 are refused whole.
    over = "client_id\n" + "".join("lim-%04d\n" % i for i in range(1001))
    r = bulk(wg, over)
    body = check_error_body(r, 413, "payload_too_large")
    conforms(r, BULK, "POST", 413)
    assert "1000" in body["message"], body
    assert not [c for c in registry_ids(wg) if c.startswith("lim-")]
    rows = parse_answer(bulk(wg, over.rsplit("lim-1000\n", 1)[0]))
    assert len(rows) == 1000 and rows[-1][0] == "lim-0999"
    assert len(psk_rows(wg)) == 1000

    cases = [
        ("a slash", "client_id\nok-1\nline/7\n", "line 3"),
        ("two columns", "ok-1,abc\n", "line 1"),
        ("a space", "ok 1\n", "line 1"),
        ("too long for lan.max_client_id_len", "ok-1\n" + "z" * 24 + "\n", "ClientId 2"),
        ("twice", "ok-1\nok-2\nok-1\n", "twice"),
        ("empty", "client_id\n\n", "no ClientId"),
    ]
    for why, text, frag in cases:
        r = bulk(wg, text)
        body = check_error_body(r, 400, "bad_request")
        conforms(r, BULK, "POST", 400)
        assert frag in body["message"], (why, body)
    r = wg.api.post(BULK, json_body={"client_id": "ok-1"})
    assert "text/csv" in check_error_body(r, 400, "bad_request")["message"]
    assert not [c for c in registry_ids(wg) if c.startswith("ok")]


# ---------------------------------------------------------------------------
# the key is shown once and nowhere else
# ---------------------------------------------------------------------------
def test_keys_appear_nowhere_but_in_their_answer(wg):
    events = []
    ws = WebSocket(wg.port)
    ws.send_json({"token": ADMIN})
    assert ws.recv_json(timeout=5)["type"] == "hello"
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            try:
                kind, data = ws.recv(timeout=0.2)
                events.append(data)
            except Exception:   # time-outs, and the close at the end
                if ws.closed:
                    return
    t = threading.Thread(target=reader, daemon=True)
    t.start()
    keys = []
    try:
        keys.append(create(wg, "leak-1")[1]["key"])
        keys.append(wg.api.ok("POST", psk_url("leak-1", rotate=True))["key"])
        imported = "5a" * 32
        keys.append(create(wg, "leak-2", json_body={"key": imported})[1]["key"])
        keys += [h for _, h in parse_answer(bulk(wg, "leak-3\nleak-4\n"))]
        assert wg.api.delete(psk_url("leak-2")).status == 204
        # The new devices were announced (without keys) before we look.
        assert wait_until(lambda: sum('"leak-' in e for e in events) >= 3, 5), events
    finally:
        stop.set()
        ws.close()
        t.join(2)
    assert len(set(keys)) == 5 and imported in keys
    log = wg.gw.log_text()
    audit = wg.api.get("/api/v1/audit?limit=1000").text
    metrics = wg.api.get("/metrics").text
    devices = wg.api.get("/api/v1/devices?limit=1000").text
    for k in keys:
        for where, text in (("the gateway's log", log), ("the audit log", audit),
                            ("the event stream", "\n".join(events)), ("/metrics", metrics),
                            ("the device list", devices)):
            assert k not in text and k.upper() not in text, "a key in %s" % where
        assert_sealed(wg, k)
    # The commands were logged, by ClientId.
    assert "leak-1" in log and "psk" in log



# ---------------------------------------------------------------------------
# a key that changes or goes stops working at once
# ---------------------------------------------------------------------------
BRIDGE = Path(os.environ.get("BUILD_DIR", str(REPO / "build"))) / "tests" / "leaf" / \
    "fleetgw-dtls-bridge"


class Bridge:
    """fleetgw-dtls-bridge (tests/leaf): plain MQTT-SN on a local port, one
    DTLS 1.2 association per source towards the gateway, the PSK by the
    CONNECT's ClientId from a file; one stdout line per event."""

    def __init__(self, target_port, psk_file):
        if not BRIDGE.exists():
            pytest.fail("%s not built (build it, or set BUILD_DIR)" % BRIDGE)
        self.p = subprocess.Popen(
            [str(BRIDGE), "--listen", "0", "--connect", "%s:%d" % (LOOPBACK, target_port),
             "--identity-from-clientid", "--psk-file", str(psk_file),
             "--handshake-timeout-ms", "2000"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.lines = []
        threading.Thread(target=self._read, daemon=True).start()
        first = self.wait(lambda ln: ln.startswith("listening "))
        self.port = int(first.split()[1])

    def _read(self):
        for line in self.p.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait(self, pred, timeout=10):
        found = []
        assert wait_until(lambda: found.extend(x for x in list(self.lines) if pred(x)) or found,
                          timeout), "no such bridge line in %r" % self.lines
        return found[0]

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            self.p.wait(10)


def test_rotate_and_revoke_close_the_dtls_association_of_the_old_key(web_gateway, tmp_path):
    dtls_port = free_port(socket.SOCK_DGRAM)
    wg = web_gateway(policy="open", lan={"dtls": {"enabled": True, "bind": LOOPBACK,
                                                  "port": dtls_port}})
    # The batch answer is the bridge's key file as it is.
    keys = tmp_path / "keys.csv"
    r = bulk(wg, "client_id\ndtls-leaf-1\n")
    keys.write_bytes(r.body)
    old = parse_answer(r)[0][1]
    bridges, leaves = [], []

    def leaf_through(key_file):
        b = Bridge(dtls_port, key_file)
        bridges.append(b)
        lf = sn.Leaf((LOOPBACK, b.port), "dtls-leaf-1")
        leaves.append(lf)
        return b, lf
    try:
        b, lf = leaf_through(keys)
        assert connect_until_accepted(lf, timeout=20) == sn.RC_ACCEPTED
        b.wait(lambda ln: ln.startswith("handshake ok "))
        d = wg.device("dtls-leaf-1")
        assert d["lan_security"] == "dtls-psk" and d["psk"] is True, d
        assert wg.api.ok("GET", "/api/v1/devices?lan_security=dtls-psk")["total"] == 1

        # Rotate: the gateway closes the association at once...
        new = wg.api.ok("POST", psk_url("dtls-leaf-1", rotate=True))["key"]
        assert new != old
        b.wait(lambda ln: ln.startswith(("closed ", "alert ")))
        # ...and the old key opens none: the bridge's new handshake fails.
        n_failed = len([x for x in b.lines if x.startswith("handshake failed")])
        try:
            lf.connect(timeout=3)
        except sn.Timeout:
            pass
        b.wait(lambda ln: ln.startswith("handshake failed"), timeout=15)
        assert len([x for x in b.lines if x.startswith("handshake failed")]) > n_failed

        # The new key works.
        keys2 = tmp_path / "keys-new.csv"
        keys2.write_text("client_id,key\ndtls-leaf-1,%s\n" % new)
        b2, lf2 = leaf_through(keys2)
        assert connect_until_accepted(lf2, timeout=20) == sn.RC_ACCEPTED
        # Revoke: closed again, and the key opens nothing any more.
        assert wg.api.delete(psk_url("dtls-leaf-1")).status == 204
        b2.wait(lambda ln: ln.startswith(("closed ", "alert ")))
        assert wg.device("dtls-leaf-1")["psk"] is False
        # Without a key it is still DTLS-only (it has authenticated over
        # DTLS), until an operator releases it: then a plain leaf may have it.
        plain = wg.leaf("dtls-leaf-1")
        leaves.append(plain)
        assert plain.connect() == sn.RC_NOT_SUPPORTED
        assert wg.api.post("/api/v1/devices/dtls-leaf-1/release").status == 200
        assert wg.device("dtls-leaf-1")["lan_security"] is None
        assert connect_until_accepted(plain) == sn.RC_ACCEPTED
        assert wg.device("dtls-leaf-1")["lan_security"] == "plain"
    finally:
        for lf in leaves:
            lf.close()
        for b in bridges:
            b.stop()
    for k in (old, new):
        assert k not in wg.gw.log_text()
