"""A publish the cloud refuses (AWS IoT closes the connection after a PUBLISH
its policy denies, MQTT 3.1.1 behaviour) is recognised after
upstream.max_refusals closes, dropped and reported to the leaf with PUBACK
"not supported"; the leaf's later messages go through.  Against the AWS IoT
simulator, which applies the device policy in deploy/aws/."""
import mqttsn_leaf as sn
from conftest import connect_until_accepted, find_metric, wait_until
from test_provisioning_aws import Observer, aws_gateway, pki, sim  # noqa: F401 (fixtures)


def refused_setup(gateway, sim, pki, tmp_path, **over):
    """An AWS gateway (the simulator), an observer on fleet/#, and a leaf
    with a topic its policy denies (bad) and one it allows (good)."""
    gw = aws_gateway(gateway, sim, pki, tmp_path, admission={"policy": "open"}, **over)
    obs = Observer(sim, pki, "fleet/#")
    lf = gw.leaf("plc-refused")
    assert connect_until_accepted(lf) == sn.RC_ACCEPTED
    # The device policy allows fleet/<thing name>/* only (thing name
    # fleetgw-<ClientId>): the simulator closes the connection on the
    # first, every time it is sent.
    bad = lf.register("forbidden/plc-refused/x")
    good = lf.register("fleet/fleetgw-plc-refused/ok")
    return gw, obs, lf, bad, good


def test_refused_publish_is_dropped_and_later_ones_pass(gateway, sim, pki, tmp_path):
    """Without the outbox the leaf hears the refusal: its PUBACK waits for
    the broker, and gets "not supported"."""
    gw, obs, lf, bad, good = refused_setup(gateway, sim, pki, tmp_path, outbox={"enabled": False})
    try:
        assert lf.publish(bad, b"denied", qos=1, timeout=30) == sn.RC_NOT_SUPPORTED
        assert sim.state()["counters"]["policy_violations"] == 3
        assert lf.publish(good, b"allowed", qos=1, timeout=30) == sn.RC_ACCEPTED
        assert ("fleet/fleetgw-plc-refused/ok", b"allowed") in obs.wait(1)
        assert find_metric(gw.metrics(), "publish_refused") == 1
    finally:
        obs.close()


def test_refused_stored_publish_is_deleted_and_later_ones_pass(gateway, sim, pki, tmp_path):
    """With the outbox the leaf was acknowledged when the message was on
    disk; the cloud's refusal (AWS closes the connection after it) is
    recognised after upstream.max_refusals closes, the message is deleted
    and counted, and the messages behind it go on, in order."""
    gw, obs, lf, bad, good = refused_setup(gateway, sim, pki, tmp_path)
    try:
        assert lf.publish(bad, b"denied", qos=1, timeout=10) == sn.RC_ACCEPTED
        assert lf.publish(good, b"allowed", qos=1, timeout=10) == sn.RC_ACCEPTED
        assert ("fleet/fleetgw-plc-refused/ok", b"allowed") in obs.wait(1, timeout=60)
        assert wait_until(lambda: find_metric(gw.metrics(), "publish_refused") == 1, 10)
        assert sim.state()["counters"]["policy_violations"] == 3
        assert wait_until(lambda: find_metric(gw.metrics(), "outbox_messages") == 0, 10)
        assert find_metric(gw.metrics(), "outbox_delivered") == 1
    finally:
        obs.close()
