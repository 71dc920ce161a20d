"""The install on an edge box: `cmake --install` layout, the installed
configuration, the systemd unit, the .deb, and the sd_notify readiness.

A fresh Release build (no sanitizers, tests off) in a temporary directory,
configured with CMake's default prefix (/usr/local), installed with DESTDIR
into a staging tree (with `--prefix /usr`, and once without), so nothing here
depends on (or touches) the other build directories or the real /usr and
/etc.  The .deb is made from that same build: its layout must be the
package's own (/usr, /etc/fleetgw) whatever the build's prefix.

Run with:  /usr/bin/python3 -m pytest tests/integration/test_install.py
"""
import gzip
import io
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"

# Every file of the layout (relative to the staging root) and its mode.
LAYOUT = {
    "usr/bin/fleetgw": 0o755,
    "usr/bin/fleetgw-leafsim": 0o755,
    "usr/share/fleetgw/openapi.json": 0o644,
    "usr/share/fleetgw/aws/claim-policy.json": 0o644,
    "usr/share/fleetgw/aws/device-policy.json": 0o644,
    "usr/share/fleetgw/aws/provisioning-template.json": 0o644,
    "usr/share/fleetgw/aws/rotation-template.json": 0o644,
    "usr/share/fleetgw/aws/rotation-hook.py": 0o644,
    "usr/share/fleetgw/aws/README.md": 0o644,
    "usr/lib/sysusers.d/fleetgw.conf": 0o644,
    "usr/share/man/man8/fleetgw.8.gz": 0o644,
    "usr/share/man/man5/fleetgw.json.5.gz": 0o644,
    "usr/share/doc/fleetgw/README.md": 0o644,
    "usr/share/doc/fleetgw/copyright": 0o644,
    "usr/share/doc/fleetgw/changelog.gz": 0o644,
    "etc/fleetgw/fleetgw.json": 0o644,
    "lib/systemd/system/fleetgw.service": 0o644,
}
WEB_FILES = sorted(p.name for p in (REPO / "web" / "static").iterdir() if p.is_file())


def run(cmd, **kw):
    """Runs a command; on failure the assertion shows its output."""
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{cmd} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r


def free_port(kind=socket.SOCK_STREAM):
    s = socket.socket(socket.AF_INET, kind)
    try:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]
    finally:
        s.close()


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """Configures, builds and installs once: returns (build dir, staging root)."""
    base = tmp_path_factory.mktemp("install")
    bdir, stage = base / "build", base / "stage"
    # No CMAKE_INSTALL_PREFIX: the default, /usr/local (the package must not care).
    run(["cmake", "-S", str(REPO), "-B", str(bdir), "-DCMAKE_BUILD_TYPE=Release",
         "-DFLEETGW_TESTS=OFF", "-DFLEETGW_SANITIZE=OFF"])
    run(["cmake", "--build", str(bdir), "-j", str(os.cpu_count() or 2)])
    run(["cmake", "--install", ".", "--prefix", "/usr"], cwd=bdir,
        env=dict(os.environ, DESTDIR=str(stage)))
    return bdir, stage


def test_layout_and_modes(build):
    _, stage = build
    for rel, mode in LAYOUT.items():
        p = stage / rel
        assert p.is_file(), f"missing {rel}"
        assert stat.S_IMODE(p.stat().st_mode) == mode, f"{rel}: mode {oct(p.stat().st_mode)}"
    web = stage / "usr/share/fleetgw/web"
    assert sorted(p.name for p in web.iterdir()) == WEB_FILES
    for name in WEB_FILES:
        assert (web / name).read_bytes() == (REPO / "web/static" / name).read_bytes()
        assert stat.S_IMODE((web / name).stat().st_mode) == 0o644
    # Installed as they are (the /usr prefix needs no path rewriting).
    assert (stage / "etc/fleetgw/fleetgw.json").read_bytes() == \
        (REPO / "deploy/fleetgw.example.json").read_bytes()
    assert (stage / "lib/systemd/system/fleetgw.service").read_bytes() == \
        (REPO / "deploy/fleetgw.service").read_bytes()
    out = run([str(stage / "usr/bin/fleetgw"), "--version"]).stdout
    assert out.startswith("fleetgw ")


def test_installed_config_points_at_the_layout(build):
    """The defaults the service relies on: state under /var/lib/fleetgw, the
    dashboard and the API document where the package puts them."""
    _, stage = build
    cfg = json.loads((stage / "etc/fleetgw/fleetgw.json").read_text())
    assert cfg["registry"]["path"] == "/var/lib/fleetgw/registry.db"
    assert cfg["web"]["admin_token_file"] == "/var/lib/fleetgw/admin.token"
    assert cfg["provisioning"]["local_ca"]["cert_file"] == "/var/lib/fleetgw/ca.crt"
    assert cfg["provisioning"]["local_ca"]["key_file"] == "/var/lib/fleetgw/ca.key"
    assert cfg["web"]["static_dir"] == "/usr/share/fleetgw/web"
    assert cfg["web"]["openapi_file"] == "/usr/share/fleetgw/openapi.json"
    # Every path the configuration names exists in the layout, or lives in
    # the state directory, or is the broker CA that the operator provides.
    for p in (cfg["web"]["static_dir"], cfg["web"]["openapi_file"]):
        assert (stage / p.lstrip("/")).exists(), p
    assert cfg["upstream"]["ca_file"] == "/etc/fleetgw/ca.pem"


def test_installed_config_is_safe(build):
    """Until the operator sets them, the LAN sockets and the web server listen
    on loopback only, and a new leaf needs an operator's approval."""
    _, stage = build
    cfg = json.loads((stage / "etc/fleetgw/fleetgw.json").read_text())
    assert cfg["lan"]["bind"] == "127.0.0.1"
    assert cfg["lan"]["dtls"]["bind"] == "127.0.0.1"
    assert cfg["web"]["bind"] == "127.0.0.1"
    assert cfg["admission"]["policy"] == "approve"
    assert cfg["web"]["open_metrics"] is False


def test_other_prefix_is_rewritten(build, tmp_path):
    """`cmake --install` with the build's own prefix (/usr/local here): the
    files under it, and the unit and the configuration name that prefix."""
    bdir, _ = build
    stage = tmp_path / "stage"
    run(["cmake", "--install", "."], cwd=bdir, env=dict(os.environ, DESTDIR=str(stage)))
    for rel in ("usr/local/bin/fleetgw", "usr/local/etc/fleetgw/fleetgw.json",
                "usr/local/lib/sysusers.d/fleetgw.conf", "usr/local/share/fleetgw/openapi.json",
                "usr/local/share/man/man8/fleetgw.8.gz", "lib/systemd/system/fleetgw.service"):
        assert (stage / rel).is_file(), rel
    assert not (stage / "etc").exists()
    unit = (stage / "lib/systemd/system/fleetgw.service").read_text()
    assert "ExecStart=/usr/local/bin/fleetgw --config /usr/local/etc/fleetgw/fleetgw.json" in unit
    cfg = json.loads((stage / "usr/local/etc/fleetgw/fleetgw.json").read_text())
    assert cfg["web"]["static_dir"] == "/usr/local/share/fleetgw/web"
    assert cfg["upstream"]["ca_file"] == "/usr/local/etc/fleetgw/ca.pem"


def test_man_pages(build):
    """fleetgw(8) and fleetgw.json(5) render without a warning, and every key
    the configuration page names is a key of README.md's tables."""
    _, stage = build
    pages = [stage / "usr/share/man/man8/fleetgw.8.gz",
             stage / "usr/share/man/man5/fleetgw.json.5.gz"]
    texts = [gzip.decompress(p.read_bytes()).decode() for p in pages]
    assert texts[0] == (REPO / "docs/man/fleetgw.8").read_text()
    assert texts[1] == (REPO / "docs/man/fleetgw.json.5").read_text()
    if shutil.which("groff"):
        for t in texts:
            r = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z"], input=t,
                               capture_output=True, text=True,
                               env=dict(os.environ, LC_ALL="C.UTF-8"))
            assert r.returncode == 0 and not r.stderr, r.stderr
    readme = (REPO / "README.md").read_text()
    keys = set(re.findall(r"^\| `([a-z_.]+)` \|", readme, re.M))
    # Each object's paragraph (".TP", ".B object", text): every bold word is a
    # key of that object, or of one of its sub-objects (lan.dtls.bind, ...).
    objects = texts[1].split(".SH OBJECTS")[1].split(".SH EXAMPLE")[0]
    for para in objects.split(".TP\n")[1:]:
        lines = para.splitlines()
        obj = lines[0].split()[1]
        assert obj in keys, obj
        for line in lines[1:]:
            if not line.startswith((".B ", ".BR ")):
                continue
            for word in re.findall(r"[a-z][a-z_]+", re.sub(r'\\\(dq.*?\\\(dq|"[^"]*"', "", line[3:])):
                assert any(k == f"{obj}.{word}" or
                           (k.startswith(obj + ".") and k.endswith("." + word)) for k in keys), \
                    f"fleetgw.json(5) names {obj} ... {word}, which README.md's tables do not have"
    # The version in both pages and the changelog is the project's.
    assert f'"fleetgw {_project_version()}"' in texts[0]
    assert f'"fleetgw {_project_version()}"' in texts[1]


def test_check_config(build, tmp_path):
    _, stage = build
    fleetgw = str(stage / "usr/bin/fleetgw")
    installed = stage / "etc/fleetgw/fleetgw.json"
    # As shipped, it is complete except for the broker's CA bundle, which the
    # operator puts in place: check-config names exactly that.
    r = subprocess.run([fleetgw, "--config", str(installed), "--check-config"],
                       capture_output=True, text=True)
    if not Path("/etc/fleetgw/ca.pem").exists():
        assert r.returncode == 1
        assert "upstream.ca_file" in r.stderr, r.stderr
    # With the CA in place (here: a copy pointing into the staging tree) it is valid.
    ca = stage / "etc/fleetgw/ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    cfg = json.loads(installed.read_text())
    cfg["upstream"]["ca_file"] = str(ca)
    # The state directory is systemd's (StateDirectory=): here, a temporary one.
    cfg["registry"]["path"] = str(tmp_path / "registry.db")
    cfg["web"]["admin_token_file"] = str(tmp_path / "admin.token")
    cfg["provisioning"]["local_ca"].update(cert_file=str(tmp_path / "ca.crt"),
                                           key_file=str(tmp_path / "ca.key"))
    copy = tmp_path / "fleetgw.json"
    copy.write_text(json.dumps(cfg))
    r = run([fleetgw, "--config", str(copy), "--check-config"])
    assert "configuration is valid" in r.stdout
    ca.unlink()


def test_reinstall_keeps_the_operators_config(build, tmp_path):
    bdir, _ = build
    stage = tmp_path / "stage"
    env = dict(os.environ, DESTDIR=str(stage))
    run(["cmake", "--install", ".", "--prefix", "/usr"], cwd=bdir, env=env)
    conf = stage / "etc/fleetgw/fleetgw.json"
    conf.write_text('{"upstream": {"host": "127.0.0.1", "tls": false}}\n')
    r = run(["cmake", "--install", ".", "--prefix", "/usr"], cwd=bdir, env=env)
    assert "Keeping the existing" in r.stdout
    assert conf.read_text() == '{"upstream": {"host": "127.0.0.1", "tls": false}}\n'
    assert (stage / "etc/fleetgw/fleetgw.json.dist").read_bytes() == \
        (REPO / "deploy/fleetgw.example.json").read_bytes()


def test_unit_file_verifies(build, tmp_path):
    """systemd-analyze verify on the installed unit.  It checks that
    ExecStart's binary exists, so it runs against a root holding the staged
    install plus the host's own units (for the default dependencies)."""
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    _, stage = build
    root = tmp_path / "root"
    shutil.copytree("/lib/systemd/system", root / "lib/systemd/system", symlinks=True)
    shutil.copytree(stage, root, symlinks=True, dirs_exist_ok=True)
    # ExecReload's kill(1) is the host's, as on a real box.
    (root / "bin").mkdir(exist_ok=True)
    shutil.copy2(os.path.realpath("/bin/kill"), root / "bin" / "kill")
    r = subprocess.run(["systemd-analyze", "verify", f"--root={root}",
                        "/lib/systemd/system/fleetgw.service"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    # Unknown keys and bad values are only warnings: there must be none.
    assert "fleetgw.service" not in r.stdout + r.stderr, r.stdout + r.stderr

    unit = (stage / "lib/systemd/system/fleetgw.service").read_text()
    for line in ("Type=notify", "ExecStart=/usr/bin/fleetgw --config /etc/fleetgw/fleetgw.json",
                 "StateDirectory=fleetgw", "WorkingDirectory=/var/lib/fleetgw",
                 "Restart=on-failure", "LimitNOFILE=65536", "CapabilityBoundingSet=\n",
                 "NoNewPrivileges=yes", "ProtectSystem=strict", "UMask=0077",
                 "ExecReload=/bin/kill -HUP $MAINPID"):
        assert line in unit, line


def test_unit_exposure(build):
    """The hardening as systemd scores it (0 = locked down, 10 = exposed)."""
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                        str(REPO / "deploy/fleetgw.service")], capture_output=True, text=True)
    line = [x for x in r.stdout.splitlines() if "Overall exposure level" in x]
    if not line:
        pytest.skip("this systemd-analyze has no --offline security analysis")
    score = float(line[0].split(":")[1].split()[0])
    print(f"exposure {score}")
    assert score <= 2.0, line[0]


def test_deb(build, tmp_path):
    if not shutil.which("dpkg-deb"):
        pytest.skip("dpkg-deb is not installed")
    bdir, _ = build
    run(["cpack", "-G", "DEB", "-B", str(tmp_path)], cwd=bdir)
    debs = list(tmp_path.glob("fleetgw_*.deb"))
    assert len(debs) == 1, list(tmp_path.iterdir())
    deb = str(debs[0])

    info = run(["dpkg-deb", "-I", deb]).stdout
    assert " Package: fleetgw" in info
    depends = [x for x in info.splitlines() if x.startswith(" Depends:")]
    assert depends, info
    for pkg in ("libuv1", "libwebsockets17", "libssl3", "libsqlite3-0", "libcjson1"):
        assert pkg in depends[0], depends[0]
    assert run(["dpkg-deb", "-f", deb, "Version"]).stdout.strip() == \
        _project_version()
    ctl = tmp_path / "control"
    run(["dpkg-deb", "-e", deb, str(ctl)])
    assert (ctl / "conffiles").read_text().split() == ["/etc/fleetgw/fleetgw.json"]
    for script in ("postinst", "prerm", "postrm"):
        assert stat.S_IMODE((ctl / script).stat().st_mode) == 0o755, script
        run(["sh", "-n", str(ctl / script)])

    listing = run(["dpkg-deb", "-c", deb]).stdout
    entries = {}
    for x in listing.splitlines():
        f = x.split()
        entries[f[5].lstrip(".")] = (f[0], f[1])
    for rel, mode in LAYOUT.items():
        perms, owner = entries.get("/" + rel, (None, None))
        assert perms is not None, f"/{rel} not in the package:\n{listing}"
        assert perms == "-" + stat.filemode(mode)[1:], f"/{rel}: {perms}"
        assert owner == "root/root", f"/{rel}: {owner}"
    for name in WEB_FILES:
        assert f"/usr/share/fleetgw/web/{name}" in entries
    # The package's layout, although the build's prefix is /usr/local.
    assert not [e for e in entries if e.startswith("/usr/local")], listing
    tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", deb], capture_output=True, check=True)
    files = tarfile.open(fileobj=io.BytesIO(tar.stdout))
    assert files.extractfile("./etc/fleetgw/fleetgw.json").read() == \
        (REPO / "deploy/fleetgw.example.json").read_bytes()
    assert files.extractfile("./lib/systemd/system/fleetgw.service").read() == \
        (REPO / "deploy/fleetgw.service").read_bytes()
    copyright_ = files.extractfile("./usr/share/doc/fleetgw/copyright").read().decode()
    assert copyright_.startswith("Format: https://www.debian.org/doc/packaging-manuals/"
                                 "copyright-format/1.0/")
    assert "License: MIT" in copyright_
    changelog = gzip.decompress(
        files.extractfile("./usr/share/doc/fleetgw/changelog.gz").read()).decode()
    assert changelog.startswith(f"fleetgw ({_project_version()}) "), changelog

    # The control fields an operator and apt look at.
    fields = run(["dpkg-deb", "-f", deb, "Maintainer", "Homepage", "Recommends"]).stdout
    assert "Maintainer: " in fields and "localhost" not in fields, fields
    assert "Homepage: https://" in fields, fields
    assert "Recommends: sqlite3" in fields, fields


def _project_version():
    for line in (REPO / "CMakeLists.txt").read_text().splitlines():
        if line.startswith("project(") and " VERSION " in line:
            return line.split(" VERSION ")[1].split()[0]
    raise AssertionError("no project VERSION")


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_readiness_notification(build, tmp_path, abstract):
    """fleetgw sends READY=1 to $NOTIFY_SOCKET once it listens, and
    STOPPING=1 when SIGTERM starts the graceful stop."""
    _, stage = build
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"@fleetgw-test-{os.getpid()}-{time.monotonic_ns()}"
        sock.bind("\0" + name[1:])
    else:
        name = str(tmp_path / "notify.sock")
        sock.bind(name)
    sock.settimeout(15)

    lan, web = free_port(socket.SOCK_DGRAM), free_port()
    state = tmp_path / "state"
    state.mkdir()
    cfg = json.loads((stage / "etc/fleetgw/fleetgw.json").read_text())
    cfg["log_level"] = "debug"
    cfg["lan"].update(bind=LOOPBACK, port=lan)
    cfg["upstream"].update(host=LOOPBACK, port=free_port(), tls=False, ca_file=None)
    cfg["web"].update(port=web, static_dir=str(stage / "usr/share/fleetgw/web"),
                      openapi_file=str(stage / "usr/share/fleetgw/openapi.json"),
                      admin_token_file=str(state / "admin.token"))
    cfg["registry"]["path"] = str(state / "registry.db")
    cfg["provisioning"]["local_ca"].update(cert_file=str(state / "ca.crt"),
                                           key_file=str(state / "ca.key"))
    conf = tmp_path / "fleetgw.json"
    conf.write_text(json.dumps(cfg))

    log = open(tmp_path / "fleetgw.log", "w+")
    proc = subprocess.Popen([str(stage / "usr/bin/fleetgw"), "--config", str(conf)],
                            cwd=state, stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, NOTIFY_SOCKET=name))
    try:
        msg = sock.recv(4096).decode()
        lines = msg.split("\n")
        assert "READY=1" in lines, msg
        assert any(x.startswith("STATUS=") for x in lines), msg
        # Ready means listening: the web server answers now, not later.
        with socket.create_connection((LOOPBACK, web), timeout=5) as c:
            c.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert c.recv(4096).startswith(b"HTTP/1.1 200")
        proc.send_signal(signal.SIGTERM)
        msg = sock.recv(4096).decode()
        assert "STOPPING=1" in msg.split("\n"), msg
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()
        log.seek(0)
        print(log.read())
        log.close()
