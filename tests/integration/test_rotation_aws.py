"""Certificate rotation with AWS IoT (issue 12, docs/rotation.md §3), against
the AWS IoT Core simulator configured from deploy/aws/ (the provisioning and
rotation templates, the policies, and the rotation hook's rule): the
gateway sends CreateCertificateFromCsr and RegisterThing with the rotation
template over the device's OWN connection, with its current certificate,
then reconnects with the new one.  The simulator counts every certificate
of the thing, so "one new certificate" is checked where it is issued.

  - end to end: one new certificate, ACTIVE on the same thing, requested by
    the device's connection with its old certificate; the old one superseded
    in the registry (still ACTIVE in the cloud until the operator retires
    it, which then does not disturb the gateway); the leaf never sees the
    replies; the relay goes on;
  - a SIGKILL at each step: the rotation completes after the restart, with
    one active certificate in the registry and the cloud's other new
    certificates all listed (orphaned) for clean-up;
  - the hook refusing: the rotation fails, the old certificate stays;
  - while the uplink is down the rotation waits, then completes;
  - due rotation (the cloud's certificates expire within the window);
  - without provisioning.aws.rotation_template: 409."""
import signal
import time

import pytest

import mqttsn_leaf as sn
from conftest import LOOPBACK, connect_until_accepted, find_metric, free_port, registry_db, \
    wait_until
from test_outbox import Link
from test_provisioning_aws import REPO, Observer, Sim, aws_gateway, pki  # noqa: F401
from test_rotation import certs_of, statuses
from webclient import Api

ROT_TEMPLATE = REPO / "deploy" / "aws" / "rotation-template.json"
ADMIN = "rotation-admin-token-0123456789abcdef"
CERT_ACTIVE, CERT_ORPHANED, CERT_SUPERSEDED = 1, 2, 3


def rot_sim(pki, tmp_path, *extra, hook="attached-thing"):
    return Sim(pki, tmp_path, ["--template", "fleetgw-rotation=%s" % ROT_TEMPLATE,
                               "--hook", "fleetgw-rotation=%s" % hook] + list(extra))


def rot_gateway(gateway, sim, pki, tmp_path, env=None, rotation=True, **kw):
    port = free_port()
    prov = kw.pop("provisioning", {})
    aws = dict(prov.pop("aws", {}))
    if rotation:
        aws["rotation_template"] = "fleetgw-rotation"
    prov["aws"] = aws
    prov.setdefault("rotate_before_days", 0)
    gw = aws_gateway(gateway, sim, pki, tmp_path,
                     env=dict(env or {}, FLEETGW_ADMIN_TOKEN=ADMIN),
                     provisioning=prov,
                     web={"enabled": True, "bind": LOOPBACK, "port": port,
                          "admin_token_env": "FLEETGW_ADMIN_TOKEN", "open_health": True},
                     **kw)
    gw.api = Api(port, ADMIN)
    gw.api.wait_up(10, gw.proc)
    gw.reg = tmp_path / "reg.db"  # aws_gateway's registry
    return gw




def thing(sim, name):
    return sim.api("GET", "/thing?name=" + name)


def rotate(gw, cid, status=200):
    return gw.api.ok("POST", "/api/v1/devices/%s/rotate" % cid, status=status)


def active_leaf(gw, cid):
    lf = gw.leaf(cid)
    assert connect_until_accepted(lf) == sn.RC_ACCEPTED
    assert wait_until(lambda: statuses(gw.reg, cid) == [CERT_ACTIVE], 15)
    return lf


def publish_seen(lf, sim, pki, cid, payload):
    topic = "fleet/fleetgw-%s/t" % cid
    obs = Observer(sim, pki, topic)
    try:
        tid = lf.register(topic)
        deadline = time.monotonic() + 15
        while lf.publish(tid, payload, qos=1) != sn.RC_ACCEPTED:
            assert time.monotonic() < deadline
            time.sleep(0.3)
        assert (topic, payload) in obs.wait(1, timeout=15)
    finally:
        obs.close()


def test_rotation_over_the_device_connection(gateway, pki, tmp_path):
    sim = rot_sim(pki, tmp_path)
    try:
        gw = rot_gateway(gateway, sim, pki, tmp_path)
        lf = active_leaf(gw, "leaf-r")
        old = certs_of(gw.reg, "leaf-r")[0]["cert_id"]
        assert wait_until(lambda: sim.state()["clients"].get("fleetgw-leaf-r", {})
                          .get("certificate_id") == old, 10)
        rotate(gw, "leaf-r")
        assert wait_until(lambda: statuses(gw.reg, "leaf-r") == [CERT_SUPERSEDED, CERT_ACTIVE],
                          20), certs_of(gw.reg, "leaf-r")
        new = certs_of(gw.reg, "leaf-r")[1]["cert_id"]
        t = thing(sim, "fleetgw-leaf-r")
        # One new certificate, on the same thing, asked for by the device itself
        # with its old certificate; the old one stays ACTIVE until retired.
        assert t["certificate_count"] == 2 and t["states"] == {"ACTIVE": 2}, t
        rec = {c["id"]: c for c in t["certificates"]}
        assert rec[new]["requested_by"]["kind"] == "device", rec[new]
        assert rec[new]["requested_by"]["certificate_id"] == old, rec[new]
        assert rec[new]["template"] == "fleetgw-rotation", rec[new]
        c = sim.state()["counters"]
        assert c["certs_issued"] == 2 and c["rotations"] == 1 and c["hook_denials"] == 0, c
        # The upstream reconnected with the new certificate.
        assert wait_until(lambda: sim.state()["clients"].get("fleetgw-leaf-r", {})
                          .get("certificate_id") == new, 15), sim.state()["clients"]
        publish_seen(lf, sim, pki, "leaf-r", b"after-rotation")
        # The operator retires the old one: the gateway does not notice.
        sim.api("POST", "/certificate", {"certificate_id": old, "state": "INACTIVE"})
        publish_seen(lf, sim, pki, "leaf-r", b"old-retired")
        m = gw.metrics()
        assert find_metric(m, "rotations_done") == 1 and find_metric(m, "rotations_failed") == 0
        # The replies went to the gateway, never to the leaf.
        assert "a rotation reply on" not in gw.log_text()
    finally:
        sim.stop()


@pytest.mark.parametrize("point", ["csr_sent", "cert_received", "register_sent", "registered",
                                   "done"])
def test_sigkill_at_each_rotation_step(gateway, pki, tmp_path, point):
    sim = rot_sim(pki, tmp_path, "--token-ttl-ms", "8000")
    try:
        gw = rot_gateway(gateway, sim, pki, tmp_path,
                                  env={"FLEETGW_TEST_CRASH_ROTATION": point},
                                  provisioning={"aws": {"token_ttl_s": 8}})
        lf = active_leaf(gw, "leaf-k")
        rotate(gw, "leaf-k")
        assert wait_until(lambda: not gw.alive(), 20), "the test hook did not fire"
        assert gw.proc.returncode == -signal.SIGKILL
        gw.env = {"FLEETGW_ADMIN_TOKEN": ADMIN}
        gw.start()
        assert connect_until_accepted(lf) == sn.RC_ACCEPTED

        def settled():
            st = statuses(gw.reg, "leaf-k")
            return st.count(CERT_ACTIVE) == 1 and st.count(CERT_SUPERSEDED) == 1
        assert wait_until(settled, 30), certs_of(gw.reg, "leaf-k")
        rows = certs_of(gw.reg, "leaf-k")
        active = [r["cert_id"] for r in rows if r["status"] == CERT_ACTIVE]
        orphaned = [r["cert_id"] for r in rows if r["status"] == CERT_ORPHANED]
        t = thing(sim, "fleetgw-leaf-k")
        cloud = {c["id"]: c["state"] for c in t["certificates"]}
        assert cloud.get(active[0]) == "ACTIVE", (cloud, rows)
        # Every certificate of the thing is in the registry: the active one,
        # the superseded one and, at most one, an orphan listed for clean-up.
        assert set(cloud) <= {r["cert_id"] for r in rows}, (cloud, rows)
        assert len(orphaned) <= 1
        if point != "register_sent":
            assert orphaned == [] and t["certificate_count"] == 2, (t, rows)
        with registry_db(gw.reg) as con:
            assert con.execute("SELECT count(*) FROM runs WHERE finished = 0").fetchone()[0] == 0
        publish_seen(lf, sim, pki, "leaf-k", b"after-" + point.encode())
    finally:
        sim.stop()


def test_the_hook_refusing_leaves_the_old_certificate(gateway, pki, tmp_path):
    sim = rot_sim(pki, tmp_path, hook="deny")
    try:
        gw = rot_gateway(gateway, sim, pki, tmp_path)
        lf = active_leaf(gw, "leaf-h")
        old = certs_of(gw.reg, "leaf-h")[0]["cert_id"]
        rotate(gw, "leaf-h")
        assert wait_until(lambda: find_metric(gw.metrics(), "rotations_failed") == 1, 20)
        rows = certs_of(gw.reg, "leaf-h")
        assert [(r["cert_id"], r["status"]) for r in rows][0] == (old, CERT_ACTIVE), rows
        assert [r["status"] for r in rows] == [CERT_ACTIVE, CERT_ORPHANED], rows
        with registry_db(gw.reg) as con:
            a = con.execute("SELECT detail FROM audit WHERE action = 'rotate.failed'").fetchone()
        assert a and "ACCESS_DENIED" in a[0] and old in a[0], a
        assert sim.state()["counters"]["hook_denials"] == 1
        publish_seen(lf, sim, pki, "leaf-h", b"still-old")
    finally:
        sim.stop()


def test_rotation_waits_for_the_uplink(gateway, pki, tmp_path):
    sim = rot_sim(pki, tmp_path)
    link = Link(sim.port)
    try:
        gw = rot_gateway(gateway, sim, pki, tmp_path,
                                  upstream={"port": link.port, "backoff_cap_ms": 500})
        lf = active_leaf(gw, "leaf-w")
        assert wait_until(lambda: "fleetgw-leaf-w" in sim.state()["clients"], 10)
        link.cut()
        assert wait_until(lambda: "fleetgw-leaf-w" not in sim.state()["clients"], 10)
        rotate(gw, "leaf-w")
        time.sleep(3)
        # Nothing can happen without the device's own connection.
        assert statuses(gw.reg, "leaf-w") == [CERT_ACTIVE]
        assert sim.state()["counters"]["certs_issued"] == 1
        link.restore()
        assert wait_until(lambda: statuses(gw.reg, "leaf-w") == [CERT_SUPERSEDED, CERT_ACTIVE],
                          30), certs_of(gw.reg, "leaf-w")
        assert thing(sim, "fleetgw-leaf-w")["certificate_count"] == 2
        publish_seen(lf, sim, pki, "leaf-w", b"back")
    finally:
        link.close()
        sim.stop()


def test_due_rotation_when_the_cloud_certificate_expires_soon(gateway, pki, tmp_path):
    soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 86400))
    sim = rot_sim(pki, tmp_path, "--not-after", soon)
    try:
        gw = rot_gateway(gateway, sim, pki, tmp_path,
                                  provisioning={"rotate_before_days": 2})
        lf = active_leaf(gw, "leaf-d")
        assert wait_until(lambda: statuses(gw.reg, "leaf-d") == [CERT_SUPERSEDED, CERT_ACTIVE],
                          30), certs_of(gw.reg, "leaf-d")
        # The new one is as short (the simulator's --not-after): not rotated
        # again in a loop, and said so.
        time.sleep(12)
        assert statuses(gw.reg, "leaf-d") == [CERT_SUPERSEDED, CERT_ACTIVE]
        assert thing(sim, "fleetgw-leaf-d")["certificate_count"] == 2
        assert "due for rotation already" in gw.log_text()
        publish_seen(lf, sim, pki, "leaf-d", b"due")
    finally:
        sim.stop()


def test_no_rotation_template_no_rotation(gateway, pki, tmp_path):
    sim = rot_sim(pki, tmp_path)
    try:
        gw = rot_gateway(gateway, sim, pki, tmp_path, rotation=False)
        active_leaf(gw, "leaf-n")
        r = gw.api.post("/api/v1/devices/leaf-n/rotate")
        assert r.status == 409 and "rotation_template" in r.text, r
        assert statuses(gw.reg, "leaf-n") == [CERT_ACTIVE]
    finally:
        sim.stop()


def test_a_device_policy_without_the_rotation_topics_fails_the_rotation(gateway, pki, tmp_path):
    """AWS answers a SUBSCRIBE its policy denies by closing the connection
    (docs/protocol-notes.md §4.7): after a few such losses in the middle of
    the rotation it fails, naming the policy, and the leaf goes on with its
    old certificate."""
    import json
    from test_provisioning_aws import DEVICE_POLICY
    doc = json.loads(DEVICE_POLICY.read_text())
    doc["Statement"] = [st for st in doc["Statement"] if "$aws" not in json.dumps(st)]
    old_policy = tmp_path / "device-policy-before-rotation.json"
    old_policy.write_text(json.dumps(doc))
    sim = rot_sim(pki, tmp_path, "--device-policy", str(old_policy))
    try:
        gw = rot_gateway(gateway, sim, pki, tmp_path, upstream={"backoff_cap_ms": 500})
        lf = active_leaf(gw, "leaf-p")
        old = certs_of(gw.reg, "leaf-p")[0]["cert_id"]
        rotate(gw, "leaf-p")
        assert wait_until(lambda: find_metric(gw.metrics(), "rotations_failed") == 1, 60)
        assert [(r["cert_id"], r["status"]) for r in certs_of(gw.reg, "leaf-p")] == \
            [(old, CERT_ACTIVE)]
        with registry_db(gw.reg) as con:
            a = con.execute("SELECT detail FROM audit WHERE action = 'rotate.failed'").fetchone()
        assert a and "policy" in a[0], a
        assert sim.state()["counters"]["certs_issued"] == 1
        assert sim.state()["counters"]["policy_violations"] >= 1
        publish_seen(lf, sim, pki, "leaf-p", b"old-policy")
    finally:
        sim.stop()
