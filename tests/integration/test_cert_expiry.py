"""Certificate expiry in view (issue 12, first part), against the real
gateway with its web server and the local-ca backend (the fixtures of
test_web_api.py): provisioning.local_ca.days 1 and expiry_warn_days 2, so
every certificate it issues is "expiring"; one more certificate, already
expired, is written into the registry directly.

  - the device list sorted by the certificate's not-after (devices without
    one last, both ways) and filtered by expires_within_days, the device's
    expires_in_days, the status's cert_expiry, all checked against
    web/openapi.json;
  - the gauges in the SIGUSR1 metrics line and in /metrics;
  - one log warning per certificate, not repeated by the next upkeep pass;
  - the local CA's own expiry warned about within twice the window."""
import re
import sqlite3
import time

import pytest

import mqttsn_leaf as sn  # noqa: F401  (the leaves of the fixtures)
from conftest import wait_until
from test_web_api import check_device, conforms, web_gateway, wg  # noqa: F401  (fixtures)
from webclient import parse_prometheus

UPKEEP_S = 10.0          # gateway/upkeep.h UPKEEP_INTERVAL_MS
DAY = 86400


def expiry_config(local_ca, warn_days, days=1):
    crt, key, _ = local_ca
    return {"backend": "local-ca", "thing_name_template": "thing-{client_id}",
            "expiry_warn_days": warn_days, "rotate_before_days": 0,
            "local_ca": {"cert_file": str(crt), "key_file": str(key), "create": False,
                         "days": days}}


def ids_of(wg, query):
    page = conforms(wg.api.get("/api/v1/devices?" + query), "/api/v1/devices", "GET", 200)
    for d in page["items"]:
        check_device(d)
    assert page["total"] == len(page["items"]), page
    return [d["client_id"] for d in page["items"]]


def insert_expired_cert(reg, client_id, cert_id, not_after):
    """An active certificate past its not-after, as a registry carried over
    from long ago would hold (the upkeep reads only the registry)."""
    db = sqlite3.connect(str(reg), timeout=10)
    try:
        now = int(time.time())
        with db:
            db.execute("INSERT INTO certificates(cert_id, device_id, status, pem, not_after, "
                       "fingerprint, created_at, updated_at) SELECT ?, id, 1, 'x', ?, ?, ?, ? "
                       "FROM devices WHERE client_id = ?",
                       (cert_id, not_after, "ab" * 32, now, now, client_id))
    finally:
        db.close()


def count(gw, pattern):
    return len(re.findall(pattern, gw.log_text()))


def test_expiry_sort_filter_metrics_and_warnings(web_gateway, local_ca):
    wg = web_gateway(provisioning=expiry_config(local_ca, warn_days=2))
    gw = wg.gw
    wg.pending_leaf("exp-none")          # no certificate at all
    wg.pending_leaf("exp-old")           # an expired one, written below
    expired_at = int(time.time()) - 3600
    insert_expired_cert(wg.reg, "exp-old", "cert-exp-old", expired_at)
    wg.active_leaf("exp-a")
    time.sleep(1.1)                      # not-afters have whole seconds
    wg.active_leaf("exp-b")
    a, b = wg.device("exp-a"), wg.device("exp-b")
    na_a, na_b = a["certificate"]["not_after"], b["certificate"]["not_after"]
    assert na_a < na_b
    now = time.time()
    assert now + DAY - 120 < na_a <= now + DAY + 5

    # The API: sort, filter, expires_in_days, the status.
    assert ids_of(wg, "sort=cert_not_after") == ["exp-old", "exp-a", "exp-b", "exp-none"]
    assert ids_of(wg, "sort=-cert_not_after") == ["exp-b", "exp-a", "exp-old", "exp-none"]
    assert ids_of(wg, "expires_within_days=2") == ["exp-a", "exp-b", "exp-old"]
    assert ids_of(wg, "expires_within_days=2&sort=-cert_not_after&q=exp-") == [
        "exp-b", "exp-a", "exp-old"]
    assert ids_of(wg, "expires_within_days=0") == ["exp-old"]
    assert ids_of(wg, "expires_within_days=2&state=active") == ["exp-a", "exp-b"]
    for bad in ("-1", "x", "36501"):
        r = wg.api.get("/api/v1/devices?expires_within_days=" + bad)
        assert conforms(r, "/api/v1/devices", "GET", 400)["error"] == "bad_request"
    # Whole days, rounded down: a day's validity is 1 for its first second.
    for cid, days in (("exp-a", (0, 1)), ("exp-b", (0, 1)), ("exp-old", (-1,)),
                      ("exp-none", (None,))):
        d = check_device(conforms(wg.api.get("/api/v1/devices/" + cid),
                                  "/api/v1/devices/{clientId}", "GET", 200), detail=True)
        assert d["expires_in_days"] in days, d
    st = conforms(wg.api.get("/api/v1/status"), "/api/v1/status", "GET", 200)
    ce = st["cert_expiry"]
    assert ce["warn_days"] == 2 and ce["expiring"] == 3 and ce["expired"] == 1, ce
    assert ce["soonest_not_after"] == expired_at
    assert ce["ca_not_after"] and ce["ca_not_after"] > now + 29 * DAY   # the fixture's 30 days

    # The gauges: SIGUSR1 and Prometheus.
    m = gw.metrics()
    assert m["certs_expiring"] == 3 and m["certs_expired"] == 1, m
    assert m["certs_soonest_not_after_s"] == expired_at
    assert m["ca_not_after_s"] == ce["ca_not_after"]
    r = wg.api.get("/metrics")
    assert r.status == 200
    fams = parse_prometheus(r.body.decode())
    assert fams["fleetgw_certs_expiring"].value() == 3
    assert fams["fleetgw_certs_expired"].value() == 1
    assert fams["fleetgw_certs_soonest_not_after_s"].value() == expired_at
    assert fams["fleetgw_certs_soonest_not_after_s"].type == "gauge"

    # One warning per certificate (the expired one as expired, not as
    # expiring), and the next upkeep pass repeats none.
    pats = [r"certificate \S+ of exp-a expires at \S+ \(in [01] days\)",
            r"certificate \S+ of exp-b expires at",
            r"certificate cert-exp-old of exp-old expired at"]
    assert wait_until(lambda: all(count(gw, p) for p in pats), UPKEEP_S + 5), gw.log_text()[-3000:]
    assert count(gw, r"of exp-old expires at") == 0
    time.sleep(UPKEEP_S + 1)
    assert [count(gw, p) for p in pats] == [1, 1, 1], gw.log_text()[-3000:]
    # The fixture's CA has 30 days left: beyond twice the window of 2 days.
    assert count(gw, r"the local CA's certificate") == 0


def test_local_ca_expiry_warned(web_gateway, local_ca):
    # 30 days left on the fixture's CA, within twice a window of 20 days.
    wg = web_gateway(provisioning=expiry_config(local_ca, warn_days=20, days=365))
    gw = wg.gw
    pat = r"the local CA's certificate \S+ expires at \S+ \(in (\d+) days\)"
    assert wait_until(lambda: count(gw, pat), 5), gw.log_text()[-3000:]
    assert int(re.search(pat, gw.log_text()).group(1)) in (29, 30)
    # A leaf certificate valid for a year is not expiring.
    wg.active_leaf("ca-leaf")
    st = conforms(wg.api.get("/api/v1/status"), "/api/v1/status", "GET", 200)
    assert st["cert_expiry"]["expiring"] == 0 and st["cert_expiry"]["expired"] == 0
    assert st["cert_expiry"]["soonest_not_after"] == wg.device("ca-leaf")["certificate"][
        "not_after"]
    assert ids_of(wg, "expires_within_days=20") == []
    assert ids_of(wg, "expires_within_days=400") == ["ca-leaf"]
    assert wg.device("ca-leaf")["expires_in_days"] in (364, 365)
    assert count(gw, r"certificate \S+ of ca-leaf expires") == 0
    assert count(gw, pat) == 1
