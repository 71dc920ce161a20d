"""Helpers for the web API tests, standard library only:

  * Api          - an HTTP/1.1 client for the REST API (http.client), one
                   connection per request, bearer token by default;
  * WebSocket    - a minimal RFC 6455 client over a plain socket (handshake
                   with the Sec-WebSocket-Accept check, masked client frames,
                   unmasked server frames, fragmentation, ping/pong, close);
  * parse_prometheus - a strict parser of the Prometheus text exposition
                   format 0.0.4 that raises PromError on anything dubious;
  * openapi_problems - structural checks of an OpenAPI 3.0 document.

Everything talks to 127.0.0.1 only.
"""
import base64
import hashlib
import http.client
import json
import math
import os
import re
import socket
import struct
import time
import urllib.parse

LOOPBACK = "127.0.0.1"


# ---------------------------------------------------------------------------
# REST
# ---------------------------------------------------------------------------
class Response:
    def __init__(self, status, reason, headers, body):
        self.status = status
        self.reason = reason
        self.headers = headers          # http.client.HTTPMessage (case-insensitive)
        self.body = body                # bytes

    @property
    def text(self):
        return self.body.decode("utf-8", errors="replace")

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def header(self, name, default=None):
        return self.headers.get(name, default)

    @property
    def content_type(self):
        return (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()

    def __repr__(self):
        return "<HTTP %d %s %r>" % (self.status, self.content_type, self.body[:300])


_DEFAULT = object()


class Api:
    """The REST API of one gateway: Api(port, token).  request() returns a
    Response whatever the status; get/post/delete are shorthands."""

    def __init__(self, port, token=None, host=LOOPBACK, timeout=10.0):
        self.host, self.port, self.token, self.timeout = host, port, token, timeout

    def with_token(self, token):
        return Api(self.port, token, self.host, self.timeout)

    def request(self, method, path, body=None, headers=None, token=_DEFAULT, json_body=_DEFAULT,
                content_type=None):
        hdrs = {}
        tok = self.token if token is _DEFAULT else token
        if tok is not None:
            hdrs["Authorization"] = "Bearer " + tok
        if json_body is not _DEFAULT:
            body = json.dumps(json_body).encode()
            content_type = content_type or "application/json"
        if isinstance(body, str):
            body = body.encode()
        if content_type:
            hdrs["Content-Type"] = content_type
        hdrs.update(headers or {})
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request(method, path, body=body, headers=hdrs)
            r = conn.getresponse()
            data = r.read()
            return Response(r.status, r.reason, r.headers, data)
        finally:
            conn.close()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, json_body=_DEFAULT, **kw):
        return self.request("POST", path, json_body=json_body, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    def ok(self, method, path, status=200, **kw):
        """A request that must answer `status`; returns the JSON body (or the
        Response when the body is not JSON)."""
        r = self.request(method, path, **kw)
        assert r.status == status, "%s %s -> %d (wanted %d): %s" % (method, path, r.status,
                                                                     status, r.text[:500])
        if r.content_type == "application/json":
            return r.json()
        return r

    def wait_up(self, timeout=10.0, proc=None):
        """Wait until the server answers HTTP at all (any status)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                break
            try:
                self.get("/api/v1/health")
                return True
            except (OSError, http.client.HTTPException) as e:
                last = e
                time.sleep(0.1)
        raise AssertionError("web server on port %d never answered: %r" % (self.port, last))


def quote(s):
    """URL-encode one path segment (every reserved character, '/' included)."""
    return urllib.parse.quote(s, safe="")


def check_error_body(r, status, code=None):
    """An error answer: the status, a JSON body {"error": str, "message": str}
    (exactly those two keys) and, if given, the code."""
    assert r.status == status, "wanted %d, got %r" % (status, r)
    assert r.content_type == "application/json", "error with Content-Type %r: %r" % (
        r.header("Content-Type"), r)
    body = r.json()
    assert isinstance(body, dict) and set(body) == {"error", "message"}, body
    assert isinstance(body["error"], str) and body["error"], body
    assert isinstance(body["message"], str) and body["message"], body
    if code is not None:
        assert body["error"] == code, body
    return body


# ---------------------------------------------------------------------------
# WebSocket (RFC 6455)
# ---------------------------------------------------------------------------
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class WsClosed(Exception):
    """The server closed the WebSocket (code None: no close frame, plain EOF)."""

    def __init__(self, code=None, reason=""):
        super().__init__("closed (code %r, %r)" % (code, reason))
        self.code, self.reason = code, reason


class WsHandshakeError(Exception):
    def __init__(self, status, head):
        super().__init__("WebSocket handshake refused: %s" % head[:300])
        self.status, self.head = status, head


def ws_accept_key(key):
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


class WebSocket:
    """A client WebSocket.  recv() returns ("text", str) or ("binary", bytes);
    pings are answered, a close frame is echoed and raises WsClosed."""

    def __init__(self, port, path="/api/v1/events", host=LOOPBACK, timeout=10.0, headers=None):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.closed = False
        key = base64.b64encode(os.urandom(16)).decode()
        lines = ["GET %s HTTP/1.1" % path, "Host: %s:%d" % (host, port), "Upgrade: websocket",
                 "Connection: Upgrade", "Sec-WebSocket-Key: " + key, "Sec-WebSocket-Version: 13"]
        for k, v in (headers or {}).items():
            lines.append("%s: %s" % (k, v))
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise WsHandshakeError(0, self.buf.decode(errors="replace"))
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        head = head.decode("iso-8859-1")
        status_line, *hlines = head.split("\r\n")
        parts = status_line.split(" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        self.response_headers = {}
        for h in hlines:
            k, _, v = h.partition(":")
            self.response_headers[k.strip().lower()] = v.strip()
        if status != 101:
            self.sock.close()
            raise WsHandshakeError(status, head)
        hd = self.response_headers
        assert hd.get("upgrade", "").lower() == "websocket", head
        assert "upgrade" in hd.get("connection", "").lower(), head
        assert hd.get("sec-websocket-accept") == ws_accept_key(key), \
            "bad Sec-WebSocket-Accept in %r" % head
        # "subprotocol none": the server must not pick one we did not offer.
        assert "sec-websocket-protocol" not in hd, head

    # -- frames ------------------------------------------------------------
    def _read_exact(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                self.closed = True
                raise WsClosed(None, "EOF")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _read_frame(self):
        b0, b1 = self._read_exact(2)
        fin, rsv, opcode = b0 & 0x80, b0 & 0x70, b0 & 0x0F
        masked, n = b1 & 0x80, b1 & 0x7F
        assert rsv == 0, "RSV bits set without an extension: 0x%02x" % b0
        assert not masked, "server frames must not be masked (RFC 6455 5.1)"
        if n == 126:
            n = struct.unpack("!H", self._read_exact(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._read_exact(8))[0]
        if opcode >= 0x8:
            assert fin and n <= 125, "control frames are short and unfragmented"
        return bool(fin), opcode, self._read_exact(n)

    def send_frame(self, opcode, payload, fin=True):
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([(0x80 if fin else 0) | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def send_text(self, text):
        self.send_frame(OP_TEXT, text.encode())

    def send_json(self, obj):
        self.send_text(json.dumps(obj))

    def recv(self, timeout=None):
        """The next data message; socket.timeout when none comes in time."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        parts, kind = [], None
        while True:
            fin, op, payload = self._read_frame()
            if op == OP_PING:
                self.send_frame(OP_PONG, payload)
                continue
            if op == OP_PONG:
                continue
            if op == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                reason = payload[2:].decode(errors="replace")
                if not self.closed:
                    try:
                        self.send_frame(OP_CLOSE, payload[:2])
                    except OSError:
                        pass
                self.closed = True
                raise WsClosed(code, reason)
            if op in (OP_TEXT, OP_BINARY):
                assert kind is None, "new data frame inside a fragmented message"
                kind = op
            else:
                assert op == OP_CONT and kind is not None, "unexpected opcode 0x%x" % op
            parts.append(payload)
            if fin:
                data = b"".join(parts)
                if kind == OP_TEXT:
                    return "text", data.decode("utf-8")
                return "binary", data

    def recv_json(self, timeout=None):
        kind, data = self.recv(timeout)
        assert kind == "text", "events are text frames, got %s" % kind
        return json.loads(data)

    def wait_event(self, pred, timeout):
        """Read events until pred(event) holds; returns (event, all seen)."""
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no matching event in %.1f s; saw %r" % (timeout, seen))
            try:
                ev = self.recv_json(timeout=left)
            except socket.timeout:
                continue
            seen.append(ev)
            if pred(ev):
                return ev, seen

    def wait_closed(self, timeout):
        """Read until the server closes; returns the close code (None for a
        bare EOF), or raises AssertionError if it stays open."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.recv(timeout=max(0.05, deadline - time.monotonic()))
            except WsClosed as e:
                return e.code
            except socket.timeout:
                continue
            except (ConnectionResetError, BrokenPipeError):
                return None
        raise AssertionError("the server kept the socket open for %.1f s" % timeout)

    def close(self):
        try:
            if not self.closed:
                self.send_frame(OP_CLOSE, struct.pack("!H", 1000))
                self.closed = True
        except OSError:
            pass
        finally:
            self.sock.close()


# ---------------------------------------------------------------------------
# Prometheus text exposition format 0.0.4, parsed strictly
# ---------------------------------------------------------------------------
class PromError(ValueError):
    pass


METRIC_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# Go's strconv.ParseFloat forms that Prometheus writes, plus the specials.
FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?Inf|NaN")
TIMESTAMP_RE = re.compile(r"-?[0-9]+")
PROM_TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


class Family:
    def __init__(self, name):
        self.name = name
        self.help = None
        self.type = None
        self.samples = []       # (sample name, {label: value}, float)

    def label_values(self, label):
        return {lab[label] for _, lab, _ in self.samples if label in lab}

    def value(self, **labels):
        """Sum of the samples whose labels include `labels`."""
        return sum(v for _, lab, v in self.samples
                   if all(lab.get(k) == str(w) for k, w in labels.items()))

    def __repr__(self):
        return "<%s %s %d samples>" % (self.type, self.name, len(self.samples))


def _family_of(sample_name, families):
    """The family a sample belongs to: its own name, or for histograms and
    summaries the base name of _bucket/_sum/_count."""
    if sample_name in families:
        return families[sample_name]
    for suffix in ("_bucket", "_sum", "_count"):
        if sample_name.endswith(suffix):
            base = families.get(sample_name[:-len(suffix)])
            if base is not None and base.type in ("histogram", "summary"):
                if suffix == "_bucket" and base.type != "histogram":
                    return None
                return base
    return None


def _parse_labels(s, pos, lineno):
    """Parses '{a="x",b="y"}' starting at s[pos] == '{'; returns (labels, pos after '}')."""
    labels = {}
    pos += 1
    while True:
        if pos < len(s) and s[pos] == "}":
            return labels, pos + 1
        m = LABEL_NAME_RE.match(s, pos)
        if not m:
            raise PromError("line %d: bad label name at %r" % (lineno, s[pos:pos + 20]))
        name = m.group(0)
        if name.startswith("__"):
            raise PromError("line %d: label name %r is reserved" % (lineno, name))
        if name in labels:
            raise PromError("line %d: duplicate label %r" % (lineno, name))
        pos = m.end()
        if s[pos:pos + 2] != '="':
            raise PromError("line %d: label %r: expected =\"" % (lineno, name))
        pos += 2
        val = []
        while True:
            if pos >= len(s):
                raise PromError("line %d: unterminated label value" % lineno)
            c = s[pos]
            if c == "\\":
                nxt = s[pos + 1:pos + 2]
                if nxt not in ("\\", '"', "n"):
                    raise PromError("line %d: bad escape \\%s in a label value" % (lineno, nxt))
                val.append("\n" if nxt == "n" else nxt)
                pos += 2
            elif c == '"':
                pos += 1
                break
            elif c == "\n":
                raise PromError("line %d: raw newline in a label value" % lineno)
            else:
                val.append(c)
                pos += 1
        labels[name] = "".join(val)
        if pos < len(s) and s[pos] == ",":
            pos += 1
        elif pos < len(s) and s[pos] == "}":
            pass
        else:
            raise PromError("line %d: expected , or } after a label" % lineno)


def parse_prometheus(text, require_help=True):
    """Parses the text format 0.0.4 strictly; returns {family name: Family}.

    Rules enforced (PromError with the line number otherwise): the text ends
    with a newline; metric and label names are valid; label values are
    quoted with only \\\\, \\" and \\n escapes; at most one HELP and one TYPE per
    family, both before its first sample (and with require_help, every
    family has both); TYPE is one of counter/gauge/histogram/summary/untyped;
    a family's samples are contiguous; counter names end in _total and
    counter values are >= 0; no series appears twice; values parse as
    floats; histograms have cumulative buckets ending in le="+Inf" that
    equals _count."""
    if text and not text.endswith("\n"):
        raise PromError("the exposition must end with a newline")
    families = {}
    order = []
    seen_series = set()
    closed = set()          # families whose block of samples has ended
    current = None          # family of the previous sample line
    for lineno, line in enumerate(text.split("\n")[:-1] if text else [], 1):
        if line.strip() == "":
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 2 and parts[0] == "#" and parts[1] in ("HELP", "TYPE"):
                if len(parts) < 3:
                    raise PromError("line %d: %s without a metric name" % (lineno, parts[1]))
                name = parts[2]
                if not METRIC_NAME_RE.fullmatch(name):
                    raise PromError("line %d: bad metric name %r" % (lineno, name))
                fam = families.get(name)
                if fam is None:
                    fam = families[name] = Family(name)
                    order.append(name)
                if fam.samples:
                    raise PromError("line %d: %s for %s after its samples"
                                    % (lineno, parts[1], name))
                if parts[1] == "HELP":
                    if fam.help is not None:
                        raise PromError("line %d: second HELP for %s" % (lineno, name))
                    doc = parts[3] if len(parts) > 3 else ""
                    if re.search(r"\\[^\\n]", doc.replace("\\\\", "")):
                        raise PromError("line %d: bad escape in HELP text" % lineno)
                    fam.help = doc
                else:
                    if fam.type is not None:
                        raise PromError("line %d: second TYPE for %s" % (lineno, name))
                    typ = parts[3].strip() if len(parts) > 3 else ""
                    if typ not in PROM_TYPES:
                        raise PromError("line %d: unknown TYPE %r" % (lineno, typ))
                    fam.type = typ
                    if typ == "counter" and not name.endswith("_total"):
                        raise PromError("line %d: counter %s does not end in _total" %
                                        (lineno, name))
            continue   # any other comment is allowed
        # A sample: name [labels] value [timestamp]
        m = METRIC_NAME_RE.match(line)
        if not m:
            raise PromError("line %d: bad metric name in %r" % (lineno, line))
        sname = m.group(0)
        pos = m.end()
        labels = {}
        if pos < len(line) and line[pos] == "{":
            labels, pos = _parse_labels(line, pos, lineno)
        rest = line[pos:]
        if not rest or rest[0] not in " \t":
            raise PromError("line %d: expected a space before the value in %r" % (lineno, line))
        fields = rest.split()
        if len(fields) not in (1, 2):
            raise PromError("line %d: expected 'value [timestamp]' in %r" % (lineno, line))
        if not FLOAT_RE.fullmatch(fields[0]):
            raise PromError("line %d: value %r is not a float" % (lineno, fields[0]))
        value = float(fields[0].replace("Inf", "inf"))
        if len(fields) == 2 and not TIMESTAMP_RE.fullmatch(fields[1]):
            raise PromError("line %d: bad timestamp %r" % (lineno, fields[1]))
        fam = _family_of(sname, families)
        if fam is None:
            if require_help:
                raise PromError("line %d: sample %s has no HELP/TYPE before it" % (lineno, sname))
            fam = families[sname] = Family(sname)
            fam.type = "untyped"
            order.append(sname)
        if require_help and (fam.help is None or fam.type is None):
            raise PromError("line %d: family %s lacks %s" % (
                lineno, fam.name, "HELP" if fam.help is None else "TYPE"))
        if fam is not current:
            if fam.name in closed:
                raise PromError("line %d: samples of %s are not contiguous" % (lineno, fam.name))
            if current is not None:
                closed.add(current.name)
            current = fam
        if fam.type in ("counter", "gauge", "untyped") and sname != fam.name:
            raise PromError("line %d: sample %s in family %s" % (lineno, sname, fam.name))
        if fam.type == "counter" and (math.isnan(value) or value < 0):
            raise PromError("line %d: counter %s has value %r" % (lineno, sname, value))
        if fam.type == "histogram" and sname.endswith("_bucket") and "le" not in labels:
            raise PromError("line %d: bucket without le" % lineno)
        key = (sname, tuple(sorted(labels.items())))
        if key in seen_series:
            raise PromError("line %d: duplicate series %s%r" % (lineno, sname, labels))
        seen_series.add(key)
        fam.samples.append((sname, labels, value))
    for name in order:
        fam = families[name]
        if fam.type == "histogram":
            _check_histogram(fam)
    return families


def _check_histogram(fam):
    groups = {}
    for sname, labels, value in fam.samples:
        rest = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        groups.setdefault(rest, {"buckets": [], "count": None})
        if sname.endswith("_bucket"):
            le = labels["le"]
            if not FLOAT_RE.fullmatch(le):
                raise PromError("%s: le=%r is not a float" % (fam.name, le))
            groups[rest]["buckets"].append((float(le.replace("Inf", "inf")), value))
        elif sname.endswith("_count"):
            groups[rest]["count"] = value
    for rest, g in groups.items():
        b = sorted(g["buckets"])
        if not b or b[-1][0] != math.inf:
            raise PromError("%s%r: no le=\"+Inf\" bucket" % (fam.name, rest))
        if any(b[i][1] > b[i + 1][1] for i in range(len(b) - 1)):
            raise PromError("%s%r: buckets not cumulative" % (fam.name, rest))
        if g["count"] is not None and g["count"] != b[-1][1]:
            raise PromError("%s%r: _count != +Inf bucket" % (fam.name, rest))


# ---------------------------------------------------------------------------
# OpenAPI 3.0: structural checks
# ---------------------------------------------------------------------------
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
PARAM_IN = ("path", "query", "header", "cookie")
SCHEMA_TYPES = ("string", "number", "integer", "boolean", "array", "object")


def _resolve(doc, ref):
    if not ref.startswith("#/"):
        raise KeyError("only local references are expected: %r" % ref)
    node = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            raise KeyError(ref)
        node = node[part]
    return node


def _deref(doc, node):
    seen = 0
    while isinstance(node, dict) and "$ref" in node:
        node = _resolve(doc, node["$ref"])
        seen += 1
        if seen > 20:
            raise KeyError("reference loop")
    return node


def _walk(node, where, visit):
    visit(node, where)
    if isinstance(node, dict):
        for k, v in node.items():
            _walk(v, where + "/" + str(k), visit)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _walk(v, "%s[%d]" % (where, i), visit)


def _check_schema(doc, schema, where, problems):
    try:
        s = _deref(doc, schema)
    except KeyError:
        return      # reported with the unresolved $ref
    if not isinstance(s, dict):
        problems.append("%s: schema is not an object" % where)
        return
    if "type" in s and s["type"] not in SCHEMA_TYPES:
        problems.append("%s: bad type %r" % (where, s["type"]))
    if s.get("type") == "array" and "items" not in s:
        problems.append("%s: array without items" % where)
    req = s.get("required")
    if req is not None:
        if not isinstance(req, list) or not req or len(set(req)) != len(req):
            problems.append("%s: required must be a non-empty list of unique names" % where)
        elif "properties" in s and not set(req) <= set(s["properties"]):
            problems.append("%s: required names %r not in properties" %
                            (where, sorted(set(req) - set(s["properties"]))))
    if "enum" in s and (not isinstance(s["enum"], list) or not s["enum"]):
        problems.append("%s: empty enum" % where)
    for k in ("minimum", "maximum"):
        if k in s and not isinstance(s[k], (int, float)):
            problems.append("%s: %s is not a number" % (where, k))
    if "minimum" in s and "maximum" in s and s["minimum"] > s["maximum"]:
        problems.append("%s: minimum > maximum" % where)
    if "default" in s and "enum" in s and s["default"] not in s["enum"]:
        problems.append("%s: default not in enum" % where)


def openapi_problems(doc):
    """A list of what is wrong with an OpenAPI 3.0.x document (empty if
    nothing): required top-level fields, every $ref resolves, every
    operation has responses with valid codes and descriptions, every {x} in
    a path is a declared required path parameter (and no undeclared path
    parameter exists), unique operationIds, parameters well formed, every
    security requirement names a declared scheme."""
    problems = []
    if not isinstance(doc, dict):
        return ["the document is not a JSON object"]
    if not re.fullmatch(r"3\.0\.\d+", str(doc.get("openapi", ""))):
        problems.append("openapi must be 3.0.x, got %r" % doc.get("openapi"))
    info = doc.get("info")
    if not isinstance(info, dict) or not isinstance(info.get("title"), str) \
            or not isinstance(info.get("version"), str):
        problems.append("info.title and info.version are required strings")
    paths = doc.get("paths")
    if not isinstance(paths, dict) or not paths:
        problems.append("paths is required and must not be empty")
        paths = {}
    allowed_top = {"openapi", "info", "servers", "paths", "components", "security", "tags",
                   "externalDocs"}
    for k in doc:
        if k not in allowed_top and not k.startswith("x-"):
            problems.append("unknown top-level field %r" % k)

    # Every $ref resolves.
    def visit(node, where):
        if isinstance(node, dict) and "$ref" in node:
            ref = node["$ref"]
            try:
                _resolve(doc, ref)
            except (KeyError, TypeError):
                problems.append("%s: $ref %r does not resolve" % (where, ref))
    _walk(doc, "#", visit)

    schemes = (doc.get("components") or {}).get("securitySchemes") or {}
    for name, sch in schemes.items():
        sch = _deref(doc, sch) if isinstance(sch, dict) else sch
        if not isinstance(sch, dict) or sch.get("type") not in ("apiKey", "http", "oauth2",
                                                                 "openIdConnect"):
            problems.append("securityScheme %s: bad type" % name)
        elif sch["type"] == "http" and "scheme" not in sch:
            problems.append("securityScheme %s: http without scheme" % name)

    def check_security(sec, where):
        if not isinstance(sec, list):
            problems.append("%s: security must be a list" % where)
            return
        for req in sec:
            if not isinstance(req, dict):
                problems.append("%s: security requirement is not an object" % where)
                continue
            for name in req:
                if name not in schemes:
                    problems.append("%s: security scheme %r not declared" % (where, name))
    if "security" in doc:
        check_security(doc["security"], "#/security")

    op_ids = {}
    for path, item in paths.items():
        where = "paths[%s]" % path
        if not path.startswith("/"):
            problems.append("%s: a path starts with /" % where)
        if not isinstance(item, dict):
            problems.append("%s: not an object" % where)
            continue
        templ = re.findall(r"\{([^}/]+)\}", path)
        if len(set(templ)) != len(templ):
            problems.append("%s: repeated template name" % where)
        common_params = item.get("parameters", [])
        ops = {m: item[m] for m in HTTP_METHODS if m in item}
        if not ops:
            problems.append("%s: no operation" % where)
        for k in item:
            if k not in HTTP_METHODS and k not in ("parameters", "summary", "description",
                                                   "servers", "$ref") and not k.startswith("x-"):
                problems.append("%s: unknown field %r" % (where, k))
        for method, op in ops.items():
            ow = "%s.%s" % (where, method)
            if not isinstance(op, dict):
                problems.append("%s: not an object" % ow)
                continue
            oid = op.get("operationId")
            if oid is not None:
                if oid in op_ids:
                    problems.append("%s: operationId %r also used by %s" % (ow, oid, op_ids[oid]))
                op_ids[oid] = ow
            if "security" in op:
                check_security(op["security"], ow)
            # Parameters: the operation's override the path item's by (name, in).
            params = {}
            for p in list(common_params) + list(op.get("parameters", [])):
                try:
                    pd = _deref(doc, p)
                except KeyError:
                    continue   # already reported as an unresolved $ref
                if not isinstance(pd, dict) or "name" not in pd or pd.get("in") not in PARAM_IN:
                    problems.append("%s: parameter without name or a valid 'in': %r" % (ow, p))
                    continue
                if "schema" not in pd and "content" not in pd:
                    problems.append("%s: parameter %s has no schema" % (ow, pd["name"]))
                elif "schema" in pd:
                    _check_schema(doc, pd["schema"], "%s param %s" % (ow, pd["name"]), problems)
                if pd["in"] == "path" and pd.get("required") is not True:
                    problems.append("%s: path parameter %s must be required" % (ow, pd["name"]))
                params[(pd["name"], pd["in"])] = pd
            own = []
            for p in op.get("parameters", []):
                try:
                    pd = _deref(doc, p)
                except KeyError:
                    continue
                if isinstance(pd, dict):
                    own.append((pd.get("name"), pd.get("in")))
            if len(set(own)) != len(own):
                problems.append("%s: duplicate parameter" % ow)
            declared_path = {n for (n, i) in params if i == "path"}
            for t in templ:
                if t not in declared_path:
                    problems.append("%s: {%s} has no path parameter" % (ow, t))
            for n in declared_path - set(templ):
                problems.append("%s: path parameter %s is not in the path" % (ow, n))
            rb = op.get("requestBody")
            if rb is not None:
                try:
                    rbd = _deref(doc, rb)
                except KeyError:
                    rbd = {"content": {"-": {}}}
                if not isinstance(rbd, dict) or not isinstance(rbd.get("content"), dict) \
                        or not rbd["content"]:
                    problems.append("%s: requestBody without content" % ow)
                else:
                    for mt, media in rbd["content"].items():
                        if "schema" in media:
                            _check_schema(doc, media["schema"], "%s body %s" % (ow, mt), problems)
            responses = op.get("responses")
            if not isinstance(responses, dict) or not responses:
                problems.append("%s: no responses" % ow)
                continue
            for code, resp in responses.items():
                if not re.fullmatch(r"[1-5][0-9][0-9]|[1-5]XX|default", str(code)):
                    problems.append("%s: bad response code %r" % (ow, code))
                try:
                    rd = _deref(doc, resp)
                except KeyError:
                    continue
                if not isinstance(rd, dict) or not isinstance(rd.get("description"), str):
                    problems.append("%s %s: a response needs a description" % (ow, code))
                    continue
                for mt, media in (rd.get("content") or {}).items():
                    if "schema" in media:
                        _check_schema(doc, media["schema"], "%s %s %s" % (ow, code, mt), problems)
            if not any(str(c).startswith(("2", "1")) or c == "default" for c in responses):
                problems.append("%s: no success response" % ow)

    for name, sch in ((doc.get("components") or {}).get("schemas") or {}).items():
        _check_schema(doc, sch, "components.schemas.%s" % name, problems)

        def visit_props(node, where):
            if isinstance(node, dict) and isinstance(node.get("properties"), dict):
                for pn, pv in node["properties"].items():
                    _check_schema(doc, pv, "%s.%s" % (where, pn), problems)
        _walk(sch, "components.schemas." + name, visit_props)
    return problems


def openapi_operations(doc):
    """[(path, METHOD, operation)] of every documented operation."""
    out = []
    for path, item in doc["paths"].items():
        for m in HTTP_METHODS:
            if m in item:
                out.append((path, m.upper(), item[m]))
    return out


# ---------------------------------------------------------------------------
# JSON values against the document's schemas (the subset the document uses)
# ---------------------------------------------------------------------------
def schema_errors(doc, schema, value, where="$", strict=True):
    """What is wrong with `value` under `schema` (a list of strings, empty if
    it conforms).  Supports $ref, type, nullable, enum, properties, required,
    items, allOf, oneOf, minimum/maximum, minLength/maxLength and pattern.
    strict: an object may not have properties its schema does not list (so
    a field the server adds without documenting it is caught)."""
    s = _deref(doc, schema)
    errs = []
    if value is None:
        return [] if s.get("nullable") else ["%s: null is not allowed" % where]
    for sub in s.get("allOf", []):
        errs += schema_errors(doc, sub, value, where, strict)
    disc = s.get("discriminator")
    if disc and isinstance(value, dict) and value.get(disc["propertyName"]) in disc.get(
            "mapping", {}):
        # Judge by the schema the discriminator names: clearer complaints.
        mapped = {"$ref": disc["mapping"][value[disc["propertyName"]]]}
        errs += schema_errors(doc, mapped, value, where, strict)
    elif "oneOf" in s:
        ok = [sub for sub in s["oneOf"] if not schema_errors(doc, sub, value, where, strict)]
        if len(ok) != 1:
            errs.append("%s: matches %d of the oneOf schemas, not exactly 1" % (where, len(ok)))
    t = s.get("type")
    checks = {
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "array": lambda v: isinstance(v, list),
        "object": lambda v: isinstance(v, dict),
    }
    if t is not None and not checks[t](value):
        return errs + ["%s: %r is not of type %s" % (where, value, t)]
    if "enum" in s and value not in s["enum"]:
        errs.append("%s: %r not in %r" % (where, value, s["enum"]))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in s and value < s["minimum"]:
            errs.append("%s: %r < minimum %r" % (where, value, s["minimum"]))
        if "maximum" in s and value > s["maximum"]:
            errs.append("%s: %r > maximum %r" % (where, value, s["maximum"]))
    if isinstance(value, str):
        if "minLength" in s and len(value) < s["minLength"]:
            errs.append("%s: shorter than %d" % (where, s["minLength"]))
        if "maxLength" in s and len(value) > s["maxLength"]:
            errs.append("%s: longer than %d" % (where, s["maxLength"]))
        if "pattern" in s and not re.search(s["pattern"], value):
            errs.append("%s: %r does not match %s" % (where, value, s["pattern"]))
    if isinstance(value, dict):
        props = s.get("properties")
        for name in s.get("required", []):
            if name not in value:
                errs.append("%s: missing %r" % (where, name))
        if props is not None:
            for name, v in value.items():
                if name in props:
                    errs += schema_errors(doc, props[name], v, "%s.%s" % (where, name), strict)
                elif strict and "allOf" not in s:
                    errs.append("%s: undocumented property %r" % (where, name))
    if isinstance(value, list) and "items" in s:
        for i, v in enumerate(value):
            errs += schema_errors(doc, s["items"], v, "%s[%d]" % (where, i), strict)
    return errs


def response_schema(doc, path, method, status, media="application/json"):
    """The documented schema of (path, method, status) for a media type, or
    None when the document has no such response or no schema for it."""
    op = doc["paths"][path][method.lower()]
    resp = op["responses"].get(str(status))
    if resp is None:
        return None
    resp = _deref(doc, resp)
    media_obj = (resp.get("content") or {}).get(media)
    return None if media_obj is None else media_obj.get("schema")
