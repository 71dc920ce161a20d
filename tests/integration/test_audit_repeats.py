"""Two things an operator reads that a peer or a restart used to distort
(issue 14, "Audit and metrics"), against the real gateway with its web
server (the `web_gateway` of test_web_api.py):

  - a blocked leaf that keeps retrying leaves one admission.refused row per
    reason and interval (db/store.h STORE_AUDIT_REPEAT_S), and the count of
    the repeats when the interval ends (here: at the graceful stop), not one
    row per try;
  - fleetgw_uplink_reconnects_total counts reconnects only: 0 after a fresh
    start with three leaves connected, three once the broker came back."""
import time

import mqttsn_leaf as sn
from conftest import connect_until_accepted, registry_db, wait_until
from test_web_api import web_gateway  # noqa: F401  (fixture)
from webclient import parse_prometheus


def refusals(reg, cid):
    with registry_db(reg) as con:
        return [r[0] for r in con.execute(
            "SELECT coalesce(detail, '') FROM audit WHERE client_id = ? AND "
            "action = 'admission.refused' ORDER BY id", (cid,))]


def test_a_retrying_blocked_leaf_leaves_one_row_and_a_count(web_gateway):
    wg = web_gateway()
    lf = wg.active_leaf("rep-a")
    wg.api.ok("POST", "/api/v1/devices/rep-a/block")
    for _ in range(30):
        rc = lf.connect()
        assert rc not in (None, sn.RC_ACCEPTED), rc
    rows = refusals(wg.reg, "rep-a")
    assert len(rows) == 1, rows
    assert wg.gw.terminate() == 0
    rows = refusals(wg.reg, "rep-a")
    assert len(rows) == 2, rows
    assert rows[1].startswith("repeated 29 more times in ") and rows[1].endswith(rows[0]), rows


def reconnects(wg):
    r = wg.api.get("/metrics")
    assert r.status == 200, r
    return parse_prometheus(r.body.decode())["fleetgw_uplink_reconnects_total"].value()


def test_reconnects_count_only_reconnects(web_gateway, ca_broker):
    wg = web_gateway(upstream={"backoff_base_ms": 100, "backoff_cap_ms": 300})
    for cid in ("rc-1", "rc-2", "rc-3"):
        wg.active_leaf(cid)
    assert wait_until(lambda: len({c for c, _ in ca_broker.connections()
                                   if c.startswith("thing-rc-")}) == 3, 10)
    assert reconnects(wg) == 0
    ca_broker.stop()
    time.sleep(0.5)
    ca_broker.start()
    assert wait_until(lambda: reconnects(wg) == 3, 20), reconnects(wg)
