/*
 * local_ca.c - keys, CSRs and the gateway's own CA, with OpenSSL 3.
 *
 * Only the EVP/X509 APIs of OpenSSL 3 are used (no RSA_ or EC_KEY_ calls).
 * There is no static mutable state: every function works on its arguments
 * and on a struct ca_ctx that is read-only once ca_open returns, so the
 * expensive calls may run on libuv worker threads in parallel.  OpenSSL's
 * error queue is per thread, so reading it here is safe too.
 *
 * Return values: 0, or a negative errno value:
 *   -EINVAL  bad argument, or a PEM that does not parse;
 *   -EBADMSG a CSR whose signature does not verify, or whose key type AWS
 *            would refuse as well (see check_csr_key);
 *   -EKEYREJECTED  a CA key that is not the CA certificate's key, or a CA
 *            certificate that is not a CA;
 *   -ENOENT  CA files missing and create == 0;
 *   -EEXIST  only one of the two CA files exists;
 *   -ENOMEM  allocation failure;
 *   -EIO     any other OpenSSL failure, or a file write error.
 * The reason is written to err[errlen]: our own words plus the reason
 * string of OpenSSL's most recent queued error.  No key material, file
 * contents or error-queue "data" strings are ever copied into it.
 */
#define _DEFAULT_SOURCE /* timegm(); the build defines _POSIX_C_SOURCE only */

#include "local_ca.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "secret.h"

/* The CA certificate is valid for 10 years (local_ca.h). */
#define CA_DAYS 3650
/* Leaf certificates start an hour in the past so that a device whose clock
 * is a little behind the gateway's accepts them (local_ca.h). */
#define BACKDATE_SECONDS (-3600L)
/* An upper bound on leaf validity that keeps the notAfter arithmetic far
 * from overflow.  AWS's own certificates run to 2049-12-31
 * (docs/protocol-notes.md §5.4), about 25 years, so a century is generous. */
#define MAX_DAYS 36500

struct ca_ctx {
  X509 *cert;
  EVP_PKEY *key;
  char *cert_pem;
};

/* Writes "what: <OpenSSL reason>" (or just what) into err and empties this
 * thread's error queue so the next call starts clean.  Returns rc. */
static int fail(char *err, size_t errlen, int rc, const char *what)
{
  unsigned long e = ERR_peek_last_error();
  char reason[256];

  if (err && errlen > 0) {
    if (e != 0) {
      ERR_error_string_n(e, reason, sizeof(reason));
      snprintf(err, errlen, "%s: %s", what, reason);
    } else {
      snprintf(err, errlen, "%s", what);
    }
  }
  ERR_clear_error();
  return rc;
}

/* Never prompts: a passphrase-protected key is refused, since the gateway
 * runs unattended and OpenSSL's default callback would read the tty. */
static int no_password(char *buf, int size, int rwflag, void *u)
{
  (void)buf;
  (void)size;
  (void)rwflag;
  (void)u;
  return -1;
}

static BIO *bio_from_string(const char *s)
{
  size_t n = strlen(s);

  if (n > INT_MAX)
    return NULL;
  return BIO_new_mem_buf(s, (int)n);
}

static EVP_PKEY *read_key(const char *pem)
{
  BIO *b = bio_from_string(pem);
  EVP_PKEY *k;

  if (!b)
    return NULL;
  k = PEM_read_bio_PrivateKey(b, NULL, no_password, NULL);
  BIO_free(b);
  return k;
}

static X509 *read_cert(const char *pem)
{
  BIO *b = bio_from_string(pem);
  X509 *x;

  if (!b)
    return NULL;
  x = PEM_read_bio_X509(b, NULL, no_password, NULL);
  BIO_free(b);
  return x;
}

static X509_REQ *read_csr(const char *pem)
{
  BIO *b = bio_from_string(pem);
  X509_REQ *r;

  if (!b)
    return NULL;
  r = PEM_read_bio_X509_REQ(b, NULL, no_password, NULL);
  BIO_free(b);
  return r;
}

/* Copies a memory BIO's contents into a malloc'd NUL-terminated string. */
static int bio_to_string(BIO *b, char **out)
{
  char *data = NULL;
  long n = BIO_get_mem_data(b, &data);
  char *s;

  if (n < 0 || !data)
    return -EIO;
  s = malloc((size_t)n + 1);
  if (!s)
    return -ENOMEM;
  memcpy(s, data, (size_t)n);
  s[n] = '\0';
  *out = s;
  return 0;
}

static int cert_to_pem(X509 *x, char **out)
{
  BIO *b = BIO_new(BIO_s_mem());
  int rc;

  if (!b)
    return -ENOMEM;
  rc = PEM_write_bio_X509(b, x) == 1 ? bio_to_string(b, out) : -EIO;
  BIO_free(b);
  return rc;
}

/* PKCS#8 PEM of key.  The BIO is a "secure memory" BIO, whose buffer
 * OpenSSL wipes when it grows and when it is freed, so the only copy that
 * outlives this call is the caller's. */
static int key_to_pem(EVP_PKEY *key, char **out)
{
  BIO *b = BIO_new(BIO_s_secmem());
  int rc;

  if (!b)
    return -ENOMEM;
  rc = PEM_write_bio_PKCS8PrivateKey(b, key, NULL, NULL, 0, NULL, NULL) == 1
         ? bio_to_string(b, out)
         : -EIO;
  BIO_free(b);
  return rc;
}

static EVP_PKEY *new_p256_key(void)
{
  /* docs/protocol-notes.md §5.4: AWS accepts CSRs for ECC keys on NIST
   * P-256 or P-384; fleetgw makes a P-256 key per device, and the local CA
   * uses the same so both backends look alike. */
  return EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
}

int ca_keygen(char **key_pem, char *err, size_t errlen)
{
  EVP_PKEY *key;
  int rc;

  if (!key_pem)
    return fail(err, errlen, -EINVAL, "ca_keygen: no output pointer");
  *key_pem = NULL;
  ERR_clear_error();
  key = new_p256_key();
  if (!key)
    return fail(err, errlen, -EIO, "ca_keygen: P-256 key generation failed");
  rc = key_to_pem(key, key_pem);
  EVP_PKEY_free(key);
  if (rc < 0)
    return fail(err, errlen, rc, "ca_keygen: cannot encode the key");
  return 0;
}

/* A name holding just CN=cn.  The length limit of the CN (64, RFC 5280
 * ub-common-name) is enforced by OpenSSL here. */
static X509_NAME *name_with_cn(const char *cn)
{
  X509_NAME *n = X509_NAME_new();

  if (!n)
    return NULL;
  if (X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1,
                                 0) != 1) {
    X509_NAME_free(n);
    return NULL;
  }
  return n;
}

int ca_make_csr(const char *key_pem, const char *common_name, char **csr_pem, char *err,
                size_t errlen)
{
  EVP_PKEY *key = NULL;
  X509_REQ *req = NULL;
  X509_NAME *name = NULL;
  BIO *b = NULL;
  int rc;

  if (!csr_pem || !key_pem || !common_name || common_name[0] == '\0')
    return fail(err, errlen, -EINVAL, "ca_make_csr: missing key, name or output");
  *csr_pem = NULL;
  ERR_clear_error();

  key = read_key(key_pem);
  if (!key) {
    rc = fail(err, errlen, -EINVAL, "ca_make_csr: cannot read the private key");
    goto out;
  }
  name = name_with_cn(common_name);
  if (!name) {
    rc = fail(err, errlen, -EINVAL, "ca_make_csr: invalid common name");
    goto out_key;
  }
  req = X509_REQ_new();
  if (!req || X509_REQ_set_version(req, X509_REQ_VERSION_1) != 1 ||
      X509_REQ_set_subject_name(req, name) != 1 || X509_REQ_set_pubkey(req, key) != 1 ||
      X509_REQ_sign(req, key, EVP_sha256()) <= 0) {
    rc = fail(err, errlen, -EIO, "ca_make_csr: cannot build the CSR");
    goto out_req;
  }
  b = BIO_new(BIO_s_mem());
  if (!b || PEM_write_bio_X509_REQ(b, req) != 1) {
    rc = fail(err, errlen, -EIO, "ca_make_csr: cannot encode the CSR");
    goto out_bio;
  }
  rc = bio_to_string(b, csr_pem);
  if (rc < 0)
    fail(err, errlen, rc, "ca_make_csr: cannot copy the CSR");

out_bio:
  BIO_free(b);
out_req:
  X509_REQ_free(req);
  X509_NAME_free(name);
out_key:
  EVP_PKEY_free(key);
out:
  return rc;
}

/* A positive 128-bit random serial.  RFC 5280 allows up to 20 octets; 16
 * random bytes encode in at most 17 (a leading zero when the top bit is
 * set).  Random serials make two certificates for the same key distinct,
 * as AWS's are (docs/protocol-notes.md §5.4: reusing a CSR still yields a
 * distinct certificate). */
static int set_random_serial(X509 *x)
{
  unsigned char raw[16];
  BIGNUM *bn;
  int ok;

  if (RAND_bytes(raw, sizeof(raw)) != 1)
    return 0;
  bn = BN_bin2bn(raw, sizeof(raw), NULL);
  if (!bn)
    return 0;
  ok = !BN_is_zero(bn) && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL;
  BN_free(bn);
  return ok;
}

/* Adds one extension, written in openssl.cnf syntax, with issuer and subject
 * taken from v3 (the issuer's key ID for authorityKeyIdentifier, the
 * subject's public key for subjectKeyIdentifier). */
static int add_ext(X509 *x, X509V3_CTX *v3, int nid, const char *value)
{
  X509_EXTENSION *ext = X509V3_EXT_nconf_nid(NULL, v3, nid, value);
  int ok;

  if (!ext)
    return 0;
  ok = X509_add_ext(x, ext, -1) == 1;
  X509_EXTENSION_free(ext);
  return ok;
}

/* Builds the self-signed CA certificate for key. */
static X509 *make_ca_cert(EVP_PKEY *key, const char *subject_cn)
{
  X509_NAME *name = name_with_cn(subject_cn);
  X509V3_CTX v3;
  X509 *x = NULL;
  int ok;

  if (!name)
    return NULL;
  x = X509_new();
  ok = x && X509_set_version(x, X509_VERSION_3) == 1 && set_random_serial(x) &&
       X509_set_subject_name(x, name) == 1 && X509_set_issuer_name(x, name) == 1 &&
       X509_gmtime_adj(X509_getm_notBefore(x), BACKDATE_SECONDS) != NULL &&
       X509_time_adj_ex(X509_getm_notAfter(x), CA_DAYS, 0, NULL) != NULL &&
       X509_set_pubkey(x, key) == 1;
  if (ok) {
    /* Self-signed: the certificate is its own issuer.  The SKI goes in
     * first so that the AKI can copy it. */
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    ok = add_ext(x, &v3, NID_basic_constraints, "critical,CA:TRUE") &&
         add_ext(x, &v3, NID_key_usage, "critical,keyCertSign,cRLSign") &&
         add_ext(x, &v3, NID_subject_key_identifier, "hash") &&
         add_ext(x, &v3, NID_authority_key_identifier, "keyid:always") &&
         X509_sign(x, key, EVP_sha256()) > 0;
  }
  X509_NAME_free(name);
  if (!ok) {
    X509_free(x);
    return NULL;
  }
  return x;
}

/* Writes the whole string to a new file; O_EXCL so an existing file (a CA
 * from an earlier run, or a file an attacker planted) is never replaced. */
static int write_new_file(const char *path, const char *data, mode_t mode)
{
  size_t len = strlen(data), off = 0;
  int fd, rc = 0;

  fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0)
    return -errno;
  while (off < len) {
    ssize_t n = write(fd, data + off, len - off);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      rc = -errno;
      break;
    }
    off += (size_t)n;
  }
  /* The CA must survive a power cut right after first start: leaves will
   * hold certificates signed by this key. */
  if (rc == 0 && fsync(fd) != 0)
    rc = -errno;
  if (close(fd) != 0 && rc == 0)
    rc = -errno;
  if (rc < 0)
    unlink(path);
  return rc;
}

static int create_ca(struct ca_ctx *ca, const char *cert_file, const char *key_file,
                     const char *subject_cn, char *err, size_t errlen)
{
  char *key_pem = NULL;
  char msg[160];
  int rc;

  ca->key = new_p256_key();
  if (!ca->key)
    return fail(err, errlen, -EIO, "ca_open: CA key generation failed");
  ca->cert = make_ca_cert(ca->key, subject_cn);
  if (!ca->cert)
    return fail(err, errlen, -EIO, "ca_open: cannot build the CA certificate");
  rc = cert_to_pem(ca->cert, &ca->cert_pem);
  if (rc < 0)
    return fail(err, errlen, rc, "ca_open: cannot encode the CA certificate");
  rc = key_to_pem(ca->key, &key_pem);
  if (rc < 0)
    return fail(err, errlen, rc, "ca_open: cannot encode the CA key");

  /* Key first, mode 0600: only the gateway's user may read it.  If the
   * certificate cannot be written the key is removed again, so the next
   * start does not find half a CA. */
  rc = write_new_file(key_file, key_pem, 0600);
  secret_free(key_pem);
  if (rc < 0) {
    snprintf(msg, sizeof(msg), "ca_open: cannot create the CA key file: %s", strerror(-rc));
    return fail(err, errlen, rc, msg);
  }
  rc = write_new_file(cert_file, ca->cert_pem, 0644);
  if (rc < 0) {
    unlink(key_file);
    snprintf(msg, sizeof(msg), "ca_open: cannot create the CA certificate file: %s",
             strerror(-rc));
    return fail(err, errlen, rc, msg);
  }
  return 0;
}

static int load_ca(struct ca_ctx *ca, const char *cert_file, const char *key_file, char *err,
                   size_t errlen)
{
  BIO *b;
  int rc;

  b = BIO_new_file(cert_file, "r");
  if (!b)
    return fail(err, errlen, -EIO, "ca_open: cannot open the CA certificate file");
  ca->cert = PEM_read_bio_X509(b, NULL, no_password, NULL);
  BIO_free(b);
  if (!ca->cert)
    return fail(err, errlen, -EINVAL, "ca_open: cannot read the CA certificate");

  b = BIO_new_file(key_file, "r");
  if (!b)
    return fail(err, errlen, -EIO, "ca_open: cannot open the CA key file");
  ca->key = PEM_read_bio_PrivateKey(b, NULL, no_password, NULL);
  BIO_free(b);
  if (!ca->key)
    return fail(err, errlen, -EINVAL, "ca_open: cannot read the CA key");

  /* A key that is not the certificate's would sign leaves that never
   * verify; refuse it now rather than at the first device. */
  if (EVP_PKEY_eq(X509_get0_pubkey(ca->cert), ca->key) != 1)
    return fail(err, errlen, -EKEYREJECTED, "ca_open: the CA key does not match the certificate");
  if (X509_check_ca(ca->cert) == 0)
    return fail(err, errlen, -EKEYREJECTED, "ca_open: the certificate is not a CA certificate");
  rc = cert_to_pem(ca->cert, &ca->cert_pem);
  if (rc < 0)
    return fail(err, errlen, rc, "ca_open: cannot encode the CA certificate");
  return 0;
}

int ca_open(const char *cert_file, const char *key_file, int create, const char *subject_cn,
            struct ca_ctx **out, char *err, size_t errlen)
{
  struct stat st;
  struct ca_ctx *ca;
  int have_cert, have_key, rc;

  if (!out || !cert_file || !key_file)
    return fail(err, errlen, -EINVAL, "ca_open: missing file name or output");
  *out = NULL;
  ERR_clear_error();
  have_cert = stat(cert_file, &st) == 0;
  have_key = stat(key_file, &st) == 0;
  if (have_cert != have_key)
    return fail(err, errlen, -EEXIST,
                have_cert ? "ca_open: CA certificate file exists but the key file does not"
                          : "ca_open: CA key file exists but the certificate file does not");
  if (!have_cert && !create)
    return fail(err, errlen, -ENOENT, "ca_open: CA files do not exist");
  if (!have_cert && (!subject_cn || subject_cn[0] == '\0'))
    return fail(err, errlen, -EINVAL, "ca_open: a new CA needs a subject name");

  ca = calloc(1, sizeof(*ca));
  if (!ca)
    return fail(err, errlen, -ENOMEM, "ca_open: out of memory");
  rc = have_cert ? load_ca(ca, cert_file, key_file, err, errlen)
                 : create_ca(ca, cert_file, key_file, subject_cn, err, errlen);
  if (rc < 0) {
    ca_close(ca);
    return rc;
  }
  /* OpenSSL caches decoded extensions inside the X509 the first time they
   * are needed.  Filling the cache now leaves the certificate truly
   * read-only when worker threads sign with it. */
  X509_check_purpose(ca->cert, -1, 0);
  ERR_clear_error();
  *out = ca;
  return 0;
}

void ca_close(struct ca_ctx *ca)
{
  if (!ca)
    return;
  X509_free(ca->cert);
  EVP_PKEY_free(ca->key);
  free(ca->cert_pem);
  free(ca);
}

const char *ca_cert_pem(const struct ca_ctx *ca)
{
  return ca ? ca->cert_pem : NULL;
}

/* The leaf key types the local CA accepts are the ones AWS accepts for
 * CreateCertificateFromCsr (docs/protocol-notes.md §5.4: RSA of at least
 * 2048 bits, or ECC on NIST P-256 or P-384), so a device that works with
 * one backend works with the other. */
static int csr_key_ok(EVP_PKEY *pub)
{
  char group[64];
  size_t glen = 0;

  switch (EVP_PKEY_get_base_id(pub)) {
  case EVP_PKEY_RSA:
    return EVP_PKEY_get_bits(pub) >= 2048;
  case EVP_PKEY_EC:
    if (EVP_PKEY_get_group_name(pub, group, sizeof(group), &glen) != 1)
      return 0;
    return strcmp(group, "prime256v1") == 0 || strcmp(group, "secp384r1") == 0 ||
           strcmp(group, "P-256") == 0 || strcmp(group, "P-384") == 0;
  default:
    return 0;
  }
}

int ca_sign_csr(struct ca_ctx *ca, const char *csr_pem, const char *common_name, int days,
                char **cert_pem, char *err, size_t errlen)
{
  X509_REQ *req = NULL;
  X509_NAME *subject = NULL;
  X509 *x = NULL;
  EVP_PKEY *pub;
  X509V3_CTX v3;
  int rc;

  if (!ca || !csr_pem || !cert_pem || !common_name || common_name[0] == '\0')
    return fail(err, errlen, -EINVAL, "ca_sign_csr: missing CA, CSR, name or output");
  *cert_pem = NULL;
  if (days < 1 || days > MAX_DAYS)
    return fail(err, errlen, -EINVAL, "ca_sign_csr: validity days out of range");
  ERR_clear_error();

  req = read_csr(csr_pem);
  if (!req)
    return fail(err, errlen, -EINVAL, "ca_sign_csr: cannot read the CSR");
  /* The CSR's signature proves the requester holds the private key; a CSR
   * that fails it is forged or corrupt. */
  pub = X509_REQ_get0_pubkey(req);
  if (!pub || X509_REQ_verify(req, pub) != 1) {
    rc = fail(err, errlen, -EBADMSG, "ca_sign_csr: CSR signature does not verify");
    goto out_req;
  }
  if (!csr_key_ok(pub)) {
    rc = fail(err, errlen, -EBADMSG,
              "ca_sign_csr: CSR key must be RSA >= 2048 bits or EC P-256/P-384");
    goto out_req;
  }
  /* The subject comes from the caller (the identity the gateway decided
   * on), never from the CSR, which the device wrote.  Nothing else of the
   * CSR is copied either: no requested extensions. */
  subject = name_with_cn(common_name);
  if (!subject) {
    rc = fail(err, errlen, -EINVAL, "ca_sign_csr: invalid common name");
    goto out_req;
  }

  x = X509_new();
  if (!x || X509_set_version(x, X509_VERSION_3) != 1 || !set_random_serial(x) ||
      X509_set_issuer_name(x, X509_get_subject_name(ca->cert)) != 1 ||
      X509_set_subject_name(x, subject) != 1 ||
      !X509_gmtime_adj(X509_getm_notBefore(x), BACKDATE_SECONDS) ||
      !X509_time_adj_ex(X509_getm_notAfter(x), days, 0, NULL) || X509_set_pubkey(x, pub) != 1) {
    rc = fail(err, errlen, -EIO, "ca_sign_csr: cannot build the certificate");
    goto out_cert;
  }
  X509V3_set_ctx(&v3, ca->cert, x, NULL, NULL, 0);
  if (!add_ext(x, &v3, NID_basic_constraints, "critical,CA:FALSE") ||
      !add_ext(x, &v3, NID_key_usage, "critical,digitalSignature") ||
      !add_ext(x, &v3, NID_ext_key_usage, "clientAuth") ||
      !add_ext(x, &v3, NID_subject_key_identifier, "hash") ||
      !add_ext(x, &v3, NID_authority_key_identifier, "keyid:always")) {
    rc = fail(err, errlen, -EIO, "ca_sign_csr: cannot add the certificate extensions");
    goto out_cert;
  }
  if (X509_sign(x, ca->key, EVP_sha256()) <= 0) {
    rc = fail(err, errlen, -EIO, "ca_sign_csr: signing failed");
    goto out_cert;
  }
  rc = cert_to_pem(x, cert_pem);
  if (rc < 0)
    fail(err, errlen, rc, "ca_sign_csr: cannot encode the certificate");

out_cert:
  X509_free(x);
  X509_NAME_free(subject);
out_req:
  X509_REQ_free(req);
  return rc;
}

int ca_cert_info(const char *cert_pem, int64_t *not_after, char fingerprint[65], char *cn,
                 size_t cn_cap, char *err, size_t errlen)
{
  static const char hex[] = "0123456789abcdef";
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0, i;
  X509 *x;
  int rc = 0;

  if (!cert_pem)
    return fail(err, errlen, -EINVAL, "ca_cert_info: no certificate");
  ERR_clear_error();
  x = read_cert(cert_pem);
  if (!x)
    return fail(err, errlen, -EINVAL, "ca_cert_info: cannot read the certificate");

  if (not_after) {
    struct tm tm;
    time_t t;

    /* docs/protocol-notes.md §5.4: the gateway parses and stores notAfter,
     * never assumes 2049-12-31.  ASN1_TIME_to_tm handles both UTCTime (years up
     * to 2049) and GeneralizedTime (2050 on) and yields UTC fields. */
    memset(&tm, 0, sizeof(tm));
    if (ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) != 1) {
      rc = fail(err, errlen, -EINVAL, "ca_cert_info: cannot read notAfter");
      goto out_cert;
    }
    t = timegm(&tm);
    if (t == (time_t)-1) {
      rc = fail(err, errlen, -EINVAL, "ca_cert_info: notAfter out of range");
      goto out_cert;
    }
    *not_after = (int64_t)t;
  }

  if (fingerprint) {
    if (X509_digest(x, EVP_sha256(), md, &mdlen) != 1 || mdlen != 32) {
      rc = fail(err, errlen, -EIO, "ca_cert_info: cannot hash the certificate");
      goto out_cert;
    }
    for (i = 0; i < mdlen; i++) {
      fingerprint[2 * i] = hex[md[i] >> 4];
      fingerprint[2 * i + 1] = hex[md[i] & 0x0f];
    }
    fingerprint[64] = '\0';
  }

  if (cn && cn_cap > 0) {
    const X509_NAME *subj = X509_get_subject_name(x);
    int idx = X509_NAME_get_index_by_NID(subj, NID_commonName, -1);
    unsigned char *utf8 = NULL;
    int n;

    cn[0] = '\0';
    if (idx >= 0) {
      n = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subj, idx)));
      if (n < 0) {
        rc = fail(err, errlen, -EINVAL, "ca_cert_info: cannot decode the common name");
        goto out_cert;
      }
      /* A CN with an embedded NUL would be cut short silently and could
       * then pass for another name; refuse it instead. */
      if ((size_t)n >= cn_cap || memchr(utf8, '\0', (size_t)n)) {
        OPENSSL_free(utf8);
        rc = fail(err, errlen, -EINVAL, "ca_cert_info: common name too long or contains NUL");
        goto out_cert;
      }
      memcpy(cn, utf8, (size_t)n);
      cn[n] = '\0';
      OPENSSL_free(utf8);
    }
  }

out_cert:
  X509_free(x);
  return rc;
}

int ca_cert_matches_key(const char *cert_pem, const char *key_pem, const char *csr_pem)
{
  X509 *x;
  int match = 0;

  if (!cert_pem || (!key_pem && !csr_pem))
    return 0;
  x = read_cert(cert_pem);
  if (!x)
    goto out;
  if (key_pem) {
    EVP_PKEY *key = read_key(key_pem);
    if (key) {
      /* EVP_PKEY_eq compares the public components only. */
      match = EVP_PKEY_eq(X509_get0_pubkey(x), key) == 1;
      EVP_PKEY_free(key);
    }
  } else {
    X509_REQ *req = read_csr(csr_pem);
    if (req) {
      EVP_PKEY *pub = X509_REQ_get0_pubkey(req);
      match = pub && EVP_PKEY_eq(X509_get0_pubkey(x), pub) == 1;
      X509_REQ_free(req);
    }
  }
  X509_free(x);
out:
  /* A mismatch is an answer, not an error: leave nothing queued for the
   * caller's next OpenSSL call to trip over. */
  ERR_clear_error();
  return match;
}
