"""The dashboard in Firefox: Debian's firefox-esr, headless, driven over
WebDriver BiDi (which Firefox speaks natively; no geckodriver, no
playwright) by a small standard-library client, against the same setup as
the Chromium test (tests/browser/dashboard_setup.py).

The scenario is the one of dashboard_test.mjs: sign in with the token form
(typing with real key events), wait for the rows of the connected leaves,
click Approve on the pending leaf (a real pointer click) and wait, without a
reload, until its row reads "active"; the pending entry goes away, the live
feed and the overview follow, the device panel opens from the row and
closes with Escape.  Any uncaught JavaScript error in the page fails the
test, as does any request the page makes outside the gateway.

Firefox itself is kept off the network: a fresh profile with updates,
telemetry, safe browsing, captive-portal and connectivity checks, remote
settings, experiments and DNS disabled, and every proxied (that is, every
non-loopback) connection sent to a trap on 127.0.0.1 that records it; the
test fails if anything reached the trap or if any socket of the Firefox
processes was seen connected to an address other than loopback.

Needs: firefox-esr (skipped when it is not installed).
Screenshots: $BUILD_DIR/dashboard-firefox.png and dashboard-firefox-device.png
(-failure.png on a failure)."""
import base64
import importlib.util
import ipaddress
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import LOOPBACK, REPO
from dashboard_setup import (ALLOWED, PENDING, TOKEN, build_dir, check_outcome, dashboard_fleet,
                             remove_files)

FIREFOX = os.environ.get("FIREFOX", "firefox-esr")
TIMEOUT = float(os.environ.get("DASH_TIMEOUT_S", "30"))
VIEWPORT = {"width": 1440, "height": 1000}


def _load_webclient():
    """tests/integration/webclient.py (its RFC 6455 client), loaded by path
    so this works whatever is on sys.path."""
    name = "fleetgw_webclient"
    spec = importlib.util.spec_from_file_location(
        name, REPO / "tests" / "integration" / "webclient.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


webclient = _load_webclient()


# ---------------------------------------------------------------------------
# Firefox, kept off the network
# ---------------------------------------------------------------------------
def profile_prefs(trap_port):
    """user.js for a fresh profile.  The remote agent already applies its
    "recommended" automation prefs; these make sure of the rest."""
    off = False
    prefs = {
        "app.update.disabledForTesting": True,
        "app.update.auto": False,
        "app.update.checkInstallTime": False,
        "browser.shell.checkDefaultBrowser": False,
        "browser.startup.page": 0,
        "browser.startup.homepage": "about:blank",
        "browser.startup.homepage_override.mstone": "ignore",
        "startup.homepage_welcome_url": "about:blank",
        "startup.homepage_welcome_url.additional": "",
        "browser.aboutwelcome.enabled": off,
        "browser.newtabpage.enabled": off,
        "browser.topsites.contile.enabled": off,
        "browser.newtabpage.activity-stream.feeds.topsites": off,
        "browser.newtabpage.activity-stream.feeds.section.topstories": off,
        "browser.newtabpage.activity-stream.feeds.system.topstories": off,
        "browser.newtabpage.activity-stream.default.sites": "",
        "browser.newtabpage.activity-stream.telemetry": off,
        "browser.ping-centre.telemetry": off,
        "browser.discovery.enabled": off,
        "browser.search.update": off,
        "browser.region.update.enabled": off,
        "browser.region.network.url": "",
        "browser.uitour.enabled": off,
        "datareporting.policy.dataSubmissionEnabled": off,
        "datareporting.policy.firstRunURL": "",
        "datareporting.healthreport.uploadEnabled": off,
        "toolkit.telemetry.enabled": off,
        "toolkit.telemetry.unified": off,
        "toolkit.telemetry.archive.enabled": off,
        "toolkit.telemetry.server": "",
        "toolkit.telemetry.reportingpolicy.firstRun": off,
        "app.normandy.enabled": off,
        "app.normandy.api_url": "",
        "app.shield.optoutstudies.enabled": off,
        "messaging-system.rsexperimentloader.enabled": off,
        "nimbus.rsexperimentloader.enabled": off,
        "services.settings.server": "data:,#remote-settings-dummy/v1",
        "network.captive-portal-service.enabled": off,
        "network.connectivity-service.enabled": off,
        "browser.safebrowsing.malware.enabled": off,
        "browser.safebrowsing.phishing.enabled": off,
        "browser.safebrowsing.blockedURIs.enabled": off,
        "browser.safebrowsing.downloads.enabled": off,
        "browser.safebrowsing.downloads.remote.enabled": off,
        "browser.safebrowsing.passwords.enabled": off,
        "browser.safebrowsing.provider.google.updateURL": "",
        "browser.safebrowsing.provider.google4.updateURL": "",
        "browser.safebrowsing.provider.mozilla.updateURL": "",
        "extensions.update.enabled": off,
        "extensions.getAddons.cache.enabled": off,
        "extensions.blocklist.enabled": off,
        "extensions.systemAddon.update.enabled": off,
        "media.gmp-manager.updateEnabled": off,
        "media.gmp-manager.url": "",
        "geo.provider.network.url": "",
        "dom.push.connection.enabled": off,
        "dom.push.serverURL": "",
        "network.dns.disabled": True,
        "network.trr.mode": 5,
        "network.dns.disablePrefetch": True,
        "network.prefetch-next": off,
        "network.predictor.enabled": off,
        "network.http.speculative-parallel-limit": 0,
        # Whatever still tries to go out goes to the trap instead; loopback
        # (the gateway) is never proxied.
        "network.proxy.type": 1,
        "network.proxy.share_proxy_settings": off,
        "network.proxy.http": LOOPBACK,
        "network.proxy.http_port": trap_port,
        "network.proxy.ssl": LOOPBACK,
        "network.proxy.ssl_port": trap_port,
        "network.proxy.socks": LOOPBACK,
        "network.proxy.socks_port": trap_port,
        "network.proxy.socks_remote_dns": True,
        "network.proxy.no_proxies_on": "",
        "network.proxy.allow_hijacking_localhost": off,
        "browser.sessionstore.resume_from_crash": off,
        "toolkit.startup.max_resumed_crashes": -1,
        "browser.tabs.warnOnClose": off,
    }
    return "".join("user_pref(%s, %s);\n" % (json.dumps(k), json.dumps(v))
                   for k, v in prefs.items())


class Trap:
    """A listener on 127.0.0.1 standing in for every proxy: it records the
    first bytes of each connection and hangs up."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.hits = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="proxy-trap", daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(1.0)
                try:
                    first = conn.recv(200)
                except OSError:
                    first = b""
                self.hits.append(first.split(b"\r\n")[0].decode("latin-1") or "(no bytes)")

    def close(self):
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


def _proc_tree(root):
    """root and all its descendants, from /proc."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    stat = f.read()
            except OSError:
                continue
            parent[int(d)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, grew = {root}, True
    while grew:
        grew = False
        for pid, ppid in parent.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return tree


def _inet_addr(hexaddr):
    raw = bytes.fromhex(hexaddr)
    # /proc/net prints each 32-bit word in host (little-endian) order.
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(raw)


def foreign_sockets(root):
    """["proto addr:port", ...]: sockets of the process tree of `root`
    connected to anything other than loopback."""
    inodes = set()
    for pid in _proc_tree(root):
        try:
            for fd in os.listdir("/proc/%d/fd" % pid):
                try:
                    link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
                except OSError:
                    continue
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:
            continue
    out = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        try:
            with open("/proc/net/" + proto) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) < 10 or cols[9] not in inodes:
                continue
            host, port = cols[2].split(":")
            addr = _inet_addr(host)
            if getattr(addr, "ipv4_mapped", None):
                addr = addr.ipv4_mapped
            if not (addr.is_loopback or addr.is_unspecified):
                out.append("%s %s:%d" % (proto, addr, int(port, 16)))
    return out


class Firefox:
    """firefox-esr --headless with a fresh profile and the remote agent on a
    port it picks itself; .bidi_url once it listens."""

    def __init__(self, tmp_path, trap_port):
        self.profile = tmp_path / "ff-profile"
        self.profile.mkdir()
        (self.profile / "user.js").write_text(profile_prefs(trap_port))
        self.log = tmp_path / "firefox.log"
        home = tmp_path / "ff-home"
        home.mkdir()
        env = dict(os.environ, HOME=str(home), MOZ_CRASHREPORTER_DISABLE="1",
                   MOZ_CRASHREPORTER="0", MOZ_HEADLESS="1", MOZ_DISABLE_AUTO_SAFE_MODE="1",
                   # Release builds honour services.settings.server only with
                   # this; and Necko then refuses any non-local connection.
                   MOZ_REMOTE_SETTINGS_DEVTOOLS="1", MOZ_DISABLE_NONLOCAL_CONNECTIONS="1")
        env.pop("DISPLAY", None)
        env.pop("WAYLAND_DISPLAY", None)
        self.logf = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [FIREFOX, "--headless", "--no-remote", "--remote-debugging-port=0",
             "--profile", str(self.profile), "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self.logf, stderr=subprocess.STDOUT, env=env,
            start_new_session=True)
        self.bidi_url = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            m = re.search(r"WebDriver BiDi listening on (ws://\S+)", self.log_text())
            if m:
                self.bidi_url = m.group(1)
                break
            time.sleep(0.05)
        if self.bidi_url is None:
            self.close(grace=0.0)
            raise AssertionError("firefox-esr did not start its BiDi server:\n" + self.log_text())

    def log_text(self):
        return self.log.read_text(errors="replace")

    def close(self, grace=10.0):
        if self.proc.poll() is None:
            try:
                self.proc.wait(max(grace, 0.001))
            except subprocess.TimeoutExpired:
                # Its own process group (start_new_session): the content
                # processes go with it, nothing else does.
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.logf.close()


# ---------------------------------------------------------------------------
# WebDriver BiDi over webclient.WebSocket
# ---------------------------------------------------------------------------
class BidiError(Exception):
    pass


class Bidi:
    """Commands in order, one at a time; events seen while waiting for an
    answer go to on_event(method, params)."""

    def __init__(self, url, on_event):
        m = re.fullmatch(r"ws://([^:/]+):(\d+)(/.*)?", url)
        assert m, url
        host, port = m.group(1), int(m.group(2))
        assert host in (LOOPBACK, "localhost"), url
        # The session endpoint is /session on the server's origin.
        self.ws = webclient.WebSocket(int(port), path="/session", host=LOOPBACK, timeout=30)
        self.on_event = on_event
        self.ids = itertools.count(1)

    def send(self, method, timeout=TIMEOUT, **params):
        cid = next(self.ids)
        self.ws.send_json({"id": cid, "method": method, "params": params})
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BidiError("%s: no answer in %.0f s" % (method, timeout))
            try:
                msg = self.ws.recv_json(timeout=left)
            except socket.timeout:
                continue
            if msg.get("type") == "event":
                self.on_event(msg["method"], msg.get("params", {}))
            elif msg.get("id") == cid:
                if msg.get("type") == "error":
                    raise BidiError("%s: %s: %s" % (method, msg.get("error"), msg.get("message")))
                return msg.get("result", {})

    def close(self):
        self.ws.close()


class Failure(AssertionError):
    pass


def row_sel(cid):
    return '#device-rows tr[data-client-id="%s"]' % re.sub(r'(["\\])', r"\\\1", cid)


VISIBLE = ("(el) => !!el && el.getClientRects().length > 0 && "
           "getComputedStyle(el).visibility !== 'hidden'")


class Page:
    """One browsing context: JavaScript, waits, real input, screenshots."""

    def __init__(self, bidi, context):
        self.bidi, self.context = bidi, context

    def call(self, fn, *args, own=False):
        """script.callFunction(fn, args) in the page; the result's JSON value
        (or, with own=True, the remote reference of a node)."""
        r = self.bidi.send("script.callFunction", functionDeclaration=fn,
                           arguments=[serialize(a) for a in args], awaitPromise=True,
                           target={"context": self.context},
                           resultOwnership="root" if own else "none")
        if r.get("type") == "exception":
            d = r["exceptionDetails"]
            raise Failure("script failed: %s (%s)" % (d.get("text"), fn[:80]))
        return r["result"] if own else deserialize(r["result"])

    def wait(self, fn, *args, timeout=TIMEOUT, why="condition"):
        """Poll fn(args) every 100 ms until it is truthy."""
        deadline = time.monotonic() + timeout
        while True:
            v = self.call(fn, *args)
            if v:
                return v
            if time.monotonic() > deadline:
                raise Failure("%s: not within %.0f s" % (why, timeout))
            time.sleep(0.1)

    def wait_visible(self, sel, timeout=TIMEOUT, why=None):
        return self.wait("(sel) => (%s)(document.querySelector(sel))" % VISIBLE, sel,
                         timeout=timeout, why=why or ("%s visible" % sel))

    def text(self, sel):
        return self.call("(s) => { const e = document.querySelector(s); "
                         "return e ? e.textContent : null; }", sel)

    def element(self, sel):
        """The element for sel, scrolled into view, as a BiDi node reference."""
        node = self.call("(s) => { const e = document.querySelector(s); "
                         "if (e) e.scrollIntoView({block: 'nearest', inline: 'nearest'}); "
                         "return e; }", sel, own=True)
        if node.get("type") != "node":
            raise Failure("no element %s" % sel)
        return {"sharedId": node["sharedId"]}

    def actions(self, *sources):
        self.bidi.send("input.performActions", context=self.context, actions=list(sources))
        self.bidi.send("input.releaseActions", context=self.context)

    def click(self, sel):
        """A real mouse click in the middle of the element."""
        el = self.element(sel)
        self.actions({"type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"},
                      "actions": [{"type": "pointerMove", "x": 0, "y": 0,
                                   "origin": {"type": "element", "element": el}},
                                  {"type": "pointerDown", "button": 0},
                                  {"type": "pointerUp", "button": 0}]})

    def type_keys(self, text):
        keys = []
        for ch in text:
            keys += [{"type": "keyDown", "value": ch}, {"type": "keyUp", "value": ch}]
        self.actions({"type": "key", "id": "keyboard", "actions": keys})

    def screenshot(self, path, full_page=True):
        r = self.bidi.send("browsingContext.captureScreenshot", context=self.context,
                           origin="document" if full_page else "viewport")
        Path(path).write_bytes(base64.b64decode(r["data"]))


def serialize(v):
    """A Python value as a BiDi LocalValue."""
    if v is None:
        return {"type": "null"}
    if isinstance(v, bool):
        return {"type": "boolean", "value": v}
    if isinstance(v, (int, float)):
        return {"type": "number", "value": v}
    if isinstance(v, str):
        return {"type": "string", "value": v}
    if isinstance(v, (list, tuple)):
        return {"type": "array", "value": [serialize(x) for x in v]}
    raise TypeError(type(v))


def deserialize(r):
    """A BiDi RemoteValue as a Python value (nodes and other objects: the
    type name)."""
    t = r.get("type")
    if t in ("undefined", "null"):
        return None
    if t in ("string", "boolean"):
        return r["value"]
    if t == "number":
        v = r["value"]
        return None if isinstance(v, str) else v    # NaN, Infinity, -0
    if t == "array":
        return [deserialize(x) for x in r.get("value", [])]
    if t == "object":
        return {k if isinstance(k, str) else deserialize(k): deserialize(v)
                for k, v in r.get("value", [])}
    return "<%s>" % t


# ---------------------------------------------------------------------------
# the test
# ---------------------------------------------------------------------------
def log(msg):
    print("[dashboard_firefox] " + msg, flush=True)


def run_scenario(page, url, problems):
    """The steps of dashboard_test.mjs, over BiDi."""
    log("open " + url)
    page.bidi.send("browsingContext.navigate", context=page.context, url=url, wait="complete")
    status = page.call("() => { const n = performance.getEntriesByType('navigation')[0]; "
                       "return n && n.responseStatus; }")
    if status not in (None, 200):
        raise Failure("GET %s answered %r" % (url, status))

    # Sign in with the form, typing the token.
    try:
        page.wait_visible("#token-input")
    except Failure:
        raise Failure("no token form (#token-input) on the page")
    page.click("#token-input")
    page.type_keys(TOKEN)
    if page.call("() => document.querySelector('#token-input').value") != TOKEN:
        raise Failure("typing into #token-input did not fill it")
    page.click('#login-form button[type="submit"]')
    try:
        page.wait_visible("#main")
    except Failure:
        raise Failure("sign-in did not complete: %r" % page.text("#login-error"))
    if page.call("() => sessionStorage.getItem('fleetgw.token')") != TOKEN:
        raise Failure("the token was not kept in sessionStorage")
    # A marker that a reload would wipe out.
    page.call("() => { window.__fleetgwNoReload = true; }")

    state_is = ("(sel, want) => { const c = document.querySelector(sel + ' [data-field=\"state\"]');"
                " return !!c && c.textContent.trim() === want; }")

    def wait_state(cid, state, why):
        try:
            page.wait(state_is, row_sel(cid), state, why=why)
        except Failure:
            seen = page.call("(sel) => { const c = document.querySelector(sel + "
                             "' [data-field=\"state\"]'); return c ? 'state \"' + "
                             "c.textContent.trim() + '\"' : 'no such row'; }", row_sel(cid))
            raise Failure('%s: row %s did not show state "%s" within %.0f s (%s)'
                          % (why, cid, state, TIMEOUT, seen))

    for cid in ALLOWED:
        log("wait for the row of " + cid)
        wait_state(cid, "active", "connected leaf")

    log("approve %s in the Pending section" % PENDING)
    entry = '#pending [data-client-id="%s"]' % PENDING
    try:
        page.wait_visible(entry + ' [data-action="approve"]')
    except Failure:
        listed = page.call("() => Array.from(document.querySelectorAll('#pending "
                           "[data-client-id]'), (e) => e.dataset.clientId)")
        raise Failure("%s not listed under Pending approvals (listed: %r)" % (PENDING, listed))
    if page.call("(s) => document.querySelectorAll(s).length",
                 entry + ' [data-action="block"]') != 1:
        raise Failure("the pending entry of %s has no Block button" % PENDING)
    t0 = time.monotonic()
    page.click(entry + ' [data-action="approve"]')
    wait_state(PENDING, "active", "after Approve")
    log('%s shows "active" %d ms after the click' % (PENDING, (time.monotonic() - t0) * 1000))
    if page.call("() => window.__fleetgwNoReload === true") is not True:
        raise Failure("the page reloaded")
    page.wait("(s) => !document.querySelector(s)", entry, timeout=10,
              why="%s still listed under Pending approvals after it became active" % PENDING)

    # The live event feed saw it, and the overview counts follow.
    page.wait("(id) => Array.from(document.querySelectorAll('#feed-list [data-client-id]'))"
              ".some((li) => li.dataset.clientId === id)", PENDING, timeout=10,
              why="no event for %s in the live feed" % PENDING)
    want = len(ALLOWED) + 1
    page.wait("(n) => { const e = document.querySelector('[data-count=\"active\"] .count-n'); "
              "return !!e && Number(e.textContent.replace(/,/g, '')) >= n; }", want, timeout=10,
              why="the overview does not count %d active devices" % want)

    # The device panel opens from its row and shows the certificate.
    page.click(row_sel(PENDING) + " button")
    page.wait_visible("#device-dialog[open] .panel-status", timeout=10,
                      why="the device panel did not open")
    panel = page.text("#dev-body") or ""
    if "Not after" not in panel or "fingerprint" not in panel.lower():
        raise Failure("the device panel shows no certificate")
    # issue 14: the id that is the fingerprint once; the session's figures;
    # Block asks first.
    if page.call("() => [...document.querySelectorAll('#dev-body dt')].filter("
                 "(d) => d.textContent.trim() === 'Fingerprint').length") != 0:
        raise Failure("the panel shows the certificate id and fingerprint twice")
    for field in ("keepalive", "reconnects", "last-message"):
        if not page.text('#dev-body [data-field="%s"]' % field):
            raise Failure("the device panel has no %s" % field)
    page.click('#dev-body [data-action="block"]')
    page.wait_visible("#confirm-dialog[open]", timeout=5, why="Block asked for no confirmation")
    page.click('#confirm-dialog button[value="cancel"]')
    page.wait("(v) => !(%s)(document.querySelector('#confirm-dialog'))" % VISIBLE, True,
              timeout=5, why="Cancel did not close the confirmation")
    if "active" not in (page.text("#dev-body .panel-status") or ""):
        raise Failure("a cancelled Block changed the device")
    page.screenshot(build_dir() / "dashboard-firefox-device.png", full_page=False)
    page.actions({"type": "key", "id": "keyboard",
                  "actions": [{"type": "keyDown", "value": "\ue00c"},
                              {"type": "keyUp", "value": "\ue00c"}]})
    page.wait("(v) => !(%s)(document.querySelector('#device-dialog'))" % VISIBLE, True,
              timeout=5, why="Escape did not close the device panel")

    # A few samples in the rate chart for the screenshot (not a failure).
    try:
        page.wait("() => { const l = document.querySelector('#rate-chart .line-in'); "
                  "return !!l && (l.getAttribute('points') || '').split(' ').length >= 4; }",
                  timeout=10)
    except Failure:
        pass
    if problems:
        raise Failure("; ".join(problems))


def test_dashboard_in_firefox(gateway, mosquitto, broker_client, local_ca, tmp_path):
    if shutil.which(FIREFOX) is None:
        pytest.skip("%s is not installed (apt-get install -y firefox-esr)" % FIREFOX)
    out = build_dir()
    shot = out / "dashboard-firefox.png"
    failure_shot = out / "dashboard-firefox-failure.png"
    remove_files(shot, failure_shot, out / "dashboard-firefox-device.png")

    with dashboard_fleet(gateway, mosquitto, broker_client, local_ca, tmp_path) as fleet:
        origin = fleet.url.rstrip("/")
        problems = []       # fail the test
        foreign = set()

        def on_event(method, p):
            if method == "log.entryAdded":
                if p.get("level") == "error":
                    where = ""
                    frames = (p.get("stackTrace") or {}).get("callFrames") or []
                    if frames:
                        where = " at %s:%s" % (frames[0].get("url"), frames[0].get("lineNumber"))
                    if p.get("type") == "javascript":
                        problems.append("uncaught error in the page: %s%s" % (p.get("text"), where))
                    else:
                        log("console error: %s%s" % (p.get("text"), where))
            elif method == "network.beforeRequestSent":
                u = p["request"]["url"]
                if not (u == origin or u.startswith(origin + "/") or
                        u.startswith(("data:", "blob:", "about:"))):
                    problems.append("request outside the gateway: " + u)

        trap = Trap()
        ff = None
        bidi = None
        page = None
        watching = threading.Event()

        def watch_sockets():
            while not watching.wait(0.5):
                foreign.update(foreign_sockets(ff.proc.pid))
        watcher = None
        closed = False
        try:
            ff = Firefox(tmp_path, trap.port)
            log("%s, BiDi at %s" % (subprocess.run([FIREFOX, "--version"], capture_output=True,
                                                   text=True).stdout.strip(), ff.bidi_url))
            watcher = threading.Thread(target=watch_sockets, name="socket-watch", daemon=True)
            watcher.start()
            bidi = Bidi(ff.bidi_url, on_event)
            caps = bidi.send("session.new", capabilities={"alwaysMatch": {
                "acceptInsecureCerts": False, "unhandledPromptBehavior": {"default": "ignore"}}})
            log("session %s: %s %s" % (caps.get("sessionId"), caps["capabilities"]["browserName"],
                                       caps["capabilities"]["browserVersion"]))
            bidi.send("session.subscribe", events=["log.entryAdded", "network.beforeRequestSent"])
            tree = bidi.send("browsingContext.getTree", maxDepth=0)["contexts"]
            ctx = tree[0]["context"] if tree else \
                bidi.send("browsingContext.create", type="tab")["context"]
            bidi.send("browsingContext.setViewport", context=ctx, viewport=VIEWPORT,
                      devicePixelRatio=1)
            page = Page(bidi, ctx)
            try:
                run_scenario(page, fleet.url, problems)
                # From the top: a full-page capture keeps the scroll offset of
                # sticky elements (the live feed) otherwise.
                page.call("() => { window.scrollTo(0, 0); }")
                page.screenshot(shot)
                log("screenshot %s" % shot)
            except Exception:
                try:
                    page.screenshot(failure_shot)
                    log("failure screenshot %s" % failure_shot)
                except Exception as e:      # noqa: BLE001 - the first failure matters
                    log("no failure screenshot: %r" % e)
                raise
            # One last look at Firefox's sockets, then close it cleanly.
            foreign.update(foreign_sockets(ff.proc.pid))
            bidi.send("browser.close")
            closed = True
        finally:
            watching.set()
            if watcher is not None:
                watcher.join(2)
            if bidi is not None:
                bidi.close()
            if ff is not None:
                ff.close(grace=10.0 if closed else 0.0)
            trap.close()
            if ff is not None:
                print("==== firefox log (tail) ====\n" + "\n".join(ff.log_text().splitlines()[-30:]))

    assert not trap.hits, "Firefox tried to reach the network (through the proxy trap): %r" % (
        trap.hits,)
    assert not foreign, "Firefox had sockets to non-loopback addresses: %r" % sorted(foreign)
    check_outcome(fleet, shot)
