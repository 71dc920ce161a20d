#!/usr/bin/python3
"""fakegw - a small Python model of fleetgw's LAN behaviour, used only to
check the integration tests themselves (the tests are written from the spec
before the C gateway exists; running them against a model shakes out
mistakes in the tests).  Not a product, not used by the suite by default:

    FLEETGW_BIN=tests/integration/fakegw.py /usr/bin/python3 -m pytest tests/integration

It takes the same --config JSON as fleetgw (the keys the tests use), logs
"ready" once bound, logs "metrics {json}" on SIGUSR1 and exits 0 on SIGTERM.
One paho-mqtt client per leaf; paho callbacks only queue events, the main
loop does all the work.
"""
import argparse
import json
import os
import queue
import select
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "leaf"))
import mqttsn_leaf as sn  # noqa: E402
import paho.mqtt.client as paho  # noqa: E402


def log(msg):
    sys.stderr.write("%s INFO  fakegw: %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%S"), msg))
    sys.stderr.flush()


class Session:
    def __init__(self, cid, addr, keepalive):
        self.cid = cid
        self.addr = addr
        self.keepalive = keepalive
        self.state = "connecting"    # connecting, active, asleep, awake
        self.last_rx = time.monotonic()
        self.will = None             # [topic, msg, qos, retain]
        self.will_stage = None
        self.client = None
        self.connect_started = time.monotonic()
        self.topics = {}             # name -> id
        self.next_tid = 1
        self.subs = {}               # filter -> (qos, kind) kind: name/predefined/short
        self.pending_reg = {}        # msg_id -> (tid, name)
        self.out_queue = []          # (topic, payload, qos, retain) awaiting delivery
        self.inflight = None         # dict for the one outstanding PUBLISH to the leaf
        self.sleep_until = None
        self.next_mid = 1
        self.up_mid_to_leaf = {}     # upstream mid -> (kind, leaf msg id, topic id)
        self.qos2 = {}               # leaf msg id -> (topic, payload, retain)
        self.down_since = None
        self.draining = False

    def mid(self):
        m = self.next_mid
        self.next_mid = m % 0xFFFF + 1
        return m


class FakeGw:
    def __init__(self, cfg):
        self.cfg = cfg
        lan, up = cfg.get("lan", {}), cfg.get("upstream", {})
        self.lan, self.up = lan, up
        self.gw_id = cfg.get("gateway_id", 1)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((lan.get("bind", "0.0.0.0"), lan.get("port", 1884)))
        self.sock.setblocking(False)
        self.sessions = {}
        self.by_addr = {}
        self.events = queue.Queue()
        self.metrics = dict(datagrams_malformed=0, qos_m1_dropped=0, queue_dropped=0,
                            leaves_active=0)
        self.predef = {int(k): v for k, v in lan.get("predefined_topics", {}).items()}
        self.predef_by_name = {v: k for k, v in self.predef.items()}
        self.stop = False
        self.dump = False
        self.m1 = None
        adv = lan.get("advertise", {})
        self.adv_addr = adv.get("address")
        self.adv_port = adv.get("port", 1884)
        self.adv_interval = adv.get("interval_s", 900)
        self.next_adv = time.monotonic()
        if up.get("qos_minus1_client_id"):
            self.m1 = self.make_client(up["qos_minus1_client_id"], None, "__m1__")
        signal.signal(signal.SIGUSR1, lambda *a: setattr(self, "dump", True))
        signal.signal(signal.SIGTERM, lambda *a: setattr(self, "stop", True))

    # --- upstream ---------------------------------------------------------
    def make_client(self, client_id, sess, key):
        up = self.up
        c = paho.Client(client_id=client_id, clean_session=True, protocol=paho.MQTTv311)
        if up.get("tls", True):
            cert, keyf = up.get("cert_file"), up.get("key_file")
            if up.get("cert_dir") and sess is not None:
                cert = os.path.join(up["cert_dir"], sess.cid + ".crt")
                keyf = os.path.join(up["cert_dir"], sess.cid + ".key")
                if not os.path.exists(cert):
                    return None
            c.tls_set(ca_certs=up.get("ca_file"), certfile=cert, keyfile=keyf)
        if sess is not None and sess.will:
            c.will_set(sess.will[0], sess.will[1], sess.will[2], sess.will[3])
        c.reconnect_delay_set(max(1, up.get("backoff_base_ms", 1000) // 1000),
                              max(1, up.get("backoff_cap_ms", 60000) // 1000))
        ev = self.events
        c.on_connect = lambda cl, u, f, rc: ev.put(("connect", key, rc))
        c.on_disconnect = lambda cl, u, rc: ev.put(("disconnect", key, rc))
        c.on_publish = lambda cl, u, mid: ev.put(("puback", key, mid))
        c.on_message = lambda cl, u, m: ev.put(("message", key, (m.topic, m.payload, m.qos,
                                                                   m.retain)))
        c.connect_async(up.get("host"), up.get("port", 1883), up.get("keepalive_s", 60))
        c.loop_start()
        return c

    # --- LAN helpers ------------------------------------------------------
    def send(self, addr, data):
        try:
            self.sock.sendto(data, addr)
        except OSError:
            pass

    def drop_session(self, s, publish_will=False):
        if publish_will and s.will and s.client is not None:
            s.client.publish(s.will[0], s.will[1], s.will[2], s.will[3])
            time.sleep(0.05)
        if s.client is not None:
            c = s.client
            c.disconnect()
            c.loop_stop()
        if self.sessions.get(s.cid) is s:
            del self.sessions[s.cid]
        if self.by_addr.get(s.addr) is s.cid:
            del self.by_addr[s.addr]
        self.update_gauge()

    def update_gauge(self):
        self.metrics["leaves_active"] = sum(1 for s in self.sessions.values()
                                               if s.state != "connecting")

    # --- main loop --------------------------------------------------------
    def run(self):
        log("ready on %s:%d" % self.sock.getsockname())
        while not self.stop:
            r, _, _ = select.select([self.sock], [], [], 0.02)
            if r:
                for _ in range(64):
                    try:
                        data, addr = self.sock.recvfrom(65535)
                    except BlockingIOError:
                        break
                    self.on_datagram(data, addr)
            while True:
                try:
                    ev = self.events.get_nowait()
                except queue.Empty:
                    break
                self.on_event(*ev)
            self.timers()
            if self.dump:
                self.dump = False
                log("metrics " + json.dumps(self.metrics))
        clients = []
        for s in list(self.sessions.values()):
            self.send(s.addr, sn.encode_disconnect())
            if s.client is not None:
                s.client.disconnect()
                clients.append(s.client)
        for c in clients:
            c._thread_terminate = True   # stop all loops together, not one by one
        for c in clients:
            c.loop_stop()
        if self.m1:
            self.m1.disconnect()
            self.m1.loop_stop()
        log("stopped")
        return 0

    def timers(self):
        now = time.monotonic()
        for s in list(self.sessions.values()):
            if s.state == "connecting":
                if now - s.connect_started > self.lan.get("connack_timeout_ms", 10000) / 1000:
                    self.send(s.addr, sn.encode_connack(sn.RC_CONGESTION))
                    self.drop_session(s)
                continue
            if s.state == "active" and s.keepalive and now - s.last_rx > 1.5 * s.keepalive:
                log("%s lost" % s.cid)
                self.drop_session(s, publish_will=True)
                continue
            if s.state == "asleep" and s.sleep_until and now > s.sleep_until:
                self.drop_session(s, publish_will=True)
                continue
            if s.down_since and now - s.down_since > self.up.get("give_up_after_s", 120):
                self.send(s.addr, sn.encode_disconnect())
                self.drop_session(s)
                continue
            f = s.inflight
            if f and f.get("sent") and now - f["sent"] > self.lan.get("t_retry_ms", 10000) / 1000:
                if f["tries"] >= self.lan.get("n_retry", 3):
                    s.inflight = None
                else:
                    f["tries"] += 1
                    f["sent"] = now
                    self.send(s.addr, f["dup"])
            self.pump(s)
        if self.adv_addr and now >= self.next_adv:
            self.send((self.adv_addr, self.adv_port),
                      sn.encode_advertise(self.gw_id, self.adv_interval))
            self.next_adv = now + self.adv_interval

    # --- broker -> leaf ---------------------------------------------------
    def pump(self, s):
        """Send the next queued message to an active/awake leaf."""
        if s.inflight is not None or s.state not in ("active", "awake"):
            return
        if not s.out_queue:
            if s.state == "awake":
                self.send(s.addr, sn.encode_pingresp())
                s.state = "asleep"
            return
        topic, payload, qos, retain = s.out_queue[0]
        if topic in self.predef_by_name and any(k == "predefined" for _, k in s.subs.values()):
            tid, tt = self.predef_by_name[topic], sn.TID_PREDEFINED
        elif len(topic) == 2 and s.subs.get(topic, (0, ""))[1] == "short":
            tid, tt = sn.short_topic_id(topic), sn.TID_SHORT
        elif topic in s.topics:
            tid, tt = s.topics[topic], sn.TID_NORMAL
        else:
            tid = s.next_tid
            s.next_tid += 1
            mid = s.mid()
            s.pending_reg[mid] = (tid, topic)
            s.inflight = {"kind": "register", "mid": mid}
            self.send(s.addr, sn.encode_register(tid, mid, topic))
            return
        s.out_queue.pop(0)
        mid = s.mid() if qos > 0 else 0
        data = sn.encode_publish(tid, payload, qos=qos, msg_id=mid, topic_id_type=tt,
                                 retain=retain)
        self.send(s.addr, data)
        if qos > 0:
            s.inflight = {"kind": "publish", "mid": mid, "sent": time.monotonic(), "tries": 0,
                          "dup": sn.encode_publish(tid, payload, qos=qos, msg_id=mid,
                                                   topic_id_type=tt, retain=retain, dup=True)}

    def on_event(self, kind, key, arg):
        if key == "__m1__":
            return
        s = self.sessions.get(key)
        if s is None:
            return
        if kind == "connect":
            if arg != 0:
                return
            if s.state == "connecting":
                s.state = "active"
                s.last_rx = time.monotonic()
                self.update_gauge()
                self.send(s.addr, sn.encode_connack(0))
            s.down_since = None
            for f, (q, k) in s.subs.items():
                s.client.subscribe(f if k != "predefined" else self.predef[int(f)], q)
        elif kind == "disconnect":
            if arg != 0 and s.down_since is None:
                s.down_since = time.monotonic()
        elif kind == "puback":
            what = s.up_mid_to_leaf.pop(arg, None)
            if what and what[0] == "puback":
                self.send(s.addr, sn.encode_puback(what[2], what[1], 0))
        elif kind == "message":
            if s.state == "asleep" and len(s.out_queue) >= self.lan.get("queue_max", 100):
                self.metrics["queue_dropped"] += 1
                return
            s.out_queue.append(arg)
            self.pump(s)

    # --- leaf -> gateway --------------------------------------------------
    def on_datagram(self, data, addr):
        try:
            m = sn.decode(data)
        except sn.DecodeError:
            self.metrics["datagrams_malformed"] += 1
            return
        t = m.type
        if t == sn.SEARCHGW:
            self.send(addr, sn.encode_gwinfo(self.gw_id))
            return
        if t == sn.CONNECT:
            return self.on_connect(m, addr)
        if t == sn.PUBLISH and sn.Flags.parse(m.flags).qos == -1:
            fl = sn.Flags.parse(m.flags)
            topic = (self.predef.get(m.topic_id) if fl.topic_id_type == sn.TID_PREDEFINED
                     else sn.short_topic_name(m.topic_id))
            if self.m1 is None or topic is None:
                self.metrics["qos_m1_dropped"] += 1
            else:
                self.m1.publish(topic, m.data, 0)
            return
        cid = self.by_addr.get(addr)
        if t == sn.PINGREQ and m.client_id:
            cid = m.client_id.decode()
        s = self.sessions.get(cid) if cid else None
        if s is None:
            self.send(addr, sn.encode_disconnect())
            return
        s.last_rx = time.monotonic()
        if t == sn.WILLTOPIC and s.will_stage == "topic":
            fl = sn.Flags.parse(m.flags or 0)
            s.will = [m.topic.decode(), b"", max(fl.qos, 0), fl.retain]
            s.will_stage = "msg"
            self.send(addr, sn.encode_willmsgreq())
        elif t == sn.WILLMSG and s.will_stage == "msg":
            s.will[1] = m.msg
            s.will_stage = None
            self.start_upstream(s)
        elif t == sn.REGISTER:
            name = m.topic_name.decode()
            if name not in s.topics:
                s.topics[name] = s.next_tid
                s.next_tid += 1
            self.send(addr, sn.encode_regack(s.topics[name], m.msg_id, 0))
        elif t == sn.REGACK:
            reg = s.pending_reg.pop(m.msg_id, None)
            if reg:
                s.topics[reg[1]] = reg[0]
                s.inflight = None
                self.pump(s)
        elif t == sn.PUBLISH:
            self.on_publish(s, m)
        elif t == sn.PUBREL:
            q = s.qos2.pop(m.msg_id, None)
            if q:
                s.client.publish(q[0], q[1], 1, q[2])
            self.send(addr, sn.encode_pubcomp(m.msg_id))
        elif t == sn.PUBACK:
            if s.inflight and s.inflight.get("mid") == m.msg_id:
                s.inflight = None
                self.pump(s)
        elif t == sn.SUBSCRIBE:
            fl = sn.Flags.parse(m.flags)
            q = min(max(fl.qos, 0), 1)
            if fl.topic_id_type == sn.TID_PREDEFINED:
                if m.topic_id not in self.predef:
                    self.send(addr, sn.encode_suback(0, m.msg_id, 2, qos=q))
                    return
                s.subs[str(m.topic_id)] = (q, "predefined")
                s.client.subscribe(self.predef[m.topic_id], q)
                tid = m.topic_id
            elif fl.topic_id_type == sn.TID_SHORT:
                name = sn.short_topic_name(m.topic_id)
                s.subs[name] = (q, "short")
                s.client.subscribe(name, q)
                tid = m.topic_id
            else:
                name = m.topic_name.decode()
                s.subs[name] = (q, "name")
                s.client.subscribe(name, q)
                if "+" in name or "#" in name:
                    tid = 0
                else:
                    if name not in s.topics:
                        s.topics[name] = s.next_tid
                        s.next_tid += 1
                    tid = s.topics[name]
            self.send(addr, sn.encode_suback(tid, m.msg_id, 0, qos=q))
        elif t == sn.UNSUBSCRIBE:
            fl = sn.Flags.parse(m.flags)
            name = (m.topic_name.decode() if fl.topic_id_type == sn.TID_NORMAL
                    else self.predef.get(m.topic_id, ""))
            s.subs.pop(name, None)
            s.client.unsubscribe(name)
            self.send(addr, sn.encode_unsuback(m.msg_id))
        elif t == sn.PINGREQ:
            if m.client_id and s.state == "asleep":
                s.state = "awake"
                self.pump(s)
            else:
                self.send(addr, sn.encode_pingresp())
        elif t == sn.DISCONNECT:
            self.send(addr, sn.encode_disconnect())
            if m.duration:
                s.state = "asleep"
                s.sleep_until = time.monotonic() + 1.5 * m.duration
            else:
                self.drop_session(s)
        elif t in (sn.WILLTOPICUPD, sn.WILLMSGUPD):
            self.send(addr, sn.encode_willtopicresp(3) if t == sn.WILLTOPICUPD
                      else sn.encode_willmsgresp(3))

    def on_connect(self, m, addr):
        cid = m.client_id.decode("utf-8", "replace")
        if m.protocol_id != 1 or len(cid) > self.lan.get("max_client_id_len", 23):
            self.send(addr, sn.encode_connack(sn.RC_NOT_SUPPORTED))
            return
        old = self.sessions.get(cid)
        if old is not None and old.state in ("asleep", "awake"):
            old.state = "active"
            old.addr = addr
            old.last_rx = time.monotonic()
            self.by_addr[addr] = cid
            self.send(addr, sn.encode_connack(0))
            self.pump(old)
            return
        if old is not None:
            self.drop_session(old)
        s = Session(cid, addr, m.duration)
        self.sessions[cid] = s
        self.by_addr[addr] = cid
        if sn.Flags.parse(m.flags).will:
            s.will_stage = "topic"
            self.send(addr, sn.encode_willtopicreq())
        else:
            self.start_upstream(s)

    def start_upstream(self, s):
        tmpl = self.up.get("client_id_template", "{client_id}")
        cid = tmpl.replace("{client_id}", s.cid).replace("{gateway_id}", str(self.gw_id))
        s.connect_started = time.monotonic()
        s.client = self.make_client(cid, s, s.cid)
        if s.client is None:
            self.send(s.addr, sn.encode_connack(sn.RC_NOT_SUPPORTED))
            del self.sessions[s.cid]

    def on_publish(self, s, m):
        fl = sn.Flags.parse(m.flags)
        if fl.topic_id_type == sn.TID_PREDEFINED:
            topic = self.predef.get(m.topic_id)
        elif fl.topic_id_type == sn.TID_SHORT:
            topic = sn.short_topic_name(m.topic_id)
        else:
            topic = {v: k for k, v in s.topics.items()}.get(m.topic_id)
        if topic is None:
            self.send(s.addr, sn.encode_puback(m.topic_id, m.msg_id, sn.RC_INVALID_TOPIC_ID))
            return
        if fl.qos == 2:
            if m.msg_id not in s.qos2:
                s.qos2[m.msg_id] = (topic, m.data, fl.retain)
            self.send(s.addr, sn.encode_pubrec(m.msg_id))
            return
        info = s.client.publish(topic, m.data, fl.qos, fl.retain)
        if fl.qos == 1:
            s.up_mid_to_leaf[info.mid] = ("puback", m.msg_id, m.topic_id)
            try:
                done = info.is_published()
            except RuntimeError:      # not connected: paho keeps it for the reconnect
                done = False
            if done:
                self.events.put(("puback", s.cid, info.mid))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    a = p.parse_args()
    with open(a.config) as f:
        cfg = json.load(f)
    return FakeGw(cfg).run()


if __name__ == "__main__":
    sys.exit(main())
