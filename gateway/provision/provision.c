/*
 * provision.c - the provisioning orchestrator: one job per device whose run
 * is open, driven by events (replies, finished off-loop work) and a 100 ms
 * tick (rate tokens, back-off deadlines, request time-outs).  Every step is
 * journalled in the registry before the action it announces; see
 * provision.h for the recovery rules.
 */
#include "provision.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "local_ca.h"
#include "log.h"
#include "metrics.h"
#include "provisioning.h"
#include "store.h"
#include "tls.h"
#include "upstream.h"

#define MOD "provision"
#define TICK_MS 100
#define MAX_WORK 4               /* off-loop jobs at once (libuv's pool has 4 threads) */
#define TOKEN_MARGIN_S 60        /* do not use an ownership token in its last minute */
#define MAX_RESTARTS 3           /* new runs in a row for one device before it fails */

enum job_next {
  J_PREPARE,        /* off the loop: key pair (unless stored) and CSR; local-ca: also sign */
  J_SEND_CSR,       /* aws: CreateCertificateFromCsr */
  J_SEND_CREATE,    /* aws: CreateKeysAndCertificate */
  J_SEND_REGISTER,  /* aws: RegisterThing */
  J_LOCAL_FINISH,   /* local-ca: record the signed certificate, register, complete */
  J_COMPLETE,       /* RegisterThing accepted: complete the run */
};

enum crash_point { CRASH_NONE, CRASH_CSR_SENT, CRASH_CERT_RECEIVED, CRASH_REGISTER_SENT,
                   CRASH_REGISTERED };

struct claim;

struct job {
  struct job *next;
  struct provisioner *p;
  int64_t run_id;
  char client_id[256];
  char thing_name[129];      /* local-ca: chosen before signing */
  enum job_next next_step;
  bool busy;                 /* off-loop work running or a request in flight */
  bool dead;                 /* the provisioner stopped while work was running */
  bool register_unknown;     /* a RegisterThing went out and its reply was lost */
  bool have_key;             /* key_pem came from the journal */
  uint64_t not_before;       /* loop ms */
  uint32_t attempts;
  uint32_t restarts;         /* runs restarted for this device in a row */
  char *key_pem;             /* secret: wiped with ca_secret_free */
  char *csr_pem;
  char *cert_pem;            /* local-ca: the signed certificate */
  char work_err[256];
  int work_rc;
  uv_work_t work;
};

struct claim {
  struct provisioner *p;
  unsigned index;
  struct upstream *u;
  unsigned subs_pending;
  bool ready;                /* up and subscribed to every reply topic */
  struct job *busy;          /* the one request in flight (A.5: no request ids) */
  enum job_next busy_op;
  uint64_t deadline;
};

struct provisioner {
  uv_loop_t *loop;
  const struct gw_config *cfg;
  struct store *st;
  struct tls_ctx *tls;
  struct metrics *m;
  provision_done_cb done;
  void *ud;

  struct ca_ctx *ca;
  struct claim *claims;
  unsigned nclaims;
  struct job *jobs;
  size_t njobs;
  unsigned work_running;

  uv_timer_t tick;
  bool tick_started;
  double tokens;             /* request rate limiter (token bucket) */
  uint64_t tokens_at;

  char t_csr[96], t_csr_acc[112], t_csr_rej[112];
  char t_create[96], t_create_acc[112], t_create_rej[112];
  char t_reg[160], t_reg_acc[176], t_reg_rej[176];

  enum crash_point crash_at;
  bool crash_on_reply;

  provision_step_cb step_cb;
  void *step_ud;

  bool stopping;
  unsigned pending_closes;
  void (*stop_done)(void *);
  void *stop_ud;
};

static void kick(struct provisioner *p);
static void begin_run(struct provisioner *p, struct job *j);

static void notify(struct provisioner *p, const char *client_id, const char *step)
{
  if (p->step_cb)
    p->step_cb(p->step_ud, client_id, step);
}

void provision_observe(struct provisioner *p, provision_step_cb cb, void *ud)
{
  p->step_cb = cb;
  p->step_ud = ud;
}

static int64_t now_s(void)
{
  return (int64_t)time(NULL);
}

static void crash_now(const char *where)
{
  LOGW(MOD, "test hook FLEETGW_TEST_CRASH_AFTER=%s: killing the process", where);
  raise(SIGKILL);
}

static uint32_t retry_delay(const struct provisioner *p, uint32_t attempts)
{
  uint64_t d = p->cfg->provisioning.retry_base_ms;
  for (uint32_t i = 1; i < attempts && d < p->cfg->provisioning.retry_cap_ms; i++)
    d *= 2;
  if (d > p->cfg->provisioning.retry_cap_ms)
    d = p->cfg->provisioning.retry_cap_ms;
  /* Jitter in [d/2, d]: devices rejected together do not retry together. */
  return (uint32_t)(d / 2 + (uint64_t)rand() % (d / 2 + 1));
}

/* ---- jobs --------------------------------------------------------------- */

static struct job *job_find(struct provisioner *p, const char *client_id)
{
  for (struct job *j = p->jobs; j; j = j->next)
    if (strcmp(j->client_id, client_id) == 0)
      return j;
  return NULL;
}

static struct job *job_new(struct provisioner *p, const char *client_id)
{
  struct job *j = calloc(1, sizeof *j);
  if (!j)
    return NULL;
  j->p = p;
  snprintf(j->client_id, sizeof j->client_id, "%s", client_id);
  j->next = p->jobs;
  p->jobs = j;
  p->njobs++;
  return j;
}

static void job_clear_secrets(struct job *j)
{
  ca_secret_free(j->key_pem);
  j->key_pem = NULL;
  free(j->csr_pem);
  j->csr_pem = NULL;
  free(j->cert_pem);
  j->cert_pem = NULL;
}

static void job_free(struct job *j)
{
  struct provisioner *p = j->p;
  for (struct job **pp = &p->jobs; *pp; pp = &(*pp)->next) {
    if (*pp == j) {
      *pp = j->next;
      p->njobs--;
      break;
    }
  }
  for (unsigned i = 0; i < p->nclaims; i++)
    if (p->claims[i].busy == j)
      p->claims[i].busy = NULL;
  job_clear_secrets(j);
  free(j);
}

/* The run ended with the device's certificate active. */
static void finish_ok(struct job *j)
{
  struct provisioner *p = j->p;
  char client[256];
  int rc = store_run_complete(p->st, j->run_id, now_s());
  if (rc != STORE_OK) {
    /* The schema refused a second active certificate: the invariant held.
     * Nothing to activate; the run fails and its certificate is orphaned. */
    LOGE(MOD, "%s: cannot complete run %lld: %s (%s)", j->client_id, (long long)j->run_id,
         store_strerror(rc), store_errmsg(p->st));
    store_run_fail(p->st, j->run_id, "completion refused by the registry", now_s());
    store_device_set_state(p->st, j->client_id, DEV_FAILED);
    store_audit(p->st, now_s(), "gateway", "provision.failed", j->client_id,
                "completion refused by the registry");
    p->m->provision_failed++;
    snprintf(client, sizeof client, "%s", j->client_id);
    job_free(j);
    p->done(p->ud, client, false);
    return;
  }
  p->m->provision_done++;
  notify(p, j->client_id, "done");
  LOGI(MOD, "%s: provisioned (run %lld)", j->client_id, (long long)j->run_id);
  store_audit(p->st, now_s(), "gateway", "provision.done", j->client_id, NULL);
  snprintf(client, sizeof client, "%s", j->client_id);
  job_free(j);
  p->done(p->ud, client, true);
}

/* The run ended without a certificate; the device waits for an operator. */
static void finish_failed(struct job *j, const char *reason)
{
  struct provisioner *p = j->p;
  char client[256];
  store_run_fail(p->st, j->run_id, reason, now_s());
  store_device_set_error(p->st, j->client_id, reason, 0);
  store_device_set_state(p->st, j->client_id, DEV_FAILED);
  store_audit(p->st, now_s(), "gateway", "provision.failed", j->client_id, reason);
  p->m->provision_failed++;
  notify(p, j->client_id, "failed");
  LOGW(MOD, "%s: provisioning failed: %s", j->client_id, reason);
  snprintf(client, sizeof client, "%s", j->client_id);
  job_free(j);
  p->done(p->ud, client, false);
}

/* The run cannot go on with its certificate (token expired or used): the
 * certificate is marked orphaned for cleanup, and a new run starts. */
static void restart_run(struct job *j, const char *reason)
{
  struct provisioner *p = j->p;
  struct store_run r;
  char detail[512];

  if (store_run_get(p->st, j->run_id, &r) == STORE_OK && r.cert_id[0]) {
    snprintf(detail, sizeof detail, "certificate %s orphaned: %s", r.cert_id, reason);
    store_audit(p->st, now_s(), "gateway", "cert.orphaned", j->client_id, detail);
    p->m->certs_orphaned++;
    notify(p, j->client_id, "orphaned");
    LOGW(MOD, "%s: %s", j->client_id, detail);
  }
  store_run_fail(p->st, j->run_id, reason, now_s());
  job_clear_secrets(j);
  j->register_unknown = false;
  j->have_key = false;
  begin_run(p, j);
}

/* Opens a run for the job's device (the job exists; its previous run, if
 * any, is finished). */
static void begin_run(struct provisioner *p, struct job *j)
{
  int64_t run_id;
  const char *backend = p->cfg->provisioning.backend == BACKEND_AWS ? "aws" : "local-ca";
  int rc = store_run_begin(p->st, j->client_id, backend, now_s(), &run_id);
  if (rc != STORE_OK) {
    LOGE(MOD, "%s: cannot open a provisioning run: %s (%s)", j->client_id, store_strerror(rc),
         store_errmsg(p->st));
    j->next_step = J_PREPARE;
    j->run_id = 0;
    j->not_before = uv_now(p->loop) + retry_delay(p, ++j->attempts);
    return;
  }
  j->run_id = run_id;
  store_device_set_state(p->st, j->client_id, DEV_PROVISIONING);
  store_audit(p->st, now_s(), "gateway", "provision.started", j->client_id, backend);
  p->m->provision_started++;
  notify(p, j->client_id, "started");
  j->next_step = (p->cfg->provisioning.backend == BACKEND_AWS &&
                  p->cfg->provisioning.aws.create_keys)
                     ? J_SEND_CREATE
                     : J_PREPARE;
  j->not_before = 0;
}

/* ---- off-loop work ------------------------------------------------------ */

static void prepare_work(uv_work_t *w)
{
  struct job *j = w->data;
  struct provisioner *p = j->p;
  const char *cn = p->ca ? j->thing_name : j->client_id;

  j->work_rc = 0;
  if (!j->key_pem &&
      (j->work_rc = ca_keygen(&j->key_pem, j->work_err, sizeof j->work_err)) != 0)
    return;
  if ((j->work_rc = ca_make_csr(j->key_pem, cn, &j->csr_pem, j->work_err, sizeof j->work_err)) != 0)
    return;
  if (p->ca)
    j->work_rc = ca_sign_csr(p->ca, j->csr_pem, cn, (int)p->cfg->provisioning.local_ca.days,
                             &j->cert_pem, j->work_err, sizeof j->work_err);
}

static void prepare_done(uv_work_t *w, int status)
{
  struct job *j = w->data;
  struct provisioner *p = j->p;

  p->work_running--;
  j->busy = false;
  if (j->dead || p->stopping) {
    job_free(j);
    if (p->stopping && p->work_running == 0 && p->pending_closes == 0 && p->stop_done)
      p->stop_done(p->stop_ud);
    return;
  }
  if (status != 0 || j->work_rc != 0) {
    LOGE(MOD, "%s: key or certificate generation failed: %s", j->client_id,
         status ? uv_strerror(status) : j->work_err);
    j->not_before = uv_now(p->loop) + retry_delay(p, ++j->attempts);
    kick(p);
    return;
  }
  if (!j->have_key) {
    int rc = store_run_set_key(p->st, j->run_id, j->key_pem, now_s());
    if (rc != STORE_OK) {
      LOGE(MOD, "%s: cannot journal the key: %s", j->client_id, store_errmsg(p->st));
      job_clear_secrets(j);
      j->not_before = uv_now(p->loop) + retry_delay(p, ++j->attempts);
      kick(p);
      return;
    }
    j->have_key = true;
  }
  j->next_step = p->ca ? J_LOCAL_FINISH : J_SEND_CSR;
  kick(p);
}

/* local-ca: record the signed certificate, the thing name, and complete. */
static void local_finish(struct job *j)
{
  struct provisioner *p = j->p;
  int64_t not_after = 0;
  char fp[65], cn[129], err[256];
  int rc;

  if (ca_cert_info(j->cert_pem, &not_after, fp, cn, sizeof cn, err, sizeof err) != 0) {
    finish_failed(j, "the local CA issued an unreadable certificate");
    return;
  }
  rc = store_run_cert_received(p->st, j->run_id, fp, j->cert_pem, NULL, not_after, fp, "",
                               now_s());
  if (rc != STORE_OK) {
    LOGE(MOD, "%s: cannot journal the certificate: %s", j->client_id, store_errmsg(p->st));
    j->not_before = uv_now(p->loop) + retry_delay(p, ++j->attempts);
    return;
  }
  store_audit(p->st, now_s(), "gateway", "cert.issued", j->client_id, fp);
  rc = store_run_registered(p->st, j->run_id, j->thing_name, now_s());
  if (rc == STORE_CONFLICT) {
    char why[256];
    snprintf(why, sizeof why, "thing name %s already belongs to another device", j->thing_name);
    finish_failed(j, why);
    return;
  }
  if (rc != STORE_OK) {
    j->not_before = uv_now(p->loop) + retry_delay(p, ++j->attempts);
    return;
  }
  finish_ok(j);
}

/* ---- requests to the cloud ---------------------------------------------- */

static bool take_token(struct provisioner *p)
{
  uint64_t now = uv_now(p->loop);
  double rate = p->cfg->provisioning.rate_per_s;
  p->tokens += (double)(now - p->tokens_at) * rate / 1000.0;
  if (p->tokens > rate)
    p->tokens = rate; /* burst of at most one second's worth */
  p->tokens_at = now;
  if (p->tokens < 1.0)
    return false;
  p->tokens -= 1.0;
  return true;
}

static struct claim *idle_claim(struct provisioner *p)
{
  for (unsigned i = 0; i < p->nclaims; i++)
    if (p->claims[i].ready && !p->claims[i].busy)
      return &p->claims[i];
  return NULL;
}

static int publish_json(struct claim *c, const char *topic, char *json)
{
  int rc;
  if (!json)
    return -1;
  rc = upstream_publish(c->u, topic, strlen(topic), (const uint8_t *)json, strlen(json), 1, false,
                        NULL);
  /* The request may hold an ownership token: wipe before freeing. */
  memset(json, 0, strlen(json));
  free(json);
  return rc == UPSTREAM_OK ? 0 : -1;
}

static void send_request(struct job *j, struct claim *c)
{
  struct provisioner *p = j->p;
  const struct gw_config *cfg = p->cfg;
  uint64_t now = uv_now(p->loop);
  int rc = -1;

  p->m->provision_requests++;
  if (j->next_step == J_SEND_CSR || j->next_step == J_SEND_CREATE) {
    bool csr = j->next_step == J_SEND_CSR;
    /* Journal first: a crash after this line resends the request. */
    if (store_run_set_step(p->st, j->run_id, RUN_CSR_SENT, now_s()) != STORE_OK)
      goto retry;
    rc = publish_json(c, csr ? p->t_csr : p->t_create,
                      csr ? prov_build_csr_request(j->csr_pem) : prov_build_create_keys_request());
  } else {
    struct store_run r;
    struct prov_param params[33];
    size_t n = 0;
    if (store_run_get(p->st, j->run_id, &r) != STORE_OK)
      goto retry;
    {
      /* A.4: the token is good for one hour; keep a margin so the request
       * does not arrive just after it expired. */
      int64_t ttl = (int64_t)cfg->provisioning.aws.token_ttl_s;
      int64_t usable = ttl > 2 * TOKEN_MARGIN_S ? ttl - TOKEN_MARGIN_S : ttl;
      if (now_s() - r.token_at >= usable) {
        restart_run(j, "certificate ownership token expired before RegisterThing");
        return;
      }
    }
    params[n].key = cfg->provisioning.aws.serial_parameter;
    params[n++].value = j->client_id;
    for (size_t i = 0; i < cfg->provisioning.aws.n_params && n < 33; i++) {
      params[n].key = cfg->provisioning.aws.params[i].key;
      params[n++].value = cfg->provisioning.aws.params[i].value;
    }
    if (store_run_set_step(p->st, j->run_id, RUN_REGISTER_SENT, now_s()) != STORE_OK)
      goto retry;
    rc = publish_json(c, p->t_reg, prov_build_register_request(r.token, params, n));
    memset(r.token, 0, sizeof r.token);
  }
  if (rc != 0)
    goto retry;
  c->busy = j;
  c->busy_op = j->next_step;
  c->deadline = now + cfg->provisioning.request_timeout_ms;
  j->busy = true;
  LOGD(MOD, "%s: %s sent on claim connection %u", j->client_id,
       c->busy_op == J_SEND_REGISTER ? "RegisterThing" : "certificate request", c->index);
  if ((p->crash_at == CRASH_CSR_SENT && c->busy_op != J_SEND_REGISTER) ||
      (p->crash_at == CRASH_REGISTER_SENT && c->busy_op == J_SEND_REGISTER))
    p->crash_on_reply = true; /* die once the cloud has acted on it */
  return;

retry:
  j->not_before = now + retry_delay(p, ++j->attempts);
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
                               r.private_key, not_after, fp, r.ownership_token, now_s());
  if (rc != STORE_OK) {
    LOGE(MOD, "%s: cannot journal certificate %s: %s", j->client_id, r.certificate_id,
         store_errmsg(p->st));
    goto retry;
  }
  p->m->certs_issued++;
  notify(p, j->client_id, "cert_issued");
  store_audit(p->st, now_s(), "gateway", "cert.issued", j->client_id, r.certificate_id);
  LOGI(MOD, "%s: certificate %.12s... issued", j->client_id, r.certificate_id);
  prov_cert_reply_clear(&r);
  if (p->crash_at == CRASH_CERT_RECEIVED)
    crash_now("cert_received");
  j->next_step = J_SEND_REGISTER;
  j->attempts = 0;
  return;

retry:
  prov_cert_reply_clear(&r);
  j->not_before = uv_now(p->loop) + retry_delay(p, ++j->attempts);
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
    restart_run(j, "unreadable RegisterThing reply; the certificate may be active in the cloud");
    return;
  }
  rc = store_run_registered(p->st, j->run_id, r.thing_name, now_s());
  if (rc == STORE_CONFLICT) {
    char why[300];
    snprintf(why, sizeof why, "thing name %s already belongs to another device", r.thing_name);
    prov_register_reply_clear(&r);
    finish_failed(j, why);
    return;
  }
  if (rc != STORE_OK) {
    LOGE(MOD, "%s: cannot journal RegisterThing: %s", j->client_id, store_errmsg(p->st));
    prov_register_reply_clear(&r);
    j->next_step = J_COMPLETE; /* retried from the tick; thing name re-read then */
    j->not_before = uv_now(p->loop) + retry_delay(p, ++j->attempts);
    return;
  }
  store_audit(p->st, now_s(), "gateway", "provision.registered", j->client_id, r.thing_name);
  notify(p, j->client_id, "registered");
  prov_register_reply_clear(&r);
  if (p->crash_at == CRASH_REGISTERED)
    crash_now("registered");
  finish_ok(j);
}

static void on_rejected(struct job *j, enum job_next op, const char *json, size_t len)
{
  struct provisioner *p = j->p;
  struct prov_error e;
  char text[512];
  bool retryable;

  memset(&e, 0, sizeof e);
  prov_parse_error(json, len, &e);
  snprintf(text, sizeof text, "%s rejected: %d %s: %s",
           op == J_SEND_REGISTER ? "RegisterThing"
                                 : (op == J_SEND_CSR ? "CreateCertificateFromCsr"
                                                     : "CreateKeysAndCertificate"),
           e.status_code, e.error_code ? e.error_code : "", e.error_message ? e.error_message : "");
  retryable = prov_error_is_retryable(&e);
  p->m->provision_rejected++;
  notify(p, j->client_id, "rejected");
  store_audit(p->st, now_s(), "gateway", "provision.rejected", j->client_id, text);

  if (op == J_SEND_REGISTER && e.error_code && strstr(e.error_code, "OwnershipToken")) {
    /* The certificate can never be registered with this token.  Either our
     * earlier RegisterThing (reply lost, or sent just before a crash) used
     * it and may have succeeded, or the cloud expired it: the certificate
     * is listed as orphaned for cleanup and the device gets a new one.  A
     * few such restarts in a row mean something else is wrong. */
    bool unknown = j->register_unknown;
    prov_error_clear(&e);
    if (++j->restarts > MAX_RESTARTS) {
      finish_failed(j, text);
      return;
    }
    restart_run(j, unknown ? "RegisterThing outcome unknown (token already used); the "
                             "certificate may be active in the cloud: check and revoke it"
                           : "certificate ownership token refused by the cloud (expired or "
                             "invalid)");
    return;
  }
  prov_error_clear(&e);
  if (!retryable) {
    finish_failed(j, text);
    return;
  }
  j->attempts++;
  {
    uint32_t d = retry_delay(p, j->attempts);
    store_device_set_error(p->st, j->client_id, text, now_s() + d / 1000);
    j->not_before = uv_now(p->loop) + d;
    p->m->provision_retries++;
    LOGW(MOD, "%s: %s; retry in %u ms", j->client_id, text, d);
  }
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
  j->not_before = uv_now(p->loop) + retry_delay(p, ++j->attempts);
  p->m->provision_retries++;
  LOGW(MOD, "%s: no reply on claim connection %u (%s); retrying", j->client_id, c->index, why);
  if (c->busy_op != J_SEND_REGISTER)
    store_audit(p->st, now_s(), "gateway", "provision.reply_lost", j->client_id,
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
  /* A.1: subscribe to the replies before publishing any request. */
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
    kick(c->p);
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
  const char *want_acc, *want_rej;
  (void)retain;

  if (qos == 1)
    upstream_puback(c->u, pid);
  if (!j) {
    LOGW(MOD, "claim connection %u: unexpected message on %.*s", c->index, (int)tlen, topic);
    return;
  }
  if (p->crash_on_reply)
    crash_now(op == J_SEND_REGISTER ? "register_sent" : "csr_sent");
  want_acc = op == J_SEND_REGISTER ? p->t_reg_acc : (op == J_SEND_CSR ? p->t_csr_acc
                                                                     : p->t_create_acc);
  want_rej = op == J_SEND_REGISTER ? p->t_reg_rej : (op == J_SEND_CSR ? p->t_csr_rej
                                                                     : p->t_create_rej);
  if (tlen == strlen(want_acc) && memcmp(topic, want_acc, tlen) == 0) {
    acc = true;
  } else if (tlen == strlen(want_rej) && memcmp(topic, want_rej, tlen) == 0) {
    acc = false;
  } else {
    LOGW(MOD, "claim connection %u: reply on %.*s does not answer the request in flight",
         c->index, (int)tlen, topic);
    return;
  }
  c->busy = NULL;
  j->busy = false;
  if (!acc)
    on_rejected(j, op, (const char *)payload, len);
  else if (op == J_SEND_REGISTER)
    on_register_accepted(j, (const char *)payload, len);
  else
    on_cert_accepted(j, (const char *)payload, len);
  kick(p);
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
  if (p->stopping && p->pending_closes == 0 && p->work_running == 0 && p->stop_done)
    p->stop_done(p->stop_ud);
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

/* ---- scheduling --------------------------------------------------------- */

static void kick(struct provisioner *p)
{
  uint64_t now = uv_now(p->loop);
  struct job *j, *next;

  if (p->stopping)
    return;
  for (j = p->jobs; j; j = next) {
    next = j->next; /* a step may free j */
    if (j->busy || j->not_before > now)
      continue;
    if (j->run_id == 0) {
      begin_run(p, j);
      if (j->run_id == 0)
        continue;
    }
    switch (j->next_step) {
    case J_PREPARE:
      if (p->work_running >= MAX_WORK)
        break;
      j->busy = true;
      j->work.data = j;
      p->work_running++;
      if (uv_queue_work(p->loop, &j->work, prepare_work, prepare_done) != 0) {
        p->work_running--;
        j->busy = false;
        j->not_before = now + retry_delay(p, ++j->attempts);
      }
      break;
    case J_LOCAL_FINISH:
      local_finish(j);
      break;
    case J_COMPLETE: {
      struct store_run r;
      if (store_run_get(p->st, j->run_id, &r) != STORE_OK) {
        j->not_before = now + retry_delay(p, ++j->attempts);
        break;
      }
      if (r.step < RUN_REGISTERED) {
        int rc;
        if (!p->ca) {
          j->next_step = J_SEND_REGISTER;
          break;
        }
        /* local-ca: the certificate is journalled; register its thing name. */
        rc = store_run_registered(p->st, j->run_id, j->thing_name, now_s());
        if (rc == STORE_CONFLICT) {
          finish_failed(j, "thing name already belongs to another device");
          break;
        }
        if (rc != STORE_OK) {
          j->not_before = now + retry_delay(p, ++j->attempts);
          break;
        }
      }
      finish_ok(j);
      break;
    }
    case J_SEND_CSR:
    case J_SEND_CREATE:
    case J_SEND_REGISTER: {
      struct claim *c = idle_claim(p);
      if (!c || !take_token(p))
        break;
      send_request(j, c);
      break;
    }
    }
  }
}

static void tick_cb(uv_timer_t *t)
{
  struct provisioner *p = t->data;
  uint64_t now = uv_now(p->loop);
  for (unsigned i = 0; i < p->nclaims; i++) {
    struct claim *c = &p->claims[i];
    if (c->busy && now >= c->deadline)
      claim_lost_request(c, "timed out");
  }
  kick(p);
}

/* ---- resume ------------------------------------------------------------- */

static int resume_cb(void *ud, const struct store_run *r)
{
  struct provisioner *p = ud;
  struct job *j = job_new(p, r->client_id);
  if (!j)
    return 0;
  j->run_id = r->id;
  if (store_run_key(p->st, r->id, &j->key_pem) == STORE_OK)
    j->have_key = true;
  if (p->ca)
    cfg_thing_name(p->cfg, j->client_id, j->thing_name, sizeof j->thing_name);
  switch (r->step) {
  case RUN_STARTED:
  case RUN_KEY_READY:
  case RUN_CSR_SENT:
    if (r->step == RUN_CSR_SENT && !p->ca)
      store_audit(p->st, now_s(), "gateway", "provision.resumed", j->client_id,
                  "certificate request resent after a restart; a certificate issued for the "
                  "lost reply is deleted by AWS when its ownership token expires");
    j->next_step = (!p->ca && p->cfg->provisioning.aws.create_keys) ? J_SEND_CREATE : J_PREPARE;
    if (p->ca && j->key_pem)
      j->next_step = J_PREPARE;
    break;
  case RUN_CERT_RECEIVED:
    /* local-ca: the certificate is in the journal, only registering and
     * completing are left; aws: RegisterThing (token age checked when
     * sending). */
    j->next_step = p->ca ? J_COMPLETE : J_SEND_REGISTER;
    break;
  case RUN_REGISTER_SENT:
    j->next_step = J_SEND_REGISTER;
    j->register_unknown = true;
    break;
  case RUN_REGISTERED:
  default:
    j->next_step = J_COMPLETE;
    break;
  }
  store_device_set_state(p->st, j->client_id, DEV_PROVISIONING);
  LOGI(MOD, "%s: resuming provisioning run %lld at step %s", j->client_id, (long long)r->id,
       store_run_step_name(r->step));
  return 0;
}

/* ---- public ------------------------------------------------------------- */

int provision_new(uv_loop_t *loop, const struct gw_config *cfg, struct store *st,
                  struct tls_ctx *tls, struct metrics *m, provision_done_cb done, void *ud,
                  struct provisioner **out)
{
  struct provisioner *p = calloc(1, sizeof *p);
  const char *crash = getenv("FLEETGW_TEST_CRASH_AFTER");
  if (!p)
    return -1;
  p->loop = loop;
  p->cfg = cfg;
  p->st = st;
  p->tls = tls;
  p->m = m;
  p->done = done;
  p->ud = ud;
  if (crash) {
    if (strcmp(crash, "csr_sent") == 0)
      p->crash_at = CRASH_CSR_SENT;
    else if (strcmp(crash, "cert_received") == 0)
      p->crash_at = CRASH_CERT_RECEIVED;
    else if (strcmp(crash, "register_sent") == 0)
      p->crash_at = CRASH_REGISTER_SENT;
    else if (strcmp(crash, "registered") == 0)
      p->crash_at = CRASH_REGISTERED;
    if (p->crash_at != CRASH_NONE)
      LOGW(MOD, "test hook armed: FLEETGW_TEST_CRASH_AFTER=%s", crash);
  }
  *out = p;
  return 0;
}

static int start_claims(struct provisioner *p)
{
  const struct gw_config *cfg = p->cfg;
  const char *t = cfg->provisioning.aws.template_name;

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
  p->nclaims = cfg->provisioning.aws.pool_size;
  p->claims = calloc(p->nclaims, sizeof *p->claims);
  if (!p->claims)
    return -1;
  for (unsigned i = 0; i < p->nclaims; i++) {
    struct claim *c = &p->claims[i];
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
    /* At least one second between connects of one client id (A.9). */
    o.backoff_base_ms = cfg->upstream.backoff_base_ms < 1000 ? 1000 : cfg->upstream.backoff_base_ms;
    o.backoff_cap_ms = cfg->upstream.backoff_cap_ms < o.backoff_base_ms ? o.backoff_base_ms
                                                                        : cfg->upstream.backoff_cap_ms;
    o.max_queue = 16;
    o.max_packet = 64 * 1024;
    if (upstream_new(p->loop, &o, &claim_cbs, c, &c->u) != UPSTREAM_OK) {
      LOGE(MOD, "cannot create claim connection %u", i);
      return -1;
    }
    p->pending_closes++;
    upstream_start(c->u);
  }
  return 0;
}

int provision_start(struct provisioner *p)
{
  const struct gw_config *cfg = p->cfg;
  char err[512];
  int rc;

  if (cfg->provisioning.backend == BACKEND_NONE)
    return 0;
  if (cfg->provisioning.backend == BACKEND_LOCAL_CA) {
    if (ca_open(cfg->provisioning.local_ca.cert_file, cfg->provisioning.local_ca.key_file,
                cfg->provisioning.local_ca.create, "fleetgw local CA", &p->ca, err,
                sizeof err) != 0) {
      LOGE(MOD, "local CA: %s", err);
      return -1;
    }
    LOGI(MOD, "local CA ready (%s)", cfg->provisioning.local_ca.cert_file);
  } else if (start_claims(p) != 0) {
    return -1;
  }
  rc = store_run_list_open(p->st, resume_cb, p);
  if (rc != STORE_OK) {
    LOGE(MOD, "cannot read the provisioning journal: %s", store_errmsg(p->st));
    return -1;
  }
  uv_timer_init(p->loop, &p->tick);
  p->tick.data = p;
  uv_timer_start(&p->tick, tick_cb, TICK_MS, TICK_MS);
  p->tick_started = true;
  p->tokens = cfg->provisioning.rate_per_s;
  p->tokens_at = uv_now(p->loop);
  kick(p);
  return 0;
}

int provision_ensure(struct provisioner *p, const char *client_id,
                     struct provision_identity *out, char *reason, size_t cap)
{
  const struct gw_config *cfg = p->cfg;
  struct store_device d;
  struct store_cert c;
  struct job *j;
  char *key = NULL;
  char err[256];
  int rc;

  memset(out, 0, sizeof *out);
  reason[0] = '\0';
  if (cfg->provisioning.backend == BACKEND_NONE) {
    if (cfg_upstream_client_id(cfg, client_id, out->thing_name, sizeof out->thing_name) != 0) {
      snprintf(reason, cap, "upstream client id too long");
      return PROVISION_REFUSED;
    }
    return PROVISION_READY;
  }
  if (p->stopping) {
    snprintf(reason, cap, "gateway stopping");
    return PROVISION_PENDING;
  }
  rc = store_device_get(p->st, client_id, &d);
  if (rc != STORE_OK) {
    snprintf(reason, cap, "registry: %s", store_strerror(rc));
    return PROVISION_PENDING;
  }
  switch (d.state) {
  case DEV_ACTIVE:
    memset(&c, 0, sizeof c);
    rc = store_cert_get_active(p->st, client_id, true, &c);
    if (rc == STORE_OK)
      rc = store_cert_key(p->st, c.cert_id, &key);
    if (rc == STORE_OK) {
      out->tls = tls_identity_new(c.pem, key, err, sizeof err);
      snprintf(out->thing_name, sizeof out->thing_name, "%s", d.thing_name);
    }
    if (key)
      store_secret_free(key);
    store_cert_clear(&c);
    if (rc != STORE_OK || !out->tls) {
      snprintf(reason, cap, "cannot load the device's certificate: %s",
               rc != STORE_OK ? store_strerror(rc) : err);
      LOGE(MOD, "%s: %s", client_id, reason);
      return PROVISION_REFUSED;
    }
    return PROVISION_READY;
  case DEV_FAILED:
    snprintf(reason, cap, "provisioning failed: %s", d.last_error[0] ? d.last_error : "?");
    return PROVISION_REFUSED;
  case DEV_PENDING:
  case DEV_BLOCKED:
  case DEV_REVOKED:
    snprintf(reason, cap, "device is %s", store_dev_state_name(d.state));
    return PROVISION_REFUSED;
  default:
    break;
  }
  /* APPROVED or PROVISIONING: never a second run. */
  j = job_find(p, client_id);
  if (j) {
    snprintf(reason, cap, "provisioning in progress");
    return PROVISION_PENDING;
  }
  j = job_new(p, client_id);
  if (!j) {
    snprintf(reason, cap, "out of memory");
    return PROVISION_PENDING;
  }
  if (p->ca && cfg_thing_name(cfg, client_id, j->thing_name, sizeof j->thing_name) != 0) {
    finish_failed(j, "thing name too long");
    snprintf(reason, cap, "thing name too long");
    return PROVISION_REFUSED;
  }
  if (p->ca && !prov_thing_name_ok(j->thing_name)) {
    char why[300];
    snprintf(why, sizeof why, "thing name \"%s\" is not valid ([a-zA-Z0-9:_-], 1..128)",
             j->thing_name);
    begin_run(p, j);
    finish_failed(j, why);
    snprintf(reason, cap, "%s", why);
    return PROVISION_REFUSED;
  }
  if (d.state == DEV_PROVISIONING) {
    struct store_run r;
    if (store_run_get_open(p->st, client_id, &r) == STORE_OK) {
      job_free(j);
      resume_cb(p, &r);
      kick(p);
      snprintf(reason, cap, "provisioning in progress");
      return PROVISION_PENDING;
    }
  }
  begin_run(p, j);
  kick(p);
  snprintf(reason, cap, "provisioning started");
  return PROVISION_PENDING;
}

size_t provision_in_flight(const struct provisioner *p)
{
  return p->njobs;
}

static void tick_closed(uv_handle_t *h)
{
  struct provisioner *p = h->data;
  if (p->pending_closes > 0)
    p->pending_closes--;
  if (p->stopping && p->pending_closes == 0 && p->work_running == 0 && p->stop_done)
    p->stop_done(p->stop_ud);
}

void provision_stop(struct provisioner *p, void (*done)(void *), void *ud)
{
  struct job *j, *next;
  p->stopping = true;
  p->stop_done = done;
  p->stop_ud = ud;
  for (j = p->jobs; j; j = next) {
    next = j->next;
    if (j->busy && !j->dead && p->work_running > 0 && j->next_step == J_PREPARE)
      j->dead = true; /* freed by prepare_done */
    else
      job_free(j);
  }
  for (unsigned i = 0; i < p->nclaims; i++)
    if (p->claims[i].u)
      upstream_stop(p->claims[i].u, true);
  if (p->tick_started) {
    p->pending_closes++;
    uv_close((uv_handle_t *)&p->tick, tick_closed);
    p->tick_started = false;
  }
  if (p->pending_closes == 0 && p->work_running == 0 && done)
    done(ud);
}

void provision_free(struct provisioner *p)
{
  if (!p)
    return;
  while (p->jobs)
    job_free(p->jobs);
  if (p->ca)
    ca_close(p->ca);
  free(p->claims);
  free(p);
}
