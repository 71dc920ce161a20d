"""The dashboard in a real browser: Debian's Chromium driven by playwright-core
(tests/browser/dashboard_test.mjs) against a real fleetgw with its web
server, a real mosquitto and MQTT-SN leaves.

The setup (tests/browser/dashboard_setup.py, shared with the Firefox test):
the gateway admits by operator approval (admission.policy "approve") and
provisions with its own CA (backend local-ca, milliseconds), so a leaf that
an operator approves connects, is provisioned and becomes active at once.
Two leaves are connected (and active) before the browser opens; a third keeps
sending CONNECT every 0.5 s and stays pending until the browser clicks its
Approve button; the script then waits, without reloading, for its row to
read "active".  It also checks the LAN column (every leaf here came over
plain UDP), the Outbox column (the uplink is cut, through the TCP proxy of
test_outbox.py, before the browser opens, and one more leaf has
OUTBOX_WAITING QoS 1 messages stored for the cloud) and creates a DTLS key
for one active leaf from its panel: the key is shown once, then never again
(the registry holds it, the API only says it exists).

Needs: node (>= 18), /usr/bin/chromium, and tests/browser/node_modules
(`npm ci` here; this test runs it when the folder is missing).
Screenshots: $BUILD_DIR/dashboard.png and dashboard-device.png (BUILD_DIR
defaults to <repo>/build-test)."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import mqttsn_leaf as sn
from conftest import wait_until
from dashboard_setup import (ALLOWED, PENDING, TOKEN, build_dir, check_outcome, connect_until,
                             dashboard_fleet, remove_files)

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "dashboard_test.mjs"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
OUTBOX_LEAF = "line1-press-09"
OUTBOX_WAITING = 3


def node_ready():
    """node_modules/playwright-core, installed from the lock file if missing."""
    if (HERE / "node_modules" / "playwright-core" / "package.json").exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm not found: install nodejs and npm (apt-get install -y nodejs npm)")
    r = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=HERE,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, "npm ci in tests/browser failed:\n" + r.stdout + r.stderr


def cut_with_messages_waiting(fleet):
    """OUTBOX_LEAF connects (active), the uplink is cut, and it publishes
    OUTBOX_WAITING QoS 1 messages: acknowledged, stored for the cloud."""
    lf = fleet.gw.leaf(OUTBOX_LEAF)
    assert connect_until(lf, fleet.rest) == sn.RC_ACCEPTED
    assert wait_until(lambda: (fleet.rest.device(OUTBOX_LEAF) or {}).get("state") == "active", 10)
    tid = lf.register("fleet/%s/telemetry" % OUTBOX_LEAF)
    fleet.link.cut()
    assert wait_until(lambda: fleet.rest.call("GET", "status")[1]["upstreams_up"] == 0, 10)
    for i in range(OUTBOX_WAITING):
        assert lf.publish(tid, b"%d" % i, qos=1, timeout=2) == sn.RC_ACCEPTED
    assert fleet.rest.device(OUTBOX_LEAF)["outbox"]["messages"] == OUTBOX_WAITING


def test_dashboard_approve_makes_the_row_active_live(gateway, mosquitto, broker_client, local_ca,
                                                     tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.fail("no Chromium at %s: apt-get install -y chromium" % CHROMIUM)
    node = shutil.which("node")
    assert node, "node not found: apt-get install -y nodejs"
    node_ready()
    out = build_dir()
    shot = out / "dashboard.png"
    remove_files(shot, out / "dashboard-device.png", out / "dashboard-failure.png")

    with dashboard_fleet(gateway, mosquitto, broker_client, local_ca, tmp_path,
                         link=True) as fleet:
        cut_with_messages_waiting(fleet)
        env = dict(os.environ, BUILD_DIR=str(out), DASH_SCREENSHOT=str(shot), CHROMIUM=CHROMIUM)
        r = subprocess.run([node, str(SCRIPT), "--url", fleet.url, "--token", TOKEN,
                            "--active", ",".join(ALLOWED), "--pending", PENDING,
                            "--psk-device", ALLOWED[1], "--outbox-device", OUTBOX_LEAF,
                            "--outbox-count", str(OUTBOX_WAITING)],
                           cwd=HERE, env=env, capture_output=True, text=True, timeout=180)
        print(r.stdout)
        print(r.stderr)
        assert r.returncode == 0, "dashboard_test.mjs failed (exit %d):\n%s%s" % (
            r.returncode, r.stdout, r.stderr)
    check_outcome(fleet, shot)
    # The key made in the browser is in the registry; the API says only that.
    d = fleet.rest.device(ALLOWED[1])
    assert d["psk"] is True and d["lan_security"] == "plain", d
    assert "key" not in {k for k in d if k != "psk"}
    st, audit = fleet.rest.call("GET", "audit?client_id=" + ALLOWED[1])
    assert st == 200 and [a for a in audit["items"] if a["action"] == "operator.psk_create"], audit
    assert fleet.rest.device(ALLOWED[0])["psk"] is False
