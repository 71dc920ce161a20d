"""Self-checks of the integration harness itself (no gateway needed): the
test PKI, mosquitto start/stop/restart/pause in plain and TLS mode, and the
independent paho client."""
import ssl
import subprocess
import time

import paho.mqtt.client as paho
import pytest

from conftest import LOOPBACK, deep_merge, find_metric, gateway_config


def _openssl(*args):
    return subprocess.run(["openssl"] + [str(a) for a in args], capture_output=True, text=True,
                          timeout=30)


def test_certs_chain_and_names(certs):
    for crt in (certs.server_crt, certs.gateway_crt, certs.tester_crt):
        r = _openssl("verify", "-CAfile", certs.ca_crt, crt)
        assert r.returncode == 0 and ": OK" in r.stdout, r.stderr
    text = _openssl("x509", "-in", certs.server_crt, "-noout", "-text").stdout
    assert "DNS:localhost" in text and "IP Address:127.0.0.1" in text
    assert "TLS Web Server Authentication" in text
    subj = _openssl("x509", "-in", certs.gateway_crt, "-noout", "-subject").stdout
    assert "CN = gateway" in subj
    assert "TLS Web Client Authentication" in _openssl(
        "x509", "-in", certs.gateway_crt, "-noout", "-text").stdout


def test_cert_dir_per_client_id(certs):
    d = certs.cert_dir(["leaf-a", "leaf-b"])
    for cid in ("leaf-a", "leaf-b"):
        assert (d / (cid + ".crt")).exists() and (d / (cid + ".key")).exists()
        subj = _openssl("x509", "-in", d / (cid + ".crt"), "-noout", "-subject").stdout
        assert "CN = " + cid in subj
        # The key matches the certificate.
        pub_c = _openssl("x509", "-in", d / (cid + ".crt"), "-noout", "-pubkey").stdout
        pub_k = _openssl("pkey", "-in", d / (cid + ".key"), "-pubout").stdout
        assert pub_c == pub_k and pub_c


def test_plain_broker_pubsub_restart_pause(mosquitto, broker_client):
    b = mosquitto()
    bc = broker_client(b, client_id="selfcheck")
    assert bc.subscribe("self/#", qos=1) == (1,)
    bc.publish("self/a", b"1", qos=1)
    assert [m.payload for m in bc.wait_messages(1, topic="self/a")] == [b"1"]
    assert "selfcheck" in b.client_ids()
    assert b.wait_connected("selfcheck") == ""

    port = b.port
    b.restart(down_for=0.3)
    assert b.port == port and b.running()
    assert bc.wait_connected(15), "paho client did not reconnect after restart"
    time.sleep(0.3)   # the re-subscribe is sent from on_connect
    bc.publish("self/b", b"2", qos=1)
    assert [m.payload for m in bc.wait_messages(1, topic="self/b", timeout=5)] == [b"2"]
    assert b.client_ids().count("selfcheck") == 2

    # While paused the broker neither answers nor delivers; after resume it does.
    other = broker_client(b, client_id="pauser")
    b.pause()
    info = other.c.publish("self/c", b"3", qos=1)
    time.sleep(0.5)
    assert not info.is_published()
    b.resume()
    info.wait_for_publish(5)
    assert info.is_published()
    assert bc.wait_messages(1, topic="self/c")[0].payload == b"3"

    b.stop()
    assert not b.running()


def test_tls_broker_requires_client_cert(mosquitto, broker_client, certs):
    b = mosquitto(tls=True)
    bc = broker_client(b, client_id="tls-selfcheck")
    assert b.wait_connected("tls-selfcheck") == "tester"   # CN used as the user name
    bc.subscribe("t/x")
    bc.publish("t/x", b"ok")
    assert bc.wait_messages(1, topic="t/x")[0].payload == b"ok"

    # Without a client certificate the handshake is refused.
    c = paho.Client(client_id="nocert", protocol=paho.MQTTv311)
    c.tls_set(ca_certs=str(certs.ca_crt))
    with pytest.raises((ssl.SSLError, OSError)):
        c.connect(LOOPBACK, b.port, keepalive=5)
        # Some OpenSSL versions report the rejected certificate only on the
        # first read after the handshake.
        for _ in range(20):
            rc = c.loop(0.1)
            if rc != paho.MQTT_ERR_SUCCESS:
                raise OSError("connection dropped, rc=%d" % rc)
    assert "nocert" not in b.client_ids()


def test_config_helpers(certs, mosquitto):
    b = mosquitto(tls=True)
    cfg = gateway_config(1884, b, certs)
    assert cfg["lan"]["bind"] == "127.0.0.1" and cfg["upstream"]["tls"] is True
    assert cfg["upstream"]["port"] == b.port and cfg["upstream"]["cert_file"]
    merged = deep_merge(cfg, {"lan": {"queue_max": 3},
                              "upstream": {"cert_file": None, "key_file": None,
                                           "cert_dir": "/x"}})
    assert merged["lan"]["queue_max"] == 3 and merged["lan"]["port"] == 1884
    assert "cert_file" not in merged["upstream"] and merged["upstream"]["cert_dir"] == "/x"
    assert cfg["upstream"]["cert_file"]          # the original is untouched
    assert find_metric({"lan": {"datagrams_malformed": 4}}, "datagrams_malformed") == 4
    assert find_metric({"a": 1}, "b") is None
