/*
 * provision.h - provisioning exactly once, on the leaves' behalf.
 *
 * For an admitted leaf, provision_ensure() answers at once:
 *   READY    the leaf has its active certificate: here is its identity
 *            (thing name + TLS client identity) for its upstream session;
 *   PENDING  a run is in flight or scheduled; done_cb(client_id) follows;
 *   REFUSED  provisioning failed permanently (the reason is recorded on the
 *            device and in the audit; an operator must act).
 * It never starts a second run for a device: runs are journalled in the
 * registry before each step, and the schema allows one open run per device.
 *
 * Backends (provisioning.backend):
 *   none      identities come from the configuration (upstream.cert_file or
 *             cert_dir); nothing is issued.
 *   local-ca  the gateway's own CA signs a CSR for a key generated here.
 *   aws       AWS IoT Fleet Provisioning by claim, over a pool of claim
 *             connections, one request in flight per connection (responses
 *             carry no request id), rate-limited.
 *
 * The journal (a run's steps, written before each action):
 *   STARTED -> KEY_READY -> CSR_SENT -> CERT_RECEIVED -> REGISTER_SENT ->
 *   REGISTERED -> DONE, or FAILED.
 * On start-up every open run resumes from its last step:
 *   KEY_READY / CSR_SENT     send the CSR again (a certificate issued for a
 *                            lost reply is deleted by AWS when its ownership
 *                            token expires, docs/protocol-notes.md
 *                            §5.5; audited);
 *   CERT_RECEIVED            RegisterThing with the stored token while it is
 *                            valid; past that the certificate is marked
 *                            orphaned and a new run starts;
 *   REGISTER_SENT            RegisterThing again; if the token was already
 *                            used the first call may have succeeded, so the
 *                            certificate is marked orphaned (listed for
 *                            cleanup in the cloud) and a new run starts;
 *   REGISTERED               complete the run.
 *
 * Rotation (docs/rotation.md): provision_rotate() gives an ACTIVE device a
 * new certificate for the same thing, journalled the same way in a run of
 * kind RUN_ROTATE, so that a crash at any step resumes it and the schema
 * holds the device to one active and one next certificate.  local-ca signs
 * a CSR for a new key; aws sends CreateCertificateFromCsr (or
 * CreateKeysAndCertificate) and RegisterThing with
 * provisioning.aws.rotation_template over the device's OWN upstream (the
 * relay carries them: provision_set_link).  Completing supersedes the old
 * certificate (listed for deactivation in the cloud) and activates the new
 * one in one transaction; then the link's rotated() switches the upstream.
 * A rotation that fails leaves the old certificate active.  Certificates
 * within provisioning.rotate_before_days of their not-after are rotated
 * automatically, at most provisioning.rotate_max_running at once, within
 * provisioning.rate_per_s.
 *
 * Test hooks: the environment variable FLEETGW_TEST_CRASH_AFTER, set to
 * csr_sent, cert_received, register_sent or registered, makes the process
 * kill itself with SIGKILL at that point of the first provisioning run that
 * reaches it; FLEETGW_TEST_CRASH_ROTATION does the same for rotation runs,
 * with also key_ready and done (after the registry switched certificates,
 * before the upstream did).  For the crash tests; never set them in
 * production.
 */
#ifndef FLEETGW_PROVISION_H
#define FLEETGW_PROVISION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct gw_config;
struct store;
struct tls_ctx;
struct tls_identity;
struct metrics;
struct provisioner;

enum provision_status { PROVISION_READY = 0, PROVISION_PENDING = 1, PROVISION_REFUSED = 2 };

struct provision_identity {
  char thing_name[129];        /* the upstream client id */
  struct tls_identity *tls;    /* a reference for the caller (unref it), or NULL
                                  with backend none (the configured files apply) */
};

/* done_cb runs on the loop when a device's run ends (ok or not). */
typedef void (*provision_done_cb)(void *ud, const char *client_id, bool ok);

int provision_new(uv_loop_t *loop, const struct gw_config *cfg, struct store *st,
                  struct tls_ctx *tls, struct metrics *m, provision_done_cb done, void *ud,
                  struct provisioner **out);
/* Opens the CA or the claim pool and resumes the journal's open runs.
 * Returns 0 or -1 (logged). */
int provision_start(struct provisioner *p);
/* Stops: claim connections get DISCONNECT; work in flight stays journalled
 * and resumes at the next start.  done(ud) runs when all is closed. */
void provision_stop(struct provisioner *p, void (*done)(void *), void *ud);
void provision_free(struct provisioner *p);

/* See the top of this file.  reason[cap] is filled for REFUSED/PENDING. */
int provision_ensure(struct provisioner *p, const char *client_id,
                     struct provision_identity *out, char *reason, size_t cap);

/* Observes provisioning steps: step is "started", "cert_issued",
 * "registered", "done", "failed", "rejected" or "orphaned". */
typedef void (*provision_step_cb)(void *ud, const char *client_id, const char *step);
void provision_observe(struct provisioner *p, provision_step_cb cb, void *ud);

/* Starts a rotation of the device's certificate (see the top).  actor is
 * audited.  Returns PROVISION_ROTATE_* and, when not OK, reason[cap]. */
enum {
  PROVISION_ROTATE_OK = 0,
  PROVISION_ROTATE_NOTFOUND = 1,  /* no such device, or it has no active certificate */
  PROVISION_ROTATE_CONFLICT = 2,  /* not ACTIVE, a run is open, or the backend cannot */
  PROVISION_ROTATE_ERROR = 3,     /* registry error, out of memory, stopping */
};
int provision_rotate(struct provisioner *p, const char *client_id, const char *actor,
                     char *reason, size_t cap);

/* How rotations reach the device's own upstream (the relay).  subscribe
 * and publish return 0 when the upstream took the request, -1 when it is
 * not up; the SUBACKs come back through provision_link_ready.  rotated()
 * is told once the registry made the new certificate the active one. */
struct provision_link_ops {
  int (*subscribe)(void *ud, const char *client_id, const char *const *topics, size_t n);
  int (*publish)(void *ud, const char *client_id, const char *topic, const char *payload,
                 size_t len);
  void (*rotated)(void *ud, const char *client_id);
};
void provision_set_link(struct provisioner *p, const struct provision_link_ops *ops, void *ud);
/* The relay's reports about a device's own upstream: it came up (the
 * rotation's subscriptions must be made again), its subscriptions for the
 * rotation were granted (ok) or refused, it went down (a request in flight
 * is lost).  provision_link_message offers a message that arrived on it:
 * true when it was a reply to a rotation in flight (consumed). */
void provision_link_up(struct provisioner *p, const char *client_id);
void provision_link_ready(struct provisioner *p, const char *client_id, bool ok);
void provision_link_down(struct provisioner *p, const char *client_id);
bool provision_link_message(struct provisioner *p, const char *client_id, const char *topic,
                            size_t topic_len, const uint8_t *payload, size_t len);

/* Runs in flight or queued, for status pages. */
size_t provision_in_flight(const struct provisioner *p);
/* The local CA certificate's not-after (Unix seconds) once provision_start
 * has opened it; 0 with another backend. */
int64_t provision_ca_not_after(const struct provisioner *p);

#endif
