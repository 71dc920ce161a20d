/*
 * store_keys.c - private keys at rest: AES-256-GCM under a key-file key.
 *
 * This is the only db/ file that uses OpenSSL (libcrypto).
 *
 * Blob layout (one BLOB column):
 *   version (1 byte, 0x01) || nonce (12 bytes, random per seal) ||
 *   ciphertext (as long as the plaintext) || tag (16 bytes)
 * The associated data is the device's ClientId, so a blob copied onto another
 * device's row fails to authenticate instead of handing out the wrong key.
 *
 * The same seal keeps provisioning ownership tokens (runs.token_blob), under
 * the associated data "fleetgw:token:" || ClientId: bound to the device like
 * a key, and never accepted where a key is expected, nor a key as a token.
 *
 * The key file holds exactly 32 random bytes and must not be accessible by
 * group or others.  The database keeps a "key check" (a sealed constant) in
 * its meta table, so the wrong key file, or a key file recreated after being
 * lost, is refused at open instead of being found out one key at a time.
 */
#include "store_int.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "secret.h"

#define BLOB_VERSION 0x01
#define NONCE_LEN 12
#define TAG_LEN 16
#define BLOB_OVERHEAD (1 + NONCE_LEN + TAG_LEN)

static const char key_check_aad[] = "fleetgw:key-check";
static const char key_check_plain[] = "fleetgw registry key check v1";
static const char token_aad_prefix[] = "fleetgw:token:";
const char store_psk_aad_prefix[] = "fleetgw:psk:";

/* Kept for the callers outside db/ that store.h tells to use it; the wipe
 * itself is the project's one (common/secret.h), so a key handed out by
 * store_cert_key() or store_run_key() is forgotten the same way as every
 * other secret. */
void store_secret_free(char *secret)
{
  secret_free(secret);
}

void store_keys_wipe(struct store *st)
{
  secret_wipe(st->key, sizeof st->key);
  st->have_key = false;
}

/* Reads exactly len bytes; a short file is the caller's size error. */
static int read_full(int fd, unsigned char *buf, size_t len)
{
  size_t got = 0;
  while (got < len) {
    ssize_t n = read(fd, buf + got, len - got);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return -1;
    got += (size_t)n;
  }
  return 0;
}

static int write_full(int fd, const unsigned char *buf, size_t len)
{
  size_t done = 0;
  while (done < len) {
    ssize_t n = write(fd, buf + done, len - done);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return -1;
    done += (size_t)n;
  }
  return 0;
}

/* Makes the new key file's directory entry durable: the database is about to
 * record a key check that only this file can satisfy. */
static void sync_parent_dir(const char *path)
{
  char dir[4096];
  const char *slash = strrchr(path, '/');
  int fd;
  if (!slash) {
    snprintf(dir, sizeof dir, ".");
  } else if (slash == path) {
    snprintf(dir, sizeof dir, "/");
  } else {
    if ((size_t)(slash - path) >= sizeof dir)
      return;
    memcpy(dir, path, (size_t)(slash - path));
    dir[slash - path] = '\0';
  }
  fd = open(dir, O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    (void)fsync(fd);
    close(fd);
  }
}

/* Creates the key file with O_EXCL (never overwriting one) and mode 0600.
 * Returns 1 when another process created it first (the caller reads it). */
static int create_key_file(struct store *st, const char *path)
{
  unsigned char key[STORE_KEY_LEN];
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    if (errno == EEXIST)
      return 1;
    return store_fail(st, STORE_CRYPTO, "cannot create key file %s: %s", path, strerror(errno));
  }
  if (RAND_bytes(key, sizeof key) != 1) {
    close(fd);
    unlink(path);
    return store_fail(st, STORE_CRYPTO, "no randomness for key file %s", path);
  }
  if (write_full(fd, key, sizeof key) != 0 || fsync(fd) != 0) {
    int e = errno;
    secret_wipe(key, sizeof key);
    close(fd);
    unlink(path);
    return store_fail(st, STORE_CRYPTO, "cannot write key file %s: %s", path, strerror(e));
  }
  close(fd);
  sync_parent_dir(path);
  memcpy(st->key, key, sizeof key);
  secret_wipe(key, sizeof key);
  st->have_key = true;
  return STORE_OK;
}

int store_keys_load(struct store *st, const char *path, bool may_create)
{
  struct stat sb;
  int fd, err;

  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT) {
    if (!may_create)
      return store_fail(st, STORE_CRYPTO,
                        "key file %s is missing, but the database holds keys sealed with it",
                        path);
    err = create_key_file(st, path);
    if (err != 1)
      return err;
    fd = open(path, O_RDONLY | O_CLOEXEC);
  }
  if (fd < 0)
    return store_fail(st, STORE_CRYPTO, "cannot open key file %s: %s", path, strerror(errno));
  if (fstat(fd, &sb) != 0) {
    err = store_fail(st, STORE_CRYPTO, "cannot stat key file %s: %s", path, strerror(errno));
    goto out_close;
  }
  if (!S_ISREG(sb.st_mode)) {
    err = store_fail(st, STORE_CRYPTO, "key file %s is not a regular file", path);
    goto out_close;
  }
  if ((sb.st_mode & 077) != 0) {
    err = store_fail(st, STORE_CRYPTO,
                     "key file %s is accessible by group or others (mode %04o); it must be "
                     "0600 (chmod 600 %s)",
                     path, (unsigned)(sb.st_mode & 07777), path);
    goto out_close;
  }
  if (sb.st_size != STORE_KEY_LEN) {
    err = store_fail(st, STORE_CRYPTO, "key file %s has %lld bytes; it must hold exactly %d",
                     path, (long long)sb.st_size, STORE_KEY_LEN);
    goto out_close;
  }
  if (read_full(fd, st->key, sizeof st->key) != 0) {
    secret_wipe(st->key, sizeof st->key);
    err = store_fail(st, STORE_CRYPTO, "cannot read key file %s", path);
    goto out_close;
  }
  st->have_key = true;
  err = STORE_OK;
out_close:
  close(fd);
  return err;
}

/* Checks the key against the database's key-check value, or stores one. */
static int check_key(struct store *st, const char *path)
{
  static const char get_sql[] = "SELECT value FROM meta WHERE name = 'key_check'";
  static const char put_sql[] = "INSERT INTO meta(name, value) VALUES ('key_check', ?)";
  sqlite3_stmt *s;
  unsigned char *blob = NULL;
  size_t blob_len = 0;
  char *plain = NULL;
  int rc, err;

  if ((err = store_stmt_fresh(st, get_sql, &s)) != STORE_OK)
    return err;
  rc = sqlite3_step(s);
  if (rc == SQLITE_ROW) {
    err = store_key_unseal(st, key_check_aad, sqlite3_column_blob(s, 0),
                           (size_t)sqlite3_column_bytes(s, 0), &plain);
    if (err == STORE_OK && strcmp(plain, key_check_plain) != 0)
      err = STORE_CRYPTO;
    secret_free(plain);
    sqlite3_finalize(s);
    if (err == STORE_CRYPTO)
      return store_fail(st, STORE_CRYPTO, "key file %s does not match this database", path);
    return err;
  }
  sqlite3_finalize(s);
  if (rc != SQLITE_DONE)
    return store_sqlite_fail(st, rc);

  err = store_key_seal(st, key_check_aad, key_check_plain, strlen(key_check_plain), &blob,
                       &blob_len);
  if (err != STORE_OK)
    return err;
  if ((err = store_stmt_fresh(st, put_sql, &s)) == STORE_OK) {
    sqlite3_bind_blob(s, 1, blob, (int)blob_len, SQLITE_STATIC);
    rc = sqlite3_step(s);
    /* Two first opens racing: the other one's check stands; verify ours. */
    if (rc == SQLITE_CONSTRAINT_PRIMARYKEY) {
      sqlite3_finalize(s);
      free(blob);
      return check_key(st, path);
    }
    err = rc == SQLITE_DONE ? STORE_OK : store_sqlite_fail(st, rc);
    sqlite3_finalize(s);
  }
  free(blob);
  return err;
}

int store_keys_verify(struct store *st, const char *path)
{
  return check_key(st, path);
}

int store_key_seal(struct store *st, const char *aad, const void *plain, size_t len,
                   unsigned char **blob, size_t *blob_len)
{
  EVP_CIPHER_CTX *ctx = NULL;
  unsigned char *b, *nonce, *ct;
  int n = 0, fin = 0, err = STORE_CRYPTO;
  size_t aad_len = strlen(aad);

  *blob = NULL;
  *blob_len = 0;
  if (!st->have_key)
    return store_fail(st, STORE_CRYPTO, "no key loaded");
  if (len > STORE_MAX_PEM || aad_len > INT_MAX)
    return store_fail(st, STORE_INVAL, "secret too large to seal (%zu bytes)", len);
  b = malloc(BLOB_OVERHEAD + len);
  if (!b)
    return store_fail(st, STORE_NOMEM, "out of memory sealing a key");
  b[0] = BLOB_VERSION;
  nonce = b + 1;
  ct = nonce + NONCE_LEN;
  if (RAND_bytes(nonce, NONCE_LEN) != 1) {
    store_fail(st, STORE_CRYPTO, "no randomness for a nonce");
    goto out_free;
  }
  ctx = EVP_CIPHER_CTX_new();
  if (!ctx) {
    err = store_fail(st, STORE_NOMEM, "out of memory sealing a key");
    goto out_free;
  }
  if (EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, NONCE_LEN, NULL) != 1 ||
      EVP_EncryptInit_ex(ctx, NULL, NULL, st->key, nonce) != 1 ||
      EVP_EncryptUpdate(ctx, NULL, &n, (const unsigned char *)aad, (int)aad_len) != 1 ||
      EVP_EncryptUpdate(ctx, ct, &n, plain, (int)len) != 1 ||
      EVP_EncryptFinal_ex(ctx, ct + n, &fin) != 1 ||
      (size_t)n + (size_t)fin != len ||
      EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_LEN, ct + len) != 1) {
    store_fail(st, STORE_CRYPTO, "AES-256-GCM encryption failed");
    goto out_free;
  }
  EVP_CIPHER_CTX_free(ctx);
  *blob = b;
  *blob_len = BLOB_OVERHEAD + len;
  return STORE_OK;

out_free:
  /* b holds a partial result of encrypting a secret; it is wiped like one
   * rather than argued safe. */
  EVP_CIPHER_CTX_free(ctx);
  secret_free_n(b, BLOB_OVERHEAD + len);
  return err;
}

int store_key_unseal(struct store *st, const char *aad, const void *blob, size_t blob_len,
                     char **plain)
{
  const unsigned char *b = blob, *nonce, *ct;
  EVP_CIPHER_CTX *ctx = NULL;
  unsigned char tag[TAG_LEN];
  unsigned char *p;
  size_t len, aad_len = strlen(aad);
  int n = 0, fin = 0;

  *plain = NULL;
  if (!st->have_key)
    return store_fail(st, STORE_CRYPTO, "no key loaded");
  if (!b || blob_len < BLOB_OVERHEAD || blob_len - BLOB_OVERHEAD > STORE_MAX_PEM ||
      aad_len > INT_MAX)
    return store_fail(st, STORE_CRYPTO, "stored key blob has a bad length (%zu)", blob_len);
  if (b[0] != BLOB_VERSION)
    return store_fail(st, STORE_CRYPTO, "stored key blob has unknown version %u", b[0]);
  len = blob_len - BLOB_OVERHEAD;
  nonce = b + 1;
  ct = nonce + NONCE_LEN;
  memcpy(tag, ct + len, TAG_LEN);
  p = malloc(len + 1);
  if (!p)
    return store_fail(st, STORE_NOMEM, "out of memory opening a key");
  ctx = EVP_CIPHER_CTX_new();
  if (!ctx) {
    free(p);
    return store_fail(st, STORE_NOMEM, "out of memory opening a key");
  }
  if (EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, NONCE_LEN, NULL) != 1 ||
      EVP_DecryptInit_ex(ctx, NULL, NULL, st->key, nonce) != 1 ||
      EVP_DecryptUpdate(ctx, NULL, &n, (const unsigned char *)aad, (int)aad_len) != 1 ||
      EVP_DecryptUpdate(ctx, p, &n, ct, (int)len) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_LEN, tag) != 1 ||
      EVP_DecryptFinal_ex(ctx, p + n, &fin) != 1 || (size_t)n + (size_t)fin != len) {
    /* The plaintext of a blob that fails authentication is not to be used,
     * nor left in freed memory. */
    EVP_CIPHER_CTX_free(ctx);
    secret_free_n(p, len + 1);
    return store_fail(st, STORE_CRYPTO,
                      "stored key fails to authenticate (wrong key file, wrong device, or "
                      "tampered)");
  }
  EVP_CIPHER_CTX_free(ctx);
  p[len] = '\0';
  *plain = (char *)p;
  return STORE_OK;
}

/* The associated data of a device's sealed secret of one kind (prefix):
 * a blob moved to another device or another kind fails to open. */
static int bound_aad(struct store *st, const char *prefix, const char *client_id, char *aad,
                     size_t cap)
{
  int n = snprintf(aad, cap, "%s%s", prefix, client_id);
  if (n < 0 || (size_t)n >= cap)
    return store_fail(st, STORE_INVAL, "client id too long to seal a secret for");
  return STORE_OK;
}

int store_bound_seal(struct store *st, const char *prefix, const char *client_id,
                     const char *text, unsigned char **blob, size_t *blob_len)
{
  char aad[64 + STORE_MAX_CLIENT_ID];
  int err = bound_aad(st, prefix, client_id, aad, sizeof aad);

  *blob = NULL;
  *blob_len = 0;
  if (err != STORE_OK)
    return err;
  return store_key_seal(st, aad, text, strlen(text), blob, blob_len);
}

int store_bound_unseal(struct store *st, const char *prefix, const char *client_id,
                       const void *blob, size_t blob_len, char *out, size_t cap)
{
  char aad[64 + STORE_MAX_CLIENT_ID];
  char *plain = NULL;
  size_t len;
  int err = bound_aad(st, prefix, client_id, aad, sizeof aad);

  out[0] = '\0';
  if (err == STORE_OK)
    err = store_key_unseal(st, aad, blob, blob_len, &plain);
  if (err != STORE_OK)
    return err;
  len = strlen(plain);
  if (len >= cap) {
    secret_free(plain);
    return store_fail(st, STORE_CRYPTO, "stored secret is too long (%zu bytes)", len);
  }
  memcpy(out, plain, len + 1);
  secret_free(plain);
  return STORE_OK;
}

int store_token_seal(struct store *st, const char *client_id, const char *token,
                     unsigned char **blob, size_t *blob_len)
{
  return store_bound_seal(st, token_aad_prefix, client_id, token, blob, blob_len);
}

int store_token_unseal(struct store *st, const char *client_id, const void *blob,
                       size_t blob_len, char *out, size_t cap)
{
  return store_bound_unseal(st, token_aad_prefix, client_id, blob, blob_len, out, cap);
}
