#!/usr/bin/env node
// aws_iot_sim.js - a stand-in for AWS IoT Core and its Fleet Provisioning MQTT API, for
// fleetgw's tests. It is written on aedes (an MQTT broker library) and Node's crypto, and
// shares no code with the gateway's C MQTT client. Every AWS behaviour it reproduces cites the
// fact in docs/protocol-notes.md (§5 = fleet provisioning, §4 = AWS IoT MQTT, §6 = TLS; bare § numbers below refer to it).
// Usage and the control API: tests/sim/README.md.
import aedesFactory from 'aedes' // aedes 0.51: CommonJS, works on Node 18 (Debian 12) and 20
import tls from 'node:tls'
import http from 'node:http'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'

// ---------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------
const REPEATABLE = new Set(['ca', 'template', 'hook', 'device-topic-prefix', 'device-rotation-template', 'fault-reject', 'fault-silence', 'fault-drop'])
const FLAGS = new Set(['require-sni', 'verbose', 'no-keepalive-clamp'])

function parseArgs (argv) {
  const a = {
    host: '127.0.0.1', port: '0', 'control-port': '0', 'template-name': 'fleetgw', 'observer-cn': 'sim-observer',
    'token-ttl-ms': '3600000', 'rate-limit': '0', 'not-after': '2049-12-31T23:59:59Z'
  }
  for (const k of REPEATABLE) a[k] = []
  for (let i = 0; i < argv.length; i++) {
    const m = /^--([a-z-]+)$/.exec(argv[i])
    if (!m) throw new Error(`unexpected argument ${argv[i]}`)
    const k = m[1]
    if (FLAGS.has(k)) { a[k] = true; continue }
    if (i + 1 >= argv.length) throw new Error(`--${k} needs a value`)
    if (REPEATABLE.has(k)) a[k].push(argv[++i]); else a[k] = argv[++i]
  }
  for (const k of ['server-cert', 'server-key', 'device-ca-cert', 'device-ca-key']) {
    if (!a[k]) throw new Error(`--${k} is required`)
  }
  if (a.template.length === 0) throw new Error('--template [NAME=]FILE is required')
  return a
}

const ARGS = parseArgs(process.argv.slice(2))
const log = (...m) => { if (ARGS.verbose) console.error('[sim]', ...m) }

// ---------------------------------------------------------------------------------------
// Minimal DER reading and writing: enough to parse a CSR and to build an X.509 certificate
// for any key type (node-forge only handles RSA, and the gateway uses ECC P-256 CSRs).
// ---------------------------------------------------------------------------------------
function derRead (buf, off, limit = buf.length) {
  if (off + 2 > limit) throw new Error('DER: truncated header')
  const tag = buf[off]
  let len = buf[off + 1]
  let p = off + 2
  if (len & 0x80) {
    const n = len & 0x7f
    if (n < 1 || n > 4 || p + n > limit) throw new Error('DER: bad length')
    len = 0
    for (let i = 0; i < n; i++) len = len * 256 + buf[p++]
  }
  if (p + len > limit) throw new Error('DER: content past the end')
  return { tag, start: off, cs: p, end: p + len }
}
function derKids (buf, node) {
  const out = []
  for (let p = node.cs; p < node.end;) { const k = derRead(buf, p, node.end); out.push(k); p = k.end }
  return out
}
const derRaw = (buf, n) => buf.subarray(n.start, n.end)
function derLen (n) {
  if (n < 128) return Buffer.from([n])
  const b = []
  while (n > 0) { b.unshift(n & 255); n = Math.floor(n / 256) }
  return Buffer.from([0x80 | b.length, ...b])
}
function der (tag, ...parts) {
  const c = Buffer.concat(parts)
  return Buffer.concat([Buffer.from([tag]), derLen(c.length), c])
}
const hex = (h) => Buffer.from(h, 'hex')
const SEQ = (...p) => der(0x30, ...p)

// Signature algorithm OIDs (DER, with tag) a CSR may use, and the hash each implies.
const CSR_SIG_HASH = {
  '06092a864886f70d01010b': 'sha256', // sha256WithRSAEncryption
  '06092a864886f70d01010c': 'sha384',
  '06092a864886f70d01010d': 'sha512',
  '06082a8648ce3d040302': 'sha256', // ecdsa-with-SHA256
  '06082a8648ce3d040303': 'sha384',
  '06082a8648ce3d040304': 'sha512'
}
const OID_RSA_SHA256 = '06092a864886f70d01010b'
const OID_ECDSA_SHA256 = '06082a8648ce3d040302'

function pemBody (pem, label) {
  const m = new RegExp(`-----BEGIN ${label}-----([\\s\\S]*?)-----END ${label}-----`).exec(pem)
  return m ? Buffer.from(m[1].replace(/\s+/g, ''), 'base64') : null
}
function toPem (derBuf, label) {
  const b64 = derBuf.toString('base64').match(/.{1,64}/g).join('\n')
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`
}
function asn1Time (d) {
  // RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050.
  const s = d.toISOString().replace(/[-:T]/g, '').slice(0, 14) + 'Z'
  return d.getUTCFullYear() < 2050 ? der(0x17, Buffer.from(s.slice(2))) : der(0x18, Buffer.from(s))
}

// The simulator's issuing CA, standing in for the Amazon Root CA that signs AWS-issued
// device certificates (docs/protocol-notes.md §5.4).
const DEVICE_CA_PEM = fs.readFileSync(ARGS['device-ca-cert'], 'utf8')
const DEVICE_CA = new crypto.X509Certificate(DEVICE_CA_PEM)
const DEVICE_CA_KEY = crypto.createPrivateKey(fs.readFileSync(ARGS['device-ca-key']))
const DEVICE_CA_SUBJECT = (() => {
  const raw = DEVICE_CA.raw
  const tbs = derKids(raw, derKids(raw, derRead(raw, 0))[0])
  const i0 = tbs[0].tag === 0xa0 ? 1 : 0 // version is optional
  return derRaw(raw, tbs[i0 + 4])
})()
const NOT_AFTER = new Date(ARGS['not-after'])
if (isNaN(NOT_AFTER)) throw new Error('--not-after is not a date')

// Issue a certificate for a public key (DER SubjectPublicKeyInfo), signed by the device CA.
// §5.4: AWS-issued certificates expire at 2049-12-31T23:59:59Z; the certificateId is 64 hex
// characters, here the SHA-256 of the DER certificate.
function issueCertificate (spki, subject) {
  const serial = crypto.randomBytes(16)
  serial[0] = (serial[0] & 0x7f) | 0x40 // positive, and no leading zero byte
  const rsaCa = DEVICE_CA_KEY.asymmetricKeyType === 'rsa'
  const sigAlg = rsaCa ? SEQ(hex(OID_RSA_SHA256), hex('0500')) : SEQ(hex(OID_ECDSA_SHA256))
  const ext = (oid, critical, value) => SEQ(hex(oid), ...(critical ? [hex('0101ff')] : []), der(0x04, value))
  const extensions = der(0xa3, SEQ(
    ext('0603551d13', true, SEQ()), // basicConstraints CA:FALSE
    ext('0603551d0f', true, hex('03020780')), // keyUsage digitalSignature
    ext('0603551d25', false, SEQ(hex('06082b06010505070302'))) // extKeyUsage clientAuth
  ))
  const tbs = SEQ(
    der(0xa0, hex('020102')), der(0x02, serial), sigAlg, DEVICE_CA_SUBJECT,
    SEQ(asn1Time(new Date(Date.now() - 60000)), asn1Time(NOT_AFTER)), subject, spki, extensions)
  const sig = crypto.sign('sha256', tbs, DEVICE_CA_KEY)
  const certDer = SEQ(tbs, sigAlg, der(0x03, Buffer.from([0]), sig))
  return { der: certDer, pem: toPem(certDer, 'CERTIFICATE'), id: crypto.createHash('sha256').update(certDer).digest('hex') }
}

// AWS-generated certificates carry the subject "CN=AWS IoT Certificate" (observed on real
// certificates; not a documented guarantee, so the gateway must not depend on it).
const AWS_SUBJECT = SEQ(der(0x31, SEQ(hex('0603550403'), der(0x0c, Buffer.from('AWS IoT Certificate')))))

// Parse and check a PEM CSR. §5.4: the key must be RSA >= 2048 bits or ECC P-256/P-384
// (newer SDK strings add "P-512", read as P-521). Throws an Error whose message is sent back.
function parseCsr (pem) {
  if (typeof pem !== 'string') throw new Error('certificateSigningRequest is missing or not a string')
  const buf = pemBody(pem, 'CERTIFICATE REQUEST') || pemBody(pem, 'NEW CERTIFICATE REQUEST')
  if (!buf) throw new Error('certificateSigningRequest is not a PEM certificate request')
  const top = derRead(buf, 0)
  if (top.tag !== 0x30 || top.end !== buf.length) throw new Error('CSR: not a DER SEQUENCE')
  const [info, alg, sig] = derKids(buf, top)
  if (!info || !alg || !sig || info.tag !== 0x30 || alg.tag !== 0x30 || sig.tag !== 0x03) throw new Error('CSR: bad structure')
  const ik = derKids(buf, info)
  if (ik.length < 3 || ik[1].tag !== 0x30 || ik[2].tag !== 0x30) throw new Error('CSR: bad request info')
  const spki = derRaw(buf, ik[2])
  const key = crypto.createPublicKey({ key: spki, format: 'der', type: 'spki' })
  const hash = CSR_SIG_HASH[derRaw(buf, derKids(buf, alg)[0]).toString('hex')]
  if (!hash) throw new Error('CSR: unsupported signature algorithm')
  if (!crypto.verify(hash, derRaw(buf, info), key, buf.subarray(sig.cs + 1, sig.end))) throw new Error('CSR: signature does not verify')
  const d = key.asymmetricKeyDetails || {}
  if (key.asymmetricKeyType === 'rsa') {
    if (d.modulusLength < 2048) throw new Error('CSR: RSA keys must be at least 2048 bits')
  } else if (key.asymmetricKeyType === 'ec') {
    if (!['prime256v1', 'secp384r1', 'secp521r1'].includes(d.namedCurve)) throw new Error('CSR: ECC keys must use NIST P-256 or P-384')
  } else {
    throw new Error(`CSR: unsupported key type ${key.asymmetricKeyType}`)
  }
  return { spki, subject: derRaw(buf, ik[1]) }
}

// A tiny CBOR encoder (maps of text keys to text/unsigned int), so requests on the cbor
// topics (§5.1) can be answered in their own format.
function cbor (v) {
  const head = (major, n) => n < 24 ? Buffer.from([major << 5 | n])
    : n < 256 ? Buffer.from([major << 5 | 24, n])
      : n < 65536 ? Buffer.from([major << 5 | 25, n >> 8, n & 255])
        : Buffer.concat([Buffer.from([major << 5 | 26]), Buffer.from([n >>> 24, (n >> 16) & 255, (n >> 8) & 255, n & 255])])
  if (typeof v === 'number') return head(0, v)
  if (typeof v === 'string') { const b = Buffer.from(v); return Buffer.concat([head(3, b.length), b]) }
  const e = Object.entries(v)
  return Buffer.concat([head(5, e.length), ...e.flatMap(([k, x]) => [cbor(k), cbor(x)])])
}

// ---------------------------------------------------------------------------------------
// Topics
// ---------------------------------------------------------------------------------------
// §5.1: three operations x {json, cbor} x {request, accepted, rejected} = 18 topic strings.
const RE_CERT_TOPIC = /^\$aws\/certificates\/(create|create-from-csr)\/(json|cbor)(?:\/(accepted|rejected))?$/
const RE_PROV_TOPIC = /^\$aws\/provisioning-templates\/([^/]+)\/provision\/(json|cbor)(?:\/(accepted|rejected))?$/
const OPS = { create: 'CreateKeysAndCertificate', 'create-from-csr': 'CreateCertificateFromCsr', provision: 'RegisterThing' }
function provTopic (topic) {
  let m = RE_CERT_TOPIC.exec(topic)
  if (m) return { op: OPS[m[1]], fmt: m[2], suffix: m[3] || null, base: topic.replace(/\/(accepted|rejected)$/, '') }
  m = RE_PROV_TOPIC.exec(topic)
  if (m) return { op: OPS.provision, template: m[1], fmt: m[2], suffix: m[3] || null, base: topic.replace(/\/(accepted|rejected)$/, '') }
  return null
}
const isServiceTopic = (t) => t.startsWith('$aws/certificates/') || t.startsWith('$aws/provisioning-templates/')
function opName (s) {
  const k = String(s)
  if (Object.values(OPS).includes(k)) return k
  const alias = { create: OPS.create, 'create-from-csr': OPS['create-from-csr'], csr: OPS['create-from-csr'], provision: OPS.provision, register: OPS.provision }
  if (alias[k]) return alias[k]
  throw new Error(`unknown operation ${s}`)
}

// MQTT topic filter matching. §4.3: on AWS "sensor/#" does not match "sensor", and filters
// starting with a wildcard never match topics starting with "$".
function topicMatches (filter, topic) {
  const f = filter.split('/')
  const t = topic.split('/')
  if (t[0].startsWith('$') && (f[0] === '#' || f[0] === '+')) return false
  for (let i = 0; i < f.length; i++) {
    if (f[i] === '#') return i < t.length
    if (i >= t.length || (f[i] !== '+' && f[i] !== t[i])) return false
  }
  return f.length === t.length
}

// ---------------------------------------------------------------------------------------
// IoT policies (IAM JSON): Allow/Deny statements, Action and Resource globs ("*", "?"),
// the policy variables ${iot:ClientId} and ${iot:Connection.Thing.ThingName}, and the
// condition Bool iot:Connection.Thing.IsAttached. Resources are compared after the
// "arn:aws:iot:<region>:<account>:" prefix: client/<id>, topic/<t>, topicfilter/<f>.
// ---------------------------------------------------------------------------------------
const globRe = (s) => s.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')
function compilePolicy (doc, origin) {
  const stmts = Array.isArray(doc.Statement) ? doc.Statement : [doc.Statement]
  return stmts.map((s) => {
    const list = (x) => (Array.isArray(x) ? x : [x]).map(String)
    const cond = s.Condition || {}
    for (const [op, kv] of Object.entries(cond)) {
      if (op !== 'Bool' || Object.keys(kv).some((k) => k !== 'iot:Connection.Thing.IsAttached')) {
        console.error(`[sim] ${origin}: condition ${op} ${JSON.stringify(kv)} is not simulated; the statement never matches`)
        return null
      }
    }
    return {
      effect: s.Effect,
      actions: list(s.Action).map((a) => new RegExp(`^${globRe(a)}$`, 'i')),
      resources: list(s.Resource).map((r) => r.replace(/^arn:aws:iot:[^:]*:[^:]*:/, '')),
      attached: cond.Bool ? String(cond.Bool['iot:Connection.Thing.IsAttached']) : null
    }
  }).filter(Boolean)
}
function resourceMatches (pattern, resource, ctx) {
  let re = '^'
  for (const part of pattern.split(/(\$\{[^}]*\})/)) {
    const v = /^\$\{(.*)\}$/.exec(part)
    if (!v) { re += globRe(part); continue }
    const val = v[1] === 'iot:ClientId' ? ctx.clientId : v[1] === 'iot:Connection.Thing.ThingName' ? ctx.thingName : undefined
    if (val === undefined) return false // an unresolved variable makes the statement not apply
    re += val.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
  }
  return new RegExp(re + '$').test(resource)
}
function policyAllows (policy, action, resource, ctx) {
  const hit = (s) => s.actions.some((a) => a.test(action)) &&
    (s.attached === null || s.attached === String(!!ctx.thingName)) &&
    s.resources.some((r) => r === '*' || resourceMatches(r, resource, ctx))
  if (policy.some((s) => s.effect === 'Deny' && hit(s))) return false
  return policy.some((s) => s.effect === 'Allow' && hit(s))
}
const loadPolicy = (file) => compilePolicy(JSON.parse(fs.readFileSync(file, 'utf8')), file)

// Built-in defaults. The claim policy is the §5.7 example plus create-from-csr (the gotcha),
// for any template name, so that an unknown template gets its 404 instead of a closed connection.
const CLAIM_POLICY = ARGS['claim-policy'] ? loadPolicy(ARGS['claim-policy']) : compilePolicy({
  Statement: [
    { Effect: 'Allow', Action: 'iot:Connect', Resource: '*' },
    { Effect: 'Allow', Action: ['iot:Publish', 'iot:Receive'], Resource: ['topic/$aws/certificates/create/*', 'topic/$aws/certificates/create-from-csr/*', 'topic/$aws/provisioning-templates/*/provision/*'] },
    { Effect: 'Allow', Action: 'iot:Subscribe', Resource: ['topicfilter/$aws/certificates/create/*', 'topicfilter/$aws/certificates/create-from-csr/*', 'topicfilter/$aws/provisioning-templates/*/provision/*'] }
  ]
}, 'built-in claim policy')
// §4.1: client id = thing name, enforced through the thing policy variable.
const DEVICE_PREFIXES = ARGS['device-topic-prefix'].length ? ARGS['device-topic-prefix'] : ['things/${thing}/', 'fleet/${thing}/']
const ROTATION_TEMPLATES = ARGS['device-rotation-template'].length ? ARGS['device-rotation-template'] : ['fleetgw-rotation']
const ROTATION_TOPICS = ['$aws/certificates/create-from-csr/json', ...ROTATION_TEMPLATES.map((n) => `$aws/provisioning-templates/${n}/provision/json`)]
const DEVICE_POLICY = ARGS['device-policy'] ? loadPolicy(ARGS['device-policy']) : compilePolicy({
  Statement: [
    { Effect: 'Allow', Action: 'iot:Connect', Resource: 'client/${iot:Connection.Thing.ThingName}', Condition: { Bool: { 'iot:Connection.Thing.IsAttached': 'true' } } },
    { Effect: 'Allow', Action: ['iot:Publish', 'iot:Receive'], Resource: DEVICE_PREFIXES.map((p) => 'topic/' + p.replace('${thing}', '${iot:Connection.Thing.ThingName}') + '*') },
    { Effect: 'Allow', Action: 'iot:Subscribe', Resource: DEVICE_PREFIXES.map((p) => 'topicfilter/' + p.replace('${thing}', '${iot:Connection.Thing.ThingName}') + '*') },
    // §5.11: rotation over the device's own connection, as deploy/aws/device-policy.json allows it:
    // CreateCertificateFromCsr and RegisterThing on the rotation template(s), JSON only, and
    // exactly the request, accepted and rejected topics.
    { Effect: 'Allow', Action: 'iot:Publish', Resource: ROTATION_TOPICS.map((t) => 'topic/' + t) },
    { Effect: 'Allow', Action: 'iot:Receive', Resource: ROTATION_TOPICS.flatMap((t) => ['accepted', 'rejected'].map((r) => `topic/${t}/${r}`)) },
    { Effect: 'Allow', Action: 'iot:Subscribe', Resource: ROTATION_TOPICS.flatMap((t) => ['accepted', 'rejected'].map((r) => `topicfilter/${t}/${r}`)) }
  ]
}, 'built-in device policy')

// ---------------------------------------------------------------------------------------
// Provisioning templates (§5.8)
// ---------------------------------------------------------------------------------------
const TEMPLATES = new Map()
for (const spec of ARGS.template) {
  const eq = spec.indexOf('=')
  const name = eq > 0 ? spec.slice(0, eq) : ARGS['template-name']
  const file = eq > 0 ? spec.slice(eq + 1) : spec
  const text = fs.readFileSync(file, 'utf8')
  // §5.1: template names are 1-36 characters of [0-9A-Za-z_-]; §5.8: body <= 10,240 characters.
  if (!/^[0-9A-Za-z_-]{1,36}$/.test(name)) throw new Error(`template name ${name} is not valid on AWS`)
  if (text.length > 10240) throw new Error(`${file}: template body is over 10,240 characters`)
  const body = JSON.parse(text)
  const things = Object.values(body.Resources || {}).filter((r) => r.Type === 'AWS::IoT::Thing')
  if (things.length !== 1) throw new Error(`${file}: needs exactly one AWS::IoT::Thing resource`)
  TEMPLATES.set(name, { name, file: path.resolve(file), body })
}

// Pre-provisioning hooks (§5.8, §5.12), --hook TEMPLATE=CHECK. The simulator runs no Lambda;
// CHECK names a built-in decision:
//  * attached-thing: what deploy/aws/rotation-hook.py decides: allow only a device connection
//    whose own certificate is attached to the thing the template names;
//  * deny: refuse every request.
const HOOK_CHECKS = new Set(['attached-thing', 'deny'])
const HOOKS = new Map()
for (const spec of ARGS.hook) {
  const eq = spec.indexOf('=')
  const name = spec.slice(0, eq); const check = spec.slice(eq + 1)
  if (eq <= 0 || !TEMPLATES.has(name)) throw new Error(`--hook ${spec}: needs TEMPLATE=CHECK with a --template of that name`)
  if (!HOOK_CHECKS.has(check)) throw new Error(`--hook ${spec}: the check must be one of ${[...HOOK_CHECKS].join(', ')}`)
  HOOKS.set(name, check)
}

class ApiError extends Error {
  constructor (statusCode, errorCode, errorMessage) { super(errorMessage); this.statusCode = statusCode; this.errorCode = errorCode }
}
const badParams = (msg) => new ApiError(400, 'InvalidParameters', msg)

// Intrinsic functions: Ref, Fn::Join, Fn::Sub, Fn::Select, Fn::Split, Fn::FindInMap.
function evalValue (v, params, mappings) {
  const ev = (x) => evalValue(x, params, mappings)
  if (v === null || typeof v !== 'object') return v
  if (Array.isArray(v)) return v.map(ev)
  const keys = Object.keys(v)
  if (keys.length === 1 && (keys[0] === 'Ref' || keys[0].startsWith('Fn::'))) {
    const a = v[keys[0]]
    const ref = (n) => { if (!(n in params)) throw badParams(`Template references parameter ${n}, which has no value`); return params[n] }
    switch (keys[0]) {
      case 'Ref': return ref(a)
      case 'Fn::Join': return ev(a[1]).map(String).join(a[0])
      case 'Fn::Sub': return (typeof a === 'string' ? a : a[0]).replace(/\$\{([^}]+)\}/g, (_, n) => ref(n))
      case 'Fn::Select': return ev(a[1])[Number(ev(a[0]))]
      case 'Fn::Split': return String(ev(a[1])).split(a[0])
      case 'Fn::FindInMap': { const [m, k1, k2] = ev(a); return ((mappings || {})[m] || {})[k1]?.[k2] }
    }
  }
  return Object.fromEntries(keys.map((k) => [k, ev(v[k])]))
}

// ---------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------
let S
const FAULT_DEFAULTS = () => {
  const f = { reject: [], silence: [], delay: [], drop: [], rate_limit: Number(ARGS['rate-limit']), token_ttl_ms: Number(ARGS['token-ttl-ms']) }
  for (const s of ARGS['fault-reject']) {
    const [op, count, statusCode, errorCode] = s.split(':')
    f.reject.push({ op: opName(op), count: Number(count), statusCode: Number(statusCode || 500), errorCode: errorCode || 'InternalFailure', errorMessage: 'Injected fault' })
  }
  for (const s of ARGS['fault-silence']) { const [op, count] = s.split(':'); f.silence.push({ op: opName(op), count: Number(count) }) }
  for (const s of ARGS['fault-drop']) { const i = s.lastIndexOf(':'); f.drop.push({ client_id: s.slice(0, i), messages: Number(s.slice(i + 1)) }) }
  if (ARGS['fault-delay-ms']) f.delay.push({ op: null, ms: Number(ARGS['fault-delay-ms']) })
  return f
}
function freshState () {
  if (S) for (const t of S.tokens.values()) clearTimeout(t.timer)
  S = {
    things: new Map(), // name -> { attributes, thing_type, created_at, certificates: Set }
    certs: new Map(), // id -> { state, thing, created_at, via, not_after, policies }
    tokens: new Map(), // token -> { certId, expires_at, timer }
    messages: [],
    faults: FAULT_DEFAULTS(),
    bucket: { tokens: Number(ARGS['rate-limit']), last: Date.now() },
    counters: {
      certs_issued: 0, certs_per_thing: {}, register_calls: 0, requests: {}, accepted: {}, rejections: {}, throttled: 0,
      tokens_expired: 0, deleted_unregistered: 0, duplicate_attachments: 0, connections: 0, connect_refused: 0,
      duplicate_client_id_kicks: 0, policy_violations: 0, tls_failures: 0, sni_missing: 0, faults_fired: 0,
      responses_not_delivered: 0, rotations: 0, rotations_per_thing: {}, hook_denials: 0
    }
  }
}
freshState()
const bump = (obj, key, n = 1) => { obj[key] = (obj[key] || 0) + n }

function recordMessage (dir, clientId, topic, qos, payload) {
  const text = payload.toString('utf8')
  const ok = Buffer.from(text, 'utf8').equals(payload)
  S.messages.push({ ts: Date.now(), dir, client_id: clientId, topic, qos, payload: ok ? text : payload.toString('base64'), encoding: ok ? 'utf8' : 'base64' })
  if (S.messages.length > 2000) S.messages.shift()
}

// §5.5: tokens are opaque, a few hundred bytes, single-use, and expire after one hour; when one
// expires while its certificate is still unactivated and unattached, the certificate is deleted.
function newToken (certId) {
  const token = crypto.randomBytes(240).toString('base64')
  const ttl = S.faults.token_ttl_ms
  const rec = { certId, expires_at: Date.now() + ttl }
  rec.timer = setTimeout(() => {
    S.tokens.delete(token)
    S.counters.tokens_expired++
    const c = S.certs.get(certId)
    if (c && c.state === 'PENDING_ACTIVATION' && !c.thing) {
      S.certs.delete(certId)
      S.counters.deleted_unregistered++
      log('token expired; deleted unregistered certificate', certId)
    }
  }, ttl)
  rec.timer.unref()
  S.tokens.set(token, rec)
  return token
}

// The connection that made a request, as the control API shows it.
function who (client) {
  const s = client && client._sim
  return s ? { kind: s.ident.kind, client_id: client.id || s.clientId, certificate_id: s.ident.certId || null } : null
}

// §5.4: both create operations leave the certificate PENDING_ACTIVATION.
function storeCert (cert, via, client) {
  S.certs.set(cert.id, {
    state: 'PENDING_ACTIVATION', thing: null, created_at: new Date().toISOString(), via, not_after: NOT_AFTER.toISOString(), policies: [],
    requested_by: who(client), registered_by: null, registered_at: null, template: null
  })
  S.counters.certs_issued++
}

// ---------------------------------------------------------------------------------------
// The three operations
// ---------------------------------------------------------------------------------------
function parseJson (payload, emptyOk) {
  if (payload.length === 0 && emptyOk) return {}
  let v
  try { v = JSON.parse(payload.toString('utf8')) } catch { throw new ApiError(400, 'InvalidPayload', 'Request payload is not valid JSON') }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new ApiError(400, 'InvalidPayload', 'Request payload must be a JSON object')
  return v
}

async function createKeysAndCertificate (payload, client) {
  // §5.2: the request is "an empty message payload"; real clients also send {}. Accept both.
  parseJson(payload, true)
  // §5.4: a 2048-bit RSA key pair; §5.2 (observed): the key is PKCS#1 PEM.
  const { publicKey, privateKey } = await new Promise((resolve, reject) =>
    crypto.generateKeyPair('rsa', { modulusLength: 2048 }, (e, pub, priv) => e ? reject(e) : resolve({ publicKey: pub, privateKey: priv })))
  const cert = issueCertificate(publicKey.export({ type: 'spki', format: 'der' }), AWS_SUBJECT)
  storeCert(cert, 'CreateKeysAndCertificate', client)
  // §5.2 (observed): key order certificateId, certificatePem, privateKey, certificateOwnershipToken.
  return {
    certificateId: cert.id,
    certificatePem: cert.pem,
    privateKey: privateKey.export({ type: 'pkcs1', format: 'pem' }),
    certificateOwnershipToken: newToken(cert.id)
  }
}

function createCertificateFromCsr (payload, client) {
  const req = parseJson(payload, false)
  let csr
  try { csr = parseCsr(req.certificateSigningRequest) } catch (e) {
    throw new ApiError(400, 'InvalidCertificateSigningRequest', e.message) // FreeRTOS list: 400 = invalid CSR (§5.3)
  }
  // §5.4: reusing a CSR gives a distinct certificate each time (fresh serial, so a fresh id).
  const cert = issueCertificate(csr.spki, csr.subject)
  storeCert(cert, 'CreateCertificateFromCsr', client)
  return { certificateOwnershipToken: newToken(cert.id), certificateId: cert.id, certificatePem: cert.pem }
}

function registerThing (templateName, payload, client) {
  S.counters.register_calls++
  const tpl = TEMPLATES.get(templateName)
  if (!tpl) throw new ApiError(404, 'ResourceNotFoundException', `Template ${templateName} not found`) // §5.3: 404
  const req = parseJson(payload, false)
  const token = req.certificateOwnershipToken
  if (typeof token !== 'string' || token === '') {
    // §5.2: the message observed on real AWS for an empty token.
    throw new ApiError(400, 'InvalidCertificateOwnershipToken', 'Certificate ownership token cannot be empty.')
  }
  const tok = S.tokens.get(token)
  const cert = tok && S.certs.get(tok.certId)
  if (!tok || !cert || Date.now() >= tok.expires_at) throw new ApiError(400, 'InvalidCertificateOwnershipToken', 'Certificate ownership token is invalid or has expired.')
  // §5.2: parameters is an optional flat string->string map.
  const given = req.parameters === undefined ? {} : req.parameters
  if (given === null || typeof given !== 'object' || Array.isArray(given)) throw badParams('parameters must be a JSON object')
  for (const [k, v] of Object.entries(given)) if (typeof v !== 'string') throw badParams(`Parameter ${k} must be a string`)
  const body = tpl.body
  // §5.8: the service fills AWS::IoT::Certificate::Id from the token; the device does not send it.
  const params = { 'AWS::IoT::Certificate::Id': tok.certId }
  for (const [name, def] of Object.entries(body.Parameters || {})) {
    if (name === 'AWS::IoT::Certificate::Id') continue
    if (Object.hasOwn(given, name)) params[name] = given[name]
    else if (def && Object.hasOwn(def, 'Default')) params[name] = String(def.Default)
    else throw badParams(`Missing value for required parameter ${name}`)
  }
  let thingRes = null; let certRes = null; const policies = []
  for (const r of Object.values(body.Resources)) {
    if (r.Type === 'AWS::IoT::Thing') thingRes = r
    else if (r.Type === 'AWS::IoT::Certificate') certRes = r
    else if (r.Type === 'AWS::IoT::Policy') policies.push(r)
  }
  const props = evalValue(thingRes.Properties || {}, params, body.Mappings)
  const thingName = props.ThingName
  // §5.4: thing names are 1-128 characters of [a-zA-Z0-9:_-].
  if (typeof thingName !== 'string' || !/^[a-zA-Z0-9:_-]{1,128}$/.test(thingName)) throw badParams(`Thing name ${JSON.stringify(thingName)} is not valid`)
  runHook(templateName, thingName, client)
  const certProps = certRes ? evalValue(certRes.Properties || {}, params, body.Mappings) : null
  const status = certProps ? (certProps.Status || 'ACTIVE') : null // §5.8: Status defaults to ACTIVE
  if (status && !['ACTIVE', 'INACTIVE'].includes(status)) throw badParams(`Certificate status ${status} is not valid`)
  const deviceConfiguration = evalValue(body.DeviceConfiguration || {}, params, body.Mappings)
  for (const [k, v] of Object.entries(deviceConfiguration)) {
    if (v !== null && typeof v === 'object') throw new ApiError(500, 'InternalFailure', `DeviceConfiguration ${k} is nested; AWS does not support that (§5.2)`)
  }
  const overrides = thingRes.OverrideSettings || {}
  let thing = S.things.get(thingName)
  if (thing) {
    // §5.9: an existing thing is reused, not recreated, unless an OverrideSettings entry says FAIL.
    if (Object.values(overrides).includes('FAIL')) throw new ApiError(409, 'ResourceConflictsException', `Thing ${thingName} already exists`)
    const attrs = props.AttributePayload || {}
    const mode = overrides.AttributePayload || 'DO_NOTHING'
    if (mode === 'MERGE') Object.assign(thing.attributes, attrs)
    else if (mode === 'REPLACE') thing.attributes = { ...attrs }
    if (overrides.ThingTypeName === 'REPLACE' && props.ThingTypeName) thing.thing_type = props.ThingTypeName
    S.counters.duplicate_attachments++
    log('RegisterThing reuses existing thing', thingName)
  } else {
    thing = { attributes: { ...(props.AttributePayload || {}) }, thing_type: props.ThingTypeName || null, created_at: new Date().toISOString(), certificates: new Set() }
    S.things.set(thingName, thing)
  }
  // The token is single-use: it is consumed by a successful RegisterThing only.
  clearTimeout(tok.timer)
  S.tokens.delete(token)
  if (certRes) {
    cert.state = status
    cert.thing = thingName
    cert.policies = policies.map((p) => p.Properties && p.Properties.PolicyName).filter(Boolean)
    thing.certificates.add(tok.certId) // §5.9: old certificates stay attached too
    bump(S.counters.certs_per_thing, thingName)
  }
  Object.assign(cert, { registered_by: who(client), registered_at: new Date().toISOString(), template: templateName })
  if (client && client._sim && client._sim.ident.kind === 'device') {
    // §5.11: a RegisterThing over a device's own connection is a rotation.
    S.counters.rotations++
    bump(S.counters.rotations_per_thing, thingName)
  }
  // §5.2: accepted = { deviceConfiguration: flat map, thingName }.
  return { deviceConfiguration, thingName }
}

// §5.8: a hook that does not allow provisioning fails the request with ACCESS_DENIED. AWS
// documents only the error code; the status 403 is the FreeRTOS list's "forbidden" (§5.3) and
// the message is the simulator's own (§5.12).
function runHook (templateName, thingName, client) {
  const check = HOOKS.get(templateName)
  if (!check) return
  let why = null
  if (check === 'deny') why = 'the hook refuses every request'
  else {
    const ident = client && client._sim ? client._sim.ident : { kind: 'none' }
    const thing = S.things.get(thingName)
    if (ident.kind !== 'device') why = `a ${ident.kind} connection may not use this template`
    else if (!thing || !thing.certificates.has(ident.certId)) why = `the requesting certificate is not attached to ${thingName}`
  }
  if (!why) return
  S.counters.hook_denials++
  log('pre-provisioning hook denies', templateName, thingName, why)
  throw new ApiError(403, 'ACCESS_DENIED', 'Pre-provisioning hook did not allow provisioning')
}

// ---------------------------------------------------------------------------------------
// Request dispatch, faults, rate limit, responses
// ---------------------------------------------------------------------------------------
const SIM_MARK = '$aws-iot-sim' // clientId stamped on the simulator's own responses

function takeFault (list, op) {
  const i = list.findIndex((f) => (f.op === null || f.op === op) && f.count > 0)
  if (i < 0) return null
  const f = list[i]
  if (--f.count <= 0) list.splice(i, 1)
  S.counters.faults_fired++
  return f
}

function rateLimited () {
  // §5.10: API TPS quotas per account across the provisioning operations; a token bucket here.
  const rate = S.faults.rate_limit
  if (!rate) return false
  const now = Date.now()
  const b = S.bucket
  b.tokens = Math.min(rate, b.tokens + (now - b.last) * rate / 1000)
  b.last = now
  if (b.tokens >= 1) { b.tokens -= 1; return false }
  return true
}

async function handleRequest (client, pt, payload) {
  const op = pt.op
  bump(S.counters.requests, op)
  if (takeFault(S.faults.silence, op)) { log('fault: no answer to', op); return }
  let ok = false; let body
  try {
    const rf = takeFault(S.faults.reject, op)
    if (rf) throw new ApiError(rf.statusCode, rf.errorCode, rf.errorMessage || 'Injected fault')
    if (rateLimited()) {
      S.counters.throttled++
      throw new ApiError(429, 'ThrottlingException', 'Rate exceeded') // §5.10, FreeRTOS code 429 (§5.3)
    }
    if (pt.fmt === 'cbor') throw new ApiError(400, 'InvalidPayload', 'The simulator implements the JSON format only')
    if (op === OPS.create) body = await createKeysAndCertificate(payload, client)
    else if (op === OPS['create-from-csr']) body = createCertificateFromCsr(payload, client)
    else body = registerThing(pt.template, payload, client)
    ok = true
    bump(S.counters.accepted, op)
  } catch (e) {
    const err = e instanceof ApiError ? e : new ApiError(500, 'InternalFailure', String(e && e.message))
    if (!(e instanceof ApiError)) console.error('[sim] internal error:', e)
    body = { statusCode: err.statusCode, errorCode: err.errorCode, errorMessage: err.message } // §5.2 rejected shape
    bump(S.counters.rejections, err.errorCode)
  }
  respond(client, pt, ok, body)
}

function respond (client, pt, ok, body) {
  const topic = `${pt.base}/${ok ? 'accepted' : 'rejected'}`
  const payload = pt.fmt === 'cbor' ? cbor(body) : Buffer.from(JSON.stringify(body))
  const send = () => {
    // §5.6: the result goes back only over the connection that published the request, and only
    // if that connection is subscribed (§5.1: subscribe before publishing or miss the response).
    if (client.closed || !client.connected) { S.counters.responses_not_delivered++; return }
    let qos = -1
    for (const [filter, sub] of Object.entries(client.subscriptions)) {
      if (topicMatches(filter, topic)) qos = Math.max(qos, Math.min(sub.qos, 1))
    }
    if (qos < 0 || !mayReceive(client, topic)) { S.counters.responses_not_delivered++; return }
    recordMessage('out', client.id, topic, qos, payload)
    // §5.2 (observed): responses arrive at QoS 1; here the subscription's QoS, capped at 1 (§4.4).
    client.publish({ cmd: 'publish', topic, payload, qos, retain: false, clientId: SIM_MARK }, () => {})
  }
  const d = S.faults.delay.find((f) => f.op === null || f.op === pt.op)
  if (d && d.ms > 0) setTimeout(send, d.ms); else send()
}

// ---------------------------------------------------------------------------------------
// Identities and broker hooks
// ---------------------------------------------------------------------------------------
// A connection's identity comes from its TLS client certificate (§6.1):
//  * a certificate the simulator issued (its SHA-256 is a certificateId) -> "device";
//  * any other certificate issued by the device CA (deleted, or from an earlier run) -> refused;
//  * CN = --observer-cn (default sim-observer) -> "observer", allowed everything;
//  * anything else that chains to a --ca certificate -> "claim" (with --claim-cn, only that CN).
function identify (sock) {
  const pc = sock.getPeerCertificate()
  if (!pc || !pc.raw) return { kind: 'none' }
  const id = crypto.createHash('sha256').update(pc.raw).digest('hex')
  const x = new crypto.X509Certificate(pc.raw)
  if (S.certs.has(id)) return { kind: 'device', certId: id }
  if (x.checkIssued(DEVICE_CA) && x.verify(DEVICE_CA.publicKey)) return { kind: 'unknown-device', certId: id }
  const cn = (pc.subject && pc.subject.CN) || ''
  if (cn === ARGS['observer-cn']) return { kind: 'observer', cn }
  if (ARGS['claim-cn'] && cn !== ARGS['claim-cn']) return { kind: 'unknown', cn }
  return { kind: 'claim', cn }
}

function policyFor (client) {
  const s = client._sim
  return s.ident.kind === 'claim' ? CLAIM_POLICY : DEVICE_POLICY
}
function ctxFor (client) {
  const s = client._sim
  const clientId = client.id || s.clientId
  let thingName
  if (s.ident.kind === 'device') {
    const c = S.certs.get(s.ident.certId)
    // Thing policy variables resolve only when client id = thing name and the certificate is
    // attached to that thing (§4.1, thing-policy-variables).
    if (c && c.thing === clientId) thingName = clientId
  }
  return { clientId, thingName }
}
function allowed (client, action, resource) {
  const s = client._sim
  if (!s) return false
  if (s.ident.kind === 'observer') return true
  return policyAllows(policyFor(client), action, resource, ctxFor(client))
}
function mayReceive (client, topic) {
  if (client._sim && client._sim.ident.kind === 'observer') return true
  return allowed(client, 'iot:Receive', 'topic/' + topic)
}

// §5.7 (and §4.7): anything outside the policy closes the connection and nothing is sent.
function violation (client, what) {
  S.counters.policy_violations++
  log('policy violation, closing', client.id, what)
  return new Error(`policy violation: ${what}`)
}

const broker = aedesFactory({
  id: 'aws-iot-sim',
  maxClientsIdLength: 128,
  heartbeatInterval: 3600000,
  preConnect (client, packet, cb) {
    const sock = client.conn
    const clientId = packet.clientId || ''
    const refuse = (why) => {
      S.counters.connect_refused++
      log('refusing CONNECT from', clientId, why)
      cb(new Error(why), false) // §4.7: the connection is closed, no CONNACK
    }
    const ident = identify(sock)
    client._sim = { ident, clientId, sni: sock.servername || null, alpn: sock.alpnProtocol || null, msgs: 0 }
    // §4.1: client ids are up to 128 bytes and must not start with "$".
    if (clientId.startsWith('$') || Buffer.byteLength(clientId) > 128) return refuse('bad client id')
    if (ident.kind === 'none' || ident.kind === 'unknown' || ident.kind === 'unknown-device') return refuse(`certificate not accepted (${ident.kind})`)
    if (ident.kind === 'device') {
      const c = S.certs.get(ident.certId)
      // Only an ACTIVE certificate may connect (§5.4: RegisterThing activates it).
      if (!c || c.state !== 'ACTIVE') return refuse(`certificate is ${c ? c.state : 'deleted'}`)
    }
    if (!allowed(client, 'iot:Connect', 'client/' + clientId)) { S.counters.policy_violations++; return refuse('iot:Connect not allowed') }
    if (!ARGS['no-keepalive-clamp']) {
      // §4.2: 0 or > 1200 s -> 1200 s; 1..29 s -> 30 s.
      if (packet.keepalive === 0 || packet.keepalive > 1200) packet.keepalive = 1200
      else if (packet.keepalive < 30) packet.keepalive = 30
    }
    // §4.1: the new connection is accepted and the old one with the same client id is closed.
    if (broker.clients[clientId]) S.counters.duplicate_client_id_kicks++
    cb(null, true)
  },
  authorizePublish (client, packet, cb) {
    if (!client || !client._sim) return cb(null) // a will published by the broker itself
    const s = client._sim
    s.msgs++
    recordMessage('in', client.id, packet.topic, packet.qos, packet.payload)
    const di = S.faults.drop.findIndex((f) => f.client_id === client.id)
    if (di >= 0 && s.msgs > S.faults.drop[di].messages) {
      // Fault: the connection drops after N messages; the (N+1)th is lost, unacknowledged.
      S.faults.drop.splice(di, 1)
      S.counters.faults_fired++
      log('fault: dropping connection of', client.id)
      return cb(new Error('fault injection: connection dropped'))
    }
    const topic = packet.topic
    // §4.4: AWS IoT has no QoS 2. It would leave the client hanging; the simulator closes the
    // connection instead, so a test notices.
    if (packet.qos === 2) return cb(violation(client, 'QoS 2 publish'))
    // §4.3: topic <= 256 bytes and <= 7 slashes (not counting $aws/rules/<rule>/); payload <= 128 KB.
    const counted = topic.replace(/^\$aws\/rules\/[^/]+\//, '')
    if (Buffer.byteLength(counted) > 256 || counted.split('/').length > 8) return cb(violation(client, 'topic too long or too deep'))
    if (packet.payload.length > 128 * 1024) return cb(violation(client, 'payload over 128 KB'))
    const pt = provTopic(topic)
    // Reserved topics: only the documented request topics may be published to (§4.3, §5.7).
    if (topic.startsWith('$') && (!pt || pt.suffix) && s.ident.kind !== 'observer') return cb(violation(client, `publish to reserved topic ${topic}`))
    if (!allowed(client, 'iot:Publish', 'topic/' + topic)) return cb(violation(client, `publish to ${topic}`))
    if (pt && !pt.suffix) setImmediate(() => handleRequest(client, pt, packet.payload))
    cb(null)
  },
  authorizeSubscribe (client, sub, cb) {
    if (!allowed(client, 'iot:Subscribe', 'topicfilter/' + sub.topic)) return cb(violation(client, `subscribe to ${sub.topic}`))
    // §4.4: no QoS 2 on AWS; granted as QoS 1 here (AWS would send no SUBACK at all).
    if (sub.qos > 1) sub.qos = 1
    cb(null, sub)
  },
  authorizeForward (client, packet) {
    // §5.6: service topics are not routed between clients; only the simulator's own responses,
    // sent straight to the requesting connection, pass.
    if (isServiceTopic(packet.topic)) return packet.clientId === SIM_MARK ? packet : null
    if (!mayReceive(client, packet.topic)) return null // iot:Receive denied: not delivered
    return packet
  }
})
// (aedes 0.51 needs no listen(): the broker is ready once created.)
broker.on('clientReady', (client) => { S.counters.connections++; log('connected', client.id, client._sim && client._sim.ident.kind) })
broker.on('clientError', (client, err) => log('client error', client && client.id, err.message))

// ---------------------------------------------------------------------------------------
// TLS listener (§6.1): TLS 1.2+, client certificates required, SNI recorded (and required with
// --require-sni), ALPN x-amzn-mqtt-ca accepted.
// ---------------------------------------------------------------------------------------
const caList = ARGS.ca.map((f) => fs.readFileSync(f, 'utf8'))
caList.push(DEVICE_CA_PEM)
const server = tls.createServer({
  key: fs.readFileSync(ARGS['server-key']),
  cert: fs.readFileSync(ARGS['server-cert']),
  ca: caList,
  requestCert: true,
  rejectUnauthorized: true,
  minVersion: 'TLSv1.2',
  ALPNProtocols: ['x-amzn-mqtt-ca', 'mqtt']
}, (sock) => {
  if (!sock.servername) {
    S.counters.sni_missing++
    // §6.1: "Connection attempts that don't include the SNI are refused".
    if (ARGS['require-sni']) { log('refusing a connection without SNI'); sock.destroy(); return }
  }
  sock.on('error', () => {})
  broker.handle(sock)
})
server.on('tlsClientError', (err) => { S.counters.tls_failures++; log('TLS failure:', err.message) })

// ---------------------------------------------------------------------------------------
// Control API (HTTP, JSON) for tests
// ---------------------------------------------------------------------------------------
function snapshot () {
  const things = {}
  for (const [name, t] of S.things) {
    things[name] = { certificates: Object.fromEntries([...t.certificates].map((id) => [id, S.certs.get(id) ? S.certs.get(id).state : 'DELETED'])), attributes: t.attributes, thing_type: t.thing_type, created_at: t.created_at }
  }
  const clients = {}
  for (const [id, c] of Object.entries(broker.clients)) {
    if (!c._sim) continue
    clients[id] = { kind: c._sim.ident.kind, certificate_id: c._sim.ident.certId || null, sni: c._sim.sni, alpn: c._sim.alpn, subscriptions: Object.keys(c.subscriptions) }
  }
  return {
    things,
    certificates: Object.fromEntries(S.certs),
    counters: S.counters,
    clients,
    tokens_outstanding: S.tokens.size,
    faults: S.faults,
    templates: Object.fromEntries([...TEMPLATES].map(([n, t]) => [n, t.file])),
    hooks: Object.fromEntries(HOOKS)
  }
}

// One thing with the full record of each certificate attached to it, for tests that count a
// thing's certificates and look at their states (a rotation leaves two ACTIVE ones, §5.11).
function thingView (name) {
  const t = S.things.get(name)
  if (!t) return null
  const certificates = [...t.certificates].map((id) => ({ id, ...(S.certs.get(id) || { state: 'DELETED' }) }))
  const states = {}
  for (const c of certificates) bump(states, c.state)
  return { name, attributes: t.attributes, thing_type: t.thing_type, created_at: t.created_at, certificate_count: certificates.length, states, certificates }
}

// The operator's DetachThingPrincipal (§5.13): the certificate stays, in its state, but is no
// longer attached, so thing policy variables stop resolving for it (§4.1).
function detachCertificate (id) {
  const c = S.certs.get(id)
  if (!c) throw new Error(`no certificate ${id}`)
  if (c.thing && S.things.has(c.thing)) S.things.get(c.thing).certificates.delete(id)
  c.thing = null
  for (const cl of Object.values(broker.clients)) if (cl._sim && cl._sim.ident.certId === id) cl.close()
}

function applyFaults (b) {
  const f = S.faults
  if (b.clear) { const keep = { rate_limit: f.rate_limit, token_ttl_ms: f.token_ttl_ms }; Object.assign(f, { reject: [], silence: [], delay: [], drop: [] }, keep) }
  const arr = (x) => x === undefined ? [] : Array.isArray(x) ? x : [x]
  for (const r of arr(b.reject)) {
    f.reject.push({ op: r.op ? opName(r.op) : null, count: Number(r.count || 1), statusCode: Number(r.statusCode || 500), errorCode: String(r.errorCode || 'InternalFailure'), errorMessage: String(r.errorMessage || 'Injected fault') })
  }
  for (const r of arr(b.silence)) f.silence.push({ op: r.op ? opName(r.op) : null, count: Number(r.count || 1) })
  for (const r of arr(b.drop)) f.drop.push({ client_id: String(r.client_id), messages: Number(r.messages || 0) })
  if (b.delay_ms !== undefined) {
    const d = typeof b.delay_ms === 'object' ? b.delay_ms : { ms: b.delay_ms }
    const op = d.op ? opName(d.op) : null
    f.delay = f.delay.filter((x) => x.op !== op)
    if (Number(d.ms) > 0) f.delay.push({ op, ms: Number(d.ms) })
  }
  if (b.rate_limit !== undefined) { f.rate_limit = Number(b.rate_limit); S.bucket = { tokens: f.rate_limit, last: Date.now() } }
  if (b.token_ttl_ms !== undefined) f.token_ttl_ms = Number(b.token_ttl_ms)
}

function setCertificateState (id, state) {
  const c = S.certs.get(id)
  if (!c) throw new Error(`no certificate ${id}`)
  if (!['ACTIVE', 'INACTIVE', 'REVOKED', 'PENDING_ACTIVATION'].includes(state)) throw new Error(`bad state ${state}`)
  c.state = state
  if (state !== 'ACTIVE') {
    for (const cl of Object.values(broker.clients)) if (cl._sim && cl._sim.ident.certId === id) cl.close()
  }
}

const control = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1')
  const reply = (code, obj) => { res.writeHead(code, { 'content-type': 'application/json' }); res.end(JSON.stringify(obj, null, 1)) }
  let data = ''
  req.on('data', (c) => { data += c })
  req.on('end', () => {
    try {
      const body = data ? JSON.parse(data) : {}
      const route = `${req.method} ${url.pathname}`
      if (route === 'GET /state') return reply(200, snapshot())
      if (route === 'GET /messages') {
        const t = url.searchParams.get('topic'); const cid = url.searchParams.get('client_id')
        return reply(200, S.messages.filter((m) => (!t || topicMatches(t, m.topic)) && (!cid || m.client_id === cid)))
      }
      if (route === 'POST /faults') { applyFaults(body); return reply(200, S.faults) }
      if (route === 'POST /reset') { freshState(); return reply(200, { ok: true }) }
      if (route === 'POST /disconnect') {
        const c = broker.clients[body.client_id]
        if (!c) return reply(404, { error: 'not connected' })
        c.close(); return reply(200, { ok: true })
      }
      if (route === 'POST /certificate') { setCertificateState(body.certificate_id, body.state); return reply(200, { ok: true }) }
      if (route === 'POST /detach') { detachCertificate(body.certificate_id); return reply(200, { ok: true }) }
      if (route === 'GET /thing') {
        const t = thingView(url.searchParams.get('name') || '')
        return t ? reply(200, t) : reply(404, { error: 'no such thing' })
      }
      return reply(404, { error: `no route ${route}` })
    } catch (e) {
      return reply(400, { error: e.message })
    }
  })
})

const listen = (srv, port) => new Promise((resolve, reject) => {
  srv.once('error', reject)
  srv.listen(Number(port), ARGS.host, () => resolve(srv.address().port))
})
const mqttPort = await listen(server, ARGS.port)
const controlPort = await listen(control, ARGS['control-port'])
console.log(`SIM READY mqtt=${mqttPort} control=${controlPort}`)

const shutdown = () => { server.close(); control.close(); broker.close(() => process.exit(0)); setTimeout(() => process.exit(0), 500).unref() }
process.on('SIGTERM', shutdown)
process.on('SIGINT', shutdown)
