/*
 * provision.c - the provisioning orchestrator: one job per device whose run
 * is open, driven by events (replies, finished off-loop work) and a 100 ms
 * tick (rate tokens, back-off deadlines, request time-outs).  Every step is
 * journalled in the registry before the action it announces; see
 * provision.h for the recovery rules.  The AWS exchange over the claim
 * connections is in provision_aws.c.
 */
#include "provision_int.h"

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
#include "secret.h"
#include "store.h"
#include "tls.h"

#define MOD "provision"
#define TICK_MS 100
#define MAX_WORK 4               /* off-loop jobs at once (libuv's pool has 4 threads) */
#define DUE_SCAN_TICKS 100       /* the due-rotation scan every 10 s */
#define DAY_S 86400
#define ROTATE_RETRY_S 3600      /* a due rotation that failed is tried again after this */

static void begin_run(struct provisioner *p, struct job *j);
static void finish_rotation(struct job *j, bool ok, const char *reason);

void pv_notify(struct provisioner *p, const char *client_id, const char *step)
{
  if (p->step_cb)
    p->step_cb(p->step_ud, client_id, step);
}

void provision_observe(struct provisioner *p, provision_step_cb cb, void *ud)
{
  p->step_cb = cb;
  p->step_ud = ud;
}

int64_t pv_now_s(void)
{
  return (int64_t)time(NULL);
}

void pv_crash_now(const struct provisioner *p, const char *where)
{
  LOGW(MOD, "test hook FLEETGW_TEST_CRASH_%s=%s: killing the process",
       p->crash_rotation ? "ROTATION" : "AFTER", where);
  raise(SIGKILL);
}

bool pv_crash_armed(const struct job *j, enum crash_point at)
{
  return j->p->crash_at == at && j->rotate == j->p->crash_rotation;
}

bool pv_take_token(struct provisioner *p)
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

void pv_stop_check(struct provisioner *p)
{
  if (p->stopping && p->pending_closes == 0 && p->work_running == 0 && p->stop_done)
    p->stop_done(p->stop_ud);
}

uint32_t pv_job_defer(struct job *j)
{
  uint32_t d = backoff_next(&j->retry);
  j->not_before = uv_now(j->p->loop) + d;
  return d;
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
  uint64_t seed;
  if (!j)
    return NULL;
  j->p = p;
  snprintf(j->client_id, sizeof j->client_id, "%s", client_id);
  /* Different devices, different jitter: devices rejected together do not
   * retry together.  Mix the clock, the address and the ClientId. */
  seed = uv_hrtime() ^ ((uint64_t)(uintptr_t)j << 16);
  for (const char *c = client_id; *c; c++)
    seed = seed * 131 + (unsigned char)*c;
  backoff_init(&j->retry, p->cfg->provisioning.retry_base_ms, p->cfg->provisioning.retry_cap_ms,
               seed);
  j->next = p->jobs;
  p->jobs = j;
  p->njobs++;
  return j;
}

static void job_clear_secrets(struct job *j)
{
  secret_free(j->key_pem);
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
  if (j->rotate && p->nrotating > 0)
    p->nrotating--;
  pv_claims_forget(p, j);
  job_clear_secrets(j);
  free(j);
}

/* Frees the job and tells the owner how its run ended. */
static void job_done(struct job *j, bool ok)
{
  struct provisioner *p = j->p;
  char client[256];
  snprintf(client, sizeof client, "%s", j->client_id);
  job_free(j);
  p->done(p->ud, client, ok);
}

void pv_finish_ok(struct job *j)
{
  struct provisioner *p = j->p;
  int rc;
  if (j->rotate) {
    finish_rotation(j, true, NULL);
    return;
  }
  rc = store_run_complete(p->st, j->run_id, pv_now_s());
  if (rc != STORE_OK) {
    /* The schema refused a second active certificate: the invariant held.
     * Nothing to activate; the run fails and its certificate is orphaned. */
    LOGE(MOD, "%s: cannot complete run %lld: %s (%s)", j->client_id, (long long)j->run_id,
         store_strerror(rc), store_errmsg(p->st));
    store_run_fail(p->st, j->run_id, "completion refused by the registry", pv_now_s());
    store_device_set_state(p->st, j->client_id, DEV_FAILED);
    store_audit(p->st, pv_now_s(), "gateway", "provision.failed", j->client_id,
                "completion refused by the registry");
    p->m->provision_failed++;
    job_done(j, false);
    return;
  }
  p->m->provision_done++;
  pv_notify(p, j->client_id, "done");
  LOGI(MOD, "%s: provisioned (run %lld)", j->client_id, (long long)j->run_id);
  store_audit(p->st, pv_now_s(), "gateway", "provision.done", j->client_id, NULL);
  job_done(j, true);
}

void pv_finish_failed(struct job *j, const char *reason)
{
  struct provisioner *p = j->p;
  if (j->rotate) {
    finish_rotation(j, false, reason);
    return;
  }
  store_run_fail(p->st, j->run_id, reason, pv_now_s());
  store_device_set_error(p->st, j->client_id, reason, 0);
  store_device_set_state(p->st, j->client_id, DEV_FAILED);
  store_audit(p->st, pv_now_s(), "gateway", "provision.failed", j->client_id, reason);
  p->m->provision_failed++;
  pv_notify(p, j->client_id, "failed");
  LOGW(MOD, "%s: provisioning failed: %s", j->client_id, reason);
  job_done(j, false);
}

/* The certificate is marked orphaned for cleanup (token expired or used). */
void pv_restart_run(struct job *j, const char *reason)
{
  struct provisioner *p = j->p;
  struct store_run r;
  char detail[512];

  if (store_run_get(p->st, j->run_id, &r) == STORE_OK) {
    secret_wipe(r.token, sizeof r.token); /* only the certificate id is wanted */
    if (r.cert_id[0]) {
      snprintf(detail, sizeof detail, "certificate %s orphaned: %s", r.cert_id, reason);
      store_audit(p->st, pv_now_s(), "gateway", "cert.orphaned", j->client_id, detail);
      p->m->certs_orphaned++;
      pv_notify(p, j->client_id, "orphaned");
      LOGW(MOD, "%s: %s", j->client_id, detail);
    }
  }
  store_run_fail(p->st, j->run_id, reason, pv_now_s());
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
  int rc;
  if (j->rotate) {
    /* A rotation that must start over (an expired or refused token): a
     * new rotation run, for the same device, of the same kind. */
    rc = store_run_begin_rotation(p->st, j->client_id, backend, pv_now_s(), &run_id);
    if (rc != STORE_OK) {
      finish_rotation(j, false, "cannot open a new rotation run");
      return;
    }
    j->run_id = run_id;
    j->link = LINK_NONE;
    j->next_step = (!p->ca && p->cfg->provisioning.aws.create_keys) ? J_SEND_CREATE : J_PREPARE;
    j->not_before = 0;
    return;
  }
  rc = store_run_begin(p->st, j->client_id, backend, pv_now_s(), &run_id);
  if (rc != STORE_OK) {
    LOGE(MOD, "%s: cannot open a provisioning run: %s (%s)", j->client_id, store_strerror(rc),
         store_errmsg(p->st));
    j->next_step = J_PREPARE;
    j->run_id = 0;
    pv_job_defer(j);
    return;
  }
  j->run_id = run_id;
  store_device_set_state(p->st, j->client_id, DEV_PROVISIONING);
  store_audit(p->st, pv_now_s(), "gateway", "provision.started", j->client_id, backend);
  p->m->provision_started++;
  pv_notify(p, j->client_id, "started");
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
    pv_stop_check(p);
    return;
  }
  if (status != 0 || j->work_rc != 0) {
    LOGE(MOD, "%s: key or certificate generation failed: %s", j->client_id,
         status ? uv_strerror(status) : j->work_err);
    pv_job_defer(j);
    pv_kick(p);
    return;
  }
  if (!j->have_key) {
    int rc = store_run_set_key(p->st, j->run_id, j->key_pem, pv_now_s());
    if (rc != STORE_OK) {
      LOGE(MOD, "%s: cannot journal the key: %s", j->client_id, store_errmsg(p->st));
      job_clear_secrets(j);
      pv_job_defer(j);
      pv_kick(p);
      return;
    }
    j->have_key = true;
    if (pv_crash_armed(j, CRASH_KEY_READY))
      pv_crash_now(p, "key_ready");
  }
  j->next_step = p->ca ? J_LOCAL_FINISH : J_SEND_CSR;
  pv_kick(p);
}

static void queue_prepare(struct provisioner *p, struct job *j)
{
  if (p->work_running >= MAX_WORK)
    return;
  j->busy = true;
  j->work.data = j;
  p->work_running++;
  if (uv_queue_work(p->loop, &j->work, prepare_work, prepare_done) != 0) {
    p->work_running--;
    j->busy = false;
    pv_job_defer(j);
  }
}

/* local-ca: records the thing name and completes; the certificate is
 * journalled. */
static void local_register(struct job *j)
{
  struct provisioner *p = j->p;
  int rc = store_run_registered(p->st, j->run_id, j->thing_name, pv_now_s());
  if (rc == STORE_CONFLICT) {
    char why[256];
    snprintf(why, sizeof why, "thing name %s already belongs to another device", j->thing_name);
    pv_finish_failed(j, why);
    return;
  }
  if (rc != STORE_OK) {
    pv_job_defer(j);
    return;
  }
  if (pv_crash_armed(j, CRASH_REGISTERED))
    pv_crash_now(p, "registered");
  pv_finish_ok(j);
}

/* local-ca: record the signed certificate, the thing name, and complete. */
static void local_finish(struct job *j)
{
  struct provisioner *p = j->p;
  int64_t not_after = 0;
  char fp[65], cn[129], err[256];
  int rc;

  if (ca_cert_info(j->cert_pem, &not_after, fp, cn, sizeof cn, err, sizeof err) != 0) {
    pv_finish_failed(j, "the local CA issued an unreadable certificate");
    return;
  }
  rc = store_run_cert_received(p->st, j->run_id, fp, j->cert_pem, NULL, not_after, fp, "",
                               pv_now_s());
  if (rc != STORE_OK) {
    LOGE(MOD, "%s: cannot journal the certificate: %s", j->client_id, store_errmsg(p->st));
    pv_job_defer(j);
    return;
  }
  p->m->certs_issued++;
  pv_notify(p, j->client_id, "cert_issued");
  store_audit(p->st, pv_now_s(), "gateway", "cert.issued", j->client_id, fp);
  if (pv_crash_armed(j, CRASH_CERT_RECEIVED))
    pv_crash_now(p, "cert_received");
  local_register(j);
}

/* ---- scheduling --------------------------------------------------------- */

/* J_COMPLETE: the run is registered (or, local-ca, its certificate is
 * journalled and only the thing name is left). */
static void complete_step(struct provisioner *p, struct job *j)
{
  struct store_run r;
  if (store_run_get(p->st, j->run_id, &r) != STORE_OK) {
    pv_job_defer(j);
    return;
  }
  secret_wipe(r.token, sizeof r.token); /* only the step is wanted */
  if (r.step >= RUN_REGISTERED) {
    pv_finish_ok(j);
    return;
  }
  if (!p->ca) {
    j->next_step = J_SEND_REGISTER;
    return;
  }
  local_register(j);
}

static void run_step(struct provisioner *p, struct job *j)
{
  switch (j->next_step) {
  case J_PREPARE:
    /* A local-ca rotation is one request's worth of the rate (an aws one
     * pays at each request it sends). */
    if (j->rotate && p->ca && !j->have_key && !pv_take_token(p))
      break;
    queue_prepare(p, j);
    break;
  case J_LOCAL_FINISH:
    local_finish(j);
    break;
  case J_COMPLETE:
    complete_step(p, j);
    break;
  case J_SEND_CSR:
  case J_SEND_CREATE:
  case J_SEND_REGISTER:
    if (j->rotate)
      pv_link_send(p, j);
    else
      pv_claims_send(p, j);
    break;
  }
}

void pv_kick(struct provisioner *p)
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
    run_step(p, j);
  }
}

static void scan_due(struct provisioner *p);

static void tick_cb(uv_timer_t *t)
{
  struct provisioner *p = t->data;
  pv_claims_tick(p);
  pv_link_tick(p);
  if (++p->due_ticks >= DUE_SCAN_TICKS) {
    p->due_ticks = 0;
    scan_due(p);
  }
  pv_kick(p);
}

/* ---- resume ------------------------------------------------------------- */

/* The step a resumed run goes on with (docs/architecture.md §4.2). */
static enum job_next resume_step(struct provisioner *p, struct job *j, const struct store_run *r)
{
  switch (r->step) {
  case RUN_STARTED:
  case RUN_KEY_READY:
  case RUN_CSR_SENT:
    if (r->step == RUN_CSR_SENT && !p->ca)
      store_audit(p->st, pv_now_s(), "gateway", "provision.resumed", j->client_id,
                  "certificate request resent after a restart; a certificate issued for the "
                  "lost reply is deleted by AWS when its ownership token expires");
    if (p->ca && j->key_pem)
      return J_PREPARE;
    return (!p->ca && p->cfg->provisioning.aws.create_keys) ? J_SEND_CREATE : J_PREPARE;
  case RUN_CERT_RECEIVED:
    /* local-ca: the certificate is in the journal, only registering and
     * completing are left; aws: RegisterThing (token age checked when
     * sending). */
    return p->ca ? J_COMPLETE : J_SEND_REGISTER;
  case RUN_REGISTER_SENT:
    j->register_unknown = true;
    return J_SEND_REGISTER;
  case RUN_REGISTERED:
  default:
    return J_COMPLETE;
  }
}

static int resume_cb(void *ud, const struct store_run *r)
{
  struct provisioner *p = ud;
  struct job *j = job_new(p, r->client_id);
  if (!j)
    return 0;
  j->run_id = r->id;
  if (store_run_key(p->st, r->id, &j->key_pem) == STORE_OK)
    j->have_key = true;
  if (r->kind == RUN_ROTATE) {
    /* The device stays ACTIVE on its old certificate meanwhile. */
    struct store_device d;
    j->rotate = true;
    p->nrotating++;
    if (store_device_get(p->st, j->client_id, &d) == STORE_OK)
      snprintf(j->thing_name, sizeof j->thing_name, "%s", d.thing_name);
    j->next_step = resume_step(p, j, r);
    LOGI(MOD, "%s: resuming rotation run %lld at step %s", j->client_id, (long long)r->id,
         store_run_step_name(r->step));
    return 0;
  }
  if (p->ca)
    cfg_thing_name(p->cfg, j->client_id, j->thing_name, sizeof j->thing_name);
  j->next_step = resume_step(p, j, r);
  store_device_set_state(p->st, j->client_id, DEV_PROVISIONING);
  LOGI(MOD, "%s: resuming provisioning run %lld at step %s", j->client_id, (long long)r->id,
       store_run_step_name(r->step));
  return 0;
}


/* ---- rotation ----------------------------------------------------------- */

/* A rotation run ended.  ok: the registry made the new certificate active
 * (or refused to: then it failed after all).  The device keeps its state
 * either way; a failure leaves the old certificate active. */
static void finish_rotation(struct job *j, bool ok, const char *reason)
{
  struct provisioner *p = j->p;
  struct store_run r;
  char detail[512], client[256];
  int rc;

  memset(&r, 0, sizeof r);
  if (ok && (rc = store_run_complete(p->st, j->run_id, pv_now_s())) != STORE_OK) {
    ok = false;
    reason = rc == STORE_CONFLICT ? "the device is no longer active" : "registry error";
    LOGE(MOD, "%s: cannot complete rotation run %lld: %s", j->client_id, (long long)j->run_id,
         store_errmsg(p->st));
  }
  if (store_run_get(p->st, j->run_id, &r) == STORE_OK)
    secret_wipe(r.token, sizeof r.token); /* only the certificate ids are wanted */
  if (!ok) {
    store_run_fail(p->st, j->run_id, reason, pv_now_s());
    if (r.cert_id[0]) {
      /* Issued (and, with aws, maybe active in the cloud) but never used. */
      snprintf(detail, sizeof detail, "certificate %s orphaned: %s", r.cert_id, reason);
      store_audit(p->st, pv_now_s(), "gateway", "cert.orphaned", j->client_id, detail);
      p->m->certs_orphaned++;
    }
    snprintf(detail, sizeof detail, "%s; certificate %s stays active", reason,
             r.old_cert_id[0] ? r.old_cert_id : "?");
    store_device_set_error(p->st, j->client_id, detail, 0);
    store_audit(p->st, pv_now_s(), "gateway", "rotate.failed", j->client_id, detail);
    p->m->rotations_failed++;
    pv_notify(p, j->client_id, "rotate_failed");
    LOGW(MOD, "%s: certificate rotation failed: %s", j->client_id, detail);
    job_free(j);
    if (p->due_more)
      p->due_ticks = DUE_SCAN_TICKS - 1;
    return;
  }
  snprintf(detail, sizeof detail, "certificate %s superseded by %s: deactivate it in the cloud",
           r.old_cert_id, r.cert_id);
  store_audit(p->st, pv_now_s(), "gateway", "cert.rotated", j->client_id, detail);
  p->m->rotations_done++;
  pv_notify(p, j->client_id, "rotated");
  LOGI(MOD, "%s: %s", j->client_id, detail);
  if (pv_crash_armed(j, CRASH_DONE))
    pv_crash_now(p, "done");
  snprintf(client, sizeof client, "%s", j->client_id);
  job_free(j);
  if (p->due_more)
    p->due_ticks = DUE_SCAN_TICKS - 1; /* more were due: the next tick looks */
  /* The registry says the new one; the device's upstream follows. */
  if (p->link && p->link->rotated)
    p->link->rotated(p->link_ud, client);
}

/* Opens a rotation run and its job; PROVISION_ROTATE_*. */
static int start_rotation(struct provisioner *p, const char *client_id, const char *actor,
                          const char *why, char *reason, size_t cap)
{
  const char *backend = p->ca ? "local-ca" : "aws";
  struct store_device d;
  struct job *j;
  int64_t run_id;
  char detail[320];
  int rc;

  if (p->cfg->provisioning.backend == BACKEND_NONE) {
    snprintf(reason, cap, "provisioning.backend is none: the gateway issues no certificates");
    return PROVISION_ROTATE_CONFLICT;
  }
  if (!p->ca && !p->t_rot[0]) {
    snprintf(reason, cap, "provisioning.aws.rotation_template is not set");
    return PROVISION_ROTATE_CONFLICT;
  }
  if (p->stopping) {
    snprintf(reason, cap, "gateway stopping");
    return PROVISION_ROTATE_ERROR;
  }
  if (job_find(p, client_id)) {
    snprintf(reason, cap, "a provisioning or rotation run is in progress");
    return PROVISION_ROTATE_CONFLICT;
  }
  if (p->nrotating >= p->cfg->provisioning.rotate_max_running) {
    snprintf(reason, cap, "%zu rotations are running (provisioning.rotate_max_running)",
             p->nrotating);
    return PROVISION_ROTATE_CONFLICT;
  }
  rc = store_run_begin_rotation(p->st, client_id, backend, pv_now_s(), &run_id);
  if (rc != STORE_OK) {
    snprintf(reason, cap, "%s", store_errmsg(p->st));
    return rc == STORE_NOTFOUND ? PROVISION_ROTATE_NOTFOUND
           : rc == STORE_CONFLICT ? PROVISION_ROTATE_CONFLICT
                                  : PROVISION_ROTATE_ERROR;
  }
  j = job_new(p, client_id);
  if (!j) {
    store_run_fail(p->st, run_id, "out of memory", pv_now_s());
    snprintf(reason, cap, "out of memory");
    return PROVISION_ROTATE_ERROR;
  }
  j->rotate = true;
  p->nrotating++;
  j->run_id = run_id;
  if (store_device_get(p->st, client_id, &d) == STORE_OK)
    snprintf(j->thing_name, sizeof j->thing_name, "%s", d.thing_name);
  j->next_step = (!p->ca && p->cfg->provisioning.aws.create_keys) ? J_SEND_CREATE : J_PREPARE;
  snprintf(detail, sizeof detail, "%s (%s)", why, backend);
  store_audit(p->st, pv_now_s(), actor, "rotate.started", client_id, detail);
  p->m->rotations_started++;
  pv_notify(p, client_id, "rotate_started");
  LOGI(MOD, "%s: certificate rotation started: %s", client_id, why);
  pv_kick(p);
  return PROVISION_ROTATE_OK;
}

int provision_rotate(struct provisioner *p, const char *client_id, const char *actor,
                     char *reason, size_t cap)
{
  reason[0] = '\0';
  return start_rotation(p, client_id, actor, "asked for", reason, cap);
}

struct due_scan {
  struct provisioner *p;
  int64_t now;
};

/* One active certificate within rotate_before_days: rotated, unless it is
 * being handled, failed lately, or (aws) expired: an expired certificate
 * cannot open the connection an aws rotation goes over. */
static int due_one(void *ud, const struct store_cert *c)
{
  struct due_scan *ds = ud;
  struct provisioner *p = ds->p;
  struct store_run last;
  char why[96], reason[256];

  if (p->nrotating >= p->cfg->provisioning.rotate_max_running || p->stopping) {
    p->due_more = true; /* scanned again as soon as one finishes */
    return 1;
  }
  if (job_find(p, c->client_id))
    return 0;
  if (!p->ca && c->not_after <= ds->now)
    return 0;
  if (store_run_last_rotation(p->st, c->client_id, &last) == STORE_OK) {
    secret_wipe(last.token, sizeof last.token);
    if (last.step == RUN_FAILED && ds->now - last.updated_at < ROTATE_RETRY_S)
      return 0;
    /* A CA that issues certificates shorter than the window (an aws one we
     * cannot configure) would have the gateway rotate in a loop: not again
     * within half the window of the last rotation. */
    if (last.step == RUN_DONE &&
        ds->now - last.updated_at < (int64_t)p->cfg->provisioning.rotate_before_days * DAY_S / 2) {
      if (!p->warned_short) {
        p->warned_short = true;
        LOGW(MOD, "%s: its new certificate is due for rotation already (not-after in %lld "
                  "days): the CA issues certificates shorter than provisioning.rotate_before_days",
             c->client_id, (long long)((c->not_after - ds->now) / DAY_S));
      }
      return 0;
    }
  }
  snprintf(why, sizeof why, "due: not-after in %lld days (provisioning.rotate_before_days)",
           (long long)((c->not_after - ds->now) / DAY_S));
  start_rotation(p, c->client_id, "gateway", why, reason, sizeof reason);
  return 0;
}

static void scan_due(struct provisioner *p)
{
  struct due_scan ds = {.p = p, .now = pv_now_s()};
  uint32_t days = p->cfg->provisioning.rotate_before_days;
  p->due_more = false;
  if (days == 0 || p->stopping || (!p->ca && !p->t_rot[0]))
    return;
  if (p->nrotating >= p->cfg->provisioning.rotate_max_running) {
    p->due_more = true;
    return;
  }
  if (store_cert_expiring(p->st, ds.now + (int64_t)days * DAY_S, 0, 0, due_one, &ds) < 0)
    LOGW(MOD, "cannot list the certificates due for rotation: %s", store_errmsg(p->st));
}

void provision_set_link(struct provisioner *p, const struct provision_link_ops *ops, void *ud)
{
  p->link = ops;
  p->link_ud = ud;
}

/* ---- public ------------------------------------------------------------- */

static enum crash_point crash_point_named(const char *name)
{
  if (strcmp(name, "csr_sent") == 0)
    return CRASH_CSR_SENT;
  if (strcmp(name, "cert_received") == 0)
    return CRASH_CERT_RECEIVED;
  if (strcmp(name, "register_sent") == 0)
    return CRASH_REGISTER_SENT;
  if (strcmp(name, "registered") == 0)
    return CRASH_REGISTERED;
  if (strcmp(name, "key_ready") == 0)
    return CRASH_KEY_READY;
  if (strcmp(name, "done") == 0)
    return CRASH_DONE;
  return CRASH_NONE;
}

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
  if (!crash && (crash = getenv("FLEETGW_TEST_CRASH_ROTATION")) != NULL)
    p->crash_rotation = true;
  if (crash) {
    p->crash_at = crash_point_named(crash);
    if (p->crash_at != CRASH_NONE)
      LOGW(MOD, "test hook armed: FLEETGW_TEST_CRASH_%s=%s",
           p->crash_rotation ? "ROTATION" : "AFTER", crash);
  }
  *out = p;
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
    {
      char fp[65], cn[256];
      if (ca_cert_info(ca_cert_pem(p->ca), &p->ca_not_after, fp, cn, sizeof cn, err,
                       sizeof err) != 0) {
        LOGW(MOD, "local CA: its expiry is unknown: %s", err);
        p->ca_not_after = 0;
      }
    }
    LOGI(MOD, "local CA ready (%s)", cfg->provisioning.local_ca.cert_file);
  } else if (pv_claims_start(p) != 0) {
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
  p->due_ticks = DUE_SCAN_TICKS - 10; /* the first due-rotation scan a second after start */
  pv_kick(p);
  return 0;
}

/* An active device: its thing name and TLS identity from the registry. */
static int ensure_active(struct provisioner *p, const struct store_device *d,
                         struct provision_identity *out, char *reason, size_t cap)
{
  struct store_cert c;
  char *key = NULL;
  char err[256];
  int rc;

  memset(&c, 0, sizeof c);
  rc = store_cert_get_active(p->st, d->client_id, true, &c);
  if (rc == STORE_OK)
    rc = store_cert_key(p->st, c.cert_id, &key);
  if (rc == STORE_OK) {
    out->tls = tls_identity_new(c.pem, key, err, sizeof err);
    snprintf(out->thing_name, sizeof out->thing_name, "%s", d->thing_name);
  }
  if (key)
    store_secret_free(key);
  store_cert_clear(&c);
  if (rc != STORE_OK || !out->tls) {
    snprintf(reason, cap, "cannot load the device's certificate: %s",
             rc != STORE_OK ? store_strerror(rc) : err);
    LOGE(MOD, "%s: %s", d->client_id, reason);
    return PROVISION_REFUSED;
  }
  return PROVISION_READY;
}

/* An approved or provisioning device without a job: resumes its journalled
 * run, or opens one.  Never a second run. */
static int ensure_run(struct provisioner *p, const struct store_device *d, char *reason,
                      size_t cap)
{
  struct job *j = job_new(p, d->client_id);
  if (!j) {
    snprintf(reason, cap, "out of memory");
    return PROVISION_PENDING;
  }
  if (p->ca && cfg_thing_name(p->cfg, d->client_id, j->thing_name, sizeof j->thing_name) != 0) {
    pv_finish_failed(j, "thing name too long");
    snprintf(reason, cap, "thing name too long");
    return PROVISION_REFUSED;
  }
  if (p->ca && !prov_thing_name_ok(j->thing_name)) {
    char why[300];
    snprintf(why, sizeof why, "thing name \"%s\" is not valid ([a-zA-Z0-9:_-], 1..128)",
             j->thing_name);
    begin_run(p, j);
    pv_finish_failed(j, why);
    snprintf(reason, cap, "%s", why);
    return PROVISION_REFUSED;
  }
  if (d->state == DEV_PROVISIONING) {
    struct store_run r;
    if (store_run_get_open(p->st, d->client_id, &r) == STORE_OK) {
      job_free(j);
      resume_cb(p, &r);
      secret_wipe(r.token, sizeof r.token); /* RegisterThing reads it again */
      pv_kick(p);
      snprintf(reason, cap, "provisioning in progress");
      return PROVISION_PENDING;
    }
  }
  begin_run(p, j);
  pv_kick(p);
  snprintf(reason, cap, "provisioning started");
  return PROVISION_PENDING;
}

int provision_ensure(struct provisioner *p, const char *client_id,
                     struct provision_identity *out, char *reason, size_t cap)
{
  const struct gw_config *cfg = p->cfg;
  struct store_device d;
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
    return ensure_active(p, &d, out, reason, cap);
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
  /* APPROVED or PROVISIONING: never a second run.  A rotation still
   * waiting for this device (an operator reprovisioned it meanwhile) gives
   * way. */
  {
    struct job *j = job_find(p, client_id);
    if (j && j->rotate && !j->busy)
      finish_rotation(j, false, "the device is being provisioned again");
  }
  if (job_find(p, client_id)) {
    snprintf(reason, cap, "provisioning in progress");
    return PROVISION_PENDING;
  }
  return ensure_run(p, &d, reason, cap);
}

int64_t provision_ca_not_after(const struct provisioner *p)
{
  return p->ca_not_after;
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
  pv_stop_check(p);
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
  pv_claims_stop(p);
  if (p->tick_started) {
    p->pending_closes++;
    uv_close((uv_handle_t *)&p->tick, tick_closed);
    p->tick_started = false;
  }
  pv_stop_check(p);
}

void provision_free(struct provisioner *p)
{
  if (!p)
    return;
  while (p->jobs)
    job_free(p->jobs);
  if (p->ca)
    ca_close(p->ca);
  pv_claims_free(p);
  free(p);
}
