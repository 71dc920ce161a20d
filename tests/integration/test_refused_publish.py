"""A publish the cloud refuses (AWS IoT closes the connection after a PUBLISH
its policy denies, MQTT 3.1.1 behaviour) is recognised after
upstream.max_refusals closes, dropped and reported to the leaf with PUBACK
"not supported"; the leaf's later messages go through.  Against the AWS IoT
simulator, which applies the device policy in deploy/aws/."""
import mqttsn_leaf as sn
from conftest import connect_until_accepted, find_metric
from test_provisioning_aws import Observer, aws_gateway, pki, sim  # noqa: F401 (fixtures)


def test_refused_publish_is_dropped_and_later_ones_pass(gateway, sim, pki, tmp_path):
    gw = aws_gateway(gateway, sim, pki, tmp_path, admission={"policy": "open"})
    obs = Observer(sim, pki, "fleet/#")
    try:
        lf = gw.leaf("plc-refused")
        assert connect_until_accepted(lf) == sn.RC_ACCEPTED
        bad = lf.register("forbidden/plc-refused/x")
        good = lf.register("fleet/fleetgw-plc-refused/ok")
        # The device policy allows fleet/<thing name>/* only (thing name
        # fleetgw-<ClientId>): the simulator closes
        # the connection on this one, every time it is sent.
        assert lf.publish(bad, b"denied", qos=1, timeout=30) == sn.RC_NOT_SUPPORTED
        assert sim.state()["counters"]["policy_violations"] == 3
        assert lf.publish(good, b"allowed", qos=1, timeout=30) == sn.RC_ACCEPTED
        assert ("fleet/fleetgw-plc-refused/ok", b"allowed") in obs.wait(1)
        assert find_metric(gw.metrics(), "publish_refused") == 1
    finally:
        obs.close()
