"""A gateway restart is invisible to the leaves (issue 11, docs/outbox.md
§8): their sessions (subscriptions, topic ids both ways, will, sleep) and a
sleeping leaf's buffered messages are in the registry, and come back with
the gateway, upstreams included, whether it was stopped or killed.

Each test runs a real mosquitto and restarts the gateway on the same LAN
port and registry; the leaves keep their sockets and never CONNECT again
unless the test says so."""
import time

import mqttsn_leaf as sn
from conftest import find_metric, registry_db, wait_until


def stored_sessions(gw):
    with registry_db(gw.config["registry"]["path"]) as con:
        return {r[0]: r[1] for r in con.execute(
            "SELECT d.client_id, s.state FROM leaf_sessions s JOIN devices d ON d.id = s.device_id")}


def restart(gateway, broker, gw, kill=True):
    """The gateway stopped (SIGKILL, or SIGTERM) and started again in place."""
    if kill:
        time.sleep(0.2)        # the last changes are written behind (20 ms)
        gw.kill()
    else:
        assert gw.terminate() == 0
    return gateway(broker, registry={"path": gw.config["registry"]["path"]},
                   lan={"port": gw.port})


def test_an_active_leaf_goes_on_as_if_nothing_happened(broker, gateway, broker_client):
    bc = broker_client(broker)
    bc.subscribe("rs/a/up", qos=1)
    gw = gateway(broker)
    lf = gw.connected_leaf("rs-a")
    tid = lf.register("rs/a/up")
    assert lf.subscribe("rs/a/down", qos=1)[2] == sn.RC_ACCEPTED
    assert lf.publish(tid, b"before", qos=1) == sn.RC_ACCEPTED
    assert wait_until(lambda: stored_sessions(gw).get("rs-a") == 1, 5), stored_sessions(gw)
    gw2 = restart(gateway, broker, gw)
    # The same socket, no CONNECT: the topic id still means rs/a/up...
    assert lf.publish(tid, b"after", qos=1, timeout=5) == sn.RC_ACCEPTED
    assert [m.payload for m in bc.wait_messages(2)] == [b"before", b"after"]
    # ...and the subscription is back upstream.
    assert wait_until(lambda: find_metric(gw2.metrics(), "upstreams_up") == 1, 10)
    assert wait_until(lambda: broker.log_text().count("rs-a 1 rs/a/down") >= 2, 10)
    bc.publish("rs/a/down", b"command", qos=1)
    assert lf.recv_publishes(1, timeout=10) == [("rs/a/down", b"command", 1)]
    assert lf.ping() is not None


def test_a_sleeping_leaf_wakes_to_its_messages_after_a_crash(broker, gateway, broker_client):
    gw = gateway(broker)
    lf = gw.connected_leaf("rs-s")
    assert lf.subscribe("rs/s/cmd", qos=1)[2] == sn.RC_ACCEPTED
    assert lf.sleep(60) is not None
    bc = broker_client(broker)
    for i in range(2):
        bc.publish("rs/s/cmd", b"m%d" % i, qos=1)
    assert wait_until(lambda: stored_sessions(gw).get("rs-s") == 2, 5)
    time.sleep(0.3)            # both buffered, and written
    gw2 = restart(gateway, broker, gw)
    # Asleep across the restart: its upstream is back, and a message sent
    # meanwhile waits with the others.
    assert wait_until(lambda: find_metric(gw2.metrics(), "leaves_asleep") == 1, 5)
    assert wait_until(lambda: broker.log_text().count("rs-s 1 rs/s/cmd") >= 2, 10)
    bc.publish("rs/s/cmd", b"m2", qos=1)
    time.sleep(0.5)
    got = lf.wake_and_drain(timeout=10)
    assert [(r.topic, r.payload) for r in got] == [("rs/s/cmd", b"m%d" % i) for i in range(3)]


def test_a_graceful_restart_keeps_a_persistent_session(broker, gateway, broker_client):
    gw = gateway(broker)
    lf = gw.leaf("rs-g")
    assert lf.connect(clean=False) == sn.RC_ACCEPTED
    assert lf.subscribe("rs/g/cmd", qos=1)[2] == sn.RC_ACCEPTED
    tid = lf.register("rs/g/up")
    gw2 = restart(gateway, broker, gw, kill=False)
    # Told DISCONNECT at the stop, the leaf comes back with CleanSession=0:
    # its subscription and topic ids were kept.
    assert lf.received(sn.DISCONNECT)
    assert lf.connect(clean=False) == sn.RC_ACCEPTED
    assert wait_until(lambda: find_metric(gw2.metrics(), "upstreams_up") == 1, 10)
    bc = broker_client(broker)
    bc.subscribe("rs/g/up", qos=1)
    assert lf.publish(tid, b"same id", qos=1) == sn.RC_ACCEPTED
    assert [m.payload for m in bc.wait_messages(1)] == [b"same id"]
    # (The upstream session is persistent too: the broker kept the
    # subscription, so the gateway found it present and sent none again.)
    assert "session present" in gw2.log_text()
    bc.publish("rs/g/cmd", b"kept", qos=1)
    assert lf.recv_publishes(1, timeout=10) == [("rs/g/cmd", b"kept", 1)]


def test_a_clean_leaf_that_disconnects_leaves_nothing_behind(broker, gateway):
    gw = gateway(broker)
    lf = gw.connected_leaf("rs-c")
    assert lf.subscribe("rs/c/cmd", qos=1)[2] == sn.RC_ACCEPTED
    assert wait_until(lambda: "rs-c" in stored_sessions(gw), 5)
    assert lf.disconnect() is not None
    assert wait_until(lambda: "rs-c" not in stored_sessions(gw), 5), stored_sessions(gw)


def test_a_leaf_that_rebooted_with_the_gateway_takes_its_session_from_a_new_port(
        broker, gateway):
    gw = gateway(broker)
    lf = gw.connected_leaf("rs-p")
    assert wait_until(lambda: stored_sessions(gw).get("rs-p") == 1, 5)
    gw2 = restart(gateway, broker, gw)
    lf.close()
    # A power cut took the leaf down too: it comes back from another port
    # of its address, before its restored session heard from it.
    again = gw2.leaf("rs-p")
    assert again.connect() == sn.RC_ACCEPTED
    # Another address is still refused, as for any live leaf.
    other = gw2.leaf("rs-p", local_ip="127.0.0.2")
    assert other.connect() == sn.RC_NOT_SUPPORTED
