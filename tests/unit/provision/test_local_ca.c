/*
 * test_local_ca.c - keys, CSRs and the local CA, checked against the
 * openssl command line tool wherever an independent opinion is possible
 * (verify, x509 -enddate, x509 -fingerprint, x509 -text).
 *
 * Everything is written under a fresh mkdtemp() directory that is removed at
 * the end.  The timings of 100 key generations and 100 signings are printed
 * for information only; they never fail the test.
 */
#define _DEFAULT_SOURCE /* mkdtemp, timegm */

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "local_ca.h"
#include "secret.h"
#include "test.h"

static char g_dir[64];
static char g_err[512];

static void path_in(char *out, size_t cap, const char *name)
{
  snprintf(out, cap, "%s/%s", g_dir, name);
}

static int write_file(const char *name, const char *text)
{
  char path[256];
  FILE *f;
  int ok;

  path_in(path, sizeof(path), name);
  f = fopen(path, "w");
  if (!f)
    return 0;
  ok = fputs(text, f) >= 0;
  return fclose(f) == 0 && ok;
}

static char *read_file(const char *path)
{
  FILE *f = fopen(path, "r");
  char *buf;
  long n;

  if (!f)
    return NULL;
  fseek(f, 0, SEEK_END);
  n = ftell(f);
  fseek(f, 0, SEEK_SET);
  buf = calloc(1, (size_t)n + 1);
  if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
    free(buf);
    buf = NULL;
  }
  fclose(f);
  return buf;
}

/* Runs a shell command in the temp dir and captures its stdout; returns the
 * exit status (or -1). */
static int run(const char *cmd, char *out, size_t cap)
{
  char full[1024];
  FILE *p;
  size_t n = 0;
  int st;

  snprintf(full, sizeof(full), "cd '%s' && %s", g_dir, cmd);
  p = popen(full, "r");
  if (!p)
    return -1;
  if (out && cap > 0) {
    n = fread(out, 1, cap - 1, p);
    out[n] = '\0';
  } else {
    char sink[256];
    while (fread(sink, 1, sizeof(sink), p) > 0) {
    }
  }
  st = pclose(p);
  return st == -1 ? -1 : (WIFEXITED(st) ? WEXITSTATUS(st) : -1);
}

static int64_t now_ms(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A self-signed certificate built directly with OpenSSL, with a chosen
 * notAfter string (UTCTime "YYMMDDHHMMSSZ" or GeneralizedTime). */
static char *cert_with_not_after(const char *not_after)
{
  EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
  X509 *x = X509_new();
  X509_NAME *name = X509_NAME_new();
  BIO *b = BIO_new(BIO_s_mem());
  char *data = NULL, *pem = NULL;
  long n;

  if (key && x && name && b &&
      X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)"aws-like",
                                 -1, -1, 0) == 1 &&
      X509_set_version(x, X509_VERSION_3) == 1 &&
      ASN1_INTEGER_set(X509_get_serialNumber(x), 7) == 1 &&
      X509_set_subject_name(x, name) == 1 && X509_set_issuer_name(x, name) == 1 &&
      X509_gmtime_adj(X509_getm_notBefore(x), 0) &&
      ASN1_TIME_set_string(X509_getm_notAfter(x), not_after) == 1 &&
      X509_set_pubkey(x, key) == 1 && X509_sign(x, key, EVP_sha256()) > 0 &&
      PEM_write_bio_X509(b, x) == 1 && (n = BIO_get_mem_data(b, &data)) > 0) {
    pem = calloc(1, (size_t)n + 1);
    if (pem)
      memcpy(pem, data, (size_t)n);
  }
  BIO_free(b);
  X509_NAME_free(name);
  X509_free(x);
  EVP_PKEY_free(key);
  return pem;
}

/* A CSR for a key type AWS refuses (Ed25519), signed correctly. */
static char *ed25519_csr(void)
{
  EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
  X509_REQ *req = X509_REQ_new();
  BIO *b = BIO_new(BIO_s_mem());
  char *data = NULL, *pem = NULL;
  long n;

  if (key && req && b && X509_REQ_set_pubkey(req, key) == 1 &&
      X509_REQ_sign(req, key, NULL) > 0 && PEM_write_bio_X509_REQ(b, req) == 1 &&
      (n = BIO_get_mem_data(b, &data)) > 0) {
    pem = calloc(1, (size_t)n + 1);
    if (pem)
      memcpy(pem, data, (size_t)n);
  }
  BIO_free(b);
  X509_REQ_free(req);
  EVP_PKEY_free(key);
  return pem;
}

/* The same CSR with one bit of its signature flipped. */
static char *corrupt_csr(const char *csr_pem)
{
  BIO *in = BIO_new_mem_buf(csr_pem, -1), *out = BIO_new(BIO_s_mem());
  X509_REQ *req = in ? PEM_read_bio_X509_REQ(in, NULL, NULL, NULL) : NULL;
  const ASN1_BIT_STRING *sig = NULL;
  char *data = NULL, *pem = NULL;
  long n;

  if (req && out) {
    X509_REQ_get0_signature(req, &sig, NULL);
    /* Flip a bit deep inside r, so the DER stays well-formed and only the
     * signature check can catch it. */
    ((ASN1_BIT_STRING *)sig)->data[12] ^= 0x01;
    if (PEM_write_bio_X509_REQ(out, req) == 1 && (n = BIO_get_mem_data(out, &data)) > 0) {
      pem = calloc(1, (size_t)n + 1);
      if (pem)
        memcpy(pem, data, (size_t)n);
    }
  }
  X509_REQ_free(req);
  BIO_free(in);
  BIO_free(out);
  return pem;
}

/* ---- Tests -------------------------------------------------------------- */

static void test_keygen_and_csr(void)
{
  char *k1 = NULL, *k2 = NULL, *csr = NULL;
  char out[4096];

  ASSERT_EQ(ca_keygen(&k1, g_err, sizeof(g_err)), 0);
  ASSERT_EQ(ca_keygen(&k2, g_err, sizeof(g_err)), 0);
  ASSERT_TRUE(k1 && strncmp(k1, "-----BEGIN PRIVATE KEY-----\n", 28) == 0);
  ASSERT_TRUE(k1 && k2 && strcmp(k1, k2) != 0);

  ASSERT_EQ(ca_make_csr(k1, "leaf-0001", &csr, g_err, sizeof(g_err)), 0);
  ASSERT_TRUE(csr && strncmp(csr, "-----BEGIN CERTIFICATE REQUEST-----\n", 36) == 0);
  /* openssl agrees: the key is P-256 PKCS#8, the CSR verifies and has the CN. */
  ASSERT_TRUE(write_file("k1.pem", k1) && write_file("k1.csr", csr));
  ASSERT_EQ(run("openssl pkey -in k1.pem -noout -text 2>&1", out, sizeof(out)), 0);
  ASSERT_TRUE(strstr(out, "prime256v1") != NULL || strstr(out, "P-256") != NULL);
  ASSERT_EQ(run("openssl req -in k1.csr -noout -verify -subject 2>&1", out, sizeof(out)), 0);
  ASSERT_TRUE(strstr(out, "CN = leaf-0001") != NULL);

  /* Bad inputs fail with a reason and no output. */
  free(csr);
  csr = (char *)1;
  ASSERT_EQ(ca_make_csr("not a key", "x", &csr, g_err, sizeof(g_err)), -EINVAL);
  ASSERT_TRUE(csr == NULL);
  ASSERT_TRUE(g_err[0] != '\0');
  ASSERT_EQ(ca_make_csr(k1, "", &csr, g_err, sizeof(g_err)), -EINVAL);
  ASSERT_EQ(ca_make_csr(k1, NULL, &csr, g_err, sizeof(g_err)), -EINVAL);
  /* RFC 5280 ub-common-name is 64. */
  ASSERT_EQ(ca_make_csr(k1, "0123456789012345678901234567890123456789012345678901234567890123456",
                        &csr, g_err, sizeof(g_err)),
            -EINVAL);
  ASSERT_TRUE(csr == NULL);
  secret_free(k1);
  secret_free(k2);
  secret_free(NULL);
}

static void test_encrypted_key_refused(void)
{
  EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
  BIO *b = BIO_new(BIO_s_mem());
  char *data = NULL, *pem, *csr = NULL;
  long n = 0;

  ASSERT_TRUE(key && b);
  ASSERT_EQ(PEM_write_bio_PKCS8PrivateKey(b, key, EVP_aes_128_cbc(), NULL, 0, NULL,
                                          (void *)"secret"),
            1);
  n = BIO_get_mem_data(b, &data);
  pem = calloc(1, (size_t)n + 1);
  ASSERT_TRUE(pem != NULL);
  if (pem) {
    memcpy(pem, data, (size_t)n);
    /* Must fail at once rather than prompt for a passphrase on the tty. */
    ASSERT_EQ(ca_make_csr(pem, "x", &csr, g_err, sizeof(g_err)), -EINVAL);
    ASSERT_TRUE(strstr(g_err, "PRIVATE KEY-----") == NULL);
  }
  free(pem);
  BIO_free(b);
  EVP_PKEY_free(key);
}

static void test_ca_lifecycle(void)
{
  char ca_cert[256], ca_key[256], other_cert[256], other_key[256], out[8192];
  char *key = NULL, *csr = NULL, *leaf = NULL, *file_pem = NULL, *pem_before = NULL;
  char cn[80], fp[65];
  struct ca_ctx *ca = NULL, *ca2 = NULL, *other = NULL, *bad = NULL;
  struct stat st;
  int64_t not_after = 0;
  time_t t0 = time(NULL);

  path_in(ca_cert, sizeof(ca_cert), "ca.pem");
  path_in(ca_key, sizeof(ca_key), "ca.key");
  path_in(other_cert, sizeof(other_cert), "other.pem");
  path_in(other_key, sizeof(other_key), "other.key");

  /* Missing files without create: ENOENT, nothing written. */
  ASSERT_EQ(ca_open(ca_cert, ca_key, 0, "x", &ca, g_err, sizeof(g_err)), -ENOENT);
  ASSERT_TRUE(ca == NULL);
  ASSERT_TRUE(stat(ca_key, &st) != 0);

  /* Create. */
  ASSERT_EQ(ca_open(ca_cert, ca_key, 1, "fleetgw test CA", &ca, g_err, sizeof(g_err)), 0);
  ASSERT_TRUE(ca != NULL);
  if (!ca) {
    fprintf(stderr, "  %s\n", g_err);
    return;
  }
  ASSERT_EQ(stat(ca_key, &st), 0);
  ASSERT_EQ(st.st_mode & 0777, 0600);
  ASSERT_EQ(stat(ca_cert, &st), 0);
  file_pem = read_file(ca_cert);
  ASSERT_STR_EQ(file_pem, ca_cert_pem(ca));
  pem_before = strdup(ca_cert_pem(ca));

  /* The CA certificate has the extensions a CA needs. */
  ASSERT_EQ(run("openssl x509 -in ca.pem -noout -text", out, sizeof(out)), 0);
  ASSERT_TRUE(strstr(out, "X509v3 Basic Constraints: critical") != NULL);
  ASSERT_TRUE(strstr(out, "CA:TRUE") != NULL);
  ASSERT_TRUE(strstr(out, "X509v3 Key Usage: critical") != NULL);
  ASSERT_TRUE(strstr(out, "Certificate Sign, CRL Sign") != NULL);
  ASSERT_TRUE(strstr(out, "X509v3 Subject Key Identifier") != NULL);
  ASSERT_TRUE(strstr(out, "Subject: CN = fleetgw test CA") != NULL);
  ASSERT_EQ(ca_cert_info(ca_cert_pem(ca), &not_after, fp, cn, sizeof(cn), g_err, sizeof(g_err)),
            0);
  ASSERT_STR_EQ(cn, "fleetgw test CA");
  /* Ten years, give or take leap days and the seconds this test took. */
  ASSERT_TRUE(not_after >= (int64_t)t0 + 3650LL * 86400 - 5 &&
              not_after <= (int64_t)t0 + 3650LL * 86400 + 5);

  /* Sign a leaf.  The CSR says one CN, the gateway decides another; the
   * gateway's wins. */
  ASSERT_EQ(ca_keygen(&key, g_err, sizeof(g_err)), 0);
  ASSERT_EQ(ca_make_csr(key, "what-the-device-asked", &csr, g_err, sizeof(g_err)), 0);
  ASSERT_EQ(ca_sign_csr(ca, csr, "leaf-42", 30, &leaf, g_err, sizeof(g_err)), 0);
  ASSERT_TRUE(leaf != NULL);
  if (leaf) {
    ASSERT_TRUE(write_file("leaf.pem", leaf));
    ASSERT_EQ(run("openssl verify -CAfile ca.pem leaf.pem", out, sizeof(out)), 0);
    ASSERT_STR_EQ(out, "leaf.pem: OK\n");
    ASSERT_EQ(run("openssl verify -CAfile ca.pem -purpose sslclient leaf.pem", NULL, 0), 0);
    /* ... and a server certificate it is not. */
    ASSERT_TRUE(run("openssl verify -CAfile ca.pem -purpose sslserver leaf.pem 2>&1", NULL, 0) !=
                0);
    ASSERT_EQ(run("openssl x509 -in leaf.pem -noout -text", out, sizeof(out)), 0);
    ASSERT_TRUE(strstr(out, "Subject: CN = leaf-42\n") != NULL);
    ASSERT_TRUE(strstr(out, "what-the-device-asked") == NULL);
    ASSERT_TRUE(strstr(out, "Issuer: CN = fleetgw test CA") != NULL);
    ASSERT_TRUE(strstr(out, "X509v3 Extended Key Usage: \n                TLS Web Client "
                            "Authentication\n") != NULL);
    ASSERT_TRUE(strstr(out, "X509v3 Key Usage: critical\n                Digital Signature\n") !=
                NULL);
    ASSERT_TRUE(strstr(out, "CA:FALSE") != NULL);
    ASSERT_TRUE(strstr(out, "X509v3 Authority Key Identifier") != NULL);
    ASSERT_TRUE(strstr(out, "Signature Algorithm: ecdsa-with-SHA256") != NULL);
    ASSERT_EQ(ca_cert_info(leaf, &not_after, fp, cn, sizeof(cn), g_err, sizeof(g_err)), 0);
    ASSERT_STR_EQ(cn, "leaf-42");
    ASSERT_TRUE(not_after >= (int64_t)t0 + 30 * 86400 - 5 &&
                not_after <= (int64_t)t0 + 30 * 86400 + 5);
    /* The serial is random and 128 bits: at least 15 significant bytes
     * (a 1-in-65536 chance of 14 is excluded by requiring >= 13). */
    ASSERT_EQ(run("openssl x509 -in leaf.pem -noout -serial | cut -d= -f2 | tr -d '\\n' | wc -c",
                  out, sizeof(out)),
              0);
    ASSERT_TRUE(atoi(out) >= 26 && atoi(out) <= 34);
    ASSERT_TRUE(ca_cert_matches_key(leaf, key, NULL));
    ASSERT_TRUE(ca_cert_matches_key(leaf, NULL, csr));
  }

  /* Reopen: the same CA comes back, the files are untouched. */
  ASSERT_EQ(ca_open(ca_cert, ca_key, 1, "ignored", &ca2, g_err, sizeof(g_err)), 0);
  ASSERT_TRUE(ca2 != NULL);
  if (ca2) {
    char *leaf2 = NULL;
    ASSERT_STR_EQ(ca_cert_pem(ca2), pem_before);
    ASSERT_EQ(ca_sign_csr(ca2, csr, "leaf-43", 1, &leaf2, g_err, sizeof(g_err)), 0);
    ASSERT_TRUE(leaf2 && write_file("leaf2.pem", leaf2));
    ASSERT_EQ(run("openssl verify -CAfile ca.pem leaf2.pem", NULL, 0), 0);
    /* Two certificates for the same CSR differ (random serials). */
    ASSERT_TRUE(leaf && leaf2 && strcmp(leaf, leaf2) != 0);
    free(leaf2);
    ca_close(ca2);
  }

  /* A second CA; its key with the first CA's certificate is refused. */
  ASSERT_EQ(ca_open(other_cert, other_key, 1, "other CA", &other, g_err, sizeof(g_err)), 0);
  ca_close(other);
  ASSERT_EQ(ca_open(ca_cert, other_key, 0, NULL, &bad, g_err, sizeof(g_err)), -EKEYREJECTED);
  ASSERT_TRUE(bad == NULL);
  ASSERT_TRUE(strstr(g_err, "does not match") != NULL);
  ASSERT_TRUE(strstr(g_err, "PRIVATE KEY-----") == NULL);

  /* Half a CA (one file missing) is refused, and nothing is overwritten. */
  ASSERT_EQ(ca_open(ca_cert, "/nonexistent-dir/ca.key", 1, "x", &bad, g_err, sizeof(g_err)),
            -EEXIST);
  ASSERT_TRUE(bad == NULL);
  {
    char *again = read_file(ca_cert);
    ASSERT_STR_EQ(again, pem_before);
    free(again);
  }
  /* A leaf certificate (not a CA) with its own key is refused as a CA. */
  if (leaf) {
    ASSERT_TRUE(write_file("leafkey.pem", key));
    ASSERT_EQ(run("chmod 600 leafkey.pem", NULL, 0), 0);
    {
      char lp[256], lk[256];
      path_in(lp, sizeof(lp), "leaf.pem");
      path_in(lk, sizeof(lk), "leafkey.pem");
      ASSERT_EQ(ca_open(lp, lk, 0, NULL, &bad, g_err, sizeof(g_err)), -EKEYREJECTED);
      ASSERT_TRUE(strstr(g_err, "not a CA") != NULL);
    }
  }

  /* Bad CSRs. */
  {
    char *forged = corrupt_csr(csr), *ed = ed25519_csr(), *bad_leaf = (char *)1;
    ASSERT_TRUE(forged != NULL && ed != NULL);
    ASSERT_EQ(ca_sign_csr(ca, forged, "leaf-x", 30, &bad_leaf, g_err, sizeof(g_err)), -EBADMSG);
    ASSERT_TRUE(bad_leaf == NULL);
    ASSERT_TRUE(strstr(g_err, "signature") != NULL);
    ASSERT_EQ(ca_sign_csr(ca, ed, "leaf-x", 30, &bad_leaf, g_err, sizeof(g_err)), -EBADMSG);
    ASSERT_EQ(ca_sign_csr(ca, "garbage", "leaf-x", 30, &bad_leaf, g_err, sizeof(g_err)), -EINVAL);
    ASSERT_EQ(ca_sign_csr(ca, csr, "", 30, &bad_leaf, g_err, sizeof(g_err)), -EINVAL);
    ASSERT_EQ(ca_sign_csr(ca, csr, "leaf-x", 0, &bad_leaf, g_err, sizeof(g_err)), -EINVAL);
    ASSERT_EQ(ca_sign_csr(ca, csr, "leaf-x", -5, &bad_leaf, g_err, sizeof(g_err)), -EINVAL);
    ASSERT_TRUE(bad_leaf == NULL);
    free(forged);
    free(ed);
  }

  /* A P-384 CSR is fine (docs/protocol-notes.md §5.4). */
  {
    EVP_PKEY *k384 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
    BIO *b = BIO_new(BIO_s_mem());
    char *data = NULL, *kpem = NULL, *csr384 = NULL, *leaf384 = NULL;
    long n;
    if (k384 && b && PEM_write_bio_PKCS8PrivateKey(b, k384, NULL, NULL, 0, NULL, NULL) == 1 &&
        (n = BIO_get_mem_data(b, &data)) > 0 && (kpem = calloc(1, (size_t)n + 1)) != NULL)
      memcpy(kpem, data, (size_t)n);
    ASSERT_TRUE(kpem != NULL);
    ASSERT_EQ(ca_make_csr(kpem, "p384", &csr384, g_err, sizeof(g_err)), 0);
    ASSERT_EQ(ca_sign_csr(ca, csr384, "p384", 10, &leaf384, g_err, sizeof(g_err)), 0);
    ASSERT_TRUE(ca_cert_matches_key(leaf384, kpem, NULL));
    secret_free(kpem);
    free(csr384);
    free(leaf384);
    BIO_free(b);
    EVP_PKEY_free(k384);
  }

  free(file_pem);
  free(pem_before);
  free(leaf);
  free(csr);
  secret_free(key);
  ca_close(ca);
}

static void test_cert_info_vs_openssl(void)
{
  char *key = NULL, *csr = NULL, *leaf = NULL;
  char out[512], cmd[256], fp[65], norm[65], cn[64];
  struct ca_ctx *ca = NULL;
  char cf[256], kf[256];
  int64_t not_after = 0;
  size_t i, j = 0;

  path_in(cf, sizeof(cf), "info-ca.pem");
  path_in(kf, sizeof(kf), "info-ca.key");
  ASSERT_EQ(ca_open(cf, kf, 1, "info CA", &ca, g_err, sizeof(g_err)), 0);
  ASSERT_EQ(ca_keygen(&key, g_err, sizeof(g_err)), 0);
  ASSERT_EQ(ca_make_csr(key, "info", &csr, g_err, sizeof(g_err)), 0);
  ASSERT_EQ(ca_sign_csr(ca, csr, "info-leaf", 397, &leaf, g_err, sizeof(g_err)), 0);
  ASSERT_TRUE(leaf && write_file("info.pem", leaf));
  ASSERT_EQ(ca_cert_info(leaf, &not_after, fp, cn, sizeof(cn), g_err, sizeof(g_err)), 0);
  ASSERT_STR_EQ(cn, "info-leaf");

  /* notAfter: what `openssl x509 -enddate` prints, converted by date(1). */
  snprintf(cmd, sizeof(cmd),
           "date -u -d \"$(openssl x509 -in info.pem -noout -enddate | cut -d= -f2)\" +%%s");
  ASSERT_EQ(run(cmd, out, sizeof(out)), 0);
  ASSERT_EQ(strtoll(out, NULL, 10), not_after);

  /* Fingerprint: "sha256 Fingerprint=AB:CD:..." without colons, lower case. */
  ASSERT_EQ(run("openssl x509 -in info.pem -noout -fingerprint -sha256", out, sizeof(out)), 0);
  for (i = 0; out[i] && out[i] != '='; i++) {
  }
  for (i = out[i] ? i + 1 : i; out[i] && out[i] != '\n' && j < 64; i++)
    if (out[i] != ':')
      norm[j++] = (char)(out[i] >= 'A' && out[i] <= 'F' ? out[i] - 'A' + 'a' : out[i]);
  norm[j] = '\0';
  ASSERT_EQ(j, 64);
  ASSERT_STR_EQ(fp, norm);

  /* Outputs are optional. */
  ASSERT_EQ(ca_cert_info(leaf, NULL, NULL, NULL, 0, g_err, sizeof(g_err)), 0);
  /* A CN buffer too small is an error, not a silent cut. */
  ASSERT_EQ(ca_cert_info(leaf, NULL, NULL, cn, 5, g_err, sizeof(g_err)), -EINVAL);
  ASSERT_EQ(ca_cert_info("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                         &not_after, fp, cn, sizeof(cn), g_err, sizeof(g_err)),
            -EINVAL);
  ASSERT_TRUE(g_err[0] != '\0');

  free(leaf);
  free(csr);
  secret_free(key);
  ca_close(ca);
}

static void test_not_after_2049(void)
{
  char *utc = cert_with_not_after("491231235959Z");
  char *gen = cert_with_not_after("20500101000000Z");
  char fp[65], cn[32];
  int64_t t = 0;

  /* docs/protocol-notes.md §5.4: AWS certificates expire at midnight UTC on
   * 2049-12-31 (23:59:59Z), the last instant UTCTime can express. */
  ASSERT_TRUE(utc != NULL && gen != NULL);
  ASSERT_EQ(ca_cert_info(utc, &t, fp, cn, sizeof(cn), g_err, sizeof(g_err)), 0);
  ASSERT_EQ(t, 2524607999LL);
  ASSERT_STR_EQ(cn, "aws-like");
  /* One second later needs GeneralizedTime. */
  ASSERT_EQ(ca_cert_info(gen, &t, NULL, NULL, 0, g_err, sizeof(g_err)), 0);
  ASSERT_EQ(t, 2524608000LL);
  free(utc);
  free(gen);
}

static void test_matches_key(void)
{
  char *k1 = NULL, *k2 = NULL, *csr1 = NULL, *csr2 = NULL, *leaf = NULL;
  struct ca_ctx *ca = NULL;
  char cf[256], kf[256];

  path_in(cf, sizeof(cf), "m-ca.pem");
  path_in(kf, sizeof(kf), "m-ca.key");
  ASSERT_EQ(ca_open(cf, kf, 1, "m CA", &ca, g_err, sizeof(g_err)), 0);
  ASSERT_EQ(ca_keygen(&k1, g_err, sizeof(g_err)), 0);
  ASSERT_EQ(ca_keygen(&k2, g_err, sizeof(g_err)), 0);
  ASSERT_EQ(ca_make_csr(k1, "m1", &csr1, g_err, sizeof(g_err)), 0);
  ASSERT_EQ(ca_make_csr(k2, "m2", &csr2, g_err, sizeof(g_err)), 0);
  ASSERT_EQ(ca_sign_csr(ca, csr1, "m1", 1, &leaf, g_err, sizeof(g_err)), 0);

  ASSERT_TRUE(ca_cert_matches_key(leaf, k1, NULL));
  ASSERT_TRUE(!ca_cert_matches_key(leaf, k2, NULL));
  ASSERT_TRUE(ca_cert_matches_key(leaf, NULL, csr1));
  ASSERT_TRUE(!ca_cert_matches_key(leaf, NULL, csr2));
  /* key_pem takes precedence over csr_pem. */
  ASSERT_TRUE(!ca_cert_matches_key(leaf, k2, csr1));
  ASSERT_TRUE(!ca_cert_matches_key(leaf, NULL, NULL));
  ASSERT_TRUE(!ca_cert_matches_key(leaf, "junk", NULL));
  ASSERT_TRUE(!ca_cert_matches_key("junk", k1, NULL));
  ASSERT_TRUE(!ca_cert_matches_key(NULL, k1, NULL));
  /* The CA's own certificate is not the leaf key's. */
  ASSERT_TRUE(!ca_cert_matches_key(ca_cert_pem(ca), k1, NULL));
  ASSERT_EQ(ERR_peek_error(), 0);

  free(leaf);
  free(csr1);
  free(csr2);
  secret_free(k1);
  secret_free(k2);
  ca_close(ca);
}

struct sign_job {
  struct ca_ctx *ca;
  const char *csr;
  int ok;
};

static void *sign_many(void *arg)
{
  struct sign_job *job = arg;
  char err[256];
  int i;

  job->ok = 0;
  for (i = 0; i < 20; i++) {
    char *leaf = NULL;
    if (ca_sign_csr(job->ca, job->csr, "threaded", 1, &leaf, err, sizeof(err)) == 0 && leaf &&
        ca_cert_matches_key(leaf, NULL, job->csr))
      job->ok++;
    free(leaf);
  }
  return NULL;
}

/* Signing from several threads at once with one ca_ctx (the uv_queue_work
 * case of local_ca.h). */
static void test_parallel_signing(void)
{
  struct sign_job jobs[4];
  pthread_t th[4];
  struct ca_ctx *ca = NULL;
  char *key = NULL, *csr = NULL;
  char cf[256], kf[256];
  int i;

  path_in(cf, sizeof(cf), "t-ca.pem");
  path_in(kf, sizeof(kf), "t-ca.key");
  ASSERT_EQ(ca_open(cf, kf, 1, "t CA", &ca, g_err, sizeof(g_err)), 0);
  ASSERT_EQ(ca_keygen(&key, g_err, sizeof(g_err)), 0);
  ASSERT_EQ(ca_make_csr(key, "t", &csr, g_err, sizeof(g_err)), 0);
  for (i = 0; i < 4; i++) {
    jobs[i].ca = ca;
    jobs[i].csr = csr;
    ASSERT_EQ(pthread_create(&th[i], NULL, sign_many, &jobs[i]), 0);
  }
  for (i = 0; i < 4; i++) {
    pthread_join(th[i], NULL);
    ASSERT_EQ(jobs[i].ok, 20);
  }
  free(csr);
  secret_free(key);
  ca_close(ca);
}

static void test_timing(void)
{
  struct ca_ctx *ca = NULL;
  char *key = NULL, *csr = NULL;
  char cf[256], kf[256];
  int64_t t0, t1;
  int i, ok = 0;

  path_in(cf, sizeof(cf), "b-ca.pem");
  path_in(kf, sizeof(kf), "b-ca.key");
  ASSERT_EQ(ca_open(cf, kf, 1, "bench CA", &ca, g_err, sizeof(g_err)), 0);

  t0 = now_ms();
  for (i = 0; i < 100; i++) {
    char *k = NULL;
    if (ca_keygen(&k, g_err, sizeof(g_err)) == 0)
      ok++;
    secret_free(k);
  }
  t1 = now_ms();
  ASSERT_EQ(ok, 100);
  fprintf(stderr, "  100 P-256 keygens: %lld ms\n", (long long)(t1 - t0));

  ASSERT_EQ(ca_keygen(&key, g_err, sizeof(g_err)), 0);
  ASSERT_EQ(ca_make_csr(key, "bench", &csr, g_err, sizeof(g_err)), 0);
  ok = 0;
  t0 = now_ms();
  for (i = 0; i < 100; i++) {
    char *leaf = NULL;
    if (ca_sign_csr(ca, csr, "bench", 365, &leaf, g_err, sizeof(g_err)) == 0)
      ok++;
    free(leaf);
  }
  t1 = now_ms();
  ASSERT_EQ(ok, 100);
  fprintf(stderr, "  100 CSR signings (verify + sign + PEM): %lld ms\n", (long long)(t1 - t0));

  free(csr);
  secret_free(key);
  ca_close(ca);
}

int main(void)
{
  char cmd[128];
  int rc;

  snprintf(g_dir, sizeof(g_dir), "/tmp/fleetgw-ca-XXXXXX");
  if (!mkdtemp(g_dir)) {
    perror("mkdtemp");
    return 1;
  }
  RUN(test_keygen_and_csr);
  RUN(test_encrypted_key_refused);
  RUN(test_ca_lifecycle);
  RUN(test_cert_info_vs_openssl);
  RUN(test_not_after_2049);
  RUN(test_matches_key);
  RUN(test_parallel_signing);
  RUN(test_timing);
  rc = TEST_END();
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", g_dir);
  return rc;
}
