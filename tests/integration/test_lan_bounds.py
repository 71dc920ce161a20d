"""Every resource a LAN peer can make the gateway hold is bounded (issue 9):
new identities by source, pending identities and the audit log by the
registry's upkeep, keep-alive, subscriptions, a locked registry.  Real UDP
on loopback; 127.0.0.2 and friends stand for other boxes."""
import sqlite3
import threading
import time

import pytest

import mqttsn_leaf as sn
from conftest import find_metric, registry_db, wait_until
from test_web_api import web_gateway  # noqa: F401  (fixture)

# The base test config turns the new-identity limits off; these remove that,
# so the gateway's own defaults apply.
DEFAULT_LIMITS = {"new_ids_per_port": None, "new_ids_per_port_window_s": None,
                  "new_ids_per_ip": None, "new_ids_per_ip_window_s": None,
                  "new_ids": None, "new_ids_window_s": None}
UPKEEP_S = 10  # gateway/upkeep.h UPKEEP_INTERVAL_MS


def counter(gw, name):
    v = find_metric(gw.metrics(), name)
    return 0 if v is None else v


def devices(reg, state=None):
    with registry_db(reg) as con:
        if state is None:
            return con.execute("SELECT count(*) FROM devices").fetchone()[0]
        return con.execute("SELECT count(*) FROM devices WHERE state = ?", (state,)).fetchone()[0]


def audit_rows(reg):
    with registry_db(reg) as con:
        return con.execute("SELECT count(*) FROM audit").fetchone()[0]


def connack(lf, cid, timeout=2.0):
    lf.send_raw(sn.encode_connect(cid, 60))
    return lf.expect(sn.CONNACK, timeout=timeout).rc


def open_gateway(gateway, broker, tmp_path, name, **admission):
    reg = str(tmp_path / (name + ".db"))
    adm = {"policy": "open"}
    adm.update(DEFAULT_LIMITS)
    adm.update(admission)
    return gateway(broker, admission=adm, registry={"path": reg}), reg


# ---- 1. made-up ClientIds: at most what the rates allow -------------------

def test_one_socket_cycling_through_client_ids_gets_one_identity(broker, gateway, tmp_path):
    gw, reg = open_gateway(gateway, broker, tmp_path, "one-socket")
    lf = gw.leaf()
    rcs = [connack(lf, "made-up-%d" % i) for i in range(200)]
    assert rcs[0] == sn.RC_ACCEPTED
    assert set(rcs[1:]) == {sn.RC_CONGESTION}
    assert devices(reg) == 1
    assert counter(gw, "new_ids_throttled") == 199
    # The identity it did get is its own: it connects again at once.
    assert connack(lf, "made-up-0") == sn.RC_ACCEPTED


def test_new_ids_limited_per_ip_and_gateway_wide(broker, gateway, tmp_path):
    gw, reg = open_gateway(gateway, broker, tmp_path, "per-ip")
    # 20 sockets of one IP, one new ClientId each: admission.new_ids_per_ip (5).
    rcs = [connack(gw.leaf(local_ip="127.0.0.3"), "ip-%d" % i) for i in range(20)]
    assert rcs.count(sn.RC_ACCEPTED) == 5
    assert devices(reg) == 5
    # 40 IPs, one new ClientId each: gateway-wide admission.new_ids (30 a
    # minute; the 5 above count too).  The bucket refills at 0.5/s.
    t0 = time.monotonic()
    rcs = [connack(gw.leaf(local_ip="127.0.1.%d" % (i + 1)), "wide-%d" % i) for i in range(40)]
    refill = int((time.monotonic() - t0) / 2) + 1
    assert 25 <= rcs.count(sn.RC_ACCEPTED) <= 25 + refill
    assert devices(reg) == 5 + rcs.count(sn.RC_ACCEPTED)


def test_a_listed_converter_gets_its_own_allowance(broker, gateway, tmp_path):
    gw, reg = open_gateway(gateway, broker, tmp_path, "converter",
                           converters=["127.0.0.4"], new_ids_per_converter=50, new_ids=0)
    rcs = [connack(gw.leaf(local_ip="127.0.0.4"), "conv-%d" % i) for i in range(60)]
    assert rcs.count(sn.RC_ACCEPTED) == 50
    rcs = [connack(gw.leaf(local_ip="127.0.0.5"), "other-%d" % i) for i in range(10)]
    assert rcs.count(sn.RC_ACCEPTED) == 5


# ---- 2. Duration 0 is not "for ever" --------------------------------------

def test_keepalive_zero_is_capped_and_releases_the_upstream(broker, gateway):
    gw = gateway(broker, lan={"max_keepalive_s": 2})
    lf = gw.leaf("silent")
    assert lf.connect(keepalive=0) == sn.RC_ACCEPTED
    broker.wait_connected("silent")
    assert counter(gw, "keepalive_capped") == 1
    # Silent from now on: lost after 1.5 x 2 s, its upstream closed.
    assert wait_until(lambda: counter(gw, "leaves_lost") == 1, 6)
    assert wait_until(lambda: counter(gw, "upstreams_up") == 0, 5)
    # A leaf that asks for more than the maximum gets the maximum too.
    lf2 = gw.leaf("long")
    assert lf2.connect(keepalive=65535) == sn.RC_ACCEPTED
    assert counter(gw, "keepalive_capped") == 2


# ---- 4. pending identities, the audit log, the first claim, the size guard

def test_pending_identities_expire_and_the_audit_log_is_bounded(broker, gateway, tmp_path):
    reg = str(tmp_path / "upkeep.db")
    gw = gateway(broker, registry={"path": reg, "audit_max_rows": 10},
                 admission={"policy": "approve", "pending_ttl_s": 1})
    for i in range(30):
        assert connack(gw.leaf(local_ip="127.0.2.%d" % (i + 1)), "wait-%d" % i) == \
            sn.RC_CONGESTION
    assert devices(reg, state=0) == 30
    assert audit_rows(reg) >= 30
    # The next upkeep pass deletes them and cuts the audit log.
    assert wait_until(lambda: devices(reg) == 0, UPKEEP_S + 5)
    assert wait_until(lambda: audit_rows(reg) <= 10, 5)
    m = gw.metrics()
    assert find_metric(m, "pending_pruned") == 30
    assert find_metric(m, "audit_pruned") >= 20


def test_pending_identities_are_bounded(broker, gateway, tmp_path):
    reg = str(tmp_path / "maxpending.db")
    gw = gateway(broker, registry={"path": reg},
                 admission={"policy": "approve", "max_pending": 3})
    rcs = [connack(gw.leaf(local_ip="127.0.3.%d" % (i + 1)), "p-%d" % i) for i in range(5)]
    assert rcs == [sn.RC_CONGESTION] * 5
    assert devices(reg) == 3
    assert counter(gw, "new_ids_pending_full") == 2


def test_first_claim_from_another_ip_does_not_lock_the_leaf_out(web_gateway):  # noqa: F811
    wg = web_gateway(policy="approve", admission={"bind_address": True})
    # A box at 127.0.0.2 claims plc-17 first; the genuine leaf follows.
    impostor = wg.leaf("plc-17", local_ip="127.0.0.2")
    assert impostor.connect() == sn.RC_CONGESTION
    genuine = wg.leaf("plc-17")
    assert genuine.connect() == sn.RC_CONGESTION
    # Pending identities are bound to nothing: the operator sees one
    # pending plc-17 and approves it; the first CONNECT after that binds.
    d = wg.device("plc-17")
    assert d["state"] == "pending" and not d["bound_addr"]
    wg.api.ok("POST", "/api/v1/devices/plc-17/approve")
    assert wait_until(lambda: genuine.connect() == sn.RC_ACCEPTED, 15)
    assert wg.device("plc-17")["bound_addr"] == "127.0.0.1"
    assert impostor.connect() == sn.RC_NOT_SUPPORTED


def test_full_registry_refuses_new_identities_never_known_ones(broker, gateway, tmp_path):
    reg = str(tmp_path / "full.db")
    gw = gateway(broker, registry={"path": reg})
    gw.connected_leaf("known-1").disconnect()
    assert gw.terminate() == 0
    # The same registry, now over its size limit.
    gw2 = gateway(broker, registry={"path": reg, "max_bytes": 4096})
    assert "new identities refused" in gw2.log_text()
    assert gw2.connected_leaf("known-1")
    assert connack(gw2.leaf(), "stranger-1") == sn.RC_CONGESTION
    assert devices(reg) == 1
    assert counter(gw2, "new_ids_registry_full") == 1


# ---- 5. a locked registry delays no healthy leaf --------------------------

def test_locked_registry_does_not_stall_the_loop(broker, gateway, tmp_path):
    reg = str(tmp_path / "locked.db")
    gw = gateway(broker, registry={"path": reg, "busy_timeout_ms": 50})
    healthy = gw.connected_leaf("healthy")
    locker = sqlite3.connect(reg, timeout=1, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        t0 = time.monotonic()
        for i in range(3):
            assert connack(gw.leaf(), "new-while-locked-%d" % i, timeout=1.0) == \
                sn.RC_CONGESTION
        assert time.monotonic() - t0 < 1.5
        t0 = time.monotonic()
        healthy.send_raw(sn.encode_pingreq())
        healthy.expect(sn.PINGRESP, timeout=0.5)
        assert time.monotonic() - t0 < 0.5
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert counter(gw, "registry_busy") == 3
    # Once the lock is gone, the same leaves get in.
    assert connack(gw.leaf(), "new-while-locked-0") == sn.RC_ACCEPTED


# ---- 7. subscriptions per leaf ---------------------------------------------

def test_subscriptions_per_leaf_are_bounded(broker, gateway):
    gw = gateway(broker, lan={"max_subscriptions": 5, "max_subscription_bytes": 300})
    lf = gw.connected_leaf("subs")
    for i in range(5):
        assert lf.subscribe("fleet/subs/%d/#" % i, qos=1)[2] == sn.RC_ACCEPTED
    assert lf.subscribe("fleet/subs/5/#", qos=1)[2] == sn.RC_CONGESTION
    # Subscribing again to a held filter is not a new one.
    assert lf.subscribe("fleet/subs/0/#", qos=0)[2] == sn.RC_ACCEPTED
    # Letting one go makes room.
    assert lf.unsubscribe("fleet/subs/4/#")
    assert lf.subscribe("fleet/subs/5/#", qos=1)[2] == sn.RC_ACCEPTED
    assert counter(gw, "subscriptions_refused") == 1

    lf2 = gw.connected_leaf("subs-bytes")
    long_filter = "fleet/" + "x" * 140 + "/%d"
    assert lf2.subscribe(long_filter % 1)[2] == sn.RC_ACCEPTED
    assert lf2.subscribe(long_filter % 2)[2] == sn.RC_ACCEPTED
    assert lf2.subscribe(long_filter % 3)[2] == sn.RC_CONGESTION
    assert counter(gw, "subscriptions_refused") == 2
