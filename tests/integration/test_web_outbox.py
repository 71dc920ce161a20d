"""Store and forward in the REST API (issue 11, docs/outbox.md): a leaf's
outbox in its device JSON (list and detail), the totals in GET
/api/v1/status, the Prometheus gauge, and the admin's DELETE
/api/v1/devices/{clientId}/outbox, which discards what waits (audited), so
that it never reaches the broker.

The gateway is the `web_gateway` of test_web_api.py (TLS mosquitto trusting
its local CA, leaves approved by an operator), with its upstream through the
cuttable TCP proxy `Link` of test_outbox.py: cutting it is the factory's
internet link going down.  Every answer is checked against web/openapi.json
(`conforms`)."""
import pytest

import mqttsn_leaf as sn
from conftest import registry_db, wait_until
from test_outbox import Link
from test_web_api import check_device, conforms, web_gateway  # noqa: F401
from webclient import check_error_body, parse_prometheus, quote

DEVICE = "/api/v1/devices/{clientId}"
DEVICES = "/api/v1/devices"
OUTBOX = "/api/v1/devices/{clientId}/outbox"
STATUS = "/api/v1/status"
OUTBOX_KEYS = {"enabled", "messages", "bytes", "in_flight", "oldest_age_s", "stored", "delivered",
               "refused_full", "dropped", "expired", "cloud_refused", "discarded"}


@pytest.fixture
def link(ca_broker):
    lk = Link(ca_broker.port)
    yield lk
    lk.close()


def through(web_gateway, link, **over):
    """A web gateway whose upstream goes through the link (short back-off)."""
    up = dict(over.pop("upstream", {}), port=link.port, backoff_base_ms=100, backoff_cap_ms=300)
    return web_gateway(upstream=up, **over)


def outbox_rows(wg):
    with registry_db(wg.reg) as con:
        return con.execute("SELECT count(*) FROM outbox").fetchone()[0]


def outbox_url(cid):
    return "/api/v1/devices/%s/outbox" % quote(cid)


def device(wg, cid):
    d = check_device(conforms(wg.api.get("/api/v1/devices/" + quote(cid)), DEVICE, "GET", 200),
                     detail=True)
    assert set(d["outbox"]) == OUTBOX_KEYS, d["outbox"]
    return d["outbox"]


def refused(r, status, code):
    """An error answer, as documented for the DELETE."""
    conforms(r, OUTBOX, "DELETE", status)
    return check_error_body(r, status, code)


def status_outbox(wg):
    st = conforms(wg.api.get(STATUS), STATUS, "GET", 200)
    assert set(st["outbox"]) == OUTBOX_KEYS | {"leaves"}, st["outbox"]
    return st


def test_a_cut_link_shows_in_the_outbox_and_an_admin_discards_it(web_gateway, link, ca_broker,
                                                                 broker_client):
    cid, topic, n = "obw-a", "fleet/obw-a/t", 5
    bc = broker_client(ca_broker)
    bc.subscribe("fleet/obw-a/#", qos=1)
    wg = through(web_gateway, link)
    lf = wg.active_leaf(cid)
    tid = lf.register(topic)
    assert lf.publish(tid, b"before", qos=1) == sn.RC_ACCEPTED
    assert [m.payload for m in bc.wait_messages(1, timeout=10)] == [b"before"]
    # Delivered: nothing waits, and the age is null.
    assert wait_until(lambda: device(wg, cid)["delivered"] == 1, 10), device(wg, cid)
    ob = device(wg, cid)
    assert ob["enabled"] is True and ob["messages"] == 0 and ob["oldest_age_s"] is None, ob
    assert ob["stored"] == 1 and ob["discarded"] == 0, ob

    link.cut()
    assert wait_until(lambda: wg.api.ok("GET", STATUS)["upstreams_up"] == 0, 10)
    payloads = [b"m%d" % i for i in range(n)]
    for p in payloads:
        assert lf.publish(tid, p, qos=1, timeout=2) == sn.RC_ACCEPTED
    ob = device(wg, cid)
    assert ob["messages"] == n and ob["in_flight"] == 0, ob
    assert ob["bytes"] == sum(len(topic) + len(p) for p in payloads), ob
    assert isinstance(ob["oldest_age_s"], int) and ob["oldest_age_s"] >= 0, ob
    assert ob["stored"] == n + 1 and ob["delivered"] == 1, ob
    assert outbox_rows(wg) == n
    # The list carries the same object.
    page = conforms(wg.api.get(DEVICES + "?q=" + cid), DEVICES, "GET", 200)
    row = [check_device(d) for d in page["items"] if d["client_id"] == cid]
    assert len(row) == 1 and row[0]["outbox"]["messages"] == n, page
    # The totals, and the gauge on /metrics.
    tot = status_outbox(wg)["outbox"]
    assert tot["enabled"] is True and tot["messages"] == n and tot["leaves"] == 1, tot
    assert tot["oldest_age_s"] is not None and tot["oldest_age_s"] >= 0, tot
    r = wg.api.get("/metrics")
    assert r.status == 200, r
    fams = parse_prometheus(r.text)
    assert fams["fleetgw_outbox_messages"].value() == n
    assert fams["fleetgw_outbox_leaves"].value() == 1

    # Only the admin token discards; an unknown device is 404.
    refused(wg.ro.delete(outbox_url(cid)), 403, "forbidden")
    refused(wg.anon.delete(outbox_url(cid)), 401, "unauthorized")
    refused(wg.api.delete(outbox_url("obw-nobody")), 404, "not_found")
    check_error_body(wg.api.get(outbox_url(cid)), 405, "method_not_allowed")
    assert device(wg, cid)["messages"] == n

    body = conforms(wg.api.delete(outbox_url(cid)), OUTBOX, "DELETE", 200)
    assert body["client_id"] == cid and body["discarded"] == n, body
    assert body["outbox"]["messages"] == 0 and body["outbox"]["discarded"] == n, body
    assert body["outbox"]["oldest_age_s"] is None, body
    audit = wg.api.ok("GET", "/api/v1/audit?client_id=%s&limit=1000" % quote(cid))["items"]
    rows = [a for a in audit if a["action"] == "operator.outbox_discard"]
    assert len(rows) == 1 and rows[0]["actor"] == "api:admin", audit
    assert str(n) in rows[0]["detail"], rows[0]
    ob = device(wg, cid)
    assert ob["messages"] == 0 and ob["bytes"] == 0 and ob["discarded"] == n, ob
    tot = status_outbox(wg)["outbox"]
    assert tot["messages"] == 0 and tot["leaves"] == 0 and tot["discarded"] == n, tot
    # Off the disk with the next group commit (outbox.commit_ms).
    assert wait_until(lambda: outbox_rows(wg) == 0, 5), outbox_rows(wg)
    # Nothing left: a second discard finds nothing, and says so.
    again = conforms(wg.api.delete(outbox_url(cid)), OUTBOX, "DELETE", 200)
    assert again["discarded"] == 0, again

    # The link comes back: the discarded messages never reach the broker;
    # the next one does, after "before" alone (per-leaf order).
    link.restore()
    assert wait_until(lambda: wg.api.ok("GET", STATUS)["upstreams_up"] >= 1, 15)
    assert lf.publish(tid, b"after", qos=1) == sn.RC_ACCEPTED
    got = bc.wait_messages(2, timeout=15, topic=topic)
    bc.expect_none(0.5, topic=topic)
    assert [m.payload for m in bc.on_topic(topic)] == [b"before", b"after"], got
    assert wait_until(lambda: device(wg, cid)["delivered"] == 2, 10), device(wg, cid)


def test_with_the_outbox_off_there_is_nothing_to_discard(web_gateway):
    wg = web_gateway(outbox={"enabled": False})
    wg.pending_leaf("obw-off")
    ob = device(wg, "obw-off")
    assert ob["enabled"] is False and ob["messages"] == 0 and ob["oldest_age_s"] is None, ob
    tot = status_outbox(wg)["outbox"]
    assert tot["enabled"] is False and tot["leaves"] == 0, tot
    body = refused(wg.api.delete(outbox_url("obw-off")), 409, "conflict")
    assert "outbox" in body["message"], body
    # An unknown device is still 404, and a read token still 403.
    refused(wg.api.delete(outbox_url("obw-nobody")), 404, "not_found")
    refused(wg.ro.delete(outbox_url("obw-off")), 403, "forbidden")
    audit = wg.api.ok("GET", "/api/v1/audit?client_id=obw-off&limit=1000")["items"]
    assert not [a for a in audit if a["action"] == "operator.outbox_discard"], audit
