"""The operators' REST API, its WebSocket event stream and /metrics, against
the real gateway with its web server enabled, a real mosquitto that trusts
the gateway's own CA (backend local-ca, as in test_provisioning_local.py) and
MQTT-SN leaves.  The contract is web/openapi.json: every answer is checked
against the schema the document gives for its status, and a route-coverage
test makes sure the document and the routes cannot drift apart.

Only the standard library talks HTTP and WebSocket (tests/integration/
webclient.py)."""
import hashlib
import http.client
import json
import socket
import sqlite3
import ssl
import time
import uuid

import pytest

import mqttsn_leaf as sn
from conftest import LOOPBACK, REPO, connect_until_accepted, free_port, registry_certs, wait_until
from webclient import (Api, PromError, WebSocket, WsClosed, WsHandshakeError, check_error_body,
                       openapi_operations, openapi_problems, parse_prometheus, quote,
                       response_schema, schema_errors)

OPENAPI_FILE = REPO / "web" / "openapi.json"
STATIC_DIR = REPO / "web" / "static"
ADMIN = "admin-" + uuid.uuid4().hex
READ = "read-" + uuid.uuid4().hex

STATES = ("pending", "approved", "provisioning", "active", "failed", "blocked", "revoked")
CERT_ACTIVE, CERT_ORPHANED, CERT_SUPERSEDED, CERT_INACTIVE = 1, 2, 3, 4
DEVICE_KEYS = {"client_id", "thing_name", "state", "session", "bound_addr", "address",
               "first_seen", "last_seen", "last_error", "attempts", "certificate",
               "expires_in_days", "lan_security", "psk", "msgs_in", "msgs_out", "msgs_refused",
               "queued", "subscriptions", "rate_in", "rate_out", "last_message_at",
               "keepalive_s", "reconnects", "outbox"}
CERT_KEYS = {"cert_id", "client_id", "status", "not_after", "fingerprint", "reason", "created_at"}
AUDIT_KEYS = {"id", "at", "actor", "action", "client_id", "detail"}


def load_doc():
    return json.loads(OPENAPI_FILE.read_text())


DOC = load_doc()


# ---------------------------------------------------------------------------
# fixtures: a CA for the gateway, a broker trusting it, the gateway with web
# ---------------------------------------------------------------------------
# local_ca and ca_broker: fixtures in conftest.py.


class WebGw:
    """A running gateway with its web server: gw (conftest Gateway), api
    (admin token), ro (read-only token), anon (no token), reg (registry)."""

    def __init__(self, gw, port, reg):
        self.gw, self.port, self.reg = gw, port, reg
        self.api = Api(port, ADMIN)
        self.ro = Api(port, READ)
        self.anon = Api(port, None)

    def leaf(self, cid, **kw):
        return self.gw.leaf(cid, **kw)

    def pending_leaf(self, cid, **kw):
        """A leaf whose CONNECT left it pending (policy approve)."""
        lf = self.gw.leaf(cid, **kw)
        assert lf.connect() == sn.RC_CONGESTION
        return lf

    def active_leaf(self, cid, **kw):
        """A leaf admitted by an operator and provisioned: connected, with its
        own upstream session and one active certificate."""
        lf = self.pending_leaf(cid, **kw)
        self.api.ok("POST", "/api/v1/devices/%s/approve" % quote(cid))
        assert connect_until_accepted(lf) == sn.RC_ACCEPTED
        assert wait_until(lambda: self.device(cid)["state"] == "active", 10), self.device(cid)
        return lf

    def device(self, cid):
        return self.api.ok("GET", "/api/v1/devices/" + quote(cid))


@pytest.fixture
def web_gateway(gateway, ca_broker, local_ca, tmp_path):
    """Factory: web_gateway(policy="approve", web={...overrides}, **config
    overrides) -> WebGw."""
    made = []

    def make(policy="approve", web=None, **over):
        crt, key, _ = local_ca
        port = free_port()
        reg = tmp_path / ("web-reg-%d.db" % len(made))
        webcfg = {"enabled": True, "bind": LOOPBACK, "port": port,
                  "admin_token_env": "FLEETGW_ADMIN_TOKEN", "read_token_env": "FLEETGW_READ_TOKEN",
                  "open_health": True, "open_metrics": False, "static_dir": str(STATIC_DIR),
                  "openapi_file": str(OPENAPI_FILE)}
        webcfg.update(web or {})
        cfg = {
            "registry": {"path": str(reg)},
            "upstream": {"cert_file": None, "key_file": None},
            "provisioning": {"backend": "local-ca", "thing_name_template": "thing-{client_id}",
                             "local_ca": {"cert_file": str(crt), "key_file": str(key),
                                          "create": False}},
            "admission": {"policy": policy},
            "web": webcfg,
        }
        for k, v in over.items():
            cfg.setdefault(k, {}).update(v)
        gw = gateway(ca_broker, env={"FLEETGW_ADMIN_TOKEN": ADMIN, "FLEETGW_READ_TOKEN": READ},
                     **cfg)
        wg = WebGw(gw, port, reg)
        wg.api.wait_up(10, gw.proc)
        made.append(wg)
        return wg
    return make


@pytest.fixture
def wg(web_gateway):
    return web_gateway()


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------








def conforms(r, path, method, status=None):
    """The response has the status (if given), the status is documented for
    the operation, and a JSON body matches the documented schema."""
    if status is not None:
        assert r.status == status, "%s %s: %r" % (method, path, r)
    op = DOC["paths"][path][method.lower()]
    assert str(r.status) in op["responses"], \
        "%s %s answered %d, which web/openapi.json does not document" % (method, path, r.status)
    if r.content_type == "application/json" and (r.body or r.status != 204):
        schema = response_schema(DOC, path, method, r.status)
        assert schema is not None, "%s %s %d: JSON body not documented" % (method, path, r.status)
        errs = schema_errors(DOC, schema, r.json())
        assert not errs, "%s %s %d does not match the document:\n  %s" % (
            method, path, r.status, "\n  ".join(errs[:20]))
    return r.json() if r.content_type == "application/json" and r.body else r


def check_device(d, detail=False):
    assert set(d) == DEVICE_KEYS, "device keys: extra %r, missing %r" % (
        sorted(set(d) - DEVICE_KEYS), sorted(DEVICE_KEYS - set(d)))
    assert d["state"] in STATES
    if detail:
        assert isinstance(d["subscriptions"], list)
        for s in d["subscriptions"]:
            assert set(s) == {"filter", "qos"} and s["qos"] in (0, 1, 2), s
    else:
        assert isinstance(d["subscriptions"], int) and d["subscriptions"] >= 0
    if d["certificate"] is not None:
        assert set(d["certificate"]) == {"cert_id", "fingerprint", "not_after", "status"}
        assert d["certificate"]["status"] == "active"
    return d


def pem_fingerprint(pem):
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def all_pages(api, path, limit, **params):
    """Every item of a paged list, fetched `limit` at a time; checks the
    wrapper of each page."""
    items, offset, total = [], 0, None
    while True:
        q = "&".join(["offset=%d" % offset, "limit=%d" % limit] +
                     ["%s=%s" % (k, quote(str(v))) for k, v in params.items()])
        page = api.ok("GET", "%s?%s" % (path, q))
        assert set(page) == {"items", "total", "offset", "limit"}, page.keys()
        assert page["offset"] == offset and page["limit"] == limit
        if total is None:
            total = page["total"]
        assert page["total"] == total, "total changed between pages"
        assert len(page["items"]) == max(0, min(limit, total - offset))
        items += page["items"]
        offset += limit
        if offset >= total:
            return items, total


# ---------------------------------------------------------------------------
# the document itself (no gateway needed)
# ---------------------------------------------------------------------------
def test_openapi_document_is_valid():
    doc = load_doc()
    problems = openapi_problems(doc)
    assert not problems, "\n".join(problems)
    # Every route of the contract is documented, with its methods.
    ops = {(p, m) for p, m, _ in openapi_operations(doc)}
    want = {
        ("/api/v1/health", "GET"), ("/api/v1/status", "GET"), ("/api/v1/devices", "GET"),
        ("/api/v1/devices/{clientId}", "GET"), ("/api/v1/devices/{clientId}", "DELETE"),
        ("/api/v1/devices/{clientId}/certificate", "GET"),
        ("/api/v1/devices/{clientId}/approve", "POST"),
        ("/api/v1/devices/{clientId}/block", "POST"),
        ("/api/v1/devices/{clientId}/unblock", "POST"),
        ("/api/v1/devices/{clientId}/reprovision", "POST"),
        ("/api/v1/devices/{clientId}/release", "POST"), ("/api/v1/allowlist", "GET"),
        ("/api/v1/allowlist", "POST"), ("/api/v1/allowlist/{entry}", "DELETE"),
        ("/api/v1/certificates", "GET"), ("/api/v1/audit", "GET"),
        ("/api/v1/openapi.json", "GET"), ("/metrics", "GET"), ("/api/v1/events", "GET"),
        ("/", "GET"),
    }
    assert want <= ops, sorted(want - ops)
    # Open routes say so; the rest inherit the bearer scheme.
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        **doc["components"]["securitySchemes"]["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert doc["paths"]["/api/v1/health"]["get"]["security"] == []
    assert doc["security"] == [{"bearerAuth": []}]
    assert "101" in doc["paths"]["/api/v1/events"]["get"]["responses"]
    assert "text/plain" in doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    body = doc["paths"]["/api/v1/allowlist"]["post"]["requestBody"]["content"]
    assert {"application/json", "text/csv"} <= set(body)
    # The validator does catch a broken document.
    broken = load_doc()
    broken["paths"]["/api/v1/devices/{clientId}/approve"]["parameters"] = []
    broken["paths"]["/api/v1/status"]["get"]["responses"]["200"]["content"][
        "application/json"]["schema"] = {"$ref": "#/components/schemas/Nope"}
    del broken["paths"]["/api/v1/audit"]["get"]["responses"]
    del broken["info"]
    got = "\n".join(openapi_problems(broken))
    for frag in ("{clientId} has no path parameter", "Nope", "audit].get: no responses",
                 "info.title"):
        assert frag in got, got
    # A second opinion when the Debian package is there (bookworm has none).
    try:
        from openapi_spec_validator import validate_spec
    except ImportError:
        return
    validate_spec(doc)


def test_prometheus_parser_is_strict():
    good = ("# HELP fleetgw_x_total Things.\n# TYPE fleetgw_x_total counter\n"
            'fleetgw_x_total{qos="0",dir="in"} 3\nfleetgw_x_total{qos="1",dir="in"} 4\n'
            '# HELP g A gauge with "quotes" and a \\\\ backslash.\n# TYPE g gauge\n'
            'g{state="a\\"b\\\\c\\nd"} -1.5e3\ng{state="z"} NaN\n'
            "# HELP h Latency.\n# TYPE h histogram\n"
            'h_bucket{le="0.1"} 1\nh_bucket{le="+Inf"} 2\nh_sum 0.3\nh_count 2\n')
    fams = parse_prometheus(good)
    assert fams["fleetgw_x_total"].value(qos=1) == 4
    assert fams["g"].label_values("state") == {'a"b\\c\nd', "z"}
    bad = {
        "no final newline": "# HELP a_total x\n# TYPE a_total counter\na_total 1",
        "bad name": "# HELP 1a x\n# TYPE 1a gauge\n1a 1\n",
        "counter without _total": "# HELP a x\n# TYPE a counter\na 1\n",
        "unknown type": "# HELP a x\n# TYPE a meter\na 1\n",
        "TYPE after samples": "# HELP a x\na 1\n# TYPE a gauge\n",
        "no HELP/TYPE": "a 1\n",
        "duplicate series": "# HELP a x\n# TYPE a gauge\na{b=\"1\"} 1\na{b=\"1\"} 2\n",
        "unquoted label": "# HELP a x\n# TYPE a gauge\na{b=1} 1\n",
        "bad escape": "# HELP a x\n# TYPE a gauge\na{b=\"\\t\"} 1\n",
        "bad value": "# HELP a x\n# TYPE a gauge\na 1,5\n",
        "python-only float": "# HELP a x\n# TYPE a gauge\na infinity\n",
        "negative counter": "# HELP a_total x\n# TYPE a_total counter\na_total -1\n",
        "split family": "# HELP a x\n# TYPE a gauge\n# HELP b x\n# TYPE b gauge\n"
                        "a{l=\"1\"} 1\nb 1\na{l=\"2\"} 1\n",
        "second TYPE": "# HELP a x\n# TYPE a gauge\n# TYPE a gauge\na 1\n",
        "duplicate label": "# HELP a x\n# TYPE a gauge\na{b=\"1\",b=\"2\"} 1\n",
        "non-cumulative histogram": "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 5\n"
                                    "h_bucket{le=\"+Inf\"} 2\nh_count 2\n",
        "no space before value": "# HELP a x\n# TYPE a gauge\na{b=\"1\"}1\n",
    }
    for why, text in bad.items():
        with pytest.raises(PromError):
            parse_prometheus(text)
            pytest.fail("accepted: " + why)


# ---------------------------------------------------------------------------
# status, health, openapi, dashboard
# ---------------------------------------------------------------------------
def test_health_status_and_keepalive(wg):
    r = wg.anon.get("/api/v1/health")
    assert conforms(r, "/api/v1/health", "GET", 200) == {"status": "ok"}
    wg.pending_leaf("st-pending")
    lf = wg.active_leaf("st-active")
    tid = lf.register("fleet/st-active/t")
    assert lf.publish(tid, b"1", qos=1) == sn.RC_ACCEPTED
    st = conforms(wg.api.get("/api/v1/status"), "/api/v1/status", "GET", 200)
    assert set(st) == {"version", "uptime_s", "gateway_id", "uplink", "backend", "devices",
                       "leaves", "upstreams_up", "provisioning_in_flight", "db_bytes", "msgs_in",
                       "msgs_out", "outbox", "cert_expiry"}
    assert isinstance(st["version"], str) and st["version"]
    assert st["gateway_id"] == 1 and st["backend"] == "local-ca"
    assert set(st["devices"]) == set(STATES)
    assert st["devices"]["pending"] == 1 and st["devices"]["active"] == 1
    assert sum(st["devices"].values()) == 2
    assert set(st["leaves"]) == {"active", "asleep", "connecting"}
    assert st["leaves"]["active"] == 1
    # The PUBACK came from the outbox: the upstream may still be coming up.
    st = wait_until(lambda: (lambda s: s if s["uplink"] == "up" else None)(
        wg.api.ok("GET", "/api/v1/status")), 10) or st
    assert st["upstreams_up"] >= 1 and st["uplink"] == "up"
    assert st["msgs_in"] >= 1 and st["db_bytes"] > 0 and st["uptime_s"] >= 0
    # Several requests on one kept-alive connection.
    conn = http.client.HTTPConnection(LOOPBACK, wg.port, timeout=10)
    try:
        for path in ("/api/v1/status", "/api/v1/devices", "/api/v1/health"):
            conn.request("GET", path, headers={"Authorization": "Bearer " + ADMIN})
            r = conn.getresponse()
            body = r.read()
            assert r.status == 200, (path, r.status, body)
            json.loads(body)
    finally:
        conn.close()


def listening_addresses(port):
    """Local addresses of the TCP sockets in LISTEN state on port, from
    /proc/net/tcp and tcp6 (hex address as the kernel prints it)."""
    found = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(name).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            addr, hexport = f[1].rsplit(":", 1)
            if int(hexport, 16) == port and f[3] == "0A":  # 0A = LISTEN
                found.append((name.rsplit("/", 1)[1], addr))
    return found


def test_listens_only_on_the_bind_address(wg):
    # web.bind 127.0.0.1: one IPv4 listener on 127.0.0.1 (0100007F), nothing
    # on 0.0.0.0 or "::" (every interface).
    assert listening_addresses(wg.port) == [("tcp", "0100007F")]


def test_openapi_served_equals_file(wg):
    r = wg.api.get("/api/v1/openapi.json")
    assert r.status == 200 and r.content_type == "application/json", r
    assert r.json() == json.loads(OPENAPI_FILE.read_text())


def test_dashboard_static_files_are_open(wg):
    if not (STATIC_DIR / "index.html").exists():
        pytest.skip("web/static/index.html not written yet")
    r = wg.anon.get("/")
    assert r.status == 200 and r.content_type == "text/html", r
    for name, ctype in (("app.js", ("application/javascript", "text/javascript")),
                        ("style.css", ("text/css",))):
        if (STATIC_DIR / name).exists():
            r = wg.anon.get("/" + name)
            assert r.status == 200 and r.content_type in ctype, (name, r)
            assert r.body == (STATIC_DIR / name).read_bytes()
    # No escape from the static directory.
    for path in ("/../openapi.json", "/%2e%2e/openapi.json", "/..%2fweb.h"):
        r = wg.anon.get(path)
        assert r.status in (400, 403, 404), (path, r)


# ---------------------------------------------------------------------------
# authentication and authorisation
# ---------------------------------------------------------------------------
def test_auth_failures_and_read_only_token(wg):
    wg.pending_leaf("auth-p")
    for api, why in ((wg.anon, "no token"), (wg.api.with_token("wrong"), "wrong token"),
                     (wg.api.with_token(ADMIN[:-1]), "prefix of the token"),
                     (wg.api.with_token(ADMIN + "x"), "token plus a character"),
                     (wg.api.with_token(""), "empty token")):
        for path in ("/api/v1/status", "/api/v1/devices", "/api/v1/audit"):
            r = api.get(path)
            check_error_body(r, 401, "unauthorized")
            assert (r.header("WWW-Authenticate") or "").startswith("Bearer"), (why, path, r.headers)
    r = wg.anon.get("/api/v1/status", headers={"Authorization": "Basic " + ADMIN})
    check_error_body(r, 401, "unauthorized")
    r = wg.anon.post("/api/v1/devices/auth-p/approve")
    check_error_body(r, 401, "unauthorized")
    # The read-only token reads...
    for path in ("/api/v1/status", "/api/v1/devices", "/api/v1/devices/auth-p", "/api/v1/audit",
                 "/api/v1/certificates", "/api/v1/allowlist", "/metrics"):
        assert wg.ro.get(path).status == 200, path
    # ...and may not act.
    r = wg.ro.post("/api/v1/devices/auth-p/approve")
    conforms(r, "/api/v1/devices/{clientId}/approve", "POST", 403)
    check_error_body(r, 403, "forbidden")
    check_error_body(wg.ro.delete("/api/v1/devices/auth-p"), 403, "forbidden")
    check_error_body(wg.ro.post("/api/v1/devices/auth-p/block"), 403, "forbidden")
    assert wg.device("auth-p")["state"] == "pending"
    check_error_body(wg.ro.post("/api/v1/allowlist", json_body={"entry": "ro-*"}), 403, "forbidden")
    wg.api.ok("POST", "/api/v1/allowlist", 201, json_body={"entry": "keep-me"})
    check_error_body(wg.ro.delete("/api/v1/allowlist/keep-me"), 403, "forbidden")
    entries = [e["entry"] for e in wg.api.ok("GET", "/api/v1/allowlist")["items"]]
    assert "keep-me" in entries and "ro-*" not in entries
    # Health is open, metrics are not (open_metrics false).
    assert wg.anon.get("/api/v1/health").status == 200
    r = wg.anon.get("/metrics")
    check_error_body(r, 401, "unauthorized")
    assert (r.header("WWW-Authenticate") or "").startswith("Bearer")


def test_health_and_metrics_openness_are_configurable(web_gateway):
    wg = web_gateway(web={"open_health": False, "open_metrics": True})
    check_error_body(wg.anon.get("/api/v1/health"), 401, "unauthorized")
    assert wg.ro.get("/api/v1/health").status == 200
    r = wg.anon.get("/metrics")
    assert r.status == 200 and r.content_type == "text/plain", r
    parse_prometheus(r.text)


# ---------------------------------------------------------------------------
# bad requests
# ---------------------------------------------------------------------------
def test_bad_bodies_unknown_paths_and_methods(wg):
    api = wg.api
    cases = [
        ("invalid JSON", dict(body=b"{not json", content_type="application/json"), 400),
        ("truncated JSON", dict(body=b'{"entry": "a', content_type="application/json"), 400),
        ("missing field", dict(json_body={}), 400),
        ("wrong type", dict(json_body={"entry": 5}), 400),
        ("empty entry", dict(json_body={"entry": ""}), 400),
        ("not an object", dict(json_body=["a"]), 400),
        ("over the limit", dict(json_body={"entry": "x" * (70 * 1024)}), 413),
    ]
    for why, kw, status in cases:
        r = api.request("POST", "/api/v1/allowlist", **kw)
        assert r.status == status, (why, r)
        body = check_error_body(r, status, "payload_too_large" if status == 413 else "bad_request")
        assert body["message"], why
        conforms(r, "/api/v1/allowlist", "POST")
    # A CSV over the limit too.
    r = api.request("POST", "/api/v1/allowlist", body=("e\n" * 40000).encode(),
                    content_type="text/csv")
    check_error_body(r, 413, "payload_too_large")
    assert api.ok("GET", "/api/v1/allowlist")["total"] == 0
    # The server still works after all that.
    assert api.get("/api/v1/status").status == 200
    # Unknown paths.
    for path in ("/api/v1/nope", "/api/v2/status", "/api/v1/devices/x/frobnicate",
                 "/api/v1/devices/x/approve/more", "/api/v1", "/api/v1/statusx"):
        check_error_body(api.get(path), 404, "not_found")
    # Unknown device.
    r = api.get("/api/v1/devices/no-such-leaf")
    conforms(r, "/api/v1/devices/{clientId}", "GET", 404)
    check_error_body(r, 404, "not_found")
    check_error_body(api.post("/api/v1/devices/no-such-leaf/approve"), 404, "not_found")
    check_error_body(api.get("/api/v1/devices/no-such-leaf/certificate"), 404, "not_found")
    # Wrong methods: 405 with Allow.
    for method, path, allowed in (("PUT", "/api/v1/status", {"GET"}),
                                  ("POST", "/api/v1/status", {"GET"}),
                                  ("DELETE", "/api/v1/audit", {"GET"}),
                                  ("GET", "/api/v1/devices/x/approve", {"POST"}),
                                  ("PATCH", "/api/v1/devices/x", {"GET", "DELETE"}),
                                  ("GET", "/api/v1/allowlist/x", {"DELETE"}),
                                  ("PUT", "/api/v1/allowlist", {"GET", "POST"})):
        r = api.request(method, path)
        check_error_body(r, 405, "method_not_allowed")
        allow = {m.strip().upper() for m in (r.header("Allow") or "").split(",") if m.strip()}
        assert allowed <= allow, (method, path, r.header("Allow"))
        assert method not in allow, (method, path, r.header("Allow"))
    # Bad query parameters.
    for path in ("/api/v1/devices?limit=0", "/api/v1/devices?limit=1001",
                 "/api/v1/devices?limit=abc", "/api/v1/devices?offset=-1",
                 "/api/v1/devices?offset=1x", "/api/v1/devices?state=bogus",
                 "/api/v1/certificates?status=bogus", "/api/v1/audit?limit=-5"):
        check_error_body(api.get(path), 400, "bad_request")
    # Limit bounds that are fine.
    for path in ("/api/v1/devices?limit=1", "/api/v1/devices?limit=1000"):
        assert api.get(path).status == 200, path
    page = api.ok("GET", "/api/v1/devices")
    assert page["offset"] == 0 and page["limit"] == 50


# ---------------------------------------------------------------------------
# devices
# ---------------------------------------------------------------------------
def test_device_list_filters_and_paging(wg):
    for cid in ("line-a1", "line-a2", "line-b1"):
        wg.pending_leaf(cid)
    wg.active_leaf("press-1")
    everything = conforms(wg.api.get("/api/v1/devices"), "/api/v1/devices", "GET", 200)
    assert everything["total"] == 4 and everything["offset"] == 0 and everything["limit"] == 50
    ids = [d["client_id"] for d in everything["items"]]
    assert ids == sorted(ids) == ["line-a1", "line-a2", "line-b1", "press-1"]
    for d in everything["items"]:
        check_device(d)
    by_id = {d["client_id"]: d for d in everything["items"]}
    assert by_id["line-a1"]["state"] == "pending" and by_id["line-a1"]["certificate"] is None
    assert by_id["press-1"]["state"] == "active" and by_id["press-1"]["certificate"]
    assert by_id["press-1"]["thing_name"] == "thing-press-1"
    assert by_id["press-1"]["session"] == "active"

    def ids_of(query):
        page = conforms(wg.api.get("/api/v1/devices?" + query), "/api/v1/devices", "GET", 200)
        assert page["total"] == len(page["items"]), page
        return [d["client_id"] for d in page["items"]]
    assert ids_of("state=pending") == ["line-a1", "line-a2", "line-b1"]
    assert ids_of("state=active") == ["press-1"]
    assert ids_of("state=blocked") == []
    assert ids_of("q=line-a") == ["line-a1", "line-a2"]
    assert ids_of("q=thing-press") == ["press-1"]          # matches the thing name
    assert ids_of("q=b1&state=pending") == ["line-b1"]
    assert ids_of("q=line&state=active") == []
    assert ids_of("q=%2A") == []                           # literal, not a pattern
    # Paging: pages of 3, then 1; beyond the end, empty with the same total.
    items, total = all_pages(wg.api, "/api/v1/devices", 3)
    assert total == 4 and [d["client_id"] for d in items] == ids
    page = wg.api.ok("GET", "/api/v1/devices?offset=2&limit=1")
    assert [d["client_id"] for d in page["items"]] == ["line-b1"] and page["total"] == 4
    page = wg.api.ok("GET", "/api/v1/devices?offset=10&limit=5")
    assert page["items"] == [] and page["total"] == 4
    items, total = all_pages(wg.api, "/api/v1/devices", 2, state="pending")
    assert total == 3 and [d["client_id"] for d in items] == ["line-a1", "line-a2", "line-b1"]
    # Sorting is across the whole list, not just a page.
    assert ids_of("sort=-client_id") == ["press-1", "line-b1", "line-a2", "line-a1"]
    # state in lifecycle order (pending before active); ties by ClientId.
    assert ids_of("sort=state") == ["line-a1", "line-a2", "line-b1", "press-1"]
    assert ids_of("sort=-state") == ["press-1", "line-b1", "line-a2", "line-a1"]
    # Only press-1 has a thing name: NULLs sort first ascending, last descending.
    assert ids_of("sort=-thing_name")[0] == "press-1"
    page = wg.api.ok("GET", "/api/v1/devices?sort=-client_id&offset=0&limit=1")
    assert [d["client_id"] for d in page["items"]] == ["press-1"] and page["total"] == 4
    r = wg.api.get("/api/v1/devices?sort=address")
    assert r.status == 400 and json.loads(r.body)["error"] == "bad_request"


def test_device_lists_sort_client_ids_and_thing_names_naturally(wg):
    # leaf-10 after leaf-9, not after leaf-1; thing names the same way.
    for cid in ("nat-10", "nat-2", "nat-1", "nat-100", "nat-9"):
        wg.pending_leaf(cid)
    want = ["nat-1", "nat-2", "nat-9", "nat-10", "nat-100"]

    def ids_of(query):
        page = conforms(wg.api.get("/api/v1/devices?" + query), "/api/v1/devices", "GET", 200)
        return [d["client_id"] for d in page["items"]]
    assert ids_of("q=nat-") == want
    assert ids_of("q=nat-&sort=client_id") == want
    assert ids_of("q=nat-&sort=-client_id") == want[::-1]
    # Pages of 2 follow one another in the same order.
    items, total = all_pages(wg.api, "/api/v1/devices", 2, q="nat-")
    assert total == 5 and [d["client_id"] for d in items] == want
    items, total = all_pages(wg.api, "/api/v1/devices", 2, q="nat-", sort="-client_id")
    assert [d["client_id"] for d in items] == want[::-1]
    # Thing names: provisioned leaves get thing-<ClientId>.
    for cid in ("th-10", "th-2"):
        wg.active_leaf(cid)
    assert ids_of("q=thing-th-&sort=thing_name") == ["th-2", "th-10"]
    assert ids_of("q=thing-th-&sort=-thing_name") == ["th-10", "th-2"]


def test_status_history_keeps_the_last_hour(wg):
    r = wg.api.get("/api/v1/status/history")
    h = conforms(r, "/api/v1/status/history", "GET", 200)
    assert h["step_s"] == 10 and len(h["items"]) <= 1
    lf = wg.active_leaf("hist-1")
    tid = lf.register("fleet/hist-1/t")
    for i in range(4):
        assert lf.publish(tid, b"%d" % i, qos=1) == sn.RC_ACCEPTED
    # One sample every 10 s: the publishes show in the next one or two.
    assert wait_until(lambda: sum(x["in"] for x in wg.api.ok(
        "GET", "/api/v1/status/history")["items"]) >= 4, 25)
    h = conforms(wg.api.get("/api/v1/status/history"), "/api/v1/status/history", "GET", 200)
    ats = [x["at"] for x in h["items"]]
    assert ats == sorted(ats) and all(b - a >= 9 for a, b in zip(ats, ats[1:]))
    assert ats[-1] <= time.time() + 1
    # Read-only and no other method.
    assert wg.api.get("/api/v1/status/history", token=READ).status == 200
    conforms(wg.api.get("/api/v1/status/history", token=None), "/api/v1/status/history", "GET",
             401)
    assert wg.api.post("/api/v1/status/history", {}).status == 405


def test_device_detail_subscriptions_and_certificate(wg):
    wg.pending_leaf("det-p")
    lf = wg.active_leaf("det-1")
    granted, _, rc = lf.subscribe("cmd/det-1/#", qos=1)
    assert rc == sn.RC_ACCEPTED and granted == 1
    tid = lf.register("fleet/det-1/t")
    for i in range(3):
        assert lf.publish(tid, b"%d" % i, qos=1) == sn.RC_ACCEPTED
    r = wg.api.get("/api/v1/devices/det-1")
    d = check_device(conforms(r, "/api/v1/devices/{clientId}", "GET", 200), detail=True)
    assert d["subscriptions"] == [{"filter": "cmd/det-1/#", "qos": 1}]
    assert d["client_id"] == "det-1" and d["thing_name"] == "thing-det-1"
    assert d["state"] == "active" and d["session"] == "active"
    assert d["bound_addr"] == "127.0.0.1"
    assert d["address"] == "%s:%d" % lf.address
    assert d["msgs_in"] >= 3 and d["queued"] == 0
    assert d["first_seen"] <= d["last_seen"] <= time.time() + 5
    listed = wg.api.ok("GET", "/api/v1/devices?q=det-1")["items"][0]
    assert listed["subscriptions"] == 1
    # Its session: the rate over the last minute, the last publish, the
    # keep-alive it asked for, and one more reconnect after a new CONNECT.
    assert 0 < d["rate_in"] <= 3 and d["rate_out"] == 0
    assert time.time() - 5 <= d["last_message_at"] <= time.time() + 1
    assert d["keepalive_s"] == 60
    before = d["reconnects"]
    lf.disconnect()
    assert lf.connect(keepalive=45) == sn.RC_ACCEPTED
    d = conforms(wg.api.get("/api/v1/devices/det-1"), "/api/v1/devices/{clientId}", "GET", 200)
    assert d["reconnects"] == before + 1 and d["keepalive_s"] == 45
    # A device without a session record has none of them.
    p = conforms(wg.api.get("/api/v1/devices/det-p"), "/api/v1/devices/{clientId}", "GET", 200)
    assert p["last_message_at"] is None and p["rate_in"] == 0
    # The certificate: PEM, the one the registry holds, the one in the object.
    r = wg.api.get("/api/v1/devices/det-1/certificate")
    conforms(r, "/api/v1/devices/{clientId}/certificate", "GET", 200)
    assert r.content_type == "application/x-pem-file", r.headers
    pem = r.text
    assert pem.startswith("-----BEGIN CERTIFICATE-----") and pem.rstrip().endswith(
        "-----END CERTIFICATE-----")
    assert "PRIVATE KEY" not in pem
    fp = pem_fingerprint(pem)
    assert d["certificate"]["fingerprint"].lower() == fp
    rows = registry_certs(wg.reg, "det-1")
    assert [(r["cert_id"], r["status"]) for r in rows] == [(d["certificate"]["cert_id"],
                                                            CERT_ACTIVE)]
    assert rows[0]["fingerprint"].lower() == fp
    assert d["certificate"]["not_after"] > time.time()
    # A pending device has none.
    check_error_body(wg.api.get("/api/v1/devices/det-p/certificate"), 404, "not_found")
    # No answer anywhere carries a private key.
    for path in ("/api/v1/devices", "/api/v1/devices/det-1", "/api/v1/certificates",
                 "/api/v1/audit?limit=1000", "/api/v1/status", "/metrics",
                 "/api/v1/devices/det-1/certificate"):
        r = wg.api.get(path)
        assert r.status == 200 and b"PRIVATE KEY" not in r.body, path


# ---------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------
def test_approve_pending_leaf_then_it_connects_and_becomes_active(wg):
    lf = wg.pending_leaf("ap-1")
    assert wg.device("ap-1")["state"] == "pending"
    r = wg.api.post("/api/v1/devices/ap-1/approve")
    d = check_device(conforms(r, "/api/v1/devices/{clientId}/approve", "POST", 200))
    assert d["client_id"] == "ap-1" and d["state"] == "approved"
    r = wg.api.post("/api/v1/devices/ap-1/approve")
    conforms(r, "/api/v1/devices/{clientId}/approve", "POST", 409)
    check_error_body(r, 409, "conflict")
    assert connect_until_accepted(lf) == sn.RC_ACCEPTED
    assert wait_until(lambda: wg.device("ap-1")["state"] == "active", 10)
    d = wg.device("ap-1")
    assert d["session"] == "active" and d["certificate"]["status"] == "active"
    assert len(registry_certs(wg.reg, "ap-1")) == 1
    audit = wg.api.ok("GET", "/api/v1/audit?client_id=ap-1&limit=1000")
    acts = [a["action"] for a in audit["items"]]
    assert any("approve" in a for a in acts), acts
    # An active device is not pending any more.
    check_error_body(wg.api.post("/api/v1/devices/ap-1/approve"), 409, "conflict")


def test_block_refuses_the_next_connect_and_unblock_lets_it_back(wg):
    lf = wg.active_leaf("blk-1")
    r = wg.api.post("/api/v1/devices/blk-1/block")
    d = check_device(conforms(r, "/api/v1/devices/{clientId}/block", "POST", 200))
    assert d["state"] == "blocked"
    assert lf.connect() == sn.RC_NOT_SUPPORTED
    other = wg.leaf("blk-1")               # a fresh socket, the same box
    assert other.connect() == sn.RC_NOT_SUPPORTED
    assert wg.api.ok("GET", "/api/v1/status")["devices"]["blocked"] == 1
    r = wg.api.post("/api/v1/devices/blk-1/unblock")
    d = check_device(conforms(r, "/api/v1/devices/{clientId}/unblock", "POST", 200))
    assert d["state"] != "blocked"
    r = wg.api.post("/api/v1/devices/blk-1/unblock")
    conforms(r, "/api/v1/devices/{clientId}/unblock", "POST", 409)
    check_error_body(r, 409, "conflict")
    assert connect_until_accepted(lf) == sn.RC_ACCEPTED
    assert wait_until(lambda: wg.device("blk-1")["state"] == "active", 10)
    # Still the one certificate: blocking is not re-provisioning.
    assert len(registry_certs(wg.reg, "blk-1")) == 1
    acts = [a["action"] for a in wg.api.ok("GET", "/api/v1/audit?client_id=blk-1")["items"]]
    assert any("unblock" in a for a in acts) and any(
        "block" in a and "unblock" not in a for a in acts), acts
    check_error_body(wg.api.post("/api/v1/devices/nobody/block"), 404, "not_found")


def test_reprovision_supersedes_and_issues_exactly_one_new_certificate(wg):
    lf = wg.active_leaf("rep-1")
    old = wg.device("rep-1")["certificate"]
    r = wg.api.post("/api/v1/devices/rep-1/reprovision")
    d = check_device(conforms(r, "/api/v1/devices/{clientId}/reprovision", "POST", 200))
    assert d["certificate"] is None or d["certificate"]["cert_id"] != old["cert_id"]
    sup = wg.api.ok("GET", "/api/v1/certificates?status=superseded")["items"]
    assert [c["cert_id"] for c in sup if c["client_id"] == "rep-1"] == [old["cert_id"]]
    assert lf.disconnect() is not None
    assert connect_until_accepted(lf) == sn.RC_ACCEPTED
    assert wait_until(lambda: (wg.device("rep-1")["certificate"] or {}).get("cert_id")
                      not in (None, old["cert_id"]), 15), wg.device("rep-1")
    new = wg.device("rep-1")["certificate"]
    certs = [c for c in wg.api.ok("GET", "/api/v1/certificates?limit=1000")["items"]
             if c["client_id"] == "rep-1"]
    assert len(certs) == 2, certs
    assert sorted(c["status"] for c in certs) == ["active", "superseded"]
    by_status = {c["status"]: c for c in certs}
    assert by_status["superseded"]["cert_id"] == old["cert_id"]
    assert by_status["active"]["cert_id"] == new["cert_id"] != old["cert_id"]
    rows = registry_certs(wg.reg, "rep-1")
    assert len(rows) == 2 and sorted(r["status"] for r in rows) == [CERT_ACTIVE, CERT_SUPERSEDED]
    # Reconnects after that issue nothing more.
    for _ in range(3):
        assert lf.disconnect() is not None
        assert connect_until_accepted(lf) == sn.RC_ACCEPTED
    assert len(registry_certs(wg.reg, "rep-1")) == 2
    audit = wg.api.ok("GET", "/api/v1/audit?client_id=rep-1&limit=1000")
    acts = [a["action"] for a in audit["items"]]
    assert any("reprovision" in a for a in acts), acts
    assert wg.device("rep-1")["state"] == "active"


def test_release_frees_the_address_binding(wg):
    lf = wg.active_leaf("rel-1")
    assert wg.device("rel-1")["bound_addr"] == "127.0.0.1"
    assert wg.leaf("rel-1", local_ip="127.0.0.2").connect() == sn.RC_NOT_SUPPORTED
    r = wg.api.post("/api/v1/devices/rel-1/release")
    d = check_device(conforms(r, "/api/v1/devices/{clientId}/release", "POST", 200))
    assert d["bound_addr"] == ""
    assert lf.disconnect() is not None
    moved = wg.leaf("rel-1", local_ip="127.0.0.2")
    assert connect_until_accepted(moved) == sn.RC_ACCEPTED
    assert wait_until(lambda: wg.device("rel-1")["bound_addr"] == "127.0.0.2", 5), \
        wg.device("rel-1")
    assert len(registry_certs(wg.reg, "rel-1")) == 1
    acts = [a["action"] for a in wg.api.ok("GET", "/api/v1/audit?client_id=rel-1")["items"]]
    assert any("release" in a for a in acts), acts


def test_delete_decommissions_and_keeps_the_audit(wg):
    lf = wg.active_leaf("dec-1")
    cert = wg.device("dec-1")["certificate"]
    audit_before = wg.api.ok("GET", "/api/v1/audit?client_id=dec-1&limit=1000")
    r = wg.api.delete("/api/v1/devices/dec-1")
    d = check_device(conforms(r, "/api/v1/devices/{clientId}", "DELETE", 200))
    assert d["state"] == "revoked" and d["certificate"] is None
    d = wg.device("dec-1")          # the record stays, revoked
    assert d["state"] == "revoked" and d["session"] in ("none", "disconnected")
    inactive = wg.api.ok("GET", "/api/v1/certificates?status=inactive")["items"]
    assert [c["cert_id"] for c in inactive if c["client_id"] == "dec-1"] == [cert["cert_id"]]
    assert [r["status"] for r in registry_certs(wg.reg, "dec-1")] == [CERT_INACTIVE]
    check_error_body(wg.api.get("/api/v1/devices/dec-1/certificate"), 404, "not_found")
    audit_after = wg.api.ok("GET", "/api/v1/audit?client_id=dec-1&limit=1000")
    assert audit_after["total"] > audit_before["total"]
    old_ids = {a["id"] for a in audit_before["items"]}
    assert old_ids <= {a["id"] for a in audit_after["items"]}
    # A revoked leaf is refused.
    assert lf.connect() == sn.RC_NOT_SUPPORTED
    assert wg.api.ok("GET", "/api/v1/status")["devices"]["revoked"] == 1
    check_error_body(wg.api.delete("/api/v1/devices/nobody"), 404, "not_found")


# ---------------------------------------------------------------------------
# allowlist, certificates, audit
# ---------------------------------------------------------------------------
def test_allowlist_add_list_delete_and_csv_import(wg):
    api = wg.api
    lst = conforms(api.get("/api/v1/allowlist"), "/api/v1/allowlist", "GET", 200)
    assert lst == {"items": [], "total": 0}
    now = time.time()
    r = api.post("/api/v1/allowlist", json_body={"entry": "line1-*"})
    e = conforms(r, "/api/v1/allowlist", "POST", 201)
    assert e["entry"] == "line1-*" and abs(e["added_at"] - now) < 60
    r = api.post("/api/v1/allowlist", json_body={"entry": "line1-*"})
    conforms(r, "/api/v1/allowlist", "POST", 409)
    check_error_body(r, 409, "conflict")
    api.ok("POST", "/api/v1/allowlist", 201, json_body={"entry": "hall b*"})
    lst = api.ok("GET", "/api/v1/allowlist")
    assert lst["total"] == 2 and {x["entry"] for x in lst["items"]} == {"line1-*", "hall b*"}
    # CSV: a header line, a repeat, an entry already there, CRLF line ends.
    csv = "entry\r\npress-7\r\nline3-*\r\npress-7\r\nline1-*\r\n"
    r = api.request("POST", "/api/v1/allowlist", body=csv, content_type="text/csv")
    res = conforms(r, "/api/v1/allowlist", "POST", 200)
    assert res == {"added": 2, "skipped": 2}, res
    r = api.request("POST", "/api/v1/allowlist", body="new-1\npress-7\n",
                    content_type="text/csv; charset=utf-8")
    assert conforms(r, "/api/v1/allowlist", "POST", 200) == {"added": 1, "skipped": 1}
    lst = api.ok("GET", "/api/v1/allowlist")
    assert {x["entry"] for x in lst["items"]} == {"line1-*", "hall b*", "press-7", "line3-*",
                                                  "new-1"}
    assert lst["total"] == 5
    # Delete, URL-encoded.
    r = api.delete("/api/v1/allowlist/" + quote("line1-*"))
    conforms(r, "/api/v1/allowlist/{entry}", "DELETE", 204)
    assert r.body == b""
    r = api.delete("/api/v1/allowlist/" + quote("hall b*"))
    assert r.status == 204, r
    r = api.delete("/api/v1/allowlist/" + quote("line1-*"))
    conforms(r, "/api/v1/allowlist/{entry}", "DELETE", 404)
    check_error_body(r, 404, "not_found")
    assert {x["entry"] for x in api.ok("GET", "/api/v1/allowlist")["items"]} == {
        "press-7", "line3-*", "new-1"}


def test_allowlist_entry_with_a_slash_is_url_encoded(wg):
    wg.api.ok("POST", "/api/v1/allowlist", 201, json_body={"entry": "site/a*"})
    r = wg.api.delete("/api/v1/allowlist/" + quote("site/a*"))
    assert r.status == 204, r
    assert wg.api.ok("GET", "/api/v1/allowlist")["total"] == 0


def test_allowlist_entries_added_through_the_api_admit_leaves(web_gateway):
    wg = web_gateway(policy="allowlist")
    assert wg.leaf("line9-01").connect() == sn.RC_NOT_SUPPORTED
    wg.api.ok("POST", "/api/v1/allowlist", 201, json_body={"entry": "line9-*"})
    assert connect_until_accepted(wg.leaf("line9-01")) == sn.RC_ACCEPTED
    r = wg.api.delete("/api/v1/allowlist/" + quote("line9-*"))
    assert r.status == 204, r
    assert wg.leaf("line9-02").connect() == sn.RC_NOT_SUPPORTED


def test_certificates_list_and_orphaned_filter(wg):
    wg.active_leaf("crt-1")
    wg.active_leaf("crt-2")
    lst = conforms(wg.api.get("/api/v1/certificates"), "/api/v1/certificates", "GET", 200)
    assert lst["total"] == 2 and lst["offset"] == 0 and lst["limit"] == 50
    for c in lst["items"]:
        assert set(c) == CERT_KEYS and c["status"] == "active"
        assert c["client_id"] in ("crt-1", "crt-2")
    assert wg.api.ok("GET", "/api/v1/certificates?status=orphaned") == {
        "items": [], "total": 0, "offset": 0, "limit": 50}
    # An orphaned certificate as a crash in the middle of a run leaves one
    # (written straight into the registry).
    now = int(time.time())
    con = sqlite3.connect(str(wg.reg), timeout=10)
    try:
        dev = con.execute("SELECT id FROM devices WHERE client_id = 'crt-1'").fetchone()[0]
        con.execute("INSERT INTO certificates (cert_id, device_id, status, pem, not_after,"
                    " fingerprint, reason, created_at, updated_at) VALUES"
                    " ('orphan-0001', ?, ?, '-----BEGIN CERTIFICATE-----\nAA==\n"
                    "-----END CERTIFICATE-----\n', ?, ?, 'crashed before registration', ?, ?)",
                    (dev, CERT_ORPHANED, now + 86400, "ab" * 32, now + 5, now + 5))
        con.commit()
    finally:
        con.close()
    r = wg.api.get("/api/v1/certificates?status=orphaned")
    orph = conforms(r, "/api/v1/certificates", "GET", 200)
    assert orph["total"] == 1 and len(orph["items"]) == 1
    c = orph["items"][0]
    assert c["cert_id"] == "orphan-0001" and c["client_id"] == "crt-1"
    assert c["status"] == "orphaned" and c["reason"] == "crashed before registration"
    assert c["fingerprint"] == "ab" * 32
    assert wg.api.ok("GET", "/api/v1/certificates?status=active")["total"] == 2
    everything = wg.api.ok("GET", "/api/v1/certificates")
    assert everything["total"] == 3
    assert everything["items"][0]["cert_id"] == "orphan-0001"        # newest first
    items, total = all_pages(wg.api, "/api/v1/certificates", 2)
    assert total == 3 and [c["cert_id"] for c in items] == [
        c["cert_id"] for c in everything["items"]]
    # The device still has its one active certificate.
    assert wg.device("crt-1")["certificate"]["status"] == "active"


def test_audit_newest_first_and_paging(wg):
    wg.active_leaf("aud-1")
    wg.pending_leaf("aud-2")
    wg.api.ok("POST", "/api/v1/devices/aud-1/block")
    wg.api.ok("POST", "/api/v1/devices/aud-1/unblock")
    wg.api.ok("POST", "/api/v1/devices/aud-2/approve")
    full = conforms(wg.api.get("/api/v1/audit?limit=1000"), "/api/v1/audit", "GET", 200)
    items = full["items"]
    assert full["total"] == len(items) >= 6
    for a in items:
        assert set(a) == AUDIT_KEYS, a
        assert abs(a["at"] - time.time()) < 300
    ids = [a["id"] for a in items]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids)
    assert [a["at"] for a in items] == sorted((a["at"] for a in items), reverse=True)
    # The newest entry is the last command, done by the API's admin.
    assert items[0]["client_id"] == "aud-2" and "approve" in items[0]["action"]
    assert "api" in items[0]["actor"], items[0]
    paged, total = all_pages(wg.api, "/api/v1/audit", 3)
    assert total == full["total"] and [a["id"] for a in paged] == ids
    one = wg.api.ok("GET", "/api/v1/audit?client_id=aud-1&limit=1000")
    assert one["total"] == len(one["items"]) == sum(1 for a in items if a["client_id"] == "aud-1")
    assert all(a["client_id"] == "aud-1" for a in one["items"])
    page = wg.api.ok("GET", "/api/v1/audit?client_id=aud-1&offset=1&limit=2")
    assert [a["id"] for a in page["items"]] == [a["id"] for a in one["items"][1:3]]
    assert wg.api.ok("GET", "/api/v1/audit?client_id=nobody")["total"] == 0


# ---------------------------------------------------------------------------
# the document and the routes cannot drift
# ---------------------------------------------------------------------------
def sample_value(schema):
    s = schema
    if "enum" in s:
        return s["enum"][0]
    if s.get("type") == "integer":
        return s.get("default", s.get("minimum", 1))
    return "cov"


def test_every_documented_route_answers(wg):
    wg.active_leaf("cov-a")
    wg.pending_leaf("cov-del")
    wg.api.ok("POST", "/api/v1/devices/cov-del/psk", 201)   # a key for DELETE .../psk to revoke
    wg.api.ok("POST", "/api/v1/allowlist", 201, json_body={"entry": "cov-entry"})
    ops = openapi_operations(DOC)
    assert len(ops) >= 20
    # Destructive operations last, so the others still find their subjects.
    ops.sort(key=lambda o: o[1] == "DELETE")
    bodies = []
    tried = []
    for path, method, op in ops:
        params = list(DOC["paths"][path].get("parameters", [])) + list(op.get("parameters", []))
        params = [DOC["components"]["parameters"][p["$ref"].rsplit("/", 1)[1]]
                  if "$ref" in p else p for p in params]
        url = path
        query = []
        for p in params:
            if p["in"] == "path":
                val = {"clientId": "cov-del" if method == "DELETE" else "cov-a",
                       "entry": "cov-entry"}[p["name"]]
                url = url.replace("{%s}" % p["name"], quote(val))
            elif p["in"] == "query" and p["name"] != "token":
                v = sample_value(p["schema"])
                if p["name"] == "q":
                    v = "cov"
                query.append("%s=%s" % (p["name"], quote(str(v))))
        if query:
            url += "?" + "&".join(query)
        if "101" in op["responses"]:
            ws = WebSocket(wg.port, url)          # raises unless 101
            ws.send_json({"token": ADMIN})
            assert ws.recv_json(timeout=5)["type"] == "hello"
            ws.close()
            tried.append((method, url, 101))
            continue
        kw = {}
        rb = op.get("requestBody")
        if rb:
            kw = dict(json_body={"entry": "cov-new"})
        r = wg.api.request(method, url, **kw)
        tried.append((method, url, r.status))
        assert r.status not in (404, 405), "%s %s -> %r" % (method, url, r)
        assert r.status < 500, "%s %s -> %r" % (method, url, r)
        assert str(r.status) in op["responses"], \
            "%s %s answered %d, not documented" % (method, url, r.status)
        if r.content_type == "application/json" and r.body:
            errs = schema_errors(DOC, response_schema(DOC, path, method, r.status) or {}, r.json())
            assert not errs, "%s %s: %s" % (method, url, errs[:10])
        bodies.append(r.body)
        if rb and "text/csv" in rb["content"]:
            r = wg.api.request(method, url, body="entry\ncov-csv\n", content_type="text/csv")
            assert r.status in (200, 201) and str(r.status) in op["responses"], r
    assert all(b"PRIVATE KEY" not in b for b in bodies)
    # Undocumented routes do not exist.
    documented = {p for p, _, _ in ops}
    for path in ("/api/v1/nope", "/api/v1/devices/cov-a/frobnicate", "/api/v1/config",
                 "/api/v1/devices/cov-a/certificate/key", "/api/v1/devices/cov-a/key",
                 "/api/v1/allowlists", "/api/v0/status", "/metrics/x", "/api/v1/device/cov-a"):
        assert path not in documented
        r = wg.api.get(path)
        assert r.status == 404, (path, r)
        check_error_body(r, 404, "not_found")
    # Undocumented methods on documented API paths: 405 with Allow.
    for path, item in DOC["paths"].items():
        if not path.startswith("/api/v1/") or path == "/api/v1/events":
            continue
        methods = {m.upper() for m in item if m in ("get", "post", "put", "delete", "patch")}
        url = path.replace("{clientId}", "cov-a").replace("{entry}", "cov-entry")
        for m in ("PUT", "PATCH", "POST", "DELETE"):
            if m in methods:
                continue
            r = wg.api.request(m, url)
            assert r.status == 405, (m, url, r)
            allow = {x.strip().upper() for x in (r.header("Allow") or "").split(",")}
            assert methods <= allow, (m, url, r.header("Allow"))


# ---------------------------------------------------------------------------
# /metrics
# ---------------------------------------------------------------------------
def _direction(fam, labels):
    for k in ("direction", "dir"):
        if k in labels:
            return labels[k]
    n = fam.name
    if "_in_" in n or n.endswith("_in") or "_in_total" in n or "received" in n:
        return "in"
    if "_out_" in n or n.endswith("_out") or "_out_total" in n or "sent" in n:
        return "out"
    return None


def test_metrics_prometheus_text_format(wg):
    lf = wg.active_leaf("met-1")
    tid = lf.register("fleet/met-1/t")
    lf.publish(tid, b"q0", qos=0)
    assert lf.publish(tid, b"q1", qos=1) == sn.RC_ACCEPTED
    # A malformed datagram, and an HTTP 404.
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"\x05\xff\x00", wg.gw.addr)
    s.close()
    assert wg.api.get("/api/v1/nope").status == 404
    wg.api.get("/api/v1/status")
    time.sleep(0.3)
    r = wg.api.get("/metrics")
    assert r.status == 200, r
    ctype = r.header("Content-Type") or ""
    assert ctype.split(";")[0].strip() == "text/plain" and "version=0.0.4" in ctype, ctype
    assert "PRIVATE KEY" not in r.text
    fams = parse_prometheus(r.text)
    names = sorted(fams)
    info = "families: %s" % names

    def having(pred):
        return [f for f in fams.values() if pred(f)]
    # Sessions (leaves) by state.
    by_state = having(lambda f: ("session" in f.name or "lea" in f.name)
                      and f.type == "gauge" and f.label_values("state"))
    assert by_state, "no session gauge with a state label; " + info
    assert any(f.value(state="active") >= 1 for f in by_state), by_state
    # Messages in/out by QoS.
    dirs = {}
    for f in having(lambda f: f.label_values("qos")):
        for _, labels, v in f.samples:
            d = _direction(f, labels)
            if d:
                dirs.setdefault(d, {}).setdefault(labels["qos"], 0)
                dirs[d][labels["qos"]] += v
    assert "in" in dirs and "out" in dirs, "no messages in/out by qos; " + info
    assert dirs["in"].get("0", 0) >= 1 and dirs["in"].get("1", 0) >= 1, dirs
    # Malformed datagrams, drops.
    mal = having(lambda f: "malformed" in f.name and f.type == "counter")
    assert mal and sum(f.value() for f in mal) >= 1, "malformed: " + info
    assert having(lambda f: "drop" in f.name), "no drop counters; " + info
    # Provisioning runs by outcome.
    prov = having(lambda f: "provision" in f.name and (f.label_values("outcome")
                                                       or f.label_values("result")))
    assert prov, "no provisioning runs by outcome; " + info
    assert any(f.value(**{k: v}) >= 1 for f in prov for k in ("outcome", "result")
               for v in ("done", "ok", "success", "succeeded")), prov
    # Uplink reconnects.
    assert having(lambda f: ("upstream" in f.name or "uplink" in f.name)
                  and "connect" in f.name and f.type == "counter"), "uplink reconnects: " + info
    # HTTP requests by status code.
    http_f = having(lambda f: "http" in f.name and "request" in f.name and f.type == "counter")
    assert http_f, "no HTTP request counter; " + info
    # Labelled by status code or by class ("2xx"), either way.
    code_key = "code" if any(f.label_values("code") for f in http_f) else "status"
    codes = set().union(*(f.label_values(code_key) for f in http_f))
    not_found = "404" if "404" in codes else "4xx"
    assert {"200", "404"} <= codes or {"2xx", "4xx"} <= codes, codes
    assert sum(f.value(**{code_key: not_found}) for f in http_f) >= 1


# ---------------------------------------------------------------------------
# the WebSocket event stream
# ---------------------------------------------------------------------------
def _event_problems(ev):
    """What is wrong with one event (a list, empty if nothing): the common
    fields, then the schema web/openapi.json gives for its type."""
    if not isinstance(ev, dict) or not isinstance(ev.get("type"), str):
        return ["not an event: %r" % (ev,)]
    if not isinstance(ev.get("at"), int) or abs(ev["at"] / 1000.0 - time.time()) > 120:
        return ["%r: 'at' is not the time in Unix milliseconds" % (ev,)]
    return ["%r: %s" % (ev, e)
            for e in schema_errors(DOC, {"$ref": "#/components/schemas/Event"}, ev)]


def test_events_stream_after_token_message(wg):
    ws = WebSocket(wg.port, "/api/v1/events")
    events = []
    try:
        ws.send_json({"token": ADMIN})
        hello = ws.recv_json(timeout=5)
        assert hello["type"] == "hello", hello
        events.append(hello)
        lf = wg.leaf("ev-1")
        assert lf.connect() == sn.RC_CONGESTION              # pending (policy approve)
        ev, seen = ws.wait_event(lambda e: e.get("client_id") == "ev-1"
                                 and e["type"] in ("device.session", "admission"), 10)
        events += seen
        adm = [e for e in seen if e["type"] == "admission" and e["client_id"] == "ev-1"]
        if adm:
            assert adm[0]["result"] == "pending", adm
        wg.api.ok("POST", "/api/v1/devices/ev-1/approve")
        ev, seen = ws.wait_event(lambda e: e["type"] == "device.state"
                                 and e.get("client_id") == "ev-1" and e["state"] == "approved", 10)
        events += seen
        assert connect_until_accepted(lf) == sn.RC_ACCEPTED
        ev, seen = ws.wait_event(lambda e: e["type"] == "device.state"
                                 and e.get("client_id") == "ev-1" and e["state"] == "active", 15)
        events += seen
        steps = [e for e in seen if e["type"] == "provision.step"]
        assert steps, "no provision.step events before active: %r" % seen
    finally:
        ws.close()
    # Every event as the document describes it (all problems at once).
    problems = [p for e in events for p in _event_problems(e)]
    assert not problems, "events that do not match web/openapi.json:\n  " + "\n  ".join(problems)


def test_events_token_in_url_and_read_only_token(wg):
    ws = WebSocket(wg.port, "/api/v1/events?token=" + quote(READ))
    try:
        assert ws.recv_json(timeout=5)["type"] == "hello"
        wg.leaf("ev-url").connect()
        ws.wait_event(lambda e: e.get("client_id") == "ev-url"
                      and e["type"] in ("device.session", "admission"), 10)
    finally:
        ws.close()


def test_events_unauthenticated_sockets_are_closed(wg):
    t0 = time.monotonic()
    silent = WebSocket(wg.port, "/api/v1/events")
    wrong = WebSocket(wg.port, "/api/v1/events")
    badurl = None
    try:
        wrong.send_json({"token": "not-the-token"})
        # Events must not reach a socket that has not authenticated.
        wg.leaf("ev-anon").connect()
        for ws in (silent, wrong):
            got = []
            deadline = time.monotonic() + 9
            closed = False
            while time.monotonic() < deadline:
                try:
                    got.append(ws.recv(timeout=max(0.05, deadline - time.monotonic())))
                except WsClosed:
                    closed = True
                    break
                except socket.timeout:
                    continue
                except (ConnectionResetError, BrokenPipeError):
                    closed = True
                    break
            assert closed, "socket left open for 9 s"
            assert not any("hello" in d or "ev-anon" in d for _, d in got), got
        assert time.monotonic() - t0 < 10
        try:
            badurl = WebSocket(wg.port, "/api/v1/events?token=nope")
        except WsHandshakeError as e:
            assert e.status in (401, 403), e.head
        else:
            badurl.wait_closed(8)
    finally:
        silent.close()
        wrong.close()
        if badurl is not None:
            badurl.close()
