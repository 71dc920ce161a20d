/*
 * provision_aws.c - AWS IoT fleet provisioning by claim over a pool of
 * claim connections (docs/architecture.md §5): each connection subscribes to
 * the reply topics first, then carries one request at a time (replies carry
 * no request id, docs/protocol-notes.md §5.6), all of them under one rate
 * limit.
 * Replies move the job on through the driver in provision.c; every step is
 * journalled before the request that it announces (docs/architecture.md §4).
 */
#include "provision_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "local_ca.h"
#include "log.h"
#include "metrics.h"
#include "provisioning.h"
#include "secret.h"
#include "store.h"
#include "upstream.h"

#define MOD "provision"
#define TOKEN_MARGIN_S 60        /* do not use an ownership token in its last minute */
#define MAX_RESTARTS 3           /* new runs in a row for one device before it fails */
#define MAX_PARAMS 33            /* RegisterThing parameters: the serial + 32 configured */

/* ---- requests to the cloud ---------------------------------------------- */

static struct claim *idle_claim(struct provisioner *p)
{
  for (unsigned i = 0; i < p->nclaims; i++)
    if (p->claims[i].ready && !p->claims[i].busy)
      return &p->claims[i];
  return NULL;
}

/* Publishes a request on the claim connection c, or, for a rotation (c is
 * NULL), on the device's own upstream through the relay. */
static int publish_json(struct job *j, struct claim *c, const char *topic, char *json)
{
  struct provisioner *p = j->p;
  int rc;
  if (!json)
    return -1;
  if (c)
    rc = upstream_publish(c->u, topic, strlen(topic), (const uint8_t *)json, strlen(json), 1,
                          false, NULL) == UPSTREAM_OK
             ? 0
             : -1;
  else
    rc = p->link ? p->link->publish(p->link_ud, j->client_id, topic, json, strlen(json)) : -1;
  /* The request may hold an ownership token. */
  secret_free(json);
  return rc;
}

/* CreateCertificateFromCsr or CreateKeysAndCertificate; 0 when sent. */
static int publish_cert_request(struct job *j, struct claim *c)
{
  struct provisioner *p = j->p;
  bool csr = j->next_step == J_SEND_CSR;
  /* Journal first: a crash after this line resends the request. */
  if (store_run_set_step(p->st, j->run_id, RUN_CSR_SENT, pv_now_s()) != STORE_OK)
    return -1;
  return publish_json(j, c, csr ? p->t_csr : p->t_create,
                      csr ? prov_build_csr_request(j->csr_pem) : prov_build_create_keys_request());
}

/* RegisterThing with the journalled token: 0 when sent, -1 to retry, 1 when
 * the token had expired and a new run started instead. */
static int publish_register(struct job *j, struct claim *c)
{
  struct provisioner *p = j->p;
  const struct gw_config *cfg = p->cfg;
  struct store_run r;
  struct prov_param params[MAX_PARAMS];
  size_t n = 0;
  int rc;

  if (store_run_get(p->st, j->run_id, &r) != STORE_OK)
    return -1;
  {
    /* docs/protocol-notes.md §5.5: the token is good for one hour; keep a
     * margin so the request does not arrive just after it expired. */
    int64_t ttl = (int64_t)cfg->provisioning.aws.token_ttl_s;
    int64_t usable = ttl > 2 * TOKEN_MARGIN_S ? ttl - TOKEN_MARGIN_S : ttl;
    if (pv_now_s() - r.token_at >= usable) {
      secret_wipe(r.token, sizeof r.token);
      pv_restart_run(j, "certificate ownership token expired before RegisterThing");
      return 1;
    }
  }
  params[n].key = cfg->provisioning.aws.serial_parameter;
  params[n++].value = j->client_id;
  for (size_t i = 0; i < cfg->provisioning.aws.n_params && n < MAX_PARAMS; i++) {
    params[n].key = cfg->provisioning.aws.params[i].key;
    params[n++].value = cfg->provisioning.aws.params[i].value;
  }
  rc = store_run_set_step(p->st, j->run_id, RUN_REGISTER_SENT, pv_now_s()) == STORE_OK
           ? publish_json(j, c, j->rotate ? p->t_rot : p->t_reg,
                          prov_build_register_request(r.token, params, n))
           : -1;
  secret_wipe(r.token, sizeof r.token);
  return rc;
}

static void send_request(struct job *j, struct claim *c)
{
  struct provisioner *p = j->p;
  int rc;

  p->m->provision_requests++;
  if (j->next_step == J_SEND_CSR || j->next_step == J_SEND_CREATE)
    rc = publish_cert_request(j, c);
  else
    rc = publish_register(j, c);
  if (rc == 1)
    return;
  if (rc != 0) {
    pv_job_defer(j);
    return;
  }
  c->busy = j;
  c->busy_op = j->next_step;
  c->deadline = uv_now(p->loop) + p->cfg->provisioning.request_timeout_ms;
  j->busy = true;
  LOGD(MOD, "%s: %s sent on claim connection %u", j->client_id,
       c->busy_op == J_SEND_REGISTER ? "RegisterThing" : "certificate request", c->index);
  if ((pv_crash_armed(j, CRASH_CSR_SENT) && c->busy_op != J_SEND_REGISTER) ||
      (pv_crash_armed(j, CRASH_REGISTER_SENT) && c->busy_op == J_SEND_REGISTER))
    p->crash_on_reply = true; /* die once the cloud has acted on it */
}

void pv_claims_send(struct provisioner *p, struct job *j)
{
  struct claim *c = idle_claim(p);
  if (!c || !pv_take_token(p))
    return;
  send_request(j, c);
}

/* ---- replies ------------------------------------------------------------ */

static bool topic_is(const char *topic, size_t tlen, const char *want)
{
  return tlen == strlen(want) && memcmp(topic, want, tlen) == 0;
}


static void on_cert_accepted(struct job *j, const char *json, size_t len)
{
  struct provisioner *p = j->p;
  struct prov_cert_reply r;
  int64_t not_after = 0;
  char fp[65], cn[129], err[256];
  const char *key;
  int rc;

  memset(&r, 0, sizeof r);
  if (prov_parse_cert_reply(json, len, p->cfg->provisioning.aws.create_keys, &r) != PROTO_OK) {
    LOGW(MOD, "%s: malformed certificate reply; retrying", j->client_id);
    goto retry;
  }
  key = r.private_key ? r.private_key : j->key_pem;
  if (!key || !ca_cert_matches_key(r.certificate_pem, key, NULL) ||
      ca_cert_info(r.certificate_pem, &not_after, fp, cn, sizeof cn, err, sizeof err) != 0) {
    LOGW(MOD, "%s: certificate reply does not match our key or is unreadable; retrying",
         j->client_id);
    goto retry;
  }
  rc = store_run_cert_received(p->st, j->run_id, r.certificate_id, r.certificate_pem,
                               r.private_key, not_after, fp, r.ownership_token, pv_now_s());
  if (rc != STORE_OK) {
    LOGE(MOD, "%s: cannot journal certificate %s: %s", j->client_id, r.certificate_id,
         store_errmsg(p->st));
    goto retry;
  }
  p->m->certs_issued++;
  pv_notify(p, j->client_id, "cert_issued");
  store_audit(p->st, pv_now_s(), "gateway", "cert.issued", j->client_id, r.certificate_id);
  LOGI(MOD, "%s: certificate %.12s... issued", j->client_id, r.certificate_id);
  prov_cert_reply_clear(&r);
  if (pv_crash_armed(j, CRASH_CERT_RECEIVED))
    pv_crash_now(p, "cert_received");
  j->next_step = J_SEND_REGISTER;
  backoff_reset(&j->retry);
  return;

retry:
  prov_cert_reply_clear(&r);
  pv_job_defer(j);
}

static void on_register_accepted(struct job *j, const char *json, size_t len)
{
  struct provisioner *p = j->p;
  struct prov_register_reply r;
  int rc;

  memset(&r, 0, sizeof r);
  if (prov_parse_register_reply(json, len, &r) != PROTO_OK) {
    /* The thing exists now, under a name we could not read. */
    prov_register_reply_clear(&r);
    pv_restart_run(j, "unreadable RegisterThing reply; the certificate may be active in the cloud");
    return;
  }
  rc = store_run_registered(p->st, j->run_id, r.thing_name, pv_now_s());
  if (rc == STORE_CONFLICT) {
    char why[300];
    snprintf(why, sizeof why, "thing name %s already belongs to another device", r.thing_name);
    prov_register_reply_clear(&r);
    pv_finish_failed(j, why);
    return;
  }
  if (rc != STORE_OK) {
    LOGE(MOD, "%s: cannot journal RegisterThing: %s", j->client_id, store_errmsg(p->st));
    prov_register_reply_clear(&r);
    j->next_step = J_COMPLETE; /* retried from the tick; thing name re-read then */
    pv_job_defer(j);
    return;
  }
  store_audit(p->st, pv_now_s(), "gateway", "provision.registered", j->client_id, r.thing_name);
  pv_notify(p, j->client_id, "registered");
  prov_register_reply_clear(&r);
  if (pv_crash_armed(j, CRASH_REGISTERED))
    pv_crash_now(p, "registered");
  pv_finish_ok(j);
}

/* RegisterThing refused the ownership token (docs/architecture.md §4.3). */
static void on_token_rejected(struct job *j, const char *text)
{
  /* The certificate can never be registered with this token.  Either our
   * earlier RegisterThing (reply lost, or sent just before a crash) used
   * it and may have succeeded, or the cloud expired it: the certificate
   * is listed as orphaned for cleanup and the device gets a new one.  A
   * few such restarts in a row mean something else is wrong. */
  if (++j->restarts > MAX_RESTARTS) {
    pv_finish_failed(j, text);
    return;
  }
  pv_restart_run(j, j->register_unknown
                        ? "RegisterThing outcome unknown (token already used); the "
                          "certificate may be active in the cloud: check and revoke it"
                        : "certificate ownership token refused by the cloud (expired or "
                          "invalid)");
}

static void on_rejected(struct job *j, enum job_next op, const char *json, size_t len)
{
  struct provisioner *p = j->p;
  struct prov_error e;
  char text[512];
  bool retryable, token;
  uint32_t d;

  memset(&e, 0, sizeof e);
  prov_parse_error(json, len, &e);
  snprintf(text, sizeof text, "%s rejected: %d %s: %s",
           op == J_SEND_REGISTER ? "RegisterThing"
                                 : (op == J_SEND_CSR ? "CreateCertificateFromCsr"
                                                     : "CreateKeysAndCertificate"),
           e.status_code, e.error_code ? e.error_code : "", e.error_message ? e.error_message : "");
  retryable = prov_error_is_retryable(&e);
  token = op == J_SEND_REGISTER && e.error_code && strstr(e.error_code, "OwnershipToken");
  prov_error_clear(&e);
  p->m->provision_rejected++;
  pv_notify(p, j->client_id, "rejected");
  store_audit(p->st, pv_now_s(), "gateway", "provision.rejected", j->client_id, text);

  if (token) {
    on_token_rejected(j, text);
    return;
  }
  if (!retryable) {
    pv_finish_failed(j, text);
    return;
  }
  d = pv_job_defer(j);
  store_device_set_error(p->st, j->client_id, text, pv_now_s() + d / 1000);
  p->m->provision_retries++;
  LOGW(MOD, "%s: %s; retry in %u ms", j->client_id, text, d);
}

/* Whether a reply on topic answers the request op in flight for j (acc:
 * accepted or rejected); the register topics are the rotation template's
 * for a rotation. */
static bool answers(const struct job *j, enum job_next op, const char *topic, size_t tlen,
                    bool *acc)
{
  const struct provisioner *p = j->p;
  const char *want_acc, *want_rej;
  if (op == J_SEND_REGISTER) {
    want_acc = j->rotate ? p->t_rot_acc : p->t_reg_acc;
    want_rej = j->rotate ? p->t_rot_rej : p->t_reg_rej;
  } else {
    want_acc = op == J_SEND_CSR ? p->t_csr_acc : p->t_create_acc;
    want_rej = op == J_SEND_CSR ? p->t_csr_rej : p->t_create_rej;
  }
  *acc = topic_is(topic, tlen, want_acc);
  return *acc || topic_is(topic, tlen, want_rej);
}

/* Moves j on with the reply to op (the request is no longer in flight). */
static void on_reply(struct job *j, enum job_next op, bool acc, const uint8_t *payload,
                     size_t len)
{
  struct provisioner *p = j->p; /* the reply may free j */
  if (!acc)
    on_rejected(j, op, (const char *)payload, len);
  else if (op == J_SEND_REGISTER)
    on_register_accepted(j, (const char *)payload, len);
  else
    on_cert_accepted(j, (const char *)payload, len);
  pv_kick(p);
}

/* ---- claim connections -------------------------------------------------- */

static void claim_lost_request(struct claim *c, const char *why)
{
  struct job *j = c->busy;
  struct provisioner *p = c->p;
  if (!j)
    return;
  c->busy = NULL;
  j->busy = false;
  if (c->busy_op == J_SEND_REGISTER)
    j->register_unknown = true;
  pv_job_defer(j);
  p->m->provision_retries++;
  LOGW(MOD, "%s: no reply on claim connection %u (%s); retrying", j->client_id, c->index, why);
  if (c->busy_op != J_SEND_REGISTER)
    store_audit(p->st, pv_now_s(), "gateway", "provision.reply_lost", j->client_id,
                "a certificate may have been issued without reaching us; AWS deletes it when "
                "its ownership token expires");
}

static void claim_on_up(void *ud, bool sp)
{
  struct claim *c = ud;
  struct provisioner *p = c->p;
  const char *topics[4];
  bool create = p->cfg->provisioning.aws.create_keys;
  uint16_t pid;
  (void)sp;

  topics[0] = create ? p->t_create_acc : p->t_csr_acc;
  topics[1] = create ? p->t_create_rej : p->t_csr_rej;
  topics[2] = p->t_reg_acc;
  topics[3] = p->t_reg_rej;
  c->ready = false;
  c->subs_pending = 0;
  /* docs/protocol-notes.md §5.1: subscribe to the replies before
   * publishing any request. */
  for (int i = 0; i < 4; i++)
    if (upstream_subscribe(c->u, topics[i], strlen(topics[i]), 1, &pid) == UPSTREAM_OK)
      c->subs_pending++;
  LOGI(MOD, "claim connection %u up", c->index);
}

static void claim_on_down(void *ud, enum upstream_reason why, int rc, uint32_t retry_ms)
{
  struct claim *c = ud;
  (void)rc;
  c->ready = false;
  claim_lost_request(c, "connection lost");
  LOGW(MOD, "claim connection %u down (%s), retry in %u ms", c->index, upstream_reason_str(why),
       retry_ms);
}

static void claim_on_suback(void *ud, uint16_t pid, const uint8_t *codes, size_t n)
{
  struct claim *c = ud;
  (void)pid;
  if (n < 1 || codes[0] == 0x80) {
    LOGE(MOD, "claim connection %u: subscription refused (check the claim policy)", c->index);
    return;
  }
  if (c->subs_pending > 0 && --c->subs_pending == 0) {
    c->ready = true;
    pv_kick(c->p);
  }
}

static void claim_on_message(void *ud, const char *topic, size_t tlen, const uint8_t *payload,
                             size_t len, int qos, bool retain, uint16_t pid)
{
  struct claim *c = ud;
  struct provisioner *p = c->p;
  struct job *j = c->busy;
  enum job_next op = c->busy_op;
  bool acc;
  (void)retain;

  if (qos == 1)
    upstream_puback(c->u, pid);
  if (!j) {
    LOGW(MOD, "claim connection %u: unexpected message on %.*s", c->index, (int)tlen, topic);
    return;
  }
  if (p->crash_on_reply)
    pv_crash_now(p, op == J_SEND_REGISTER ? "register_sent" : "csr_sent");
  if (!answers(j, op, topic, tlen, &acc)) {
    LOGW(MOD, "claim connection %u: reply on %.*s does not answer the request in flight",
         c->index, (int)tlen, topic);
    return;
  }
  c->busy = NULL;
  j->busy = false;
  on_reply(j, op, acc, payload, len);
}

static void claim_on_puback(void *ud, void *token) { (void)ud; (void)token; }
static void claim_on_unsuback(void *ud, uint16_t pid) { (void)ud; (void)pid; }

static void claim_on_closed(void *ud)
{
  struct claim *c = ud;
  struct provisioner *p = c->p;
  c->u = NULL;
  if (p->pending_closes > 0)
    p->pending_closes--;
  pv_stop_check(p);
}

static const struct upstream_cbs claim_cbs = {
    .on_up = claim_on_up,
    .on_down = claim_on_down,
    .on_message = claim_on_message,
    .on_puback = claim_on_puback,
    .on_suback = claim_on_suback,
    .on_unsuback = claim_on_unsuback,
    .on_dropped = claim_on_puback,
    .on_closed = claim_on_closed,
};

/* ---- rotation over the device's own upstream (docs/rotation.md §3) ------ */

#define LINK_WAIT_MS 1000        /* a rotation waiting for its device's upstream looks again */
#define MAX_LINK_LOSSES 5        /* the upstream lost this often mid-rotation: it fails */

static struct job *rotation_of(struct provisioner *p, const char *client_id)
{
  for (struct job *j = p->jobs; j; j = j->next)
    if (j->rotate && strcmp(j->client_id, client_id) == 0)
      return j;
  return NULL;
}

/* The request in flight got no answer (time-out, the upstream went). */
static void link_lost_request(struct job *j, const char *why)
{
  struct provisioner *p = j->p;
  if (!j->busy)
    return;
  j->busy = false;
  if (j->link_op == J_SEND_REGISTER)
    j->register_unknown = true;
  pv_job_defer(j);
  p->m->provision_retries++;
  LOGW(MOD, "%s: no reply to the rotation request (%s); retrying", j->client_id, why);
  if (j->link_op != J_SEND_REGISTER)
    store_audit(p->st, pv_now_s(), "gateway", "rotate.reply_lost", j->client_id,
                "a certificate may have been issued without reaching us; AWS deletes it when "
                "its ownership token expires");
}

/* The upstream went (or came back, which means it went): subscriptions
 * are made again; mid-rotation losses are bounded, since AWS answers a
 * policy that denies a topic by closing the connection
 * (docs/protocol-notes.md §4.7, docs/rotation.md §3). */
static void link_lost(struct job *j, const char *why)
{
  bool mid = j->busy || j->link == LINK_SUBSCRIBING;
  j->link = LINK_NONE;
  link_lost_request(j, why);
  if (mid && ++j->restarts > MAX_LINK_LOSSES)
    pv_finish_failed(j, "the device's upstream closed during the rotation again and again: does "
                        "its policy allow the rotation topics?");
}

void pv_link_send(struct provisioner *p, struct job *j)
{
  bool create = p->cfg->provisioning.aws.create_keys;
  uint64_t now = uv_now(p->loop);
  int rc;

  if (!p->link) {
    j->not_before = now + LINK_WAIT_MS;
    return;
  }
  if (j->link == LINK_NONE) {
    /* Subscribe to the replies before the first request
     * (docs/protocol-notes.md §5.1). */
    const char *topics[4] = {create ? p->t_create_acc : p->t_csr_acc,
                             create ? p->t_create_rej : p->t_csr_rej, p->t_rot_acc,
                             p->t_rot_rej};
    if (p->link->subscribe(p->link_ud, j->client_id, topics, 4) == 0)
      j->link = LINK_SUBSCRIBING;
    else
      j->not_before = now + LINK_WAIT_MS; /* its upstream is not up: it waits */
    return;
  }
  if (j->link != LINK_READY || !pv_take_token(p))
    return;
  p->m->provision_requests++;
  rc = j->next_step == J_SEND_REGISTER ? publish_register(j, NULL) : publish_cert_request(j, NULL);
  if (rc == 1)
    return; /* a new run started instead */
  if (rc != 0) {
    j->link = LINK_NONE;
    j->not_before = now + LINK_WAIT_MS;
    return;
  }
  j->busy = true;
  j->link_op = j->next_step;
  j->deadline = now + p->cfg->provisioning.request_timeout_ms;
  LOGD(MOD, "%s: rotation %s sent on its own upstream", j->client_id,
       j->link_op == J_SEND_REGISTER ? "RegisterThing" : "certificate request");
  if ((pv_crash_armed(j, CRASH_CSR_SENT) && j->link_op != J_SEND_REGISTER) ||
      (pv_crash_armed(j, CRASH_REGISTER_SENT) && j->link_op == J_SEND_REGISTER))
    p->crash_on_reply = true;
}

void pv_link_tick(struct provisioner *p)
{
  uint64_t now = uv_now(p->loop);
  for (struct job *j = p->jobs; j; j = j->next)
    if (j->rotate && j->busy && now >= j->deadline)
      link_lost_request(j, "timed out");
}

void provision_link_up(struct provisioner *p, const char *client_id)
{
  struct job *j = p && p->nrotating ? rotation_of(p, client_id) : NULL;
  if (!j)
    return;
  link_lost(j, "the upstream reconnected");
  pv_kick(p);
}

void provision_link_down(struct provisioner *p, const char *client_id)
{
  struct job *j = p && p->nrotating ? rotation_of(p, client_id) : NULL;
  if (j)
    link_lost(j, "the upstream went down");
}

void provision_link_ready(struct provisioner *p, const char *client_id, bool ok)
{
  struct job *j = p ? rotation_of(p, client_id) : NULL;
  if (!j || j->link != LINK_SUBSCRIBING)
    return;
  if (!ok) {
    pv_finish_failed(j, "the broker refused the rotation's reply topics (device policy)");
    return;
  }
  j->link = LINK_READY;
  pv_kick(p);
}

bool provision_link_message(struct provisioner *p, const char *client_id, const char *topic,
                            size_t topic_len, const uint8_t *payload, size_t len)
{
  const char *mine[] = {p->t_csr_acc, p->t_csr_rej, p->t_create_acc,
                        p->t_create_rej, p->t_rot_acc, p->t_rot_rej};
  struct job *j;
  enum job_next op;
  bool ours = false, acc;

  if (!p || !p->t_rot[0] || topic_len < 5 || memcmp(topic, "$aws/", 5) != 0)
    return false;
  for (size_t i = 0; i < sizeof mine / sizeof mine[0]; i++)
    ours = ours || topic_is(topic, topic_len, mine[i]);
  if (!ours)
    return false;
  /* A reply to the gateway never reaches the leaf, even a late one. */
  j = rotation_of(p, client_id);
  if (!j || !j->busy) {
    LOGW(MOD, "%s: a rotation reply on %.*s with no request in flight", client_id,
         (int)topic_len, topic);
    return true;
  }
  op = j->link_op;
  if (p->crash_on_reply)
    pv_crash_now(p, op == J_SEND_REGISTER ? "register_sent" : "csr_sent");
  if (!answers(j, op, topic, topic_len, &acc)) {
    LOGW(MOD, "%s: rotation reply on %.*s does not answer the request in flight", client_id,
         (int)topic_len, topic);
    return true;
  }
  j->busy = false;
  on_reply(j, op, acc, payload, len);
  return true;
}

/* ---- the pool ----------------------------------------------------------- */

static int build_topics(struct provisioner *p)
{
  const char *t = p->cfg->provisioning.aws.template_name;
  const char *rot = p->cfg->provisioning.aws.rotation_template;

  if (rot && (prov_topic_register(rot, NULL, p->t_rot, sizeof p->t_rot) < 0 ||
              prov_topic_register(rot, "accepted", p->t_rot_acc, sizeof p->t_rot_acc) < 0 ||
              prov_topic_register(rot, "rejected", p->t_rot_rej, sizeof p->t_rot_rej) < 0)) {
    LOGE(MOD, "cannot build the rotation topics for template %s", rot);
    return -1;
  }

  if (prov_topic_create_from_csr(NULL, p->t_csr, sizeof p->t_csr) < 0 ||
      prov_topic_create_from_csr("accepted", p->t_csr_acc, sizeof p->t_csr_acc) < 0 ||
      prov_topic_create_from_csr("rejected", p->t_csr_rej, sizeof p->t_csr_rej) < 0 ||
      prov_topic_create_keys(NULL, p->t_create, sizeof p->t_create) < 0 ||
      prov_topic_create_keys("accepted", p->t_create_acc, sizeof p->t_create_acc) < 0 ||
      prov_topic_create_keys("rejected", p->t_create_rej, sizeof p->t_create_rej) < 0 ||
      prov_topic_register(t, NULL, p->t_reg, sizeof p->t_reg) < 0 ||
      prov_topic_register(t, "accepted", p->t_reg_acc, sizeof p->t_reg_acc) < 0 ||
      prov_topic_register(t, "rejected", p->t_reg_rej, sizeof p->t_reg_rej) < 0) {
    LOGE(MOD, "cannot build the provisioning topics for template %s", t);
    return -1;
  }
  return 0;
}

static int start_claim(struct provisioner *p, struct claim *c, unsigned i)
{
  const struct gw_config *cfg = p->cfg;
  struct upstream_opts o;
  char cid[256];

  c->p = p;
  c->index = i;
  if (cfg_claim_client_id(cfg, i, cid, sizeof cid) != 0)
    return -1;
  memset(&o, 0, sizeof o);
  o.host = cfg->upstream.host;
  o.port = cfg->upstream.port;
  o.tls = p->tls;
  o.alpn = cfg->upstream.alpn;
  o.cert_file = cfg->provisioning.aws.claim_cert_file;
  o.key_file = cfg->provisioning.aws.claim_key_file;
  o.client_id = cid;
  o.keepalive = cfg->upstream.keepalive_s;
  o.clean_session = true;
  o.connect_timeout_ms = cfg->upstream.connect_timeout_ms;
  /* At least one second between connects of one client id
   * (docs/protocol-notes.md §4.6). */
  o.backoff_base_ms = cfg->upstream.backoff_base_ms < 1000 ? 1000 : cfg->upstream.backoff_base_ms;
  o.backoff_cap_ms = cfg->upstream.backoff_cap_ms < o.backoff_base_ms
                         ? o.backoff_base_ms
                         : cfg->upstream.backoff_cap_ms;
  o.max_queue = 16;
  o.max_packet = 64 * 1024;
  if (upstream_new(p->loop, &o, &claim_cbs, c, &c->u) != UPSTREAM_OK) {
    LOGE(MOD, "cannot create claim connection %u", i);
    return -1;
  }
  p->pending_closes++;
  upstream_start(c->u);
  return 0;
}

int pv_claims_start(struct provisioner *p)
{
  if (build_topics(p) != 0)
    return -1;
  p->nclaims = p->cfg->provisioning.aws.pool_size;
  p->claims = calloc(p->nclaims, sizeof *p->claims);
  if (!p->claims)
    return -1;
  for (unsigned i = 0; i < p->nclaims; i++)
    if (start_claim(p, &p->claims[i], i) != 0)
      return -1;
  return 0;
}

void pv_claims_tick(struct provisioner *p)
{
  uint64_t now = uv_now(p->loop);
  for (unsigned i = 0; i < p->nclaims; i++) {
    struct claim *c = &p->claims[i];
    if (c->busy && now >= c->deadline)
      claim_lost_request(c, "timed out");
  }
}

void pv_claims_forget(struct provisioner *p, const struct job *j)
{
  for (unsigned i = 0; i < p->nclaims; i++)
    if (p->claims[i].busy == j)
      p->claims[i].busy = NULL;
}

void pv_claims_stop(struct provisioner *p)
{
  for (unsigned i = 0; i < p->nclaims; i++)
    if (p->claims[i].u)
      upstream_stop(p->claims[i].u, true);
}

void pv_claims_free(struct provisioner *p)
{
  free(p->claims);
  p->claims = NULL;
  p->nclaims = 0;
}
