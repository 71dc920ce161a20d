/*
 * leaves.c - the LAN side (leaves.h): the UDP socket, datagram dispatch to
 * the sessions, CONNECT admission, gateway discovery (SEARCHGW/GWINFO and
 * ADVERTISE), QoS -1 publishes, the queries the API makes, and the stop.
 * One leaf's behaviour lives in session.c, the table in table.c.
 *
 * Datagrams come from two sockets: plain UDP (lan.port) and the DTLS
 * server (lan.dtls), which hands over each decrypted datagram with the
 * identity its association authenticated.  Both go through one dispatch;
 * what differs is who may CONNECT as what (docs/dtls.md §9).
 */
#include "leaves.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "admission.h"
#include "dtls.h"
#include "lan_int.h"
#include "log.h"
#include "secret.h"
#include "store.h"
#include "udp.h"

#define MOD "lan"

/* Where a datagram came from: its address, the transport, and over DTLS
 * the identity its association authenticated. */
struct rx {
  const struct sockaddr *from;
  uint8_t via;                  /* enum lan_via */
  const struct dtls_peer *peer; /* NULL over plain UDP */
};

static int rx_sec(const struct rx *rx)
{
  if (!rx->peer)
    return ADMIT_SEC_PLAIN;
  return rx->peer->auth == DTLS_AUTH_CERT ? ADMIT_SEC_CERT : ADMIT_SEC_PSK;
}

static void rx_connack(struct leaves *lv, const struct rx *rx, uint8_t rc)
{
  leaves_reply_connack(lv, rx->from, rx->via, rc);
}

/* ---- session records ---------------------------------------------------- */

void leaves_remove(struct leaves *lv, struct session *s)
{
  sess_persist_forget(s);
  leaves_table_unlink(lv, s);
  sess_free(s);
}

/* Frees one session record that holds no connection, to make room.  Rare
 * (the table is full), so a walk is acceptable here. */
static bool evict_one(struct leaves *lv)
{
  for (size_t i = 0; i < lv->nbuckets; i++) {
    for (struct session *s = lv->by_id[i]; s; s = s->next_by_id) {
      if (!sess_is_live(s) && !s->link) {
        LOGD(MOD, "%s: session record evicted", s->client_id);
        leaves_remove(lv, s);
        return true;
      }
    }
  }
  return false;
}

struct session *leaves_add(struct leaves *lv, const char *id, size_t len)
{
  struct session *s;
  if (lv->nsessions >= lv->cfg->lan.max_leaves && !evict_one(lv))
    return NULL;
  if (leaves_table_reserve(lv) != 0)
    return NULL;
  s = sess_new(lv, id, len);
  if (!s)
    return NULL;
  leaves_table_insert(lv, s);
  return s;
}

/* ---- CONNECT ------------------------------------------------------------ */

/* A ClientId is 1..max octets of printable ASCII: it becomes part of an
 * upstream client id, a file name (cert_dir) and log lines. */
static bool client_id_ok(const struct leaves *lv, const struct mqttsn_str *id)
{
  if (id->len < 1 || id->len > lv->cfg->lan.max_client_id_len || id->len > 255)
    return false;
  for (size_t i = 0; i < id->len; i++)
    if (id->p[i] <= 0x20 || id->p[i] >= 0x7F || id->p[i] == '/')
      return false;
  return true;
}

static void ip_of(const struct sockaddr *from, char *ip, size_t cap)
{
  if (from->sa_family == AF_INET)
    uv_ip4_name((const struct sockaddr_in *)from, ip, cap);
  else
    uv_ip6_name((const struct sockaddr_in6 *)from, ip, cap);
}

/* The rate limits of new identities (newid.h), for the CONNECT being
 * admitted. */
struct gate_ctx {
  struct leaves *lv;
  const struct sockaddr *from;
  const char *ip;
};

/* The registry's room (admission.h): the size guard and, under "approve",
 * admission.max_pending.  Returns NULL when a new identity fits. */
static const char *no_room(struct leaves *lv)
{
  const struct admit_room *room = lv->env.room;
  if (!room)
    return NULL;
  if (room->registry_full) {
    lv->m->new_ids_registry_full++;
    return "the registry is full (registry.max_bytes or registry.min_free_bytes)";
  }
  if (lv->cfg->admission.policy == POLICY_APPROVE &&
      room->pending >= lv->cfg->admission.max_pending) {
    lv->m->new_ids_pending_full++;
    return "admission.max_pending identities wait for approval already";
  }
  return NULL;
}

static int gate_take(void *ud, char *reason, size_t cap)
{
  struct gate_ctx *g = ud;
  struct leaves *lv = g->lv;
  const char *full = no_room(lv);
  int r;

  if (full) {
    snprintf(reason, cap, "%s", full);
    return -1;
  }
  r = newid_take(&lv->newid, g->from, leaves_is_converter(lv, g->ip), uv_now(lv->loop));
  if (r != NEWID_OK) {
    lv->m->new_ids_throttled++;
    snprintf(reason, cap, "%s", newid_result_str(r));
    return -1;
  }
  /* Counted before it is written: the upkeep recounts from the registry. */
  if (lv->env.room && lv->cfg->admission.policy == POLICY_APPROVE)
    lv->env.room->pending++;
  return 0;
}

/* Admission against the registry: policy, approval, identity binding.
 * Returns true when the CONNECT may go on; otherwise the leaf was answered. */
static bool admit(struct leaves *lv, const struct rx *rx, const char *cid)
{
  char a[80], ip[64], reason[256];
  struct gate_ctx gc = {.lv = lv, .from = rx->from, .ip = ip};
  struct admit_gate gate = {.take = gate_take, .ud = &gc};
  int ar;

  leaves_addr_str(rx->from, a, sizeof a);
  ip_of(rx->from, ip, sizeof ip);
  ar = admit_check(lv->env.store, lv->cfg, cid, ip, rx_sec(rx), (int64_t)time(NULL), &gate,
                   NULL, reason, sizeof reason);
  if (ar == ADMIT_THROTTLED || ar == ADMIT_NEEDS_DTLS) {
    /* Counted, logged at a rate, nothing recorded: a flood costs nothing.
     * Throttled is answered "congestion" (a real new leaf retries later). */
    static struct log_ratelimit rl;
    if (ar == ADMIT_NEEDS_DTLS)
      lv->m->plain_udp_refused++;
    log_ratelimited(&rl, LOG_WARN, MOD, "CONNECT %s from %s %s: %s", cid, a,
                    ar == ADMIT_THROTTLED ? "throttled" : "refused", reason);
    rx_connack(lv, rx, ar == ADMIT_THROTTLED ? MQTTSN_RC_CONGESTION : MQTTSN_RC_NOT_SUPPORTED);
    return false;
  }
  leaves_event2(lv, "admission", cid, "result",
                ar == ADMIT_OK ? "admitted" : (ar == ADMIT_PENDING ? "pending" : "refused"),
                "reason", reason);
  if (ar == ADMIT_OK)
    return true;
  {
    static struct log_ratelimit rl;
    if (ar == ADMIT_PENDING)
      lv->m->admission_pending++;
    else if (ar == ADMIT_BUSY)
      lv->m->registry_busy++;
    else
      lv->m->admission_refused++;
    log_ratelimited(&rl, ar == ADMIT_ERROR ? LOG_ERROR : LOG_WARN, MOD,
                    "CONNECT %s from %s %s: %s", cid, a,
                    ar == ADMIT_REFUSED ? "refused" : "held", reason);
  }
  /* Pending, or the registry busy or failing: try again later.  Refused: MQTT-SN has
   * no "not authorized"; 0x03 is the nearest. */
  rx_connack(lv, rx, ar == ADMIT_REFUSED ? MQTTSN_RC_NOT_SUPPORTED : MQTTSN_RC_CONGESTION);
  return false;
}

static bool same_ip(const struct sockaddr *a, const struct sockaddr *b)
{
  if (a->sa_family != b->sa_family)
    return false;
  if (a->sa_family == AF_INET)
    return ((const struct sockaddr_in *)a)->sin_addr.s_addr ==
           ((const struct sockaddr_in *)b)->sin_addr.s_addr;
  return memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
                &((const struct sockaddr_in6 *)b)->sin6_addr, sizeof(struct in6_addr)) == 0;
}

/* Refuses a plain CONNECT when the ClientId is in use by a live leaf at
 * another address (admission.h: admit_check_live).  Returns true when it
 * may go on.  (Over DTLS the association proved the identity: the leaf
 * takes its session with it, see on_connect.) */
static bool not_taken(struct leaves *lv, const struct rx *rx, struct session *s)
{
  char a[80], b[80], reason[256];
  static struct log_ratelimit rl;

  if (rx->peer || !s || !s->in_addr_table || sess_at(s, rx->from, rx->via) || !sess_is_live(s))
    return true;
  /* A session restored at start-up that its leaf has not confirmed: the
   * leaf may have rebooted with the gateway (a power cut) and come back
   * from a new port.  Its own IP may take it (admission still checks the
   * binding); any other address is refused as for a live leaf. */
  if (s->restored && same_ip(rx->from, (const struct sockaddr *)&s->addr))
    return true;
  leaves_addr_str(rx->from, a, sizeof a);
  leaves_addr_str((struct sockaddr *)&s->addr, b, sizeof b);
  if (s->via == LAN_DTLS) {
    /* Anyone can send this: counted, not recorded. */
    lv->m->plain_udp_refused++;
    log_ratelimited(&rl, LOG_WARN, MOD, "plain CONNECT %s from %s refused: connected over DTLS",
                    s->client_id, a);
  } else {
    lv->m->connects_refused++;
    log_ratelimited(&rl, LOG_WARN, MOD, "CONNECT %s from %s refused: bound to %s",
                    s->client_id, a, b);
    admit_check_live(lv->env.store, s->client_id, b, a, (int64_t)time(NULL), reason,
                     sizeof reason);
  }
  rx_connack(lv, rx, MQTTSN_RC_NOT_SUPPORTED);
  return false;
}

/* The transport's own rule, before the registry is asked: a DTLS
 * association may CONNECT only as the identity it authenticated (refused
 * and audited: only a key holder can send this); plain UDP only as
 * admission.plain_udp allows (refused, counted, nothing recorded). */
static bool transport_allows(struct leaves *lv, const struct rx *rx, const char *cid)
{
  static struct log_ratelimit rl;
  char a[80], reason[512];

  if (rx->peer && strcmp(rx->peer->identity, cid) == 0)
    return true;
  if (!rx->peer && admit_plain_allowed(lv->cfg, cid))
    return true;
  leaves_addr_str(rx->from, a, sizeof a);
  if (rx->peer) {
    lv->m->dtls_identity_mismatch++;
    admit_refuse_identity(lv->env.store, cid, rx->peer->identity, (int64_t)time(NULL), reason,
                          sizeof reason);
    log_ratelimited(&rl, LOG_WARN, MOD, "CONNECT %s from %s (DTLS) refused: %s", cid, a, reason);
  } else {
    lv->m->plain_udp_refused++;
    log_ratelimited(&rl, LOG_WARN, MOD,
                    "CONNECT %s from %s refused: plain UDP not allowed (admission.plain_udp)",
                    cid, a);
  }
  rx_connack(lv, rx, MQTTSN_RC_NOT_SUPPORTED);
  return false;
}

/* A DTLS leaf that comes back from another address (a new port after a
 * reboot, a new IP from DHCP) takes its session along: its old DTLS
 * association, which can only ever speak as this identity, is closed. */
static void leave_old_address(struct leaves *lv, struct session *s, const struct rx *rx)
{
  if (!rx->peer || !s->in_addr_table || sess_at(s, rx->from, rx->via))
    return;
  if (s->via == LAN_DTLS && lv->dtls)
    dtls_close_peer(lv->dtls, (struct sockaddr *)&s->addr);
  leaves_unbind_addr(lv, s);
}

static void on_connect(struct leaves *lv, const struct rx *rx, const struct mqttsn_msg *m)
{
  const struct mqttsn_str *id = &m->u.connect.client_id;
  struct session *s, *other;
  char cid[256];

  if (!client_id_ok(lv, id)) {
    static struct log_ratelimit rl;
    char a[80];
    lv->m->connects_refused++;
    leaves_addr_str(rx->from, a, sizeof a);
    log_ratelimited(&rl, LOG_WARN, MOD,
                    "CONNECT from %s refused: ClientId of %zu octets (allowed: 1..%u printable)",
                    a, id->len, lv->cfg->lan.max_client_id_len);
    rx_connack(lv, rx, MQTTSN_RC_NOT_SUPPORTED);
    return;
  }
  memcpy(cid, id->p, id->len);
  cid[id->len] = '\0';
  if (!transport_allows(lv, rx, cid))
    return;
  s = leaves_by_id(lv, cid, id->len);
  if (!not_taken(lv, rx, s) || !admit(lv, rx, cid))
    return;
  if (!s) {
    s = leaves_add(lv, cid, id->len);
    if (!s) {
      static struct log_ratelimit rl;
      lv->m->connects_refused++;
      log_ratelimited(&rl, LOG_WARN, MOD, "CONNECT %s refused: %zu sessions (lan.max_leaves)",
                      cid, lv->nsessions);
      rx_connack(lv, rx, MQTTSN_RC_CONGESTION);
      return;
    }
  }
  leave_old_address(lv, s, rx);
  /* Another session at this address: that leaf came back under a new id.
   * It ends only now that the new CONNECT is accepted, so a refused CONNECT
   * from a live leaf's address changes nothing (docs/architecture.md §7). */
  other = leaves_by_addr(lv, rx->from, rx->via);
  if (other && other != s) {
    static struct log_ratelimit rl;
    lv->m->sessions_replaced++;
    log_ratelimited(&rl, LOG_INFO, MOD, "%s: address reused by %s, session ended",
                    other->client_id, cid);
    /* No DISCONNECT: it would reach the new leaf at the same address. */
    sess_shutdown(other, false);
    leaves_unbind_addr(lv, other);
  }
  s->sec = (uint8_t)rx_sec(rx);
  sess_on_connect(s, rx->from, rx->via, m);
}

/* ---- other datagrams ---------------------------------------------------- */

/* QoS -1 (§6.8): no connection; predefined or short topic ids only.  It
 * names no sender, so over plain UDP it is taken only while any box may
 * use plain UDP (admission.plain_udp "allow"). */
static void on_qos_m1(struct leaves *lv, const struct rx *rx, const struct mqttsn_publish *p)
{
  char sb[3];
  const char *name = NULL;
  size_t nlen = 0;
  bool plain_refused = !rx->peer && lv->cfg->admission.plain_udp != PLAIN_UDP_ALLOW;

  lv->m->publish_in_qos_m1++;
  if (plain_refused) {
    /* nothing: dropped below */
  } else if (p->flags.topic_type == MQTTSN_TOPIC_PREDEFINED) {
    name = topics_predefined_name(lv->cfg, p->topic_id);
    nlen = name ? strlen(name) : 0;
  } else if (p->flags.topic_type == MQTTSN_TOPIC_SHORT) {
    sb[0] = (char)(p->topic_id >> 8);
    sb[1] = (char)(p->topic_id & 0xFF);
    sb[2] = '\0';
    name = sb;
    nlen = 2;
  }
  if (!name || lv->env.up->publish_anon(lv->env.up_ctx, name, nlen, p->data.p, p->data.len,
                                        p->flags.retain) != SESS_UP_OK) {
    static struct log_ratelimit rl;
    lv->m->qos_m1_dropped++;
    log_ratelimited(&rl, LOG_INFO, MOD, "QoS -1 publish dropped (%s)",
                    plain_refused ? "plain UDP not allowed (admission.plain_udp)"
                    : !name       ? "unknown topic id"
                    : !lv->cfg->upstream.qos_m1_client_id ? "no QoS -1 session configured"
                                                          : "queue full");
  }
}

/* PINGREQ with a ClientId: a sleeping leaf waking up (§6.14).  It must come
 * from the session's address, or, over DTLS, from an association that
 * authenticated as the sleeping leaf the same way (it may have closed the
 * old one to sleep, and comes back from a new port). */
static void on_wake_ping(struct leaves *lv, const struct rx *rx, const struct mqttsn_msg *m)
{
  struct session *s =
      leaves_by_id(lv, (const char *)m->u.pingreq.client_id.p, m->u.pingreq.client_id.len);
  bool here = s && sess_at(s, rx->from, rx->via);
  bool asleep = s && (s->state == SESS_ASLEEP || s->state == SESS_AWAKE);
  bool proven = s && rx->peer && s->sec == rx_sec(rx) &&
                strcmp(rx->peer->identity, s->client_id) == 0;

  if (asleep && (here || proven)) {
    if (!here) {
      leave_old_address(lv, s, rx);
      leaves_bind_addr(lv, s, rx->from, rx->via);
    }
    sess_on_wake(s, rx->from);
    return;
  }
  if (here && s->state == SESS_ACTIVE) {
    sess_on_message(s, rx->from, m);
    return;
  }
  lv->m->datagrams_unknown_client++;
  leaves_reply(lv, rx->from, rx->via, MQTTSN_DISCONNECT);
}

/* Decodes a datagram; false (counted and logged) when it is not one we take. */
static bool decode(struct leaves *lv, const struct sockaddr *from, const uint8_t *data,
                   size_t len, struct mqttsn_msg *m)
{
  int rc = mqttsn_decode(data, len, m);
  if (rc == PROTO_OK && m->type == MQTTSN_ENCAPSULATED) {
    /* Forwarder encapsulation (§5.5) is not supported: leaves talk directly. */
    rc = PROTO_UNSUPPORTED;
  }
  if (rc != PROTO_OK) {
    static struct log_ratelimit rl;
    char a[80];
    lv->m->datagrams_malformed++;
    leaves_addr_str(from, a, sizeof a);
    log_ratelimited(&rl, LOG_WARN, MOD, "malformed datagram of %zu bytes from %s: %s", len, a,
                    proto_strerror(rc));
    return false;
  }
  LOGT(MOD, "rx %s (%zu bytes)", mqttsn_type_name(m->type), len);
  return true;
}

static void dispatch(struct leaves *lv, const struct rx *rx, const uint8_t *data, size_t len)
{
  struct mqttsn_msg m;
  struct session *s;

  lv->m->datagrams_in++;
  if (lv->stopping || !decode(lv, rx->from, data, len, &m))
    return;
  switch (m.type) {
  case MQTTSN_SEARCHGW: {
    /* §6.1: answer at once with our GwId (the reply is unicast to the
     * searcher; broadcasting it needs a configured advertise address). */
    struct mqttsn_msg r;
    memset(&r, 0, sizeof r);
    r.type = MQTTSN_GWINFO;
    r.u.gwinfo.gw_id = lv->cfg->gateway_id;
    leaves_send(lv, rx->from, rx->via, &r);
    return;
  }
  case MQTTSN_ADVERTISE:
  case MQTTSN_GWINFO:
    return; /* other gateways, or leaves answering for us: nothing to do */
  case MQTTSN_CONNECT:
    on_connect(lv, rx, &m);
    return;
  case MQTTSN_PUBLISH:
    if (m.u.publish.flags.qos == MQTTSN_QOS_M1) {
      on_qos_m1(lv, rx, &m.u.publish);
      return;
    }
    break;
  case MQTTSN_PINGREQ:
    if (m.u.pingreq.client_id.len > 0) {
      on_wake_ping(lv, rx, &m);
      return;
    }
    break;
  default:
    break;
  }
  s = leaves_by_addr(lv, rx->from, rx->via);
  if (!s) {
    /* §6.12: not a connected client; a DISCONNECT tells it to connect again
     * (after a gateway restart, for example).  A DISCONNECT is not answered,
     * so two gateways cannot ping-pong. */
    lv->m->datagrams_unknown_client++;
    if (m.type != MQTTSN_DISCONNECT)
      leaves_reply(lv, rx->from, rx->via, MQTTSN_DISCONNECT);
    return;
  }
  sess_on_message(s, rx->from, &m);
}

static void on_datagram(void *ud, const struct sockaddr *from, const uint8_t *data, size_t len)
{
  struct rx rx = {.from = from, .via = LAN_PLAIN, .peer = NULL};
  dispatch(ud, &rx, data, len);
}

/* ---- the DTLS server's callbacks ---------------------------------------- */

static void on_dtls_datagram(void *ud, const struct sockaddr *from, const struct dtls_peer *peer,
                             const uint8_t *data, size_t len)
{
  struct rx rx = {.from = from, .via = LAN_DTLS, .peer = peer};
  dispatch(ud, &rx, data, len);
}

static void on_dtls_closed(void *ud, const struct sockaddr *from, const struct dtls_peer *peer)
{
  struct leaves *lv = ud;
  struct session *s;
  (void)peer;
  if (lv->stopping)
    return;
  s = leaves_by_addr(lv, from, LAN_DTLS);
  if (s)
    sess_on_transport_closed(s, "DTLS association closed");
}

/* The PSK of a DTLS identity: the device's key from the registry (the
 * identity is the ClientId, docs/dtls.md §4). */
static size_t psk_lookup(void *ud, const char *identity, uint8_t *psk, size_t cap)
{
  struct leaves *lv = ud;
  size_t len = 0;
  size_t n = strlen(identity);
  if (n < 1 || n > lv->cfg->lan.max_client_id_len)
    return 0;
  if (store_psk_get(lv->env.store, identity, psk, cap, &len) != STORE_OK) {
    secret_wipe(psk, cap);
    return 0;
  }
  return len;
}

/* ---- ADVERTISE ---------------------------------------------------------- */

static void adv_cb(uv_timer_t *t)
{
  struct leaves *lv = t->data;
  struct sockaddr_storage ss;
  struct mqttsn_msg m;
  const char *ip = lv->cfg->lan.advertise_address;

  memset(&ss, 0, sizeof ss);
  if (uv_ip4_addr(ip, lv->cfg->lan.advertise_port, (struct sockaddr_in *)&ss) != 0 &&
      uv_ip6_addr(ip, lv->cfg->lan.advertise_port, (struct sockaddr_in6 *)&ss) != 0)
    return;
  memset(&m, 0, sizeof m);
  m.type = MQTTSN_ADVERTISE;
  m.u.advertise.gw_id = lv->cfg->gateway_id;
  m.u.advertise.duration = (uint16_t)(lv->cfg->lan.advertise_interval_s > 0xFFFF
                                          ? 0xFFFF
                                          : lv->cfg->lan.advertise_interval_s);
  leaves_send(lv, (struct sockaddr *)&ss, LAN_PLAIN, &m);
}

/* ---- lifecycle ---------------------------------------------------------- */

int leaves_new(const struct leaves_env *env, struct leaves **out)
{
  struct leaves *lv = calloc(1, sizeof *lv);
  if (!lv)
    return UV_ENOMEM;
  lv->env = *env;
  lv->loop = env->loop;
  lv->cfg = env->cfg;
  lv->m = env->m;
  if (leaves_table_init(lv) != 0) {
    free(lv);
    return UV_ENOMEM;
  }
  if (newid_init(&lv->newid, &env->newid, uv_now(env->loop)) != 0) {
    leaves_table_free(lv);
    free(lv);
    return UV_ENOMEM;
  }
  *out = lv;
  return 0;
}

/* The DTLS server, when lan.dtls.enabled: its options come from the
 * configuration, its keys from the registry. */
static int start_dtls(struct leaves *lv)
{
  const struct gw_config *cfg = lv->cfg;
  struct dtls_env env = {
      .loop = lv->loop,
      .o = &lv->dtls_opts,
      .psk_lookup = psk_lookup,
      .on_datagram = on_dtls_datagram,
      .on_closed = on_dtls_closed,
      .ud = lv,
  };
  char err[256] = "";
  int rc;

  lv->dtls_opts = (struct dtls_opts){
      .bind = cfg->lan.dtls.bind,
      .port = cfg->lan.dtls.port,
      .mtu = cfg->lan.dtls.mtu,
      /* An association without a session is bounded by its idle time-out;
       * together they never outnumber the session table. */
      .max_sessions = cfg->lan.max_leaves,
      .max_handshakes = cfg->lan.dtls.max_handshakes,
      .max_handshakes_per_ip = cfg->lan.dtls.max_handshakes_per_ip,
      .handshake_timeout_ms = cfg->lan.dtls.handshake_timeout_ms,
      .idle_timeout_ms = cfg->lan.dtls.idle_timeout_s * 1000u,
      .ciphers = cfg->lan.dtls.ciphers,
      .cert_file = cfg->lan.dtls.cert_file,
      .key_file = cfg->lan.dtls.key_file,
      .ca_file = cfg->lan.dtls.ca_file,
  };
  rc = dtls_new(&env, &lv->dtls, err, sizeof err);
  if (rc != 0) {
    LOGE(MOD, "lan.dtls: %s", err[0] ? err : uv_strerror(rc));
    return rc;
  }
  rc = dtls_start(lv->dtls);
  if (rc != 0) {
    LOGE(MOD, "cannot bind DTLS %s:%u: %s", cfg->lan.dtls.bind, cfg->lan.dtls.port,
         uv_strerror(rc));
    dtls_free(lv->dtls);
    lv->dtls = NULL;
    return rc;
  }
  LOGI(MOD, "DTLS on %s:%d (%s)", cfg->lan.dtls.bind, dtls_port(lv->dtls),
       cfg->lan.dtls.ca_file ? "PSK and certificates" : "PSK");
  return 0;
}

int leaves_start(struct leaves *lv)
{
  const struct gw_config *cfg = lv->cfg;
  int rc = udp_open(lv->loop, cfg->lan.bind, cfg->lan.port, cfg->lan.recv_buffer_bytes,
                    on_datagram, lv, &lv->udp);
  if (rc != 0) {
    LOGE(MOD, "cannot bind UDP %s:%u: %s", cfg->lan.bind, cfg->lan.port, uv_strerror(rc));
    return rc;
  }
  udp_count_errors(lv->udp, &lv->m->send_errors);
  if (cfg->lan.dtls.enabled && (rc = start_dtls(lv)) != 0)
    return rc;
  if ((rc = sess_persist_restore(lv)) != 0)
    return rc;
  if (cfg->lan.advertise_address) {
    uint64_t ms = (uint64_t)cfg->lan.advertise_interval_s * 1000u;
    uv_timer_init(lv->loop, &lv->adv_timer);
    lv->adv_timer.data = lv;
    uv_timer_start(&lv->adv_timer, adv_cb, 0, ms);
    lv->adv_started = true;
  }
  return 0;
}

static void udp_closed(void *ud)
{
  drain_release(ud);
}

static void adv_closed(uv_handle_t *h)
{
  struct leaves *lv = h->data;
  drain_release(lv->env.drain);
}

void leaves_stop(struct leaves *lv, size_t *live_out, uint64_t *queued_out)
{
  size_t live = 0;
  uint64_t queued = 0;

  lv->stopping = true;
  /* The registry keeps the sessions as they are now, not as the shutdown
   * leaves them: a restart resumes them (sess_store.c). */
  sess_persist_stop(lv);
  for (size_t i = 0; i < lv->nbuckets; i++) {
    for (struct session *s = lv->by_id[i], *next; s; s = next) {
      next = s->next_by_id;
      if (sess_is_live(s))
        live++;
      queued += s->q_len;
      sess_shutdown(s, true);
    }
  }
  /* Free every session record (each closes its timer). */
  for (size_t i = 0; i < lv->nbuckets; i++)
    while (lv->by_id[i])
      leaves_remove(lv, lv->by_id[i]);
  if (lv->adv_started) {
    drain_hold(lv->env.drain);
    uv_close((uv_handle_t *)&lv->adv_timer, adv_closed);
    lv->adv_started = false;
  }
  if (lv->udp) {
    drain_hold(lv->env.drain);
    udp_close(lv->udp, udp_closed, lv->env.drain);
    lv->udp = NULL;
  }
  if (lv->dtls) {
    /* Each association gets its close_notify; freed in leaves_free. */
    drain_hold(lv->env.drain);
    dtls_stop(lv->dtls, udp_closed, lv->env.drain);
  }
  if (live_out)
    *live_out = live;
  if (queued_out)
    *queued_out = queued;
}

void leaves_free(struct leaves *lv)
{
  if (!lv)
    return;
  leaves_table_free(lv);
  newid_free(&lv->newid);
  dtls_free(lv->dtls);
  free(lv);
}

bool leaves_is_converter(const struct leaves *lv, const char *ip)
{
  for (size_t i = 0; i < lv->env.n_converters; i++)
    if (strcmp(lv->env.converters[i], ip) == 0)
      return true;
  return false;
}

int leaves_port(const struct leaves *lv)
{
  return lv->udp ? udp_port(lv->udp) : -1;
}

int leaves_dtls_port(const struct leaves *lv)
{
  return lv->dtls ? dtls_port(lv->dtls) : -1;
}

/* ---- queries ------------------------------------------------------------ */

struct session *leaves_find(struct leaves *lv, const char *client_id)
{
  return leaves_by_id(lv, client_id, strlen(client_id));
}

/* The DTLS server keeps its own counters (dtls.h); they are copied into
 * the gateway's whenever the gauges are counted. */
static void dtls_counters(const struct leaves *lv, struct metrics *m)
{
  struct dtls_stats st;
  if (!lv->dtls)
    return;
  dtls_get_stats(lv->dtls, &st);
#define DTLS_COPY(name) m->dtls_##name = st.name;
  DTLS_STATS_MAP(DTLS_COPY, DTLS_COPY)
#undef DTLS_COPY
}

void leaves_count(const struct leaves *lv, struct metrics *m, uint64_t *links, uint64_t *queued)
{
  uint64_t nl = 0, nq = 0;
  m->leaves_active = m->leaves_asleep = m->leaves_connecting = m->upstreams_up = 0;
  m->sessions = lv->nsessions;
  {
    struct udp_rx_stats rx = {0, 0, 0};
    if (lv->udp)
      udp_get_rx_stats(lv->udp, &rx);
    m->datagrams_too_long = rx.too_long + (lv->dtls ? dtls_datagrams_too_long(lv->dtls) : 0);
  }
  dtls_counters(lv, m);
  if (lv->m != m)
    dtls_counters(lv, lv->m);
  for (size_t i = 0; i < lv->nbuckets; i++) {
    for (const struct session *s = lv->by_id[i]; s; s = s->next_by_id) {
      sess_count(s, m);
      if (s->link)
        nl++;
      nq += s->q_len;
    }
  }
  if (links)
    *links = nl;
  if (queued)
    *queued = nq;
}

void leaves_set_newid(struct leaves *lv, const struct newid_opts *o)
{
  newid_set_limits(&lv->newid, o);
}

void leaves_on_provisioned(struct leaves *lv, const char *client_id, bool ok)
{
  struct session *s = leaves_find(lv, client_id);
  if (s)
    sess_on_provisioned(s, ok);
}

size_t leaves_dtls_revoked(struct leaves *lv, const char *client_id)
{
  /* on_dtls_closed ends what each association carried. */
  return lv->dtls ? dtls_close_identity(lv->dtls, client_id, DTLS_AUTH_PSK) : 0;
}
