"""deploy/demo.sh run non-interactively and stopped by a signal to its PID,
as `kill -INT`, `timeout` or a supervisor would: every process it started
(the broker, the gateway, the simulated leaves, the watcher and the output
filters) is gone afterwards, the stop goes leaves -> gateway -> broker, and
the script exits instead of resuming its command loop.

The demo uses the binaries of BUILD_DIR (DEMO_BUILD_DIR: no build of its
own), a temporary state directory and free ports on 127.0.0.1.

Run with:  BUILD_DIR=build-test /usr/bin/python3 -m pytest tests/integration/test_demo.py
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import free_port

REPO = Path(__file__).resolve().parents[2]
BUILD_DIR = Path(os.environ.get("BUILD_DIR", REPO / "build"))
LEAVES = 3

pytestmark = pytest.mark.skipif(
    not (BUILD_DIR / "fleetgw").exists()
    or not (BUILD_DIR / "tests/leaf/fleetgw-leafsim").exists()
    or not shutil.which("curl") or not shutil.which("mosquitto_sub"),
    reason="needs BUILD_DIR's fleetgw and fleetgw-leafsim, curl and mosquitto-clients")


def descendants(pid):
    """Every process below pid (by parent PID, so also those in sessions of
    their own), as {pid: command line}."""
    children = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue
        children.setdefault(ppid, []).append((int(d.name), cmd))
    out, todo = {}, [pid]
    while todo:
        for child, cmd in children.get(todo.pop(), []):
            out[child] = cmd
            todo.append(child)
    return out


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for this purpose
        return (Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]) != "Z"
    except OSError:
        return False


class Demo:
    def __init__(self, state, out, **env):
        self.state, self.out = state, out
        ports = dict(BROKER_PORT=free_port(), WEB_PORT=free_port(),
                     GW_PORT=free_port(socket.SOCK_DGRAM),
                     DTLS_PORT=free_port(socket.SOCK_DGRAM))
        self.env = dict(os.environ, DEMO_STATE=str(state), DEMO_BUILD_DIR=str(BUILD_DIR),
                        LEAVES=str(LEAVES), **{k: str(v) for k, v in ports.items()},
                        **{k: str(v) for k, v in env.items()})
        self.log = open(out, "w")
        # Its own session, so that a failed test can kill the whole group; the
        # demo itself is stopped through its PID only.
        self.proc = subprocess.Popen([str(REPO / "deploy/demo.sh")], env=self.env,
                                     stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def text(self):
        return Path(self.out).read_text(errors="replace")

    def wait_for(self, pattern, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.text(), re.M):
                return
            assert self.proc.poll() is None, f"demo exited {self.proc.returncode}:\n{self.text()}"
            time.sleep(0.2)
        raise AssertionError(f"no {pattern!r} within {timeout} s:\n{self.text()}")

    def close(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self.log.close()


def programs(procs):
    """The demo's long-running programs among its descendants."""
    names = ("mosquitto -c", "fleetgw --config", "fleetgw-leafsim", "mosquitto_sub")
    return {pid: cmd for pid, cmd in procs.items() if any(n in cmd for n in names)}


@pytest.fixture
def state(tmp_path):
    s = tmp_path / "demo-state"
    s.mkdir()
    return s


def test_sigint_stops_everything_in_order(state, tmp_path):
    demo = Demo(state, tmp_path / "run1.out")
    try:
        # Telemetry at the broker, a command at a leaf: the loop is running.
        demo.wait_for(r"^\[broker\] fleet/leaf-\d+/telemetry", 60)
        demo.wait_for(r"^\[leaf\]   leaf-0 fleet/leaf-0/cmd blink 0", 30)
        procs = descendants(demo.proc.pid)
        progs = programs(procs)
        assert len(progs) == 4, procs
        # $! is the program's own PID (not a filter's): each is a direct child.
        ppid = {p: int(Path(f"/proc/{p}/stat").read_text().split(") ")[1].split()[1])
                for p in progs}
        assert all(v == demo.proc.pid for v in ppid.values()), (ppid, procs)

        t0 = time.monotonic()
        demo.proc.send_signal(signal.SIGINT)
        rc = demo.proc.wait(timeout=40)
        took = time.monotonic() - t0
        out = demo.text()
        assert rc == 130, out
        assert took < 30, took
        left = {p: c for p, c in procs.items() if alive(p)}
        assert not left, f"left running: {left}\n{out}"

        # Leaves first (the gateway logs their DISCONNECT), then the gateway,
        # then the broker: the gateway's upstream sessions end with DISCONNECT
        # (mosquitto: "Client leaf-0 disconnected."), not a broken connection.
        assert out.index("== stopping") < out.index("main: SIGTERM received")
        assert out.index("session: leaf-0: disconnected") < out.index("main: SIGTERM received")
        mlog = (state / "mosquitto.log").read_text()
        for i in range(LEAVES):
            assert f"Client leaf-{i} disconnected." in mlog, mlog
        assert "closed its connection" not in mlog and "exceeded timeout" not in mlog, mlog
        assert "root" not in mlog, mlog                # no "should not be run as root"
        assert "broken pipe" not in out.lower(), out
        assert "Connection refused" not in out, out    # the command loop did not resume
        # The registry in words, as the README's query prints it.
        for i in range(LEAVES):
            assert f"[registry] leaf-{i}|leaf-{i}|active" in out, out
        # The metrics line went to the log only.
        assert " metrics: metrics {" not in out
        assert " metrics: metrics {" in (state / "fleetgw.log").read_text()
    finally:
        demo.close()

    # A second run on the same state: ready is this run's gateway answering
    # (the log already holds a "ready:" line), nobody is provisioned again,
    # and DEMO_SECONDS ends it by itself with status 0.
    lines_before = len((state / "fleetgw.log").read_text().splitlines())
    demo = Demo(state, tmp_path / "run2.out", DEMO_SECONDS=6)
    try:
        rc = demo.proc.wait(timeout=60)
        out = demo.text()
        assert rc == 0, out
        assert "stopping by itself after 6 s" in out
        assert re.search(r"^\[broker\] fleet/leaf-\d+/telemetry", out, re.M), out
        new_log = "\n".join((state / "fleetgw.log").read_text().splitlines()[lines_before:])
        assert "ready:" in new_log
        assert "provisioned" not in new_log, new_log
        assert not programs(descendants(demo.proc.pid))
    finally:
        demo.close()


def test_second_signal_hurries_the_stop(state, tmp_path):
    """SIGTERM, then SIGINT while the stop is under way: what is left is
    killed at once and the script still exits, leaving nothing behind."""
    demo = Demo(state, tmp_path / "run.out", DEMO_PLAIN=1)
    try:
        demo.wait_for(r"^\[broker\] fleet/leaf-\d+/telemetry", 60)
        procs = descendants(demo.proc.pid)
        assert len(programs(procs)) == 4, procs
        demo.proc.send_signal(signal.SIGTERM)
        demo.wait_for(r"^== stopping", 10)
        demo.proc.send_signal(signal.SIGINT)
        rc = demo.proc.wait(timeout=20)
        assert rc == 143, demo.text()
        left = {p: c for p, c in procs.items() if alive(p)}
        assert not left, f"left running: {left}\n{demo.text()}"
    finally:
        demo.close()
