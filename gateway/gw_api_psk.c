/*
 * gw_api_psk.c - the DTLS pre-shared keys of leaves, for web/ (api/gw_api.h,
 * "DTLS pre-shared keys"): operators create, import, rotate and revoke a
 * device's key, one at a time or for a whole production batch.  The PSK
 * identity is the ClientId (docs/dtls.md §4, §9).
 *
 * A key leaves this file only in the caller's struct api_psk (or its bulk
 * buffer), which the caller wipes; audit rows, log lines, events and refusal
 * texts name ClientIds and counts, never key material.  A key that changes
 * or goes closes at once every DTLS association that authenticated with the
 * old one (leaves_dtls_revoked).
 */
#include "api/gw_api.h"

#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gw_int.h"
#include "leaves.h"
#include "log.h"
#include "secret.h"
#include "store.h"

#define MOD "api"

_Static_assert(API_PSK_MIN == STORE_PSK_MIN && API_PSK_MAX == STORE_PSK_MAX,
               "the API's key bounds are the registry's");
_Static_assert(API_PSK_LEN >= API_PSK_MIN && API_PSK_LEN <= API_PSK_MAX,
               "generated keys fit the registry");

/* How many offenders a refused batch names. */
enum { BULK_NAMED = 5 };

/* Writes the refusal's reason (the caller's reason[cap], which may be NULL
 * and 0) and gives its code. */
#define REFUSE(code, ...) (snprintf(reason, cap, __VA_ARGS__), (code))

int api_psk_client_id_check(struct gw *gw, const char *client_id, char *reason, size_t cap)
{
  size_t len = client_id ? strlen(client_id) : 0;
  size_t max = gw->cfg->lan.max_client_id_len;

  /* The ClientIds a leaf may CONNECT with (docs/architecture.md §7): a key
   * for any other could never be used. */
  if (len < 1 || len > max || len > 255)
    return REFUSE(API_INVAL, "a ClientId is 1..%zu octets (lan.max_client_id_len), this one %zu",
                  max, len);
  for (size_t i = 0; i < len; i++)
    if ((unsigned char)client_id[i] <= 0x20 || (unsigned char)client_id[i] >= 0x7F ||
        client_id[i] == '/')
      return REFUSE(API_INVAL,
                    "a ClientId is printable ASCII without spaces or '/' (octet %zu is not)", i + 1);
  return API_OK;
}

/* Why a device may not be given a key now; NULL when it may.  rotating: the
 * device's key is to be replaced rather than created. */
static const char *unfit(const struct store_device *d, bool rotating)
{
  if (d->state == DEV_REVOKED)
    return "decommissioned";
  if (rotating)
    return d->has_psk ? NULL : "has no key: create one with POST .../psk";
  if (d->state == DEV_BLOCKED)
    return "blocked: unblock it first";
  if (d->has_psk)
    return "already has a key: rotate it with POST .../psk/rotate, or revoke it";
  return NULL;
}

/* Records an operator's key action (audit row, log line; a new device is
 * also told to subscribers).  Never the key. */
static void psk_acted(struct gw *gw, const char *client_id, const char *actor,
                      const char *action, const char *detail, bool created)
{
  store_audit(gw->store, (int64_t)time(NULL), actor ? actor : "operator", action, client_id,
              detail);
  LOGI(MOD, "%s: %s by %s%s%s", client_id ? client_id : "-", action,
       actor ? actor : "operator", detail ? ": " : "", detail ? detail : "");
  if (created && client_id)
    gw_emit(gw, "device.state", client_id, "state", "approved", NULL, NULL);
}

/* The key to store: key_len bytes of key, or API_PSK_LEN fresh ones. */
static int take_key(const uint8_t *key, size_t key_len, struct api_psk *out, char *reason,
                    size_t cap)
{
  if (key) {
    if (key_len < API_PSK_MIN || key_len > API_PSK_MAX)
      return REFUSE(API_INVAL, "a key is %d..%d bytes, this one %zu", API_PSK_MIN, API_PSK_MAX,
                    key_len);
    memcpy(out->key, key, key_len);
    out->key_len = key_len;
    return API_OK;
  }
  if (RAND_priv_bytes(out->key, API_PSK_LEN) != 1)
    return REFUSE(API_ERROR, "no random bytes for a key");
  out->key_len = API_PSK_LEN;
  return API_OK;
}

/* Creates (rotating false) or replaces (true) one device's key. */
static int psk_put(struct gw *gw, const char *client_id, const uint8_t *key, size_t key_len,
                   bool rotating, const char *actor, struct api_psk *out, char *reason,
                   size_t cap)
{
  struct store_device d;
  int64_t now = (int64_t)time(NULL);
  bool created = false;
  const char *why;
  int rc;

  memset(out, 0, sizeof *out);
  if ((rc = api_psk_client_id_check(gw, client_id, reason, cap)) != API_OK)
    return rc;
  if ((rc = take_key(key, key_len, out, reason, cap)) != API_OK)
    return rc;
  if (store_begin(gw->store) != STORE_OK) {
    rc = REFUSE(API_ERROR, "registry error");
    goto wipe;
  }
  rc = store_device_get(gw->store, client_id, &d);
  if (rc == STORE_NOTFOUND && !rotating) {
    /* Made on the production line, before the leaf's first CONNECT: the
     * operator named the identity and gave it a key, so it is approved. */
    rc = store_device_create(gw->store, client_id, DEV_APPROVED, NULL, now, &d);
    created = rc == STORE_OK;
  } else if (rc == STORE_NOTFOUND) {
    rc = REFUSE(API_NOTFOUND, "no such device");
    goto fail;
  }
  if (rc != STORE_OK) {
    rc = REFUSE(API_ERROR, "registry error");
    goto fail;
  }
  if ((why = unfit(&d, rotating)) != NULL) {
    rc = REFUSE(rotating && d.state != DEV_REVOKED ? API_NOTFOUND : API_CONFLICT, "%s %s",
                client_id, why);
    goto fail;
  }
  if (store_psk_set(gw->store, client_id, out->key, out->key_len, now) != STORE_OK ||
      store_commit(gw->store) != STORE_OK) {
    rc = REFUSE(API_ERROR, "registry error");
    goto fail;
  }
  snprintf(out->client_id, sizeof out->client_id, "%s", client_id);
  out->created_at = now;
  {
    char detail[96];
    snprintf(detail, sizeof detail, "%zu-byte key %s%s", out->key_len,
             key ? "imported" : "generated",
             created ? "; new device, approved: an operator named the identity" : "");
    psk_acted(gw, client_id, actor, rotating ? "operator.psk_rotate" : "operator.psk_create",
              detail, created);
  }
  /* Whatever authenticated with the old key stops now (harmless when there
   * was none). */
  leaves_dtls_revoked(gw->lan, client_id);
  return API_OK;

fail:
  store_rollback(gw->store);
wipe:
  secret_wipe(out, sizeof *out);
  return rc;
}

int api_psk_create(struct gw *gw, const char *client_id, const uint8_t *key, size_t key_len,
                   const char *actor, struct api_psk *out, char *reason, size_t cap)
{
  return psk_put(gw, client_id, key, key_len, false, actor, out, reason, cap);
}

int api_psk_rotate(struct gw *gw, const char *client_id, const uint8_t *key, size_t key_len,
                   const char *actor, struct api_psk *out, char *reason, size_t cap)
{
  return psk_put(gw, client_id, key, key_len, true, actor, out, reason, cap);
}

int api_psk_revoke(struct gw *gw, const char *client_id, const char *actor, char *reason,
                   size_t cap)
{
  int rc = store_psk_delete(gw->store, client_id);

  if (rc == STORE_NOTFOUND)
    return REFUSE(API_NOTFOUND, "no such device, or it has no key");
  if (rc != STORE_OK)
    return REFUSE(API_ERROR, "registry error");
  psk_acted(gw, client_id, actor, "operator.psk_revoke", NULL, false);
  leaves_dtls_revoked(gw->lan, client_id);
  return API_OK;
}

/* Appends "id (why)" for one offender of a batch. */
static void name_offender(char *buf, size_t cap, size_t *used, const char *id, const char *why)
{
  int n = snprintf(buf + *used, cap - *used, "%s%s (%s)", *used ? ", " : "", id, why);
  if (n > 0)
    *used = (size_t)n >= cap - *used ? cap - 1 : *used + (size_t)n;
}

/* The first pass of a batch: every id valid and fit, or the refusal. */
static int bulk_check(struct gw *gw, const char *const *ids, size_t n, bool *exists,
                      char *reason, size_t cap)
{
  char named[384] = "";
  size_t used = 0, offenders = 0;
  struct store_device d;

  for (size_t i = 0; i < n; i++) {
    char bad[160];
    const char *why;
    int rc;
    if (api_psk_client_id_check(gw, ids[i], bad, sizeof bad) != API_OK)
      return REFUSE(API_INVAL, "ClientId %zu of the batch: %s", i + 1, bad);
    /* Two keys for one identity: the first handed out would not work. */
    for (size_t j = 0; j < i; j++)
      if (strcmp(ids[i], ids[j]) == 0)
        return REFUSE(API_INVAL, "%s is in the batch twice", ids[i]);
    rc = store_device_get(gw->store, ids[i], &d);
    exists[i] = rc == STORE_OK;
    if (rc == STORE_NOTFOUND)
      continue;
    if (rc != STORE_OK)
      return REFUSE(API_ERROR, "registry error");
    if ((why = unfit(&d, false)) == NULL)
      continue;
    if (++offenders <= BULK_NAMED)
      name_offender(named, sizeof named, &used,
                    ids[i], d.has_psk ? "has a key" : store_dev_state_name(d.state));
  }
  if (offenders == 0)
    return API_OK;
  return REFUSE(API_CONFLICT,
                "%zu of the ClientIds cannot be given a key (nothing was written): %s%s; "
                "rotate or revoke existing keys one by one",
                offenders, named, offenders > BULK_NAMED ? ", ..." : "");
}

int api_psk_bulk(struct gw *gw, const char *const *ids, size_t n, const char *actor,
                 uint8_t *keys, int64_t *created_at, char *reason, size_t cap)
{
  int64_t now = (int64_t)time(NULL);
  size_t made = 0;
  bool *exists;
  int rc;

  if (n == 0 || n > API_PSK_BULK_MAX)
    return REFUSE(API_INVAL, "1..%d ClientIds a request", API_PSK_BULK_MAX);
  exists = calloc(n, sizeof *exists);
  if (!exists)
    return REFUSE(API_ERROR, "out of memory");
  if (RAND_priv_bytes(keys, (int)(n * API_PSK_LEN)) != 1) {
    rc = REFUSE(API_ERROR, "no random bytes for the keys");
    goto out;
  }
  /* One transaction: every key, or none. */
  if (store_begin(gw->store) != STORE_OK) {
    rc = REFUSE(API_ERROR, "registry error");
    goto out;
  }
  if ((rc = bulk_check(gw, ids, n, exists, reason, cap)) != API_OK)
    goto fail;
  for (size_t i = 0; i < n; i++) {
    if (!exists[i]) {
      if (store_device_create(gw->store, ids[i], DEV_APPROVED, NULL, now, NULL) != STORE_OK)
        goto write_fail;
      made++;
    }
    if (store_psk_set(gw->store, ids[i], keys + i * API_PSK_LEN, API_PSK_LEN, now) != STORE_OK)
      goto write_fail;
  }
  {
    char detail[160];
    snprintf(detail, sizeof detail,
             "%zu keys generated; %zu new devices, approved: an operator named the identities",
             n, made);
    if (store_audit(gw->store, now, actor ? actor : "operator", "operator.psk_bulk", NULL,
                    detail) != STORE_OK ||
        store_commit(gw->store) != STORE_OK)
      goto write_fail;
    LOGI(MOD, "operator.psk_bulk by %s: %s", actor ? actor : "operator", detail);
  }
  for (size_t i = 0; i < n; i++) {
    if (!exists[i])
      gw_emit(gw, "device.state", ids[i], "state", "approved", NULL, NULL);
    leaves_dtls_revoked(gw->lan, ids[i]);
  }
  *created_at = now;
  rc = API_OK;
  goto out;

write_fail:
  rc = REFUSE(API_ERROR, "registry error: %s", store_errmsg(gw->store));
fail:
  store_rollback(gw->store);
  secret_wipe(keys, n * API_PSK_LEN);
out:
  free(exists);
  return rc;
}
