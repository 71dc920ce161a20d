/*
 * provision_int.h - what the files of gateway/provision/ share, and nothing
 * outside it includes (docs/architecture.md §1):
 *   provision.c      the journal driver: jobs, their steps, the scheduler
 *                    (kick, the 100 ms tick), resuming the journal, the
 *                    public API of provision.h;
 *   provision_aws.c  the AWS fleet-provisioning exchange over the pool of
 *                    claim connections (docs/architecture.md §5), and a
 *                    rotation's over the device's own upstream
 *                    (docs/rotation.md §3).
 * Internal names start with pv_.
 */
#ifndef FLEETGW_PROVISION_INT_H
#define FLEETGW_PROVISION_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "backoff.h"
#include "provision.h"

enum job_next {
  J_PREPARE,        /* off the loop: key pair (unless stored) and CSR; local-ca: also sign */
  J_SEND_CSR,       /* aws: CreateCertificateFromCsr */
  J_SEND_CREATE,    /* aws: CreateKeysAndCertificate */
  J_SEND_REGISTER,  /* aws: RegisterThing */
  J_LOCAL_FINISH,   /* local-ca: record the signed certificate, register, complete */
  J_COMPLETE,       /* RegisterThing accepted: complete the run */
};

enum crash_point { CRASH_NONE, CRASH_CSR_SENT, CRASH_CERT_RECEIVED, CRASH_REGISTER_SENT,
                   CRASH_REGISTERED, CRASH_KEY_READY, CRASH_DONE };

/* A rotation's hold on the device's own upstream (aws). */
enum link_state { LINK_NONE, LINK_SUBSCRIBING, LINK_READY };

/* One device whose run is open (or about to be opened). */
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
  bool rotate;               /* a rotation run (RUN_ROTATE), not a first provisioning */
  enum link_state link;      /* rotation over aws: the device upstream's subscriptions */
  enum job_next link_op;     /* rotation over aws: the request in flight (busy) */
  uint64_t deadline;         /* rotation over aws: loop ms its reply is due */
  uint64_t not_before;       /* loop ms */
  struct backoff retry;      /* provisioning.retry_base_ms .. retry_cap_ms */
  uint32_t restarts;         /* runs restarted for this device in a row */
  char *key_pem;             /* secret: freed with secret_free */
  char *csr_pem;
  char *cert_pem;            /* local-ca: the signed certificate */
  char work_err[256];
  int work_rc;
  uv_work_t work;
};

/* One claim connection of the AWS pool. */
struct claim {
  struct provisioner *p;
  unsigned index;
  struct upstream *u;
  unsigned subs_pending;
  bool ready;                /* up and subscribed to every reply topic */
  struct job *busy;          /* the one request in flight (no request ids:
                                docs/protocol-notes.md §5.6) */
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
  int64_t ca_not_after;         /* the CA certificate's, read at provision_start */
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
  char t_rot[160], t_rot_acc[176], t_rot_rej[176]; /* the rotation template's, or "" */

  const struct provision_link_ops *link;  /* the device upstreams (the relay) */
  void *link_ud;
  size_t nrotating;          /* jobs with rotate */
  unsigned due_ticks;        /* ticks since the last due-rotation scan */
  bool due_more;             /* the last scan stopped at rotate_max_running */
  bool warned_short;         /* said once that new certificates are due at once */

  enum crash_point crash_at;
  bool crash_rotation;       /* crash_at applies to rotation runs (FLEETGW_TEST_CRASH_ROTATION) */
  bool crash_on_reply;

  provision_step_cb step_cb;
  void *step_ud;

  bool stopping;
  unsigned pending_closes;
  void (*stop_done)(void *);
  void *stop_ud;
};

/* ---- the driver (provision.c) ---- */

int64_t pv_now_s(void);
/* The test hook FLEETGW_TEST_CRASH_AFTER (provision.h): SIGKILL now. */
void pv_crash_now(const struct provisioner *p, const char *where);
/* Tells the observer (provision_observe) about a step. */
void pv_notify(struct provisioner *p, const char *client_id, const char *step);
/* Runs every job that can go on now. */
void pv_kick(struct provisioner *p);
/* Calls stop_done once a stop has nothing left to close or wait for. */
void pv_stop_check(struct provisioner *p);
/* Schedules the job's next try after a back-off; returns the delay (ms). */
uint32_t pv_job_defer(struct job *j);
/* The run ended with the device's certificate active (frees j). */
void pv_finish_ok(struct job *j);
/* The run ended without a certificate; the device waits for an operator
 * (frees j). */
void pv_finish_failed(struct job *j, const char *reason);
/* The run cannot go on with its certificate: it is orphaned, and a new run
 * starts for the device. */
void pv_restart_run(struct job *j, const char *reason);
/* True when the crash test hook is armed for this point and this kind of
 * run (provision.h). */
bool pv_crash_armed(const struct job *j, enum crash_point at);
/* Takes a provisioning.rate_per_s token; false when none is left now. */
bool pv_take_token(struct provisioner *p);

/* ---- the AWS claim pool (provision_aws.c) ---- */

/* Builds the topics and starts the claim connections; -1 (logged) on error. */
int pv_claims_start(struct provisioner *p);
/* Sends the job's request (J_SEND_*) when a claim connection is idle and
 * the rate allows; otherwise the job waits for the next kick. */
void pv_claims_send(struct provisioner *p, struct job *j);
/* Times out requests whose reply is overdue. */
void pv_claims_tick(struct provisioner *p);
/* Forgets a job that is being freed. */
void pv_claims_forget(struct provisioner *p, const struct job *j);
/* Stops every claim connection gracefully (each close is counted in
 * pending_closes). */
void pv_claims_stop(struct provisioner *p);
void pv_claims_free(struct provisioner *p);

/* ---- rotation over the device's own upstream (provision_aws.c) ---- */

/* Sends the rotation job's request (J_SEND_*) over the device's upstream:
 * subscribes first, then publishes within the rate; otherwise waits. */
void pv_link_send(struct provisioner *p, struct job *j);
/* Times out the rotation requests whose reply is overdue. */
void pv_link_tick(struct provisioner *p);

#endif
