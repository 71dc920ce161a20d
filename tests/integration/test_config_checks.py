"""--check-config names what used to fail only at run time, and every error."""
import json
import subprocess

from conftest import FLEETGW_BIN


def check(tmp_path, cfg):
    p = tmp_path / "fleetgw.json"
    p.write_text(json.dumps(cfg))
    return p, subprocess.run([FLEETGW_BIN, "--config", str(p), "--check-config"],
                             capture_output=True, text=True, timeout=10)


def test_check_config_names_every_run_time_failure(tmp_path):
    p, r = check(tmp_path, {
        "upstream": {"host": "127.0.0.1", "tls": False, "port": "x"},
        "registry": {"path": str(tmp_path / "missing" / "registry.db")},
        "web": {"static_dir": str(tmp_path / "no-web")},
        "provisioning": {"backend": "local-ca",
                         "local_ca": {"create": False, "cert_file": str(tmp_path / "ca.crt"),
                                      "key_file": str(tmp_path / "ca.key")}},
    })
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    want = ["upstream.port: expected an integer 1..65535",
            "registry.path: expected a file in an existing directory",
            "provisioning.local_ca.cert_file: expected a readable file",
            "provisioning.local_ca.key_file: expected a readable file",
            "web.static_dir: expected a directory holding the dashboard"]
    for w in want:
        assert any(l.startswith("fleetgw: invalid configuration: %s: " % p) and w in l
                   for l in lines), (w, r.stderr)
    assert str(tmp_path / "ca.crt") in r.stderr
    assert len(lines) == len(want), r.stderr


def test_check_config_says_where_the_dashboard_is(tmp_path):
    # Run from the build directory, the source tree's web/static is found;
    # a binary elsewhere with no files beside it is warned about.
    p, r = check(tmp_path, {"upstream": {"host": "127.0.0.1", "tls": False},
                            "registry": {"path": str(tmp_path / "r.db")}})
    assert r.returncode == 0, r.stderr
    assert "configuration is valid" in r.stdout
    lonely = tmp_path / "bin" / "fleetgw"
    lonely.parent.mkdir()
    lonely.write_bytes(open(FLEETGW_BIN, "rb").read())
    lonely.chmod(0o755)
    r = subprocess.run([str(lonely), "--config", str(p), "--check-config"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 0
    if "/usr/share/fleetgw/web" not in r.stderr:  # an installed package has it
        return
    assert "web.static_dir: no dashboard" in r.stderr
    assert str(tmp_path / "bin" / ".." / "share" / "fleetgw" / "web") in r.stderr
