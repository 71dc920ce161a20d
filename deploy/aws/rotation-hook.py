"""Pre-provisioning hook for the fleetgw-rotation template (an AWS Lambda function).

A rotation is a RegisterThing that a device sends over its own connection, with its
current certificate, to give an existing thing a second certificate
(docs/protocol-notes.md §5.11). The rotation template names the thing from the request's
parameters, so without this hook any connection allowed to publish to the template's topic
could name somebody else's thing and get a working certificate for it.

The hook allows the request only when:
  * the connection's own certificate (claimCertificateId in the hook's input, which for a
    rotation we read as the device's current certificate, not a claim certificate: §5.12 says
    why, and that this is to be confirmed on real AWS) is attached to the thing the template
    will name, fleetgw-<SerialNumber>;
  * the MQTT client id is that thing name (the device policy already insists on it; checked
    again so that the hook does not depend on the policy being right);
  * the new certificate is not the one the connection already uses.
Anything else, an error included, is a refusal, which AWS reports to the device as
ACCESS_DENIED (§5.8). A claim certificate is attached to no thing, so a claim connection
is refused too.

Install: deploy/aws/README.md. The function's role needs iot:ListThingPrincipals (and the
usual CloudWatch Logs permissions); it must answer within 5 seconds (§5.8).
"""
import os
import re

THING_PREFIX = os.environ.get("THING_PREFIX", "fleetgw-")
SERIAL_PARAMETER = os.environ.get("SERIAL_PARAMETER", "SerialNumber")
CHECK_CLIENT_ID = os.environ.get("CHECK_CLIENT_ID", "1") != "0"
THING_NAME = re.compile(r"^[a-zA-Z0-9:_-]{1,128}$")  # AWS API, CreateThing

_iot = None


def _client():
    global _iot
    if _iot is None:
        import boto3  # in the Lambda runtime; imported late so that tests can load decide()
        _iot = boto3.client("iot")
    return _iot


def _principals(thing):
    """Every principal ARN attached to the thing (ListThingPrincipals pages by nextToken)."""
    kw = {"thingName": thing}
    while True:
        page = _client().list_thing_principals(**kw)
        yield from page.get("principals", [])
        if not page.get("nextToken"):
            return
        kw["nextToken"] = page["nextToken"]


def decide(event, principals=_principals):
    """Return (allowed, reason). `principals` is a function thing -> iterable of ARNs."""
    params = event.get("parameters") or {}
    serial = params.get(SERIAL_PARAMETER)
    requester = event.get("claimCertificateId")
    if not isinstance(serial, str) or not serial:
        return False, "no %s parameter" % SERIAL_PARAMETER
    if not requester:
        return False, "no claimCertificateId in the hook input"
    thing = THING_PREFIX + serial
    if not THING_NAME.match(thing):
        return False, "%r is not a valid thing name" % thing
    if CHECK_CLIENT_ID and event.get("clientId") != thing:
        return False, "client id %r is not the thing name %r" % (event.get("clientId"), thing)
    if event.get("certificateId") == requester:
        return False, "the new certificate is the requesting one"
    try:
        attached = [arn.rsplit("/", 1)[-1] for arn in principals(thing)]
    except Exception as e:  # ResourceNotFoundException for a thing that does not exist, or any error
        return False, "cannot list the principals of %s: %s" % (thing, e)
    if requester not in attached:
        return False, "certificate %s is not attached to %s" % (requester, thing)
    return True, "certificate %s is attached to %s" % (requester, thing)


def handler(event, context):
    allowed, reason = decide(event)
    # Logged to CloudWatch Logs; the hook input holds no secret (a certificate is public).
    print("fleetgw rotation hook: %s: %s" % ("allow" if allowed else "deny", reason))
    return {"allowProvisioning": allowed}
