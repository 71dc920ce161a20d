"""fleetgw backup DEST (issue 14, db/store_backup.c): a copy of the registry
taken while the gateway runs and writes (a leaf publishing QoS 1 through the
outbox), with its key file, both 0600; the copy is a whole registry: a
gateway started on it (after the first is stopped) knows the leaf and its
certificate and issues no second one; an existing destination is refused."""
import os
import stat
import subprocess
import threading

import mqttsn_leaf as sn
from conftest import FLEETGW_BIN, connect_until_accepted, registry_certs, registry_db
from test_provisioning_local import local_gateway


def backup(gw, dest):
    return subprocess.run([FLEETGW_BIN, "--config", str(gw.config_path), "backup", str(dest)],
                          capture_output=True, text=True, timeout=60)


def test_backup_while_running(gateway, ca_broker, local_ca, tmp_path):
    reg = tmp_path / "reg.db"
    gw = local_gateway(gateway, ca_broker, local_ca, reg)
    lf = gw.leaf("bk-a")
    assert connect_until_accepted(lf) == sn.RC_ACCEPTED
    tid = lf.register("fleet/bk-a/t")
    stop = threading.Event()
    sent = []

    def publish():
        while not stop.is_set():
            if lf.publish(tid, b"x" * 64, qos=1) == sn.RC_ACCEPTED:
                sent.append(1)
    t = threading.Thread(target=publish)
    t.start()
    try:
        dest = tmp_path / "copy" / "reg-backup.db"
        dest.parent.mkdir()
        r = backup(gw, dest)
        assert r.returncode == 0, r.stderr
        assert "pages of" in r.stdout and str(dest) + ".key" in r.stdout, r.stdout
    finally:
        stop.set()
        t.join(10)
    assert sent, "the leaf published nothing while the backup ran"
    for f in (dest, dest.parent / (dest.name + ".key")):
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o600, f
    assert not (dest.parent / (dest.name + "-wal")).exists()
    with registry_db(dest) as con:
        assert con.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        assert con.execute("SELECT count(*) FROM devices WHERE client_id = 'bk-a'").fetchone()[0] == 1
    # Never over a file.
    r = backup(gw, dest)
    assert r.returncode == 1 and "exists" in r.stderr, r
    # The copy is a registry: the leaf is known, its sealed key opens.
    first = registry_certs(reg, "bk-a")
    assert gw.terminate() == 0
    gw.config["registry"] = {"path": str(dest)}
    gw.start()
    lf2 = gw.leaf("bk-a")
    assert connect_until_accepted(lf2) == sn.RC_ACCEPTED
    assert [r["cert_id"] for r in registry_certs(dest, "bk-a")] == [r["cert_id"] for r in first]
