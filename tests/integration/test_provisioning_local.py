"""Provisioning exactly once with the gateway's own CA (backend local-ca), the
registry, and admission.  A real mosquitto trusts the local CA and requires a
client certificate; each leaf's upstream session presents its own
certificate, whose CN (the thing name) mosquitto logs as the user name."""
import sqlite3
import threading

import pytest

import mqttsn_leaf as sn
from conftest import (connect_until_accepted, registry_audit, registry_certs, registry_db,
                      registry_device, wait_until)

DEV_PENDING, DEV_APPROVED, DEV_PROVISIONING, DEV_ACTIVE, DEV_FAILED = range(5)
CERT_ACTIVE = 1


# local_ca and ca_broker: fixtures in conftest.py.


def local_gateway(gateway, broker, local_ca, registry, **kw):
    crt, key, _ = local_ca
    over = {
        "registry": {"path": str(registry)},
        "upstream": {"cert_file": None, "key_file": None},
        "provisioning": {"backend": "local-ca", "thing_name_template": "thing-{client_id}",
                         "local_ca": {"cert_file": str(crt), "key_file": str(key),
                                      "create": False}},
    }
    for k, v in kw.items():
        over.setdefault(k, {}).update(v)
    return gateway(broker, **over)












def test_first_connect_provisions_one_certificate_and_relays(
        gateway, ca_broker, local_ca, broker_client, tmp_path):
    reg = tmp_path / "reg.db"
    gw = local_gateway(gateway, ca_broker, local_ca, reg)
    bc = broker_client(ca_broker)
    bc.subscribe("fleet/#", qos=1)
    lf = gw.leaf("leaf-a")
    assert connect_until_accepted(lf) == sn.RC_ACCEPTED
    tid = lf.register("fleet/leaf-a/telemetry")
    assert lf.publish(tid, b"21.5", qos=1) == sn.RC_ACCEPTED
    got = bc.wait_messages(1, topic="fleet/leaf-a/telemetry")
    assert got[0].payload == b"21.5"
    # Its own upstream session: client id = thing name, certificate CN = thing name.
    conns = ca_broker.connections()
    assert ("thing-leaf-a", "thing-leaf-a") in conns, conns
    rows = registry_certs(reg, "leaf-a")
    assert [r["status"] for r in rows] == [CERT_ACTIVE]
    d = registry_device(reg, "leaf-a")
    assert d["state"] == DEV_ACTIVE and d["thing_name"] == "thing-leaf-a"
    assert d["bound_addr"] == "127.0.0.1"
    acts = registry_audit(reg, "leaf-a")
    for a in ("admission.admitted", "provision.started", "cert.issued", "provision.done"):
        assert a in acts, acts
    # The private key is stored encrypted: no PEM key text in the database.
    assert b"PRIVATE KEY" not in reg.read_bytes()


def test_reconnects_and_restarts_issue_no_second_certificate(
        gateway, ca_broker, local_ca, broker_client, tmp_path):
    reg = tmp_path / "reg.db"
    gw = local_gateway(gateway, ca_broker, local_ca, reg)
    lf = gw.leaf("leaf-b")
    assert connect_until_accepted(lf) == sn.RC_ACCEPTED
    first = registry_certs(reg, "leaf-b")
    assert len(first) == 1
    for _ in range(20):
        assert lf.disconnect() is not None
        assert lf.connect() == sn.RC_ACCEPTED
    for _ in range(2):
        assert gw.terminate() == 0
        gw.start()
        lf2 = gw.leaf("leaf-b")
        assert connect_until_accepted(lf2) == sn.RC_ACCEPTED
    assert registry_certs(reg, "leaf-b") == first
    bc = broker_client(ca_broker)
    bc.subscribe("fleet/leaf-b/#", qos=1)
    tid = lf2.register("fleet/leaf-b/x")
    assert lf2.publish(tid, b"after-restarts", qos=1) == sn.RC_ACCEPTED
    assert bc.wait_messages(1)[0].payload == b"after-restarts"


def test_hundred_leaves_at_once_one_certificate_each(gateway, ca_broker, local_ca, tmp_path):
    reg = tmp_path / "reg.db"
    gw = local_gateway(gateway, ca_broker, local_ca, reg, lan={"connack_timeout_ms": 10000})
    ids = ["leaf-%03d" % i for i in range(100)]
    leaves = [gw.leaf(cid) for cid in ids]
    results = {}

    def run(lf):
        results[lf.client_id] = connect_until_accepted(lf, timeout=60)
    threads = [threading.Thread(target=run, args=(lf,)) for lf in leaves]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert all(rc == sn.RC_ACCEPTED for rc in results.values()) and len(results) == 100
    with registry_db(reg) as con:
        rows = con.execute("SELECT d.client_id, d.thing_name, c.cert_id, c.status FROM devices d"
                           " JOIN certificates c ON c.device_id = d.id").fetchall()
    assert len(rows) == 100
    assert sorted(r["client_id"] for r in rows) == ids
    assert len({r["cert_id"] for r in rows}) == 100
    assert len({r["thing_name"] for r in rows}) == 100
    assert all(r["status"] == CERT_ACTIVE for r in rows)
    # Each with its own upstream session, client id = thing name = certificate CN.
    assert wait_until(lambda: len({c for c, u in ca_broker.connections()
                                   if c.startswith("thing-leaf-") and c == u}) >= 100, 20)


def test_registry_refuses_a_second_active_certificate(gateway, ca_broker, local_ca, tmp_path):
    reg = tmp_path / "reg.db"
    gw = local_gateway(gateway, ca_broker, local_ca, reg)
    assert connect_until_accepted(gw.leaf("leaf-c")) == sn.RC_ACCEPTED
    con = sqlite3.connect(str(reg), timeout=5)
    try:
        dev_id = con.execute("SELECT id FROM devices WHERE client_id = 'leaf-c'").fetchone()[0]
        with pytest.raises(sqlite3.IntegrityError):
            con.execute("INSERT INTO certificates (cert_id, device_id, status, pem, created_at,"
                        " updated_at) VALUES ('f00d', ?, 1, 'x', 0, 0)", (dev_id,))
            con.commit()
    finally:
        con.close()
    assert len(registry_certs(reg, "leaf-c")) == 1


def test_identity_bound_to_its_address(gateway, ca_broker, local_ca, tmp_path):
    reg = tmp_path / "reg.db"
    gw = local_gateway(gateway, ca_broker, local_ca, reg)
    assert connect_until_accepted(gw.leaf("leaf-d")) == sn.RC_ACCEPTED
    # Another box (another loopback address) claiming the same ClientId.
    intruder = gw.leaf("leaf-d", local_ip="127.0.0.2")
    assert intruder.connect() == sn.RC_NOT_SUPPORTED
    assert "admission.refused" in registry_audit(reg, "leaf-d")
    assert len(registry_certs(reg, "leaf-d")) == 1


def test_allowlist_policy(gateway, ca_broker, local_ca, tmp_path):
    reg = tmp_path / "reg.db"
    gw = local_gateway(gateway, ca_broker, local_ca, reg,
                       admission={"policy": "allowlist", "allowlist": ["line1-*", "press-7"]})
    assert connect_until_accepted(gw.leaf("line1-04")) == sn.RC_ACCEPTED
    assert connect_until_accepted(gw.leaf("press-7")) == sn.RC_ACCEPTED
    assert gw.leaf("line2-01").connect() == sn.RC_NOT_SUPPORTED
    assert registry_device(reg, "line2-01") is None
    assert registry_certs(reg, "line2-01") == []


def test_approve_policy_holds_unknown_leaves_as_pending(gateway, ca_broker, local_ca, tmp_path):
    reg = tmp_path / "reg.db"
    gw = local_gateway(gateway, ca_broker, local_ca, reg, admission={"policy": "approve"})
    lf = gw.leaf("leaf-new")
    assert lf.connect() == sn.RC_CONGESTION
    assert lf.connect() == sn.RC_CONGESTION
    d = registry_device(reg, "leaf-new")
    assert d["state"] == DEV_PENDING
    assert registry_certs(reg, "leaf-new") == []
    assert "admission.pending" in registry_audit(reg, "leaf-new")
    assert gw.metrics()["admission_pending"] >= 2
