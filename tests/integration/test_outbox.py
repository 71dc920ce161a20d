"""Store and forward (issue 11, docs/outbox.md): a leaf's QoS 1 publish is
acknowledged once it is in the registry's outbox, survives a SIGKILL of the
gateway, and reaches the broker in order when the link comes back.

The factory's internet link is a TCP proxy in front of a real mosquitto
(Link below): cutting it closes the gateway's upstream connections and
refuses new ones, while the broker and the test's subscriber stay up, as
the cloud does when a factory's line drops."""
import select
import socket
import threading
import time

import mqttsn_leaf as sn
import pytest
from conftest import LOOPBACK, find_metric, registry_db, wait_until


class Link:
    """A TCP proxy to the broker that can be cut and restored."""

    def __init__(self, broker_port):
        self.broker_port = broker_port
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind((LOOPBACK, 0))
        self.srv.listen(256)
        self.port = self.srv.getsockname()[1]
        self.up = True
        self.pairs = []
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            if not self.up:
                c.close()          # the line is down: connection refused, as near as TCP gets
                continue
            try:
                b = socket.create_connection((LOOPBACK, self.broker_port), timeout=5)
            except OSError:
                c.close()
                continue
            with self.lock:
                self.pairs.append((c, b))
            threading.Thread(target=self._pipe, args=(c, b), daemon=True).start()

    def _pipe(self, c, b):
        socks = [c, b]
        try:
            while self.up and not self.closed:
                r, _, _ = select.select(socks, [], [], 0.2)
                for s in r:
                    data = s.recv(65536)
                    if not data:
                        return
                    (b if s is c else c).sendall(data)
        except OSError:
            pass
        finally:
            for s in socks:
                try:
                    s.close()
                except OSError:
                    pass

    def cut(self):
        self.up = False
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for c, b in pairs:
            for s in (c, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def restore(self):
        self.up = True

    def close(self):
        self.closed = True
        self.cut()
        self.srv.close()


@pytest.fixture
def link(broker):
    lk = Link(broker.port)
    yield lk
    lk.close()


def metric(gw, name):
    v = find_metric(gw.metrics(), name)
    return 0 if v is None else v


def through(gateway, broker, link, **over):
    up = dict(over.pop("upstream", {}))
    up.update(port=link.port, backoff_base_ms=100, backoff_cap_ms=300)
    return gateway(broker, upstream=up, **over)


def one_leaf(gateway, broker, link, broker_client, name, cut=True, **over):
    """A subscriber on ob/<name>/#, a gateway through the link, one leaf
    ob-<name> with topic ob/<name>/t registered; the link cut (and the
    upstream seen down) when cut."""
    bc = broker_client(broker)
    bc.subscribe("ob/%s/#" % name, qos=1)
    gw = through(gateway, broker, link, **over)
    lf = gw.connected_leaf("ob-" + name)
    tid = lf.register("ob/%s/t" % name)
    if cut:
        link.cut()
        assert wait_until(lambda: metric(gw, "upstreams_up") == 0, 10)
    return bc, gw, lf, tid


def payloads(bc, n, topic=None, timeout=20):
    return [m.payload for m in bc.wait_messages(n, timeout=timeout, topic=topic)]


def test_puback_comes_from_the_disk_while_the_link_is_down(broker, gateway, link,
                                                           broker_client):
    bc = broker_client(broker)
    bc.subscribe("ob/a/#", qos=1)
    gw = through(gateway, broker, link)
    lf = gw.connected_leaf("ob-a")
    tid = lf.register("ob/a/t")
    assert lf.publish(tid, b"before", qos=1) == sn.RC_ACCEPTED
    assert payloads(bc, 1) == [b"before"]
    # (Its PUBACK from the broker in too, or it would go again after the cut.)
    assert wait_until(lambda: metric(gw, "outbox_messages") == 0, 10)
    link.cut()
    assert wait_until(lambda: metric(gw, "upstreams_up") == 0, 10)
    for i in range(20):
        assert lf.publish(tid, b"m%02d" % i, qos=1, timeout=2) == sn.RC_ACCEPTED
    assert metric(gw, "outbox_messages") == 20
    with registry_db(gw.config["registry"]["path"]) as con:
        assert con.execute("SELECT count(*) FROM outbox").fetchone()[0] == 20
    bc.expect_none(0.5)
    link.restore()
    got = payloads(bc, 21)
    assert got == [b"before"] + [b"m%02d" % i for i in range(20)]
    assert wait_until(lambda: metric(gw, "outbox_messages") == 0, 10)
    assert metric(gw, "outbox_delivered") == 21
    with registry_db(gw.config["registry"]["path"]) as con:
        assert con.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0


def test_known_leaves_connect_during_an_outage_and_nothing_is_lost_to_sigkill(
        broker, gateway, link, broker_client):
    bc = broker_client(broker)
    bc.subscribe("ob/k/#", qos=1)
    gw = through(gateway, broker, link)
    ids = ["ob-k%d" % i for i in range(3)]
    leaves = {cid: gw.connected_leaf(cid) for cid in ids}
    tids = {cid: leaves[cid].register("ob/k/" + cid) for cid in ids}
    for cid in ids:
        assert leaves[cid].publish(tids[cid], b"0", qos=1) == sn.RC_ACCEPTED
    assert len(bc.wait_messages(3)) == 3
    assert wait_until(lambda: metric(gw, "outbox_messages") == 0, 10)
    link.cut()
    for i in range(1, 11):
        for cid in ids:
            assert leaves[cid].publish(tids[cid], b"%d" % i, qos=1, timeout=2) == sn.RC_ACCEPTED
    # A power cut: every message acknowledged so far is on disk.
    gw.kill()
    for lf in leaves.values():
        lf.close()
    gw2 = through(gateway, broker, link, registry={"path": gw.config["registry"]["path"]},
                  lan={"port": gw.port})
    assert metric(gw2, "outbox_messages") == 30
    # The link is still down, and the known leaves get in all the same.
    for cid in ids:
        lf = gw2.leaf(cid)
        assert lf.connect(timeout=3) == sn.RC_ACCEPTED
        tid = lf.register("ob/k/" + cid)
        for i in range(11, 16):
            assert lf.publish(tid, b"%d" % i, qos=1, timeout=2) == sn.RC_ACCEPTED
    bc.expect_none(0.5)
    link.restore()
    got = bc.wait_messages(3 + 45, timeout=30)
    for cid in ids:
        mine = [int(m.payload) for m in got if m.topic == "ob/k/" + cid]
        assert mine == list(range(16)), (cid, mine)
    assert wait_until(lambda: metric(gw2, "outbox_messages") == 0, 10)


def test_reject_when_full_is_back_pressure(broker, gateway, link, broker_client):
    bc, gw, lf, tid = one_leaf(gateway, broker, link, broker_client, "r",
                               outbox={"max_messages_per_leaf": 5})
    for i in range(5):
        assert lf.publish(tid, b"%d" % i, qos=1, timeout=2) == sn.RC_ACCEPTED
    assert lf.publish(tid, b"5", qos=1, timeout=2) == sn.RC_CONGESTION
    assert metric(gw, "outbox_refused_full") == 1
    link.restore()
    assert payloads(bc, 5) == [b"%d" % i for i in range(5)]
    # Room again once delivered.
    assert wait_until(lambda: metric(gw, "outbox_messages") == 0, 10)
    assert lf.publish(tid, b"5", qos=1) == sn.RC_ACCEPTED
    assert payloads(bc, 6)[-1] == b"5"


def test_drop_oldest_when_full(broker, gateway, link, broker_client):
    bc, gw, lf, tid = one_leaf(gateway, broker, link, broker_client, "d",
                               outbox={"max_messages_per_leaf": 5, "when_full": "drop-oldest"})
    for i in range(8):
        assert lf.publish(tid, b"%d" % i, qos=1, timeout=2) == sn.RC_ACCEPTED
    assert metric(gw, "outbox_dropped") == 3 and metric(gw, "outbox_messages") == 5
    link.restore()
    assert payloads(bc, 5) == [b"%d" % i for i in range(3, 8)]
    bc.expect_none(0.5)


def test_a_leaf_that_leaves_with_a_backlog_has_it_delivered(broker, gateway, link,
                                                            broker_client):
    bc, gw, lf, tid = one_leaf(gateway, broker, link, broker_client, "g")
    for i in range(5):
        assert lf.publish(tid, b"%d" % i, qos=1, timeout=2) == sn.RC_ACCEPTED
    assert lf.disconnect() is not None
    link.restore()
    assert payloads(bc, 5) == [b"%d" % i for i in range(5)]
    # The link that delivered them goes once they are delivered.
    # (The first connection was cut; a DISCONNECT is the drain link's end.)
    assert wait_until(lambda: "Received DISCONNECT from ob-g" in broker.log_text(), 10)


def test_a_lost_leaf_has_its_backlog_and_then_its_will_delivered(broker, gateway, link,
                                                                 broker_client):
    bc = broker_client(broker)
    bc.subscribe("ob/w/#", qos=1)
    gw = through(gateway, broker, link)
    # A known identity first (no will, a graceful end), then the link cut
    # before the leaf connects with its will: no upstream ever carries that
    # CONNECT to the broker, so the broker has no will of its own to publish
    # when a connection drops (had one been up at the cut, it would publish
    # it then, ahead of everything: a race this test used to have).
    lf = gw.connected_leaf("ob-w")
    lf.disconnect()
    assert wait_until(lambda: metric(gw, "upstreams_up") == 0, 10)
    link.cut()
    lf = gw.leaf("ob-w")
    assert lf.connect(keepalive=2, will=("ob/w/will", b"gone")) == sn.RC_ACCEPTED
    tid = lf.register("ob/w/t")
    for i in range(3):
        assert lf.publish(tid, b"%d" % i, qos=1, timeout=2) == sn.RC_ACCEPTED
    lf.close()   # silent: lost after the keep-alive
    assert wait_until(lambda: metric(gw, "leaves_lost") == 1, 10)
    link.restore()
    assert payloads(bc, 4) == [b"0", b"1", b"2", b"gone"]
    bc.expect_none(0.5)      # and the will only once


def test_messages_older_than_the_ttl_expire(broker, gateway, link, broker_client):
    bc, gw, lf, tid = one_leaf(gateway, broker, link, broker_client, "e", outbox={"ttl_s": 1})
    for i in range(3):
        assert lf.publish(tid, b"%d" % i, qos=1, timeout=2) == sn.RC_ACCEPTED
    assert wait_until(lambda: metric(gw, "outbox_expired") == 3, 15)
    assert metric(gw, "outbox_messages") == 0
    link.restore()
    assert lf.publish(tid, b"fresh", qos=1) == sn.RC_ACCEPTED
    assert payloads(bc, 1) == [b"fresh"]


def test_the_drain_is_paced_per_connection(broker, gateway, link, broker_client):
    bc, gw, lf, tid = one_leaf(gateway, broker, link, broker_client, "p",
                               outbox={"rate_per_leaf": 20})
    for i in range(40):
        assert lf.publish(tid, b"%d" % i, qos=1, timeout=2) == sn.RC_ACCEPTED
    link.restore()
    got = bc.wait_messages(40, timeout=30)
    assert [int(m.payload) for m in got] == list(range(40))
    # 40 messages at 20/s (a burst of 2): not faster than the rate allows.
    assert got[-1].t - got[0].t >= 1.5, got[-1].t - got[0].t


def test_a_quiet_leaf_is_not_kept_waiting_by_the_commit_interval(broker, gateway, link,
                                                                broker_client):
    # outbox.commit_ms bounds how often the outbox commits, not how long a
    # message waits: after a quiet spell a publish is committed (and
    # acknowledged) in the next loop turn.  One that follows within the
    # interval waits for it.  1,000 ms makes the two cases far apart.
    _, gw, lf, tid = one_leaf(gateway, broker, link, broker_client, "q",
                              outbox={"commit_ms": 1000})
    time.sleep(1.2)                                    # nothing committed for > 1 s
    t0 = time.monotonic()
    assert lf.publish(tid, b"first", qos=1, timeout=5) == sn.RC_ACCEPTED
    first = time.monotonic() - t0
    t1 = time.monotonic()
    assert lf.publish(tid, b"second", qos=1, timeout=5) == sn.RC_ACCEPTED
    second = time.monotonic() - t1
    assert first < 0.6, first                          # not the 1 s interval
    assert second > 0.3, second                        # the rest of the interval
    assert metric(gw, "outbox_messages") == 2


def test_by_default_each_publish_is_committed_in_the_next_loop_turn(broker, gateway, link,
                                                                    broker_client):
    # outbox.commit_ms 0 (the default): no interval between commits, so a
    # leaf that publishes again as soon as it has its PUBACK waits for its
    # own commit only, every time.  With an interval (the test above, 1 s)
    # every publish after the first would wait for the rest of it.
    _, gw, lf, tid = one_leaf(gateway, broker, link, broker_client, "t")
    assert gw.config.get("outbox", {}).get("commit_ms") is None   # the default
    before = metric(gw, "outbox_commits")
    waits = []
    for i in range(5):
        t0 = time.monotonic()
        assert lf.publish(tid, b"m%d" % i, qos=1, timeout=5) == sn.RC_ACCEPTED
        waits.append(time.monotonic() - t0)
    assert max(waits) < 0.3, waits
    assert metric(gw, "outbox_messages") == 5
    assert metric(gw, "outbox_commits") - before >= 5              # one each


def test_without_the_outbox_nothing_is_stored(broker, gateway, link, broker_client):
    _, gw, lf, tid = one_leaf(gateway, broker, link, broker_client, "off",
                              outbox={"enabled": False})
    mid = lf.publish(tid, b"x", qos=1, wait=False)
    with pytest.raises(sn.Timeout):
        lf.wait_ack(mid, qos=1, timeout=1.0)
    with registry_db(gw.config["registry"]["path"]) as con:
        assert con.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0
    link.restore()
    assert lf.wait_ack(mid, qos=1, timeout=10) == sn.RC_ACCEPTED


def test_when_the_uplink_is_back_every_upstream_tries_at_once(broker, gateway, link):
    # Long back-offs, as after a real outage: without the sweep each leaf
    # would wait out its own (here up to 30 s) after the link returns.
    gw = gateway(broker, upstream={"port": link.port, "backoff_base_ms": 3000,
                                   "backoff_cap_ms": 30000})
    leaves = [gw.connected_leaf("ob-u%d" % i) for i in range(4)]
    assert wait_until(lambda: metric(gw, "upstreams_up") == 4, 10)
    link.cut()
    time.sleep(7)               # two or three failed attempts each: back-offs of 6..24 s
    link.restore()
    # The first back-off to end brings the others with it (through the
    # pacer), instead of each leaf's jittered back-off of its own.
    assert wait_until(lambda: metric(gw, "upstreams_up") >= 1, 30)
    t1 = time.monotonic()
    assert wait_until(lambda: metric(gw, "upstreams_up") == 4, 30)
    assert time.monotonic() - t1 < 2.5, time.monotonic() - t1
    assert all(lf.ping() is not None for lf in leaves)
