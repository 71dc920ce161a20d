/*
 * store_psk.c - the DTLS pre-shared keys of devices (docs/dtls.md §4) and
 * how each device last authenticated on the LAN.  A PSK is kept sealed
 * (store_bound_seal, AES-256-GCM under the key file's key, the ClientId as
 * associated data) and is read only to answer a handshake.
 */
#include "store_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "secret.h"

static int hex_of(const uint8_t *key, size_t len, char *out, size_t cap)
{
  static const char digits[] = "0123456789abcdef";
  if (cap < 2 * len + 1)
    return -1;
  for (size_t i = 0; i < len; i++) {
    out[2 * i] = digits[key[i] >> 4];
    out[2 * i + 1] = digits[key[i] & 15];
  }
  out[2 * len] = '\0';
  return 0;
}

static int nibble(char c)
{
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  return -1;
}

int store_psk_set(struct store *st, const char *client_id, const uint8_t *key, size_t len,
                  int64_t now)
{
  static const char sql[] =
      "INSERT INTO psks(device_id, key_blob, created_at) SELECT id, ?, ? FROM devices "
      "WHERE client_id = ? ON CONFLICT(device_id) DO UPDATE SET key_blob = excluded.key_blob, "
      "created_at = excluded.created_at";
  char hex[2 * STORE_PSK_MAX + 1];
  unsigned char *blob = NULL;
  size_t blob_len = 0;
  sqlite3_stmt *s;
  int err;

  if (len < STORE_PSK_MIN || len > STORE_PSK_MAX)
    return store_fail(st, STORE_INVAL, "a PSK is %d..%d bytes", STORE_PSK_MIN, STORE_PSK_MAX);
  hex_of(key, len, hex, sizeof hex);
  err = store_bound_seal(st, store_psk_aad_prefix, client_id, hex, &blob, &blob_len);
  secret_wipe(hex, sizeof hex);
  if (err != STORE_OK)
    return err;
  if ((err = store_stmt(st, sql, &s)) == STORE_OK) {
    sqlite3_bind_blob(s, 1, blob, (int)blob_len, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, now);
    sqlite3_bind_text(s, 3, client_id, -1, SQLITE_STATIC);
    err = store_stmt_run(st, s);
    if (err == STORE_OK && sqlite3_changes(st->db) == 0)
      err = store_fail(st, STORE_NOTFOUND, "no such device");
  }
  free(blob);
  return err;
}

/* Opens the sealed hex into key[cap]. */
static int unseal_psk(struct store *st, const char *client_id, sqlite3_stmt *s, uint8_t *key,
                      size_t cap, size_t *len)
{
  char hex[2 * STORE_PSK_MAX + 1];
  size_t n;
  int err = store_bound_unseal(st, store_psk_aad_prefix, client_id, sqlite3_column_blob(s, 0),
                               (size_t)sqlite3_column_bytes(s, 0), hex, sizeof hex);
  if (err != STORE_OK)
    return err;
  n = strlen(hex) / 2;
  if (n > cap || strlen(hex) % 2) {
    secret_wipe(hex, sizeof hex);
    return store_fail(st, STORE_CRYPTO, "stored PSK does not fit");
  }
  for (size_t i = 0; i < n; i++) {
    int hi = nibble(hex[2 * i]), lo = nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      secret_wipe(hex, sizeof hex);
      secret_wipe(key, cap);
      return store_fail(st, STORE_CRYPTO, "stored PSK is not hex");
    }
    key[i] = (uint8_t)(hi << 4 | lo);
  }
  secret_wipe(hex, sizeof hex);
  *len = n;
  return STORE_OK;
}

int store_psk_get(struct store *st, const char *client_id, uint8_t *key, size_t cap,
                  size_t *len)
{
  static const char sql[] = "SELECT p.key_blob FROM psks p JOIN devices d ON d.id = p.device_id "
                            "WHERE d.client_id = ?";
  sqlite3_stmt *s;
  int rc, err;
  *len = 0;
  if ((err = store_stmt(st, sql, &s)) != STORE_OK)
    return err;
  sqlite3_bind_text(s, 1, client_id, -1, SQLITE_STATIC);
  rc = sqlite3_step(s);
  if (rc == SQLITE_ROW)
    err = unseal_psk(st, client_id, s, key, cap, len);
  else
    err = rc == SQLITE_DONE ? STORE_NOTFOUND : store_sqlite_fail(st, rc);
  store_stmt_done(s);
  return err;
}

int store_psk_delete(struct store *st, const char *client_id)
{
  static const char sql[] =
      "DELETE FROM psks WHERE device_id = (SELECT id FROM devices WHERE client_id = ?)";
  sqlite3_stmt *s;
  int err;
  if ((err = store_stmt(st, sql, &s)) != STORE_OK)
    return err;
  sqlite3_bind_text(s, 1, client_id, -1, SQLITE_STATIC);
  if ((err = store_stmt_run(st, s)) == STORE_OK && sqlite3_changes(st->db) == 0)
    err = STORE_NOTFOUND;
  return err;
}

int store_device_set_lan_security(struct store *st, const char *client_id, const char *security)
{
  static const char sql[] = "UPDATE devices SET lan_security = ? WHERE client_id = ? AND "
                            "lan_security IS NOT ?";
  sqlite3_stmt *s;
  int err;
  if ((err = store_stmt(st, sql, &s)) != STORE_OK)
    return err;
  sqlite3_bind_text(s, 1, security, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 2, client_id, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 3, security, -1, SQLITE_STATIC);
  return store_stmt_run(st, s);
}
