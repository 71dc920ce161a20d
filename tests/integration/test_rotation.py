"""Certificate rotation with the local CA (issue 12, docs/rotation.md), against
the real gateway with its web server (the `web_gateway` of test_web_api.py: a
TLS mosquitto that requires client certificates from the gateway's local CA)
and a real registry file:

  - POST /api/v1/devices/{clientId}/rotate: one new certificate for the same
    thing, the old one superseded with the reason and listed for clean-up,
    the upstream reconnected with the new one (the broker sees a second
    CONNECT of the thing, and with the old certificate revoked by a CRL the
    relay still works), audited; 404 and 409 where it cannot;
  - a SIGKILL at each step of the rotation (FLEETGW_TEST_CRASH_ROTATION):
    after the restart it completes, and the device has exactly two
    certificates, one active and one superseded (the CA signed two);
  - due rotation: a certificate within provisioning.rotate_before_days is
    rotated by itself, once;
  - 100 due certificates rotated within provisioning.rate_per_s, each device
    with exactly one new certificate;
  - rotation while the uplink is down: the registry switches at once, the
    upstream comes back with the new certificate when the link does."""
import http.client
import subprocess
import time

import pytest

import mqttsn_leaf as sn
from conftest import connect_until_accepted, find_metric, registry_certs, registry_db, wait_until
from test_outbox import Link
from test_web_api import conforms, web_gateway  # noqa: F401  (fixture)

CERT_ACTIVE, CERT_SUPERSEDED = 1, 3
ROTATE = "/api/v1/devices/{clientId}/rotate"
DAY = 86400


def local_prov(local_ca, **kw):
    crt, key, _ = local_ca
    p = {"backend": "local-ca", "thing_name_template": "thing-{client_id}",
         "local_ca": {"cert_file": str(crt), "key_file": str(key), "create": False}}
    days = kw.pop("days", None)
    if days is not None:
        p["local_ca"]["days"] = days
    p.update(kw)
    return p


def certs_of(reg, cid):
    """The device's certificates, oldest first, as dicts (comparable)."""
    return [dict(r) for r in registry_certs(reg, cid)]


def statuses(reg, cid):
    return [r["status"] for r in certs_of(reg, cid)]


def audit_of(reg, cid, action):
    with registry_db(reg) as con:
        return [dict(r) for r in con.execute(
            "SELECT at, actor, detail FROM audit WHERE client_id = ? AND action = ? ORDER BY id",
            (cid, action))]


def rotated(reg, cid, n=1):
    """The device's certificates once n rotations completed: n superseded,
    one active."""
    rows = certs_of(reg, cid)
    st = [r["status"] for r in rows]
    return st.count(CERT_SUPERSEDED) == n and st.count(CERT_ACTIVE) == 1 and len(rows) == n + 1


def thing_connects(broker, thing):
    return sum(1 for c, _ in broker.connections() if c == thing)


def check_rotated_once(reg, cid):
    rows = certs_of(reg, cid)
    assert [r["status"] for r in rows] == [CERT_SUPERSEDED, CERT_ACTIVE], rows
    old, new = rows
    assert old["reason"] == "rotated: replaced by %s" % new["cert_id"], old
    assert old["fingerprint"] != new["fingerprint"]
    # The CA signed exactly two certificates for it, the device kept its thing.
    assert len(audit_of(reg, cid, "cert.issued")) == 2
    with registry_db(reg) as con:
        d = con.execute("SELECT state, thing_name FROM devices WHERE client_id = ?",
                        (cid,)).fetchone()
        assert (d["state"], d["thing_name"]) == (3, "thing-" + cid)
        assert con.execute("SELECT count(*) FROM runs r JOIN devices d ON d.id = r.device_id "
                           "WHERE d.client_id = ? AND r.finished = 0", (cid,)).fetchone()[0] == 0
    return old, new


def publish_through(lf, broker_client, broker, cid, payload):
    bc = broker_client(broker)
    bc.subscribe("fleet/%s/#" % cid, qos=1)
    tid = lf.register("fleet/%s/t" % cid)
    deadline = time.monotonic() + 15
    while True:
        rc = lf.publish(tid, payload, qos=1)
        if rc == sn.RC_ACCEPTED:
            break
        assert time.monotonic() < deadline, rc
        time.sleep(0.3)
    got = bc.wait_messages(1, timeout=15, topic="fleet/%s/t" % cid)
    assert got[0].payload == payload


def test_rotate_on_request(web_gateway, local_ca, ca_broker, broker_client):
    wg = web_gateway(provisioning=local_prov(local_ca))
    lf = wg.active_leaf("rot-a")
    assert wait_until(lambda: thing_connects(ca_broker, "thing-rot-a") == 1, 10)
    first = certs_of(wg.reg, "rot-a")
    assert [r["status"] for r in first] == [CERT_ACTIVE]

    r = wg.api.post(ROTATE.replace("{clientId}", "rot-a"))
    conforms(r, ROTATE, "POST", 200)
    assert wait_until(lambda: rotated(wg.reg, "rot-a"), 15), certs_of(wg.reg, "rot-a")
    old, new = check_rotated_once(wg.reg, "rot-a")
    assert old["cert_id"] == first[0]["cert_id"]
    started = audit_of(wg.reg, "rot-a", "rotate.started")
    assert len(started) == 1 and started[0]["actor"].startswith("api:"), started
    done = audit_of(wg.reg, "rot-a", "cert.rotated")
    assert len(done) == 1 and old["cert_id"] in done[0]["detail"] and new["cert_id"] in done[0]["detail"]
    # The upstream reconnected (with the new certificate: same CN, a second
    # CONNECT of the thing), and the leaf never noticed.
    assert wait_until(lambda: thing_connects(ca_broker, "thing-rot-a") == 2, 10), \
        ca_broker.connections()
    assert "reconnecting with its new certificate" in wg.gw.log_text()
    publish_through(lf, broker_client, ca_broker, "rot-a", b"after-rotation")
    # The old one is listed for clean-up, with the reason.
    page = wg.api.ok("GET", "/api/v1/certificates?status=superseded")
    listed = [c for c in page["items"] if c["cert_id"] == old["cert_id"]]
    assert listed and listed[0]["reason"].startswith("rotated"), page
    # The device detail and the metrics.
    d = wg.device("rot-a")
    assert d["certificate"]["cert_id"] == new["cert_id"], d
    m = wg.gw.metrics()
    assert find_metric(m, "rotations_started") == 1 and find_metric(m, "rotations_done") == 1, m
    assert find_metric(m, "rotations_failed") == 0 and find_metric(m, "certs_issued") == 2, m

    # Where it cannot: unknown (404), not active (409), and the answer names why.
    r = wg.api.post(ROTATE.replace("{clientId}", "nobody"))
    conforms(r, ROTATE, "POST", 404)
    wg.pending_leaf("rot-pending")
    r = wg.api.post(ROTATE.replace("{clientId}", "rot-pending"))
    conforms(r, ROTATE, "POST", 409)
    assert "active" in r.text, r.text
    # A read-only token may not rotate.
    assert wg.ro.post(ROTATE.replace("{clientId}", "rot-a")).status == 403
    assert certs_of(wg.reg, "rot-a") == [old, new]


def test_revoked_old_certificate_no_longer_needed(web_gateway, local_ca, ca_broker, certs,
                                                   broker_client, tmp_path):
    """The broker is restarted with a CRL that revokes the old certificate:
    the upstream still connects, so it really presents the new one."""
    wg = web_gateway(provisioning=local_prov(local_ca),
                     upstream={"backoff_base_ms": 100, "backoff_cap_ms": 300})
    lf = wg.active_leaf("rot-crl")
    old = certs_of(wg.reg, "rot-crl")[0]
    wg.api.ok("POST", ROTATE.replace("{clientId}", "rot-crl"))
    assert wait_until(lambda: rotated(wg.reg, "rot-crl"), 15)
    assert wait_until(lambda: thing_connects(ca_broker, "thing-rot-crl") == 2, 10)
    crl = crls(tmp_path, local_ca, certs, old_pem(wg.reg, old["cert_id"]))
    ca_broker.stop()
    before = thing_connects(ca_broker, "thing-rot-crl")
    ca_broker.conf.write_text(ca_broker.conf.read_text() + "crlfile %s\n" % crl)
    ca_broker.start()
    assert wait_until(lambda: thing_connects(ca_broker, "thing-rot-crl") > before, 20), \
        ca_broker.log_text()[-2000:]
    publish_through(lf, broker_client, ca_broker, "rot-crl", b"new-cert-only")
    # The check is real: the old certificate is refused by this broker.
    pem_dir = tmp_path / "oldcert"
    pem_dir.mkdir()
    (pem_dir / "old.crt").write_text(old_pem(wg.reg, old["cert_id"]))
    r = subprocess.run(["openssl", "verify", "-crl_check", "-CAfile", str(local_ca[0]),
                        "-CRLfile", str(crl), str(pem_dir / "old.crt")],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "revoked" in (r.stdout + r.stderr), r


def old_pem(reg, cert_id):
    with registry_db(reg) as con:
        return con.execute("SELECT pem FROM certificates WHERE cert_id = ?",
                           (cert_id,)).fetchone()[0]


def one_crl(d, ca_crt, ca_key, revoked_pem=None):
    """A CRL of one CA (openssl ca with a throw-away database), revoking
    revoked_pem when given."""
    d.mkdir()
    (d / "index.txt").write_text("")
    (d / "crlnumber").write_text("01\n")
    cnf = d / "ca.cnf"
    cnf.write_text("[ca]\ndefault_ca = c\n[c]\ndatabase = %s\ncrlnumber = %s\n"
                   "default_md = sha256\ndefault_crl_days = 1\n"
                   % (d / "index.txt", d / "crlnumber"))

    def run(*a):
        subprocess.run(["openssl", *map(str, a)], check=True, capture_output=True)
    if revoked_pem:
        (d / "revoked.pem").write_text(revoked_pem)
        run("ca", "-config", cnf, "-cert", ca_crt, "-keyfile", ca_key, "-revoke",
            d / "revoked.pem")
    run("ca", "-config", cnf, "-cert", ca_crt, "-keyfile", ca_key, "-gencrl", "-out",
        d / "crl.pem")
    return (d / "crl.pem").read_text()


def crls(tmp_path, local_ca, certs, revoked_pem):
    """One file with a CRL for each CA the broker trusts (with crlfile, every
    client certificate's issuer needs one): the local CA's revokes the old
    certificate, the test CA's (the broker clients') is empty."""
    text = one_crl(tmp_path / "crl-local", local_ca[0], local_ca[1], revoked_pem)
    text += one_crl(tmp_path / "crl-test", certs.ca_crt, certs.ca_key)
    out = tmp_path / "crls.pem"
    out.write_text(text)
    return out


STEPS = ["key_ready", "cert_received", "registered", "done"]


@pytest.mark.parametrize("step", STEPS)
def test_sigkill_at_each_rotation_step(web_gateway, local_ca, ca_broker, broker_client, step):
    wg = web_gateway(provisioning=local_prov(local_ca))
    gw = wg.gw
    lf = wg.active_leaf("rot-k")
    gw.terminate()
    gw.env = dict(gw.env or {}, FLEETGW_TEST_CRASH_ROTATION=step)
    gw.start()
    wg.api.wait_up(10, gw.proc)
    # The hook may kill the process before the answer is out (key_ready comes
    # off the loop's thread pool within milliseconds): either is fine.
    try:
        r = wg.api.post(ROTATE.replace("{clientId}", "rot-k"))
        assert r.status == 200, r
    except (http.client.HTTPException, OSError):
        pass
    gw.proc.wait(15)
    assert gw.proc.returncode == -9, gw.proc.returncode
    assert "FLEETGW_TEST_CRASH_ROTATION=%s: killing the process" % step in gw.log_text()
    # Restarted with the hook still armed: the resumed run does not pass the
    # step it died at again.
    gw.start()
    wg.api.wait_up(10, gw.proc)
    assert wait_until(lambda: rotated(wg.reg, "rot-k"), 20), certs_of(wg.reg, "rot-k")
    check_rotated_once(wg.reg, "rot-k")
    assert gw.proc.poll() is None
    if step != "done":
        assert "resuming rotation run" in gw.log_text()
    assert connect_until_accepted(lf) == sn.RC_ACCEPTED
    publish_through(lf, broker_client, ca_broker, "rot-k", b"after-" + step.encode())


def test_due_rotation_happens_once(web_gateway, local_ca, ca_broker, broker_client):
    # Provisioned with a one-day certificate and no automatic rotation...
    wg = web_gateway(provisioning=local_prov(local_ca, days=1, rotate_before_days=0))
    gw = wg.gw
    lf = wg.active_leaf("rot-due")
    first = certs_of(wg.reg, "rot-due")[0]
    assert first["not_after"] < time.time() + DAY + 60
    gw.terminate()
    # ...then restarted with 30-day certificates, rotated within 2 days.
    gw.config["provisioning"] = local_prov(local_ca, days=30, rotate_before_days=2)
    gw.start()
    wg.api.wait_up(10, gw.proc)
    assert wait_until(lambda: rotated(wg.reg, "rot-due"), 20), certs_of(wg.reg, "rot-due")
    old, new = check_rotated_once(wg.reg, "rot-due")
    assert new["not_after"] > time.time() + 29 * DAY
    started = audit_of(wg.reg, "rot-due", "rotate.started")
    assert len(started) == 1 and started[0]["actor"] == "gateway", started
    assert "due" in started[0]["detail"], started
    # Not again: the new one is not due (two more scans).
    time.sleep(21)
    assert certs_of(wg.reg, "rot-due") == [old, new]
    assert connect_until_accepted(lf) == sn.RC_ACCEPTED
    publish_through(lf, broker_client, ca_broker, "rot-due", b"due-done")


def test_a_hundred_due_rotations_within_the_rate(web_gateway, local_ca):
    wg = web_gateway(policy="open", provisioning=local_prov(local_ca, days=1,
                                                            rotate_before_days=0),
                     lan={"connack_timeout_ms": 10000})
    gw = wg.gw
    ids = ["rot-%03d" % i for i in range(100)]
    for cid in ids:
        assert connect_until_accepted(gw.leaf(cid), timeout=30) == sn.RC_ACCEPTED
    gw.terminate()
    rate = 20
    gw.config["provisioning"] = local_prov(local_ca, days=30, rotate_before_days=2,
                                           rate_per_s=rate, rotate_max_running=16)
    gw.start()
    wg.api.wait_up(10, gw.proc)

    def all_done():
        with registry_db(wg.reg) as con:
            return con.execute("SELECT count(*) FROM certificates WHERE status = 3").fetchone()[0]
    assert wait_until(lambda: all_done() == 100, 60), all_done()
    with registry_db(wg.reg) as con:
        per = con.execute("SELECT d.client_id, sum(c.status = 1), sum(c.status = 3), count(*) "
                          "FROM devices d JOIN certificates c ON c.device_id = d.id "
                          "GROUP BY d.id").fetchall()
        starts = [r[0] for r in con.execute(
            "SELECT at FROM audit WHERE action = 'rotate.started' ORDER BY id")]
    assert len(per) == 100 and all(tuple(r[1:]) == (1, 1, 2) for r in per), per
    assert len(starts) == 100
    # Within the rate: a token bucket of rate_per_s with one second's burst.
    span = starts[-1] - starts[0]
    assert span >= (100 - 2 * rate) / rate - 1, (span, starts)
    per_second = {}
    for t in starts:
        per_second[t] = per_second.get(t, 0) + 1
    assert max(per_second.values()) <= 2 * rate, per_second
    m = gw.metrics()
    assert find_metric(m, "rotations_done") == 100, m
    assert find_metric(m, "rotations_failed") == 0, m


def test_rotation_while_the_uplink_is_down(web_gateway, local_ca, ca_broker, broker_client):
    link = Link(ca_broker.port)
    try:  # noqa: SIM105
        wg = web_gateway(provisioning=local_prov(local_ca),
                         upstream={"port": link.port, "backoff_base_ms": 100,
                                   "backoff_cap_ms": 300})
        lf = wg.active_leaf("rot-down")
        assert wait_until(lambda: thing_connects(ca_broker, "thing-rot-down") == 1, 10)
        link.cut()
        assert wait_until(lambda: find_metric(wg.gw.metrics(), "upstream_failures") >= 1, 10)
        wg.api.ok("POST", ROTATE.replace("{clientId}", "rot-down"))
        # local-ca needs no uplink: the registry switches at once.
        assert wait_until(lambda: rotated(wg.reg, "rot-down"), 15)
        check_rotated_once(wg.reg, "rot-down")
        link.restore()
        assert wait_until(lambda: thing_connects(ca_broker, "thing-rot-down") >= 2, 20)
        publish_through(lf, broker_client, ca_broker, "rot-down", b"link-back")
    finally:
        link.close()
