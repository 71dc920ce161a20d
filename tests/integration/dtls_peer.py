"""Independent DTLS peers for the integration tests: `openssl s_client` as an
MQTT-SN leaf over DTLS 1.2, and hand-built ClientHellos (RFC 6347 §4.2.1,
§4.3.2) for the cookie tests.  Nothing here shares code with the gateway.

s_client writes what it decrypts to stdout and turns each read() of its stdin
into one record.  So a datagram is one write to stdin, and the leaf waits
for the answer before it sends the next one: two writes that s_client reads
at once would become one record.  Replies are split by the MQTT-SN length
header (spec §5.2.1).
"""
import os
import random
import select
import struct
import subprocess
import threading
import time

import mqttsn_leaf as sn


class DtlsLeafError(RuntimeError):
    pass


class SClientLeaf:
    """One leaf: `openssl s_client -dtls1_2` to the gateway's DTLS port, with a
    PSK (identity, hex key) or a certificate (cert, key, and the CA that
    signed the gateway's certificate)."""

    def __init__(self, port, psk_identity=None, psk_hex=None, cert=None, key=None, ca=None,
                 ciphers=None, mtu=1200, host="127.0.0.1"):
        args = ["openssl", "s_client", "-dtls1_2", "-connect", "%s:%d" % (host, port),
                "-quiet", "-no_ign_eof", "-nocommands", "-mtu", str(mtu)]
        if psk_hex is not None:
            args += ["-psk", psk_hex, "-psk_identity", psk_identity]
            args += ["-cipher", ciphers or "PSK-AES128-CCM8"]
        else:
            args += ["-cert", str(cert), "-key", str(key), "-CAfile", str(ca),
                     "-verify_return_error"]
            if ciphers:
                args += ["-cipher", ciphers]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self._buf = b""
        self._msgs = []
        self._cv = threading.Condition()
        self._err = []
        threading.Thread(target=self._read_out, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    # --- plumbing -------------------------------------------------------
    def _read_out(self):
        fd = self.proc.stdout.fileno()
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            with self._cv:
                if not data:
                    self._msgs.append(None)  # end of stream
                    self._cv.notify_all()
                    return
                self._buf += data
                while True:
                    n = self._frame_len()
                    if n is None or len(self._buf) < n:
                        break
                    frame, self._buf = self._buf[:n], self._buf[n:]
                    self._msgs.append(sn.decode(frame))
                self._cv.notify_all()

    def _frame_len(self):
        if not self._buf:
            return None
        if self._buf[0] != 0x01:
            return self._buf[0]
        if len(self._buf) < 3:
            return None
        return struct.unpack(">H", self._buf[1:3])[0]

    def _read_err(self):
        for line in self.proc.stderr:
            self._err.append(line.decode("utf-8", "replace"))

    def stderr(self):
        return "".join(self._err)

    def alive(self):
        return self.proc.poll() is None

    def send(self, data):
        if not self.alive():
            raise DtlsLeafError("s_client has exited: %s" % self.stderr())
        self.proc.stdin.write(bytes(data))
        self.proc.stdin.flush()

    def expect(self, types, timeout=5.0):
        """The next message of one of types (others before it are dropped)."""
        if isinstance(types, int):
            types = (types,)
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                while self._msgs:
                    m = self._msgs.pop(0)
                    if m is None:
                        self._msgs.insert(0, None)
                        raise DtlsLeafError("the DTLS association ended: %s" % self.stderr())
                    if m.type in types:
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise sn.Timeout("no %s over DTLS" % (types,))
                self._cv.wait(left)

    def wait_closed(self, timeout=5.0):
        """True when s_client ended (the association was closed)."""
        try:
            self.proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def shutdown(self):
        """End of input: s_client sends close_notify and exits."""
        self.proc.stdin.close()

    def close(self):
        if self.alive():
            self.proc.kill()
            self.proc.wait(5)

    # --- MQTT-SN --------------------------------------------------------
    def connect(self, client_id, keepalive=60, timeout=5.0):
        self.send(sn.encode_connect(client_id, keepalive))
        return self.expect(sn.CONNACK, timeout).rc

    def ping(self, timeout=5.0):
        self.send(sn.encode_pingreq())
        self.expect(sn.PINGRESP, timeout)

    def register(self, topic, timeout=5.0):
        self.send(sn.encode_register(0, 1, topic))
        m = self.expect(sn.REGACK, timeout)
        assert m.rc == sn.RC_ACCEPTED
        return m.topic_id

    def publish(self, topic_id, payload, qos=1, msg_id=7, timeout=5.0):
        self.send(sn.encode_publish(topic_id, payload, qos=qos, msg_id=msg_id))
        if qos == 1:
            return self.expect(sn.PUBACK, timeout).rc
        return None


# --- ClientHellos built by hand -------------------------------------------
# TLS_PSK_WITH_AES_128_CCM_8, TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8,
# TLS_PSK_WITH_AES_128_GCM_SHA256 (RFC 6655, RFC 7251, RFC 5487).
SUITES = (0xC0A8, 0xC0AE, 0x00A8)


def client_hello(cookie=b"", suites=SUITES, seq=0):
    """One DTLS 1.2 ClientHello record (RFC 6347 §4.2.1, §4.3.2), unfragmented,
    with no extensions."""
    body = b"\xfe\xfd" + os.urandom(32) + b"\x00"            # version, random, no session id
    body += bytes([len(cookie)]) + cookie
    cs = b"".join(struct.pack(">H", s) for s in suites)
    body += struct.pack(">H", len(cs)) + cs + b"\x01\x00"    # suites; compression: null
    n = len(body)
    hs = bytes([1]) + n.to_bytes(3, "big") + struct.pack(">H", 0) + (0).to_bytes(3, "big") \
        + n.to_bytes(3, "big") + body
    return bytes([22]) + b"\xfe\xfd" + struct.pack(">H", 0) + seq.to_bytes(6, "big") \
        + struct.pack(">H", len(hs)) + hs


def hello_verify_cookie(record):
    """The cookie of a HelloVerifyRequest record, or None when it is not one."""
    if len(record) < 13 + 12 + 3 or record[0] != 22 or record[13] != 3:
        return None
    body = record[25:]
    return body[3:3 + body[2]]


def random_loopback():
    return "127.%d.%d.%d" % (random.randint(1, 254), random.randint(0, 254),
                             random.randint(2, 254))


def readable(sock, timeout):
    return bool(select.select([sock], [], [], timeout)[0])
