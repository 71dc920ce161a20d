#include "admission.h"

#include <fnmatch.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "store.h"

/* Refuses with a reason, which is also the audit row's detail. */
static int refuse(struct store *st, int64_t now, const char *client_id, char *reason, size_t cap,
                  const char *text)
{
  snprintf(reason, cap, "%s", text);
  /* A refused leaf retries: one row per reason and interval (store.h). */
  store_audit_repeat(st, now, "gateway", "admission.refused", client_id, reason);
  return ADMIT_REFUSED;
}

const char *admit_sec_name(int sec)
{
  return sec == ADMIT_SEC_PSK ? "dtls-psk" : sec == ADMIT_SEC_CERT ? "dtls-cert" : "plain";
}

int admit_refuse_identity(struct store *st, const char *client_id, const char *identity,
                          int64_t now, char *reason, size_t cap)
{
  char why[400];
  snprintf(why, sizeof why, "DTLS identity \"%s\" may CONNECT only as itself", identity);
  return refuse(st, now, client_id, reason, cap, why);
}

bool admit_plain_allowed(const struct gw_config *cfg, const char *client_id)
{
  if (cfg->admission.plain_udp == PLAIN_UDP_ALLOW)
    return true;
  if (cfg->admission.plain_udp == PLAIN_UDP_OFF)
    return false;
  for (size_t i = 0; i < cfg->admission.n_plain_udp_clients; i++)
    if (fnmatch(cfg->admission.plain_udp_clients[i], client_id, 0) == 0)
      return true;
  return false;
}

/* A device that has a PSK, or has authenticated over DTLS, must not be
 * claimable over plain UDP (docs/dtls.md §9). */
static bool dtls_only(const struct store_device *dev)
{
  return dev->has_psk || strncmp(dev->lan_security, "dtls-", 5) == 0;
}

int admit_check_live(struct store *st, const char *client_id, const char *bound_addr,
                     const char *from_addr, int64_t now, char *reason, size_t cap)
{
  char why[256];
  if (!bound_addr)
    return ADMIT_OK;
  snprintf(why, sizeof why, "ClientId in use by a connected leaf at %s, CONNECT came from %s",
           bound_addr, from_addr);
  return refuse(st, now, client_id, reason, cap, why);
}

static int registry_error(struct store *st, int rc, char *reason, size_t cap)
{
  snprintf(reason, cap, "registry error: %s (%s)", store_strerror(rc), store_errmsg(st));
  return rc == STORE_BUSY ? ADMIT_BUSY : ADMIT_ERROR;
}

/* First sight of a ClientId: the policy decides. */
static int first_sight(struct store *st, const struct gw_config *cfg, const char *client_id,
                       const char *ip, int sec, int64_t now, struct store_device *dev,
                       char *reason, size_t cap)
{
  int state, rc;
  const char *addr = NULL;

  switch (cfg->admission.policy) {
  case POLICY_OPEN:
    if (fnmatch(cfg->admission.pattern, client_id, 0) != 0) {
      char why[320];
      snprintf(why, sizeof why, "ClientId does not match admission.pattern \"%s\"",
               cfg->admission.pattern);
      return refuse(st, now, client_id, reason, cap, why);
    }
    state = DEV_APPROVED;
    break;
  case POLICY_ALLOWLIST:
    rc = store_allow_match(st, client_id);
    if (rc < 0)
      return registry_error(st, rc, reason, cap);
    if (rc == 0)
      return refuse(st, now, client_id, reason, cap, "ClientId not on the allowlist");
    state = DEV_APPROVED;
    break;
  default:
    /* approve: the allowlist pre-approves; everyone else waits for an
     * operator. */
    rc = store_allow_match(st, client_id);
    if (rc < 0)
      return registry_error(st, rc, reason, cap);
    state = rc ? DEV_APPROVED : DEV_PENDING;
    break;
  }
  /* Bound now only when admitted now; a pending identity is bound by its
   * first CONNECT after approval. */
  if (cfg->admission.bind_address && state != DEV_PENDING && sec == ADMIT_SEC_PLAIN)
    addr = ip;
  /* The row, its LAN security and the audit row in one transaction: one
   * commit (and one set of file locks) a new leaf instead of three, which
   * a burst of thousands of first CONNECTs feels. */
  rc = store_begin(st);
  if (rc != STORE_OK)
    return registry_error(st, rc, reason, cap);
  rc = store_device_create(st, client_id, state, addr, now, dev);
  if (rc == STORE_OK)
    rc = store_device_set_lan_security(st, client_id, admit_sec_name(sec));
  if (rc == STORE_OK) {
    store_audit(st, now, "gateway", state == DEV_PENDING ? "admission.pending"
                                                         : "admission.admitted", client_id, ip);
    rc = store_commit(st);
  }
  if (rc != STORE_OK) {
    int r = registry_error(st, rc, reason, cap); /* the reason before the rollback */
    store_rollback(st);
    return r;
  }
  if (state == DEV_PENDING) {
    snprintf(reason, cap, "waiting for an operator's approval");
    return ADMIT_PENDING;
  }
  return ADMIT_OK;
}

int admit_check(struct store *st, const struct gw_config *cfg, const char *client_id,
                const char *ip, int sec, int64_t now, const struct admit_gate *gate,
                struct store_device *dev, char *reason, size_t cap)
{
  struct store_device d;
  int rc;

  if (!dev)
    dev = &d;
  reason[0] = '\0';
  rc = store_device_get(st, client_id, dev);
  if (rc == STORE_NOTFOUND) {
    /* Cost follows trust: a never-seen identity over the rate limits is
     * refused before anything, even an audit row, is written. */
    if (gate && gate->take(gate->ud, reason, cap) != 0)
      return ADMIT_THROTTLED;
    return first_sight(st, cfg, client_id, ip, sec, now, dev, reason, cap);
  }
  if (rc != STORE_OK)
    return registry_error(st, rc, reason, cap);

  if (dev->state == DEV_BLOCKED)
    return refuse(st, now, client_id, reason, cap, "blocked by an operator");
  if (dev->state == DEV_REVOKED)
    return refuse(st, now, client_id, reason, cap, "decommissioned");
  if (sec == ADMIT_SEC_PLAIN && dtls_only(dev)) {
    /* Not audited: anyone can send this datagram, as often as they like. */
    snprintf(reason, cap, "%s",
             dev->has_psk ? "ClientId has a DTLS key: plain UDP refused"
                          : "ClientId authenticates over DTLS: plain UDP refused");
    return ADMIT_NEEDS_DTLS;
  }
  /* Over DTLS the key or certificate is the binding, not the address. */
  if (cfg->admission.bind_address && dev->state != DEV_PENDING && sec == ADMIT_SEC_PLAIN) {
    if (dev->bound_addr[0] && strcmp(dev->bound_addr, ip) != 0) {
      char why[128];
      snprintf(why, sizeof why, "ClientId bound to %s, CONNECT came from %s", dev->bound_addr, ip);
      return refuse(st, now, client_id, reason, cap, why);
    }
    if (!dev->bound_addr[0]) {
      rc = store_device_bind(st, client_id, ip);
      if (rc != STORE_OK)
        return registry_error(st, rc, reason, cap);
      snprintf(dev->bound_addr, sizeof dev->bound_addr, "%s", ip);
      store_audit(st, now, "gateway", "admission.bound", client_id, ip);
    }
  }
  store_device_touch(st, client_id, now);
  if (strcmp(dev->lan_security, admit_sec_name(sec)) != 0) {
    rc = store_device_set_lan_security(st, client_id, admit_sec_name(sec));
    if (rc != STORE_OK)
      return registry_error(st, rc, reason, cap);
    snprintf(dev->lan_security, sizeof dev->lan_security, "%s", admit_sec_name(sec));
  }
  if (dev->state == DEV_PENDING) {
    snprintf(reason, cap, "waiting for an operator's approval");
    return ADMIT_PENDING;
  }
  return ADMIT_OK;
}

int admit_seed_allowlist(struct store *st, const struct gw_config *cfg, int64_t now)
{
  for (size_t i = 0; i < cfg->admission.n_allowlist; i++) {
    int rc = store_allow_add(st, cfg->admission.allowlist[i], now);
    if (rc != STORE_OK && rc != STORE_CONFLICT)
      return rc;
  }
  return STORE_OK;
}
