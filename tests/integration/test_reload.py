"""SIGHUP reloads the configuration (README "Running it").

The real gateway is started, its file changed (log level, admission policy
and allowlist, the admin token's file, a key that needs a restart), SIGHUP
sent: the live keys take effect (the new token works and the old one is
refused, the policy refuses one leaf and admits another, debug lines
appear), the connected leaf keeps its session, the process keeps running.
An invalid file on SIGHUP keeps the old configuration; a burst of SIGHUPs
is harmless.
"""
import json
import os
import signal
import socket
import urllib.error
import urllib.request

import mqttsn_leaf as sn
from conftest import LOOPBACK, free_port, wait_until

TOKEN_A = "token-a-0123456789abcdef"
TOKEN_B = "token-b-fedcba9876543210"


def http_status(port, token):
    req = urllib.request.Request("http://%s:%d/api/v1/devices" % (LOOPBACK, port),
                                 headers={"Authorization": "Bearer " + token})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return None   # not listening yet: start() polls until it is


def write_token(path, token):
    path.write_text(token + "\n")
    os.chmod(path, 0o600)


def start(gateway, broker, tmp_path, limits=None, **over):
    tok = tmp_path / "admin.token"
    write_token(tok, TOKEN_A)
    port = free_port()
    web = {"enabled": True, "bind": LOOPBACK, "port": port, "admin_token_file": str(tok)}
    gw = gateway(broker, log_level="info", web=web,
                 admission=dict({"policy": "open", "pattern": "*"}, **(limits or {})), **over)
    assert wait_until(lambda: http_status(port, TOKEN_A) == 200, 10)
    return gw, port, tok


def rewrite(gw, **changes):
    cfg = json.loads(gw.config_path.read_text())
    for k, v in changes.items():
        if isinstance(v, dict):
            cfg.setdefault(k, {}).update(v)
        else:
            cfg[k] = v
    gw.config_path.write_text(json.dumps(cfg, indent=2))


def hup_and_wait(gw, what):
    before = gw.log_text().count(what)
    os.kill(gw.proc.pid, signal.SIGHUP)
    assert wait_until(lambda: gw.log_text().count(what) > before, 5), gw.log_text()[-3000:]


def test_sighup_reloads_live_keys(gateway, broker, tmp_path):
    gw, port, tok = start(gateway, broker, tmp_path)
    log = gw.log_text()
    # The dashboard of this source tree is found next to the build directory.
    assert "web: dashboard (index.html) served from" in log, log
    leaf = gw.connected_leaf("leaf-1")
    assert leaf.register("reload/a") > 0
    assert " DEBUG " not in gw.log_text()

    write_token(tok, TOKEN_B)
    new_port = free_port(socket.SOCK_DGRAM)
    rewrite(gw, log_level="debug",
            admission={"policy": "allowlist", "allowlist": ["leaf-1", "ok-*"]},
            lan={"port": new_port})
    mark = len(gw.log_text())
    hup_and_wait(gw, "SIGHUP: configuration reloaded")
    after = gw.log_text()[mark:]
    assert "log_level" in after and "admission.policy" in after
    assert "admission.allowlist" in after
    assert "web tokens reloaded (changed)" in after
    assert "needing a restart (still the old values): lan.port" in after
    assert gw.alive()

    # The new token works, the old one is refused.
    assert http_status(port, TOKEN_B) == 200
    assert http_status(port, TOKEN_A) == 401
    # The policy: an unlisted ClientId is refused, a listed one admitted.
    assert gw.leaf("stranger-1").connect() != sn.RC_ACCEPTED
    assert gw.leaf("ok-2").connect() == sn.RC_ACCEPTED
    # The leaf connected before keeps its session; debug lines now appear.
    assert leaf.register("reload/b") > 0
    assert " DEBUG " in gw.log_text()[mark:]
    # The LAN port needs a restart: still the old one.
    assert gw.leaf("ok-3").connect() == sn.RC_ACCEPTED


def test_invalid_file_on_sighup_keeps_the_old_config(gateway, broker, tmp_path):
    gw, port, tok = start(gateway, broker, tmp_path)
    leaf = gw.connected_leaf("leaf-1")
    good = gw.config_path.read_text()
    write_token(tok, TOKEN_B)
    cfg = json.loads(good)
    cfg["admission"]["policy"] = "allowlist"
    cfg["log_level"] = "loud"
    cfg["lan"]["bnd"] = "x"
    gw.config_path.write_text(json.dumps(cfg))
    mark = len(gw.log_text())
    hup_and_wait(gw, "still running with the configuration loaded before")
    after = gw.log_text()[mark:]
    # Every error is named, with the file and the key.
    assert "SIGHUP: %s: log_level: expected one of" % gw.config_path in after
    assert "lan.bnd: unknown key" in after
    assert "configuration reloaded" not in after
    assert gw.alive()
    # Nothing changed: the old token, the open policy.
    assert http_status(port, TOKEN_A) == 200
    assert http_status(port, TOKEN_B) == 401
    assert gw.leaf("anyone-1").connect() == sn.RC_ACCEPTED
    assert leaf.register("reload/c") > 0

    # Broken JSON too.
    gw.config_path.write_text("{\"log_level\": ")
    hup_and_wait(gw, "still running with the configuration loaded before")
    assert gw.alive()


def test_burst_of_sighups(gateway, broker, tmp_path):
    gw, port, _ = start(gateway, broker, tmp_path)
    leaf = gw.connected_leaf("leaf-1")
    for _ in range(50):
        os.kill(gw.proc.pid, signal.SIGHUP)
    assert wait_until(lambda: "SIGHUP: configuration reloaded" in gw.log_text(), 5)
    assert gw.alive()
    assert "no changed key needs a restart" in gw.log_text()
    assert http_status(port, TOKEN_A) == 200
    assert leaf.register("reload/d") > 0


def test_sighup_reloads_the_new_identity_limits(gateway, broker, tmp_path):
    """admission.new_ids_per_ip lowered by SIGHUP: the address's bucket is
    capped at the new count at once, new ClientIds beyond it are throttled,
    a known one still connects."""
    gw, port, tok = start(gateway, broker, tmp_path,
                          limits={"new_ids_per_ip": 50, "new_ids_per_port": 0, "new_ids": 0})
    first = gw.leaf("nid-1")
    assert first.connect() == sn.RC_ACCEPTED
    assert gw.leaf("nid-2").connect() == sn.RC_ACCEPTED
    rewrite(gw, admission={"new_ids_per_ip": 1})
    mark = len(gw.log_text())
    hup_and_wait(gw, "SIGHUP: configuration reloaded")
    assert "admission.new_ids_per_ip" in gw.log_text()[mark:]
    # The address's bucket held 48 of 50: now at most 1, so one more new
    # ClientId passes and the next is throttled ("congestion").
    assert gw.leaf("nid-3").connect() == sn.RC_ACCEPTED
    assert gw.leaf("nid-4").connect() == sn.RC_CONGESTION
    assert first.connect() == sn.RC_ACCEPTED  # known: no new identity
    assert gw.alive()
