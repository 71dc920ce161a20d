/*
 * Unit tests of gateway/upstream/tls.c over memory BIOs, in-process: the
 * client side is tls.c, the server side plain OpenSSL (an SSL with two
 * memory BIOs), and the test moves the ciphertext between them.
 *
 * The certificates are made here with OpenSSL's API into a temporary
 * directory:
 *   ca      the CA the client trusts (ca.pem)
 *   ca2     another CA, not trusted
 *   server  signed by ca, for DNS:localhost and IP:127.0.0.1
 *   rogue   signed by ca2, for DNS:localhost
 *   client  signed by ca, clientAuth, CN fleetgw-client
 *
 * Covered: handshake and data both ways (also large writes, and ciphertext
 * moved in odd pieces, and no memory to buffer it), TLS 1.2 as the
 * minimum, an untrusted chain, host name and IP mismatch, SNI for names only,
 * ALPN, client certificates (context default, per connection from files, or
 * an in-memory identity) and a server requiring one, close_notify both ways,
 * garbage from the peer before and after the handshake, renegotiation
 * refused, session resumption (offered to the same host only, kept apart
 * per client identity), and the constructors' argument errors.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "test.h"
#include "tls.h"

static char g_dir[64];
static char g_ca_file[128], g_client_crt[128], g_client_key[128];
static char *g_client_crt_pem, *g_client_key_pem;
enum { ID_CA, ID_CA2, ID_SERVER, ID_ROGUE, ID_CLIENT, N_ID };
static EVP_PKEY *g_key[N_ID];
static X509 *g_cert[N_ID];

/* OpenSSL's allocator (tls.c buffers ciphertext with it too): a request of
 * a size in [g_fail_min, g_fail_max] fails. */
static size_t g_fail_min, g_fail_max;

static bool fail_now(size_t n) { return g_fail_max && n >= g_fail_min && n <= g_fail_max; }

static void *t_malloc(size_t n, const char *file, int line)
{
  (void)file;
  (void)line;
  return fail_now(n) ? NULL : malloc(n);
}

static void *t_realloc(void *p, size_t n, const char *file, int line)
{
  (void)file;
  (void)line;
  return fail_now(n) ? NULL : realloc(p, n);
}

static void t_free(void *p, const char *file, int line)
{
  (void)file;
  (void)line;
  free(p);
}

/* ---- certificates --------------------------------------------------------- */

static EVP_PKEY *new_key(void) { return EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256"); }

static int add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
  X509V3_CTX v3;
  X509_EXTENSION *e;
  int ok;

  X509V3_set_ctx(&v3, issuer, x, NULL, NULL, 0);
  e = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
  if (!e)
    return 0;
  ok = X509_add_ext(x, e, -1);
  X509_EXTENSION_free(e);
  return ok;
}

/* A certificate for key, named cn, signed by issuer (NULL: self-signed). */
static X509 *make_cert(const char *cn, EVP_PKEY *key, X509 *issuer, EVP_PKEY *issuer_key,
                       bool ca, const char *san, const char *eku, long serial)
{
  X509 *x = X509_new();
  X509_NAME *name = X509_NAME_new();
  bool ok;

  ok = x && name &&
       X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1,
                                  0) == 1 &&
       X509_set_version(x, X509_VERSION_3) == 1 &&
       ASN1_INTEGER_set(X509_get_serialNumber(x), serial) == 1 &&
       X509_set_subject_name(x, name) == 1 &&
       X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name) == 1 &&
       X509_gmtime_adj(X509_getm_notBefore(x), -3600) &&
       X509_gmtime_adj(X509_getm_notAfter(x), 2 * 86400) && X509_set_pubkey(x, key) == 1;
  if (ok) {
    X509 *iss = issuer ? issuer : x;
    ok = add_ext(x, iss, NID_subject_key_identifier, "hash") &&
         (!issuer || add_ext(x, iss, NID_authority_key_identifier, "keyid:always"));
    if (ok && ca)
      ok = add_ext(x, iss, NID_basic_constraints, "critical,CA:TRUE") &&
           add_ext(x, iss, NID_key_usage, "critical,keyCertSign,cRLSign");
    if (ok && !ca)
      ok = add_ext(x, iss, NID_basic_constraints, "critical,CA:FALSE") &&
           add_ext(x, iss, NID_key_usage, "critical,digitalSignature");
    if (ok && san)
      ok = add_ext(x, iss, NID_subject_alt_name, san);
    if (ok && eku)
      ok = add_ext(x, iss, NID_ext_key_usage, eku);
  }
  ok = ok && X509_sign(x, issuer_key ? issuer_key : key, EVP_sha256()) > 0;
  X509_NAME_free(name);
  if (!ok) {
    X509_free(x);
    return NULL;
  }
  return x;
}

static int write_pem(const char *path, X509 *cert, EVP_PKEY *key)
{
  FILE *f = fopen(path, "w");
  int ok;
  if (!f)
    return -1;
  ok = cert ? PEM_write_X509(f, cert) : PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL);
  return fclose(f) == 0 && ok == 1 ? 0 : -1;
}

static char *pem_string(X509 *cert, EVP_PKEY *key)
{
  BIO *b = BIO_new(BIO_s_mem());
  char *data, *out = NULL;
  long n;
  int ok;

  if (!b)
    return NULL;
  ok = cert ? PEM_write_bio_X509(b, cert)
            : PEM_write_bio_PrivateKey(b, key, NULL, NULL, 0, NULL, NULL);
  if (ok == 1 && (n = BIO_get_mem_data(b, &data)) > 0 && (out = malloc((size_t)n + 1))) {
    memcpy(out, data, (size_t)n);
    out[n] = '\0';
  }
  BIO_free(b);
  return out;
}

static int make_certs(void)
{
  for (int i = 0; i < N_ID; i++)
    if (!(g_key[i] = new_key()))
      return -1;
  g_cert[ID_CA] = make_cert("fleetgw-test-ca", g_key[ID_CA], NULL, NULL, true, NULL, NULL, 1);
  g_cert[ID_CA2] = make_cert("fleetgw-test-ca2", g_key[ID_CA2], NULL, NULL, true, NULL, NULL, 2);
  if (!g_cert[ID_CA] || !g_cert[ID_CA2])
    return -1;
  g_cert[ID_SERVER] = make_cert("localhost", g_key[ID_SERVER], g_cert[ID_CA], g_key[ID_CA], false,
                       "DNS:localhost,IP:127.0.0.1", "serverAuth", 3);
  g_cert[ID_ROGUE] = make_cert("localhost", g_key[ID_ROGUE], g_cert[ID_CA2], g_key[ID_CA2], false, "DNS:localhost",
                      "serverAuth", 4);
  g_cert[ID_CLIENT] = make_cert("fleetgw-client", g_key[ID_CLIENT], g_cert[ID_CA], g_key[ID_CA], false, NULL,
                       "clientAuth", 5);
  if (!g_cert[ID_SERVER] || !g_cert[ID_ROGUE] || !g_cert[ID_CLIENT])
    return -1;
  snprintf(g_ca_file, sizeof g_ca_file, "%s/ca.pem", g_dir);
  snprintf(g_client_crt, sizeof g_client_crt, "%s/client.crt", g_dir);
  snprintf(g_client_key, sizeof g_client_key, "%s/client.key", g_dir);
  if (write_pem(g_ca_file, g_cert[ID_CA], NULL) != 0 || write_pem(g_client_crt, g_cert[ID_CLIENT], NULL) != 0 ||
      write_pem(g_client_key, NULL, g_key[ID_CLIENT]) != 0)
    return -1;
  g_client_crt_pem = pem_string(g_cert[ID_CLIENT], NULL);
  g_client_key_pem = pem_string(NULL, g_key[ID_CLIENT]);
  return g_client_crt_pem && g_client_key_pem ? 0 : -1;
}

/* ---- the server: plain OpenSSL over memory BIOs ----------------------------- */

struct server_opts {
  X509 *cert;               /* NULL: g_cert[ID_SERVER] */
  EVP_PKEY *key;
  int max_version;          /* 0: no limit */
  bool require_client_cert; /* verified against ca */
  const char *alpn_select;  /* answer ALPN with this protocol when offered */
};

struct server {
  SSL_CTX *ctx;
  SSL *ssl;
  BIO *rbio, *wbio;
  bool done;                /* handshake finished */
  bool failed;
  /* What the client showed. */
  bool alpn_called;
  unsigned char alpn_offer[64];
  unsigned alpn_offer_len;
  char sni[64];
  bool sni_seen;
  const char *alpn_select;
};

static int alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned inlen, void *arg)
{
  struct server *sv = arg;
  (void)ssl;
  sv->alpn_called = true;
  sv->alpn_offer_len = inlen < sizeof sv->alpn_offer ? inlen : (unsigned)sizeof sv->alpn_offer;
  memcpy(sv->alpn_offer, in, sv->alpn_offer_len);
  if (sv->alpn_select && inlen >= 1 && in[0] == strlen(sv->alpn_select) &&
      memcmp(in + 1, sv->alpn_select, in[0]) == 0) {
    *out = in + 1;
    *outlen = in[0];
    return SSL_TLSEXT_ERR_OK;
  }
  return SSL_TLSEXT_ERR_NOACK;
}

static int sni_cb(SSL *ssl, int *al, void *arg)
{
  struct server *sv = arg;
  const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
  (void)al;
  if (name) {
    sv->sni_seen = true;
    snprintf(sv->sni, sizeof sv->sni, "%s", name);
  }
  return SSL_TLSEXT_ERR_OK;
}

/* The server's SSL for the next connection, on sv->ctx. */
static bool server_ssl(struct server *sv)
{
  sv->ssl = SSL_new(sv->ctx);
  sv->rbio = BIO_new(BIO_s_mem());
  sv->wbio = BIO_new(BIO_s_mem());
  if (!sv->ssl || !sv->rbio || !sv->wbio)
    return false;
  BIO_set_mem_eof_return(sv->rbio, -1);
  BIO_set_mem_eof_return(sv->wbio, -1);
  SSL_set_bio(sv->ssl, sv->rbio, sv->wbio);
  SSL_set_accept_state(sv->ssl);
  return true;
}

static bool server_init(struct server *sv, const struct server_opts *o)
{
  memset(sv, 0, sizeof *sv);
  sv->alpn_select = o->alpn_select;
  sv->ctx = SSL_CTX_new(TLS_server_method());
  if (!sv->ctx)
    return false;
  if (SSL_CTX_use_certificate(sv->ctx, o->cert ? o->cert : g_cert[ID_SERVER]) != 1 ||
      SSL_CTX_use_PrivateKey(sv->ctx, o->key ? o->key : g_key[ID_SERVER]) != 1)
    return false;
  if (o->max_version)
    SSL_CTX_set_max_proto_version(sv->ctx, o->max_version);
  if (o->max_version && o->max_version < TLS1_2_VERSION) {
    /* Old protocols need the lowest security level to be offered at all. */
    SSL_CTX_set_security_level(sv->ctx, 0);
    SSL_CTX_set_min_proto_version(sv->ctx, 0);
  }
  if (o->require_client_cert) {
    X509_STORE *st = SSL_CTX_get_cert_store(sv->ctx);
    X509_STORE_add_cert(st, g_cert[ID_CA]);
    SSL_CTX_set_verify(sv->ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
  }
  /* Needed for resumption with client verification (mosquitto sets one). */
  SSL_CTX_set_session_id_context(sv->ctx, (const unsigned char *)"t", 1);
  SSL_CTX_set_alpn_select_cb(sv->ctx, alpn_cb, sv);
  SSL_CTX_set_tlsext_servername_callback(sv->ctx, sni_cb);
  SSL_CTX_set_tlsext_servername_arg(sv->ctx, sv);
  return server_ssl(sv);
}

static void server_free(struct server *sv)
{
  SSL_free(sv->ssl);
  SSL_CTX_free(sv->ctx);
  ERR_clear_error();
}

/* Client ciphertext -> server; returns the bytes moved. */
static size_t to_server(struct tls_conn *c, struct server *sv)
{
  uint8_t buf[4096];
  size_t n, total = 0;
  while ((n = tls_take_output(c, buf, sizeof buf)) > 0) {
    BIO_write(sv->rbio, buf, (int)n);
    total += n;
  }
  return total;
}

/* Server ciphertext -> client. */
static size_t to_client(struct server *sv, struct tls_conn *c)
{
  uint8_t buf[4096];
  int n;
  size_t total = 0;
  while ((n = BIO_read(sv->wbio, buf, sizeof buf)) > 0) {
    ASSERT_EQ(tls_feed(c, buf, (size_t)n), TLS_OK);
    total += (size_t)n;
  }
  return total;
}

static void server_step(struct server *sv)
{
  int r;
  if (sv->done || sv->failed)
    return;
  r = SSL_do_handshake(sv->ssl);
  if (r == 1) {
    sv->done = true;
  } else {
    int e = SSL_get_error(sv->ssl, r);
    if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
      sv->failed = true;
  }
}

/* Runs both handshakes until the client's is done or failed; returns the
 * client's last tls_handshake() result. */
static int handshake(struct tls_conn *c, struct server *sv)
{
  int rc = TLS_WANT_IO;
  for (int i = 0; i < 20; i++) {
    rc = tls_handshake(c);
    to_server(c, sv);
    server_step(sv);
    to_client(sv, c);
    if (rc != TLS_WANT_IO && (rc != TLS_OK || sv->done || sv->failed))
      break;
  }
  return rc;
}

/* A client context trusting ca, without a client certificate. */
static struct tls_ctx *client_ctx(void)
{
  char err[512] = "";
  struct tls_ctx *ctx = tls_ctx_new(g_ca_file, NULL, NULL, err, sizeof err);
  ASSERT_TRUE(ctx != NULL);
  if (!ctx)
    fprintf(stderr, "  tls_ctx_new: %s\n", err);
  return ctx;
}

/* Server to client: plaintext through the connection, read back by tls_read. */
static int server_send(struct server *sv, struct tls_conn *c, const char *text)
{
  size_t w = 0;
  if (SSL_write_ex(sv->ssl, text, strlen(text), &w) != 1)
    return -1;
  to_client(sv, c);
  return (int)w;
}

static int server_recv(struct server *sv, uint8_t *buf, size_t cap)
{
  size_t got = 0;
  int r = SSL_read_ex(sv->ssl, buf, cap, &got);
  return r == 1 ? (int)got : -SSL_get_error(sv->ssl, r);
}

/* A server with so and a client of ctx for host, through the handshake;
 * returns the client's handshake result. */
static int pair_open(struct server *sv, struct tls_conn **c, struct tls_ctx *ctx,
                     const struct server_opts *so, const char *host)
{
  char err[256] = "";
  ASSERT_TRUE(server_init(sv, so));
  *c = tls_conn_new(ctx, host, NULL, NULL, NULL, err, sizeof err);
  ASSERT_TRUE(*c != NULL);
  if (!*c) {
    fprintf(stderr, "  tls_conn_new: %s\n", err);
    return -100;
  }
  return handshake(*c, sv);
}

static void pair_close(struct server *sv, struct tls_conn *c)
{
  tls_conn_free(c);
  server_free(sv);
}

/* ---- tests ---------------------------------------------------------------- */

static void test_handshake_and_data(void)
{
  struct tls_ctx *ctx = client_ctx();
  struct server sv;
  struct server_opts so = {0};
  char err[256] = "";
  struct tls_conn *c;
  uint8_t buf[256];
  int n;

  ASSERT_TRUE(server_init(&sv, &so));
  c = tls_conn_new(ctx, "localhost", NULL, NULL, NULL, err, sizeof err);
  ASSERT_TRUE(c != NULL);
  if (!c || !ctx)
    goto out;
  ASSERT_TRUE(!tls_is_established(c));
  /* Nothing from the peer yet: the first call produces the ClientHello. */
  ASSERT_EQ(tls_handshake(c), TLS_WANT_IO);
  ASSERT_TRUE(tls_pending_output(c) > 0);
  ASSERT_EQ(handshake(c, &sv), TLS_OK);
  ASSERT_TRUE(tls_is_established(c));
  ASSERT_TRUE(sv.done);
  /* Established: tls_handshake stays OK. */
  ASSERT_EQ(tls_handshake(c), TLS_OK);
  ASSERT_EQ(SSL_version(sv.ssl), TLS1_3_VERSION);
  /* SNI carried the host name. */
  ASSERT_TRUE(sv.sni_seen);
  ASSERT_STR_EQ(sv.sni, "localhost");
  /* No ALPN unless configured. */
  ASSERT_TRUE(!sv.alpn_called);

  /* Client to server. */
  ASSERT_EQ(tls_write(c, (const uint8_t *)"ping", 4), TLS_OK);
  ASSERT_TRUE(tls_pending_output(c) > 0);
  to_server(c, &sv);
  ASSERT_EQ(tls_pending_output(c), 0);
  n = server_recv(&sv, buf, sizeof buf);
  ASSERT_EQ(n, 4);
  ASSERT_MEM_EQ(buf, "ping", 4);
  /* Server to client (after the session tickets, which read as nothing). */
  ASSERT_EQ(server_send(&sv, c, "pong!"), 5);
  n = tls_read(c, buf, sizeof buf);
  ASSERT_EQ(n, 5);
  ASSERT_MEM_EQ(buf, "pong!", 5);
  ASSERT_EQ(tls_read(c, buf, sizeof buf), TLS_WANT_IO);
  /* Nothing more to read, nothing buffered: WANT_IO again, and cap 0 too. */
  ASSERT_EQ(tls_read(c, buf, sizeof buf), TLS_WANT_IO);
  ASSERT_EQ(tls_read(c, buf, 0), TLS_WANT_IO);
  tls_conn_free(c);
out:
  server_free(&sv);
  tls_ctx_free(ctx);
}

static void test_large_data_both_ways(void)
{
  struct tls_ctx *ctx = client_ctx();
  struct server sv;
  struct server_opts so = {0};
  char err[256];
  struct tls_conn *c;
  enum { BIG = 100000 };
  uint8_t *big = malloc(BIG), *got = malloc(BIG);
  size_t have = 0, w = 0;
  int n;

  ASSERT_TRUE(server_init(&sv, &so));
  c = tls_conn_new(ctx, "localhost", NULL, NULL, NULL, err, sizeof err);
  ASSERT_TRUE(c && big && got);
  if (!c || !big || !got)
    goto out;
  for (size_t i = 0; i < BIG; i++)
    big[i] = (uint8_t)(i * 7 + 3);
  ASSERT_EQ(handshake(c, &sv), TLS_OK);
  /* One write of 100 kB: several records, all consumed. */
  ASSERT_EQ(tls_write(c, big, BIG), TLS_OK);
  ASSERT_TRUE(tls_pending_output(c) > BIG);
  to_server(c, &sv);
  while (have < BIG && (n = server_recv(&sv, got + have, BIG - have)) > 0)
    have += (size_t)n;
  ASSERT_EQ(have, BIG);
  ASSERT_MEM_EQ(got, big, BIG);
  /* And back, fed in small pieces. */
  ASSERT_TRUE(SSL_write_ex(sv.ssl, big, BIG, &w) == 1);
  ASSERT_EQ(w, BIG);
  {
    uint8_t piece[333];
    int k;
    have = 0;
    memset(got, 0, BIG);
    while ((k = BIO_read(sv.wbio, piece, sizeof piece)) > 0) {
      ASSERT_EQ(tls_feed(c, piece, (size_t)k), TLS_OK);
      while ((n = tls_read(c, got + have, BIG - have)) > 0)
        have += (size_t)n;
      if (n != TLS_WANT_IO) {
        ASSERT_EQ(n, TLS_WANT_IO);
        break;
      }
    }
  }
  ASSERT_EQ(have, BIG);
  ASSERT_MEM_EQ(got, big, BIG);
out:
  pair_close(&sv, c);
  tls_ctx_free(ctx);
  free(big);
  free(got);
}

/* Ciphertext moved in odd pieces: the client's output taken a few bytes at
 * a time, the server's fed one byte at a time, records split across feeds
 * and several records fed before one is read.  Nothing stays buffered. */
static void test_ciphertext_in_pieces(void)
{
  struct tls_ctx *ctx = client_ctx();
  struct server sv;
  struct server_opts so = {0};
  char err[256] = "";
  struct tls_conn *c;
  uint8_t buf[4096], piece[7];
  size_t w = 0, have = 0;
  int n, rc = TLS_WANT_IO;

  ASSERT_TRUE(server_init(&sv, &so));
  c = tls_conn_new(ctx, "localhost", NULL, NULL, NULL, err, sizeof err);
  ASSERT_TRUE(c != NULL);
  if (!c || !ctx)
    goto out;
  /* No error yet: an empty text, not NULL. */
  ASSERT_STR_EQ(tls_last_error(c), "");
  for (int i = 0; i < 20 && !(rc == TLS_OK && sv.done); i++) {
    size_t k;
    int m;
    rc = tls_handshake(c);
    ASSERT_TRUE(rc == TLS_OK || rc == TLS_WANT_IO);
    while ((k = tls_take_output(c, piece, 1 + (size_t)i % sizeof piece)) > 0)
      BIO_write(sv.rbio, piece, (int)k);
    ASSERT_EQ(tls_pending_output(c), 0);
    server_step(&sv);
    while ((m = BIO_read(sv.wbio, piece, 1)) > 0)
      ASSERT_EQ(tls_feed(c, piece, 1), TLS_OK);
  }
  ASSERT_EQ(rc, TLS_OK);
  ASSERT_TRUE(sv.done);

  /* Three records from the server, fed whole, then all read. */
  ASSERT_TRUE(SSL_write_ex(sv.ssl, "one", 3, &w) == 1);
  ASSERT_TRUE(SSL_write_ex(sv.ssl, "two", 3, &w) == 1);
  ASSERT_TRUE(SSL_write_ex(sv.ssl, "three", 5, &w) == 1);
  to_client(&sv, c);
  while ((n = tls_read(c, buf + have, sizeof buf - have)) > 0)
    have += (size_t)n;
  ASSERT_EQ(n, TLS_WANT_IO);
  ASSERT_EQ(have, 11);
  ASSERT_MEM_EQ(buf, "onetwothree", 11);

  /* A record split across feeds, with a read in between: the first part
   * stays buffered, more is appended behind what was already read. */
  ASSERT_TRUE(SSL_write_ex(sv.ssl, "split record", 12, &w) == 1);
  ASSERT_TRUE(SSL_write_ex(sv.ssl, "and another", 11, &w) == 1);
  {
    int k = BIO_read(sv.wbio, buf, sizeof buf);
    ASSERT_TRUE(k > 20);
    ASSERT_EQ(tls_feed(c, buf, 3), TLS_OK);   /* part of the header */
    ASSERT_EQ(tls_read(c, buf + 2048, 64), TLS_WANT_IO);
    ASSERT_EQ(tls_feed(c, buf + 3, 10), TLS_OK);
    ASSERT_EQ(tls_read(c, buf + 2048, 64), TLS_WANT_IO);
    ASSERT_EQ(tls_feed(c, buf + 13, (size_t)k - 13), TLS_OK);
    n = tls_read(c, buf + 2048, 64);
    ASSERT_EQ(n, 12);
    ASSERT_MEM_EQ(buf + 2048, "split record", 12);
    n = tls_read(c, buf + 2048, 64);
    ASSERT_EQ(n, 11);
    ASSERT_MEM_EQ(buf + 2048, "and another", 11);
    ASSERT_EQ(tls_read(c, buf + 2048, 64), TLS_WANT_IO);
  }

  /* Client output in pieces smaller than a record. */
  ASSERT_EQ(tls_write(c, (const uint8_t *)"hello there", 11), TLS_OK);
  {
    size_t k, total = tls_pending_output(c), moved = 0;
    ASSERT_TRUE(total > 11);
    while ((k = tls_take_output(c, piece, 5)) > 0) {
      BIO_write(sv.rbio, piece, (int)k);
      moved += k;
    }
    ASSERT_EQ(moved, total);
    ASSERT_EQ(tls_pending_output(c), 0);
    ASSERT_EQ(tls_take_output(c, piece, sizeof piece), 0);
  }
  n = server_recv(&sv, buf, sizeof buf);
  ASSERT_EQ(n, 11);
  ASSERT_MEM_EQ(buf, "hello there", 11);
  ASSERT_STR_EQ(tls_last_error(c), "");
out:
  pair_close(&sv, c);
  tls_ctx_free(ctx);
}

/* No memory to buffer ciphertext: tls_feed fails and leaves the connection
 * as it was; a write whose output cannot be buffered fails for good (the
 * record is lost), with the reason. */
static void test_out_of_memory(void)
{
  struct tls_ctx *ctx = client_ctx();
  struct server sv;
  struct server_opts so = {0};
  struct tls_conn *c = NULL;
  enum { FEED = 12345, WRITE = 5000 };
  uint8_t *junk = calloc(1, FEED), buf[64];

  ASSERT_TRUE(junk != NULL);
  if (!ctx || !junk)
    goto out_ctx;
  ASSERT_EQ(pair_open(&sv, &c, ctx, &so, "localhost"), TLS_OK);
  if (!c)
    goto out;
  /* Read the session tickets: nothing is buffered now. */
  ASSERT_EQ(tls_read(c, buf, sizeof buf), TLS_WANT_IO);
  g_fail_min = g_fail_max = FEED;
  ASSERT_EQ(tls_feed(c, junk, FEED), TLS_ERR_NOMEM);
  g_fail_max = 0;
  ASSERT_TRUE(strstr(tls_last_error(c), "out of memory") != NULL);
  /* Nothing was buffered: the connection still works. */
  ASSERT_EQ(server_send(&sv, c, "still here"), 10);
  ASSERT_EQ(tls_read(c, buf, sizeof buf), 10);
  ASSERT_MEM_EQ(buf, "still here", 10);

  /* One record of WRITE bytes plus at most 256 of overhead (header, type,
   * tag): far from the size of OpenSSL's own buffers. */
  g_fail_min = WRITE;
  g_fail_max = WRITE + 256;
  ASSERT_EQ(tls_write(c, junk, WRITE), TLS_ERR_NOMEM);
  g_fail_max = 0;
  ASSERT_TRUE(strstr(tls_last_error(c), "out of memory") != NULL);
  /* Dead for good: every later call says so. */
  ASSERT_EQ(tls_write(c, junk, 10), TLS_ERR_NOMEM);
  ASSERT_EQ(tls_read(c, buf, sizeof buf), TLS_ERR_NOMEM);
out:
  pair_close(&sv, c);
out_ctx:
  free(junk);
  tls_ctx_free(ctx);
}

static void test_tls12_accepted_older_refused(void)
{
  struct tls_ctx *ctx = client_ctx();
  struct server sv;
  struct server_opts so = {.max_version = TLS1_2_VERSION};
  struct tls_conn *c;
  uint8_t buf[16];

  ASSERT_EQ(pair_open(&sv, &c, ctx, &so, "localhost"), TLS_OK);
  ASSERT_EQ(SSL_version(sv.ssl), TLS1_2_VERSION);
  ASSERT_EQ(server_send(&sv, c, "v12"), 3);
  ASSERT_EQ(tls_read(c, buf, sizeof buf), 3);
  pair_close(&sv, c);

  /* A server that cannot do TLS 1.2: the handshake fails. */
  so.max_version = TLS1_1_VERSION;
  ASSERT_EQ(pair_open(&sv, &c, ctx, &so, "localhost"), TLS_ERR_HANDSHAKE);
  ASSERT_TRUE(!tls_is_established(c));
  ASSERT_TRUE(strlen(tls_last_error(c)) > 0);
  ASSERT_TRUE(!sv.done);
  pair_close(&sv, c);
  tls_ctx_free(ctx);
}

static void test_untrusted_server(void)
{
  struct tls_ctx *ctx = client_ctx();
  struct server sv;
  struct server_opts so = {0};
  struct tls_conn *c;

  so.cert = g_cert[ID_ROGUE];
  so.key = g_key[ID_ROGUE];
  ASSERT_EQ(pair_open(&sv, &c, ctx, &so, "localhost"), TLS_ERR_HANDSHAKE);
  ASSERT_TRUE(!tls_is_established(c));
  ASSERT_TRUE(strstr(tls_last_error(c), "certificate verify failed") != NULL);
  ASSERT_TRUE(strstr(tls_last_error(c), "unable to get local issuer certificate") != NULL);
  if (!strstr(tls_last_error(c), "certificate verify failed"))
    fprintf(stderr, "  error was: %s\n", tls_last_error(c));
  /* The client told the server with an alert: its handshake fails too. */
  server_step(&sv);
  ASSERT_TRUE(sv.failed);
  ASSERT_TRUE(!sv.done);
  /* Still failed when called again (no crash, no success). */
  ASSERT_TRUE(tls_handshake(c) < 0);
  pair_close(&sv, c);
  tls_ctx_free(ctx);
}

/* The client connects to host; returns the handshake's result and copies the
 * error text. */
static int connect_as(const char *host, char *why, size_t cap, struct server *sv)
{
  struct tls_ctx *ctx = client_ctx();
  struct server_opts so = {0};
  struct tls_conn *c = NULL;
  int rc = pair_open(sv, &c, ctx, &so, host);

  snprintf(why, cap, "%s", c ? tls_last_error(c) : "");
  tls_conn_free(c);
  tls_ctx_free(ctx);
  return rc;
}

static void test_host_name_checked(void)
{
  struct server sv;
  char why[256];

  ASSERT_EQ(connect_as("wronghost", why, sizeof why, &sv), TLS_ERR_HANDSHAKE);
  ASSERT_TRUE(strstr(why, "hostname mismatch") != NULL);
  if (!strstr(why, "hostname mismatch"))
    fprintf(stderr, "  error was: %s\n", why);
  ASSERT_STR_EQ(sv.sni, "wronghost");
  server_free(&sv);

  /* A partial wildcard-like name does not match either. */
  ASSERT_EQ(connect_as("sub.localhost", why, sizeof why, &sv), TLS_ERR_HANDSHAKE);
  server_free(&sv);

  /* IP literals are checked against the IP SAN, and get no SNI. */
  ASSERT_EQ(connect_as("127.0.0.1", why, sizeof why, &sv), TLS_OK);
  ASSERT_TRUE(!sv.sni_seen);
  server_free(&sv);
  ASSERT_EQ(connect_as("127.0.0.2", why, sizeof why, &sv), TLS_ERR_HANDSHAKE);
  ASSERT_TRUE(strstr(why, "IP address mismatch") != NULL);
  ASSERT_TRUE(!sv.sni_seen);
  server_free(&sv);
  /* An IPv6 literal the certificate does not name. */
  ASSERT_EQ(connect_as("::1", why, sizeof why, &sv), TLS_ERR_HANDSHAKE);
  ASSERT_TRUE(strstr(why, "IP address mismatch") != NULL);
  server_free(&sv);
}

static void test_alpn(void)
{
  struct tls_ctx *ctx = client_ctx();
  struct server sv;
  struct server_opts so = {.alpn_select = "x-amzn-mqtt-ca"};
  static const unsigned char wire[] = "\x0ex-amzn-mqtt-ca";
  const unsigned char *sel = NULL;
  unsigned sel_len = 0;
  char err[256] = "";
  struct tls_conn *c;

  ASSERT_TRUE(server_init(&sv, &so));
  c = tls_conn_new(ctx, "localhost", "x-amzn-mqtt-ca", NULL, NULL, err, sizeof err);
  ASSERT_TRUE(c != NULL);
  ASSERT_EQ(handshake(c, &sv), TLS_OK);
  ASSERT_TRUE(sv.alpn_called);
  /* Exactly one protocol offered, in wire form. */
  ASSERT_EQ(sv.alpn_offer_len, sizeof wire - 1);
  ASSERT_MEM_EQ(sv.alpn_offer, wire, sizeof wire - 1);
  SSL_get0_alpn_selected(sv.ssl, &sel, &sel_len);
  ASSERT_EQ(sel_len, 14);
  if (sel_len == 14)
    ASSERT_MEM_EQ(sel, "x-amzn-mqtt-ca", 14);
  pair_close(&sv, c);

  /* Bad names are refused when the connection is made. */
  c = tls_conn_new(ctx, "localhost", "", NULL, NULL, err, sizeof err);
  ASSERT_TRUE(c == NULL);
  ASSERT_TRUE(strstr(err, "bad ALPN protocol name") != NULL);
  {
    char longname[300];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    c = tls_conn_new(ctx, "localhost", longname, NULL, NULL, err, sizeof err);
    ASSERT_TRUE(c == NULL);
    ASSERT_TRUE(strstr(err, "bad ALPN protocol name") != NULL);
  }
  tls_ctx_free(ctx);
}

/* The subject CN of the client certificate the server saw, or "". */
static void peer_cn(struct server *sv, char *out, size_t cap)
{
  X509 *peer = SSL_get1_peer_certificate(sv->ssl);
  out[0] = '\0';
  if (peer) {
    X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName, out, (int)cap);
    X509_free(peer);
  }
}

/* Handshake, then one byte each way so that a TLS 1.3 server's verdict on
 * the client certificate (after the client's handshake completed) reaches
 * the client.  Returns the client's first failure, or TLS_OK. */
static int handshake_and_exchange(struct tls_conn *c, struct server *sv)
{
  uint8_t buf[8];
  int rc = handshake(c, sv), n;
  if (rc != TLS_OK)
    return rc;
  n = server_recv(sv, buf, sizeof buf); /* completes the server's side */
  to_client(sv, c);
  if (n > 0 || n == -SSL_ERROR_WANT_READ) {
    if (server_send(sv, c, "k") != 1)
      return -100;
  }
  n = tls_read(c, buf, sizeof buf);
  return n == 1 ? TLS_OK : n;
}

static void test_client_certificate(void)
{
  struct tls_ctx *ctx = client_ctx(), *ctx_cert;
  struct server sv;
  struct server_opts so = {.require_client_cert = true};
  struct tls_identity *id;
  char err[512] = "", cn[64];
  struct tls_conn *c;
  int rc;

  /* Per connection, from files. */
  ASSERT_TRUE(server_init(&sv, &so));
  c = tls_conn_new(ctx, "localhost", NULL, g_client_crt, g_client_key, err, sizeof err);
  ASSERT_TRUE(c != NULL);
  ASSERT_EQ(handshake_and_exchange(c, &sv), TLS_OK);
  ASSERT_TRUE(sv.done);
  peer_cn(&sv, cn, sizeof cn);
  ASSERT_STR_EQ(cn, "fleetgw-client");
  ASSERT_EQ(SSL_get_verify_result(sv.ssl), X509_V_OK);
  pair_close(&sv, c);

  /* The context's default certificate. */
  ctx_cert = tls_ctx_new(g_ca_file, g_client_crt, g_client_key, err, sizeof err);
  ASSERT_TRUE(ctx_cert != NULL);
  ASSERT_TRUE(server_init(&sv, &so));
  c = tls_conn_new(ctx_cert, "localhost", NULL, NULL, NULL, err, sizeof err);
  ASSERT_EQ(handshake_and_exchange(c, &sv), TLS_OK);
  peer_cn(&sv, cn, sizeof cn);
  ASSERT_STR_EQ(cn, "fleetgw-client");
  pair_close(&sv, c);
  tls_ctx_free(ctx_cert);

  /* An in-memory identity, shared: the caller's reference can go at once. */
  id = tls_identity_new(g_client_crt_pem, g_client_key_pem, err, sizeof err);
  ASSERT_TRUE(id != NULL);
  ASSERT_TRUE(server_init(&sv, &so));
  c = tls_conn_new_identity(ctx, "localhost", NULL, id, err, sizeof err);
  ASSERT_TRUE(c != NULL);
  tls_identity_ref(id);
  tls_identity_unref(id);
  ASSERT_EQ(handshake_and_exchange(c, &sv), TLS_OK);
  peer_cn(&sv, cn, sizeof cn);
  ASSERT_STR_EQ(cn, "fleetgw-client");
  tls_identity_unref(id);   /* the connection holds its own (SSL) references */
  pair_close(&sv, c);

  /* No certificate, but the server requires one: the client learns it at
   * the handshake (TLS 1.2) or at the first read (TLS 1.3). */
  ASSERT_TRUE(server_init(&sv, &so));
  c = tls_conn_new(ctx, "localhost", NULL, NULL, NULL, err, sizeof err);
  rc = handshake_and_exchange(c, &sv);
  ASSERT_EQ(rc, TLS_ERR_PROTOCOL); /* TLS 1.3: the client had finished */
  ASSERT_TRUE(sv.failed);
  ASSERT_TRUE(!sv.done);
  peer_cn(&sv, cn, sizeof cn);
  ASSERT_STR_EQ(cn, "");
  ASSERT_TRUE(strstr(tls_last_error(c), "certificate required") != NULL);
  pair_close(&sv, c);
  so.max_version = TLS1_2_VERSION;
  ASSERT_TRUE(server_init(&sv, &so));
  c = tls_conn_new(ctx, "localhost", NULL, NULL, NULL, err, sizeof err);
  rc = handshake_and_exchange(c, &sv);
  ASSERT_EQ(rc, TLS_ERR_HANDSHAKE); /* TLS 1.2: the server's alert ends it */
  ASSERT_TRUE(sv.failed);
  ASSERT_TRUE(!tls_is_established(c));
  ASSERT_TRUE(strstr(tls_last_error(c), "handshake failure") != NULL);
  pair_close(&sv, c);

  /* A certificate without its key, or with the wrong key, is refused. */
  c = tls_conn_new(ctx, "localhost", NULL, g_client_crt, NULL, err, sizeof err);
  ASSERT_TRUE(c == NULL);
  ASSERT_TRUE(strstr(err, "needs both") != NULL);
  id = tls_identity_new(g_client_crt_pem, "not a key", err, sizeof err);
  ASSERT_TRUE(id == NULL);
  ASSERT_TRUE(strstr(err, "cannot parse the private key") != NULL);
  {
    char *other = pem_string(NULL, g_key[ID_SERVER]);
    id = tls_identity_new(g_client_crt_pem, other, err, sizeof err);
    ASSERT_TRUE(id == NULL);
    ASSERT_TRUE(strstr(err, "key does not match certificate") != NULL);
    free(other);
  }
  tls_ctx_free(ctx);
}

static void test_close_notify(void)
{
  struct tls_ctx *ctx = client_ctx();
  struct server sv;
  struct server_opts so = {0};
  char err[256];
  struct tls_conn *c;
  uint8_t buf[64];
  int n;

  /* The server closes: EOF for the client, after the data before it. */
  ASSERT_EQ(pair_open(&sv, &c, ctx, &so, "localhost"), TLS_OK);
  ASSERT_EQ(server_send(&sv, c, "bye"), 3);
  ASSERT_TRUE(SSL_shutdown(sv.ssl) >= 0);
  to_client(&sv, c);
  n = tls_read(c, buf, sizeof buf);
  ASSERT_EQ(n, 3);
  n = tls_read(c, buf, sizeof buf);
  ASSERT_EQ(n, TLS_ERR_CLOSED);
  ASSERT_STR_EQ(tls_last_error(c), "peer sent close_notify");
  pair_close(&sv, c);

  /* The client closes: the server reads a clean EOF. */
  ASSERT_EQ(pair_open(&sv, &c, ctx, &so, "localhost"), TLS_OK);
  tls_shutdown(c);
  ASSERT_TRUE(tls_pending_output(c) > 0);
  to_server(c, &sv);
  n = server_recv(&sv, buf, sizeof buf);
  ASSERT_EQ(n, -SSL_ERROR_ZERO_RETURN);
  pair_close(&sv, c);

  /* Before the handshake there is nothing to close: no output. */
  c = tls_conn_new(ctx, "localhost", NULL, NULL, NULL, err, sizeof err);
  tls_shutdown(c);
  ASSERT_EQ(tls_pending_output(c), 0);
  tls_conn_free(c);
  tls_ctx_free(ctx);
}

static void test_garbage_from_the_peer(void)
{
  struct tls_ctx *ctx = client_ctx();
  struct server sv;
  struct server_opts so = {0};
  char err[256];
  struct tls_conn *c;
  uint8_t junk[512], buf[64];
  int n;

  for (size_t i = 0; i < sizeof junk; i++)
    junk[i] = (uint8_t)(i * 37 + 11);

  /* Instead of a ServerHello. */
  c = tls_conn_new(ctx, "localhost", NULL, NULL, NULL, err, sizeof err);
  ASSERT_EQ(tls_handshake(c), TLS_WANT_IO);
  ASSERT_EQ(tls_feed(c, junk, sizeof junk), TLS_OK);
  ASSERT_EQ(tls_handshake(c), TLS_ERR_HANDSHAKE);
  ASSERT_TRUE(strlen(tls_last_error(c)) > 0);
  ASSERT_TRUE(!tls_is_established(c));
  /* Writing on a failed connection is an error, not a crash. */
  ASSERT_TRUE(tls_write(c, (const uint8_t *)"x", 1) < 0);
  tls_conn_free(c);

  /* A record header announcing more than TLS allows, before the handshake. */
  {
    static const uint8_t bad[] = {0x16, 0x03, 0x03, 0xFF, 0xFF, 0x02};
    c = tls_conn_new(ctx, "localhost", NULL, NULL, NULL, err, sizeof err);
    ASSERT_EQ(tls_handshake(c), TLS_WANT_IO);
    ASSERT_EQ(tls_feed(c, bad, sizeof bad), TLS_OK);
    ASSERT_EQ(tls_handshake(c), TLS_ERR_HANDSHAKE);
    tls_conn_free(c);
  }

  /* After the handshake: a fatal protocol error on read. */
  ASSERT_EQ(pair_open(&sv, &c, ctx, &so, "localhost"), TLS_OK);
  ASSERT_EQ(tls_feed(c, junk, sizeof junk), TLS_OK);
  n = tls_read(c, buf, sizeof buf);
  ASSERT_EQ(n, TLS_ERR_PROTOCOL);
  ASSERT_TRUE(strstr(tls_last_error(c), "TLS read failed") != NULL);
  /* The client sends an alert about it. */
  ASSERT_TRUE(tls_pending_output(c) > 0);
  /* Later calls keep failing. */
  ASSERT_EQ(tls_read(c, buf, sizeof buf), TLS_ERR_PROTOCOL);
  ASSERT_EQ(tls_feed(c, junk, 16), TLS_OK);
  ASSERT_EQ(tls_read(c, buf, sizeof buf), TLS_ERR_PROTOCOL);
  ASSERT_EQ(tls_write(c, (const uint8_t *)"x", 1), TLS_ERR_PROTOCOL);
  pair_close(&sv, c);

  /* A valid record whose bytes were tampered with: the MAC fails. */
  ASSERT_EQ(pair_open(&sv, &c, ctx, &so, "localhost"), TLS_OK);
  {
    size_t w = 0;
    uint8_t rec[256];
    int k;
    ASSERT_EQ(tls_read(c, buf, sizeof buf), TLS_WANT_IO); /* session tickets */
    ASSERT_TRUE(SSL_write_ex(sv.ssl, "secret", 6, &w) == 1);
    k = BIO_read(sv.wbio, rec, sizeof rec);
    ASSERT_TRUE(k > 10);
    if (k > 10) {
      rec[k - 1] ^= 0x01;
      ASSERT_EQ(tls_feed(c, rec, (size_t)k), TLS_OK);
      ASSERT_EQ(tls_read(c, buf, sizeof buf), TLS_ERR_PROTOCOL);
    }
  }
  pair_close(&sv, c);
  tls_ctx_free(ctx);
}

static void test_renegotiation_refused(void)
{
  struct tls_ctx *ctx = client_ctx();
  struct server sv;
  struct server_opts so = {.max_version = TLS1_2_VERSION};
  struct tls_conn *c;
  uint8_t buf[4096];
  int n;

  ASSERT_EQ(pair_open(&sv, &c, ctx, &so, "localhost"), TLS_OK);
  ASSERT_EQ(SSL_version(sv.ssl), TLS1_2_VERSION);
  /* The server asks for a renegotiation (a HelloRequest). */
  ASSERT_EQ(SSL_renegotiate(sv.ssl), 1);
  (void)SSL_do_handshake(sv.ssl);
  ASSERT_TRUE(to_client(&sv, c) > 0);
  /* The client does not start one: no data, no error, and what it sends
   * back is an alert record (21: its no_renegotiation warning), never a
   * handshake record (22: a ClientHello). */
  n = tls_read(c, buf, sizeof buf);
  ASSERT_EQ(n, TLS_WANT_IO);
  ASSERT_TRUE(tls_is_established(c));
  {
    size_t k = tls_take_output(c, buf, sizeof buf);
    ASSERT_TRUE(k > 0 && k < 64);
    if (k > 0)
      ASSERT_EQ(buf[0], 21);
    BIO_write(sv.rbio, buf, (int)k);
  }
  /* The server learns that the client refused... */
  ERR_clear_error();
  n = server_recv(&sv, buf, sizeof buf);
  ASSERT_EQ(n, -SSL_ERROR_SSL);
  ASSERT_EQ(ERR_GET_REASON(ERR_peek_error()), SSL_R_NO_RENEGOTIATION);
  ERR_clear_error();
  /* ...and ends the connection, which the client reports as an error. */
  ASSERT_TRUE(to_client(&sv, c) > 0);
  n = tls_read(c, buf, sizeof buf);
  ASSERT_EQ(n, TLS_ERR_PROTOCOL);
  ASSERT_TRUE(strstr(tls_last_error(c), "handshake failure") != NULL);
  pair_close(&sv, c);
  tls_ctx_free(ctx);
}

/* A new server SSL on the same SSL_CTX (same ticket keys), as a broker
 * taking the next connection. */
static bool server_next(struct server *sv)
{
  SSL_free(sv->ssl);
  sv->done = sv->failed = false;
  return server_ssl(sv);
}

/* A handshake, then data from the server, so that the client reads the
 * TLS 1.3 session tickets; returns whether the server resumed. */
static int resumed_conn(struct server *sv, struct tls_conn *c)
{
  uint8_t buf[64];
  int reused;

  ASSERT_EQ(handshake(c, sv), TLS_OK);
  reused = SSL_session_reused(sv->ssl);
  ASSERT_EQ(server_send(sv, c, "x"), 1);
  ASSERT_EQ(tls_read(c, buf, sizeof buf), 1);
  return reused;
}

/* Ends c with close_notify: OpenSSL does not offer again the session of a
 * connection freed without one. */
static void close_clean(struct tls_conn *c)
{
  tls_shutdown(c);
  tls_conn_free(c);
}

static void test_session_resumption(void)
{
  struct tls_ctx *ctx = client_ctx();
  struct server sv;
  struct server_opts so = {.require_client_cert = true};
  struct tls_identity *id = tls_identity_new(g_client_crt_pem, g_client_key_pem, NULL, 0);
  struct tls_identity *id2 = tls_identity_new(g_client_crt_pem, g_client_key_pem, NULL, 0);
  char err[256] = "";
  struct tls_conn *c, *c2;

  ASSERT_TRUE(id && id2 && ctx);
  if (!id || !id2 || !ctx)
    goto out_ids;
  ASSERT_TRUE(server_init(&sv, &so));
  /* The first connection of an identity: a full handshake. */
  c = tls_conn_new_identity(ctx, "localhost", NULL, id, err, sizeof err);
  ASSERT_TRUE(c != NULL);
  ASSERT_EQ(resumed_conn(&sv, c), 0);
  close_clean(c);
  /* The next ones resume, two at once too (one session offered by both),
   * and the server still knows the client's certificate. */
  ASSERT_TRUE(server_next(&sv));
  c = tls_conn_new_identity(ctx, "localhost", NULL, id, err, sizeof err);
  ASSERT_EQ(resumed_conn(&sv, c), 1);
  ASSERT_TRUE(SSL_get0_peer_certificate(sv.ssl) != NULL);
  ASSERT_TRUE(server_next(&sv));
  c2 = tls_conn_new_identity(ctx, "localhost", NULL, id, err, sizeof err);
  ASSERT_EQ(resumed_conn(&sv, c2), 1);
  close_clean(c2);
  /* The identity's slot outlives the caller's reference while c lives. */
  tls_identity_ref(id);
  tls_identity_unref(id);
  /* Another identity (even with the same certificate) does not get it. */
  ASSERT_TRUE(server_next(&sv));
  c2 = tls_conn_new_identity(ctx, "localhost", NULL, id2, err, sizeof err);
  ASSERT_EQ(resumed_conn(&sv, c2), 0);
  close_clean(c2);
  /* Nor another host name for the same server. */
  ASSERT_TRUE(server_next(&sv));
  c2 = tls_conn_new_identity(ctx, "127.0.0.1", NULL, id, err, sizeof err);
  ASSERT_EQ(resumed_conn(&sv, c2), 0);
  close_clean(c2);
  close_clean(c);
  /* A server that does not know the ticket (other keys): a full
   * handshake, verified as ever. */
  server_free(&sv);
  ASSERT_TRUE(server_init(&sv, &so));
  c = tls_conn_new_identity(ctx, "127.0.0.1", NULL, id, err, sizeof err);
  ASSERT_EQ(resumed_conn(&sv, c), 0);
  ASSERT_EQ(SSL_get_verify_result(sv.ssl), X509_V_OK);
  close_clean(c);
  server_free(&sv);
  /* The context counted them: full, resumed twice, then four full. */
  {
    struct tls_stats st;
    tls_ctx_stats(ctx, &st);
    ASSERT_EQ(st.full, 4u);
    ASSERT_EQ(st.resumed, 2u);
  }
out_ids:
  tls_identity_unref(id);
  tls_identity_unref(id2);
  tls_ctx_free(ctx);
}

/* tls_ctx_set_max_version(12): a TLS 1.3 server gets TLS 1.2, resumption
 * still works (a TLS 1.2 ticket) and is counted; 13 goes back to TLS 1.3 for
 * new connections; other values are refused. */
static void test_max_version(void)
{
  struct tls_ctx *ctx = client_ctx();
  struct server sv;
  struct server_opts so = {.require_client_cert = true};
  struct tls_identity *id = tls_identity_new(g_client_crt_pem, g_client_key_pem, NULL, 0);
  struct tls_stats st;
  char err[256] = "";
  struct tls_conn *c;

  ASSERT_TRUE(id && ctx);
  if (!id || !ctx)
    goto out;
  ASSERT_EQ(tls_ctx_set_max_version(ctx, 11), TLS_ERR_CONFIG);
  ASSERT_EQ(tls_ctx_set_max_version(ctx, 14), TLS_ERR_CONFIG);
  ASSERT_EQ(tls_ctx_set_max_version(ctx, 12), TLS_OK);
  ASSERT_TRUE(server_init(&sv, &so));
  c = tls_conn_new_identity(ctx, "localhost", NULL, id, err, sizeof err);
  ASSERT_EQ(resumed_conn(&sv, c), 0);
  ASSERT_EQ(SSL_version(sv.ssl), TLS1_2_VERSION);
  close_clean(c);
  ASSERT_TRUE(server_next(&sv));
  c = tls_conn_new_identity(ctx, "localhost", NULL, id, err, sizeof err);
  ASSERT_EQ(resumed_conn(&sv, c), 1);
  ASSERT_EQ(SSL_version(sv.ssl), TLS1_2_VERSION);
  ASSERT_TRUE(SSL_get0_peer_certificate(sv.ssl) != NULL);
  close_clean(c);
  tls_ctx_stats(ctx, &st);
  ASSERT_EQ(st.full, 1u);
  ASSERT_EQ(st.resumed, 1u);
  /* Back to 1.3: the TLS 1.2 session is not offered to a 1.3 handshake by
   * OpenSSL, which does a full one. */
  ASSERT_EQ(tls_ctx_set_max_version(ctx, 13), TLS_OK);
  ASSERT_TRUE(server_next(&sv));
  c = tls_conn_new_identity(ctx, "localhost", NULL, id, err, sizeof err);
  ASSERT_EQ(handshake(c, &sv), TLS_OK);
  ASSERT_EQ(SSL_version(sv.ssl), TLS1_3_VERSION);
  close_clean(c);
  server_free(&sv);
out:
  tls_identity_unref(id);
  tls_ctx_free(ctx);
}

static void test_constructor_errors(void)
{
  char err[512], missing[160];
  struct tls_ctx *ctx;

  snprintf(missing, sizeof missing, "%s/missing.pem", g_dir);
  ctx = tls_ctx_new(missing, NULL, NULL, err, sizeof err);
  ASSERT_TRUE(ctx == NULL);
  ASSERT_TRUE(strstr(err, "cannot load CA file") != NULL);
  ASSERT_TRUE(strstr(err, missing) != NULL);
  ASSERT_TRUE(tls_ctx_new(NULL, NULL, NULL, err, sizeof err) == NULL);
  ASSERT_TRUE(strstr(err, "a CA file is required") != NULL);
  ASSERT_TRUE(tls_ctx_new(g_ca_file, g_client_crt, NULL, err, sizeof err) == NULL);
  /* The key of another certificate. */
  {
    char other[160];
    snprintf(other, sizeof other, "%s/other.key", g_dir);
    ASSERT_EQ(write_pem(other, NULL, g_key[ID_SERVER]), 0);
    ASSERT_TRUE(tls_ctx_new(g_ca_file, g_client_crt, other, err, sizeof err) == NULL);
    /* (OpenSSL notices the mismatch while loading the key.) */
    ASSERT_TRUE(strstr(err, other) != NULL);
    ASSERT_TRUE(strstr(err, "mismatch") != NULL || strstr(err, "does not match") != NULL);
    /* The key file's contents never appear in the message. */
    ASSERT_TRUE(strstr(err, "PRIVATE KEY") == NULL);
  }
  /* No error buffer: still NULL, no crash. */
  ASSERT_TRUE(tls_ctx_new(missing, NULL, NULL, NULL, 0) == NULL);

  ctx = client_ctx();
  ASSERT_TRUE(tls_conn_new(ctx, NULL, NULL, NULL, NULL, err, sizeof err) == NULL);
  ASSERT_TRUE(tls_conn_new(ctx, "", NULL, NULL, NULL, err, sizeof err) == NULL);
  ASSERT_TRUE(strstr(err, "host name") != NULL);
  ASSERT_TRUE(tls_conn_new(NULL, "localhost", NULL, NULL, NULL, err, sizeof err) == NULL);
  ASSERT_TRUE(tls_conn_new(ctx, "localhost", NULL, missing, g_client_key, err, sizeof err) ==
              NULL);
  ASSERT_TRUE(strstr(err, "cannot load certificate file") != NULL);
  tls_ctx_free(ctx);
  /* Freeing nothing is fine. */
  tls_ctx_free(NULL);
  tls_conn_free(NULL);
  tls_identity_unref(NULL);
}

int main(void)
{
  char tmpl[] = "/tmp/fleetgw-test-tls-XXXXXX";
  char cmd[128];
  int status;

  /* Before OpenSSL allocates anything. */
  if (!CRYPTO_set_mem_functions(t_malloc, t_realloc, t_free)) {
    fprintf(stderr, "cannot set OpenSSL's allocator\n");
    return 1;
  }
  if (!mkdtemp(tmpl)) {
    perror("mkdtemp");
    return 1;
  }
  snprintf(g_dir, sizeof g_dir, "%s", tmpl);
  if (make_certs() != 0) {
    fprintf(stderr, "cannot make the test certificates\n");
    ERR_print_errors_fp(stderr);
    return 1;
  }

  RUN(test_handshake_and_data);
  RUN(test_large_data_both_ways);
  RUN(test_ciphertext_in_pieces);
  RUN(test_out_of_memory);
  RUN(test_tls12_accepted_older_refused);
  RUN(test_max_version);
  RUN(test_untrusted_server);
  RUN(test_host_name_checked);
  RUN(test_alpn);
  RUN(test_client_certificate);
  RUN(test_close_notify);
  RUN(test_garbage_from_the_peer);
  RUN(test_renegotiation_refused);
  RUN(test_session_resumption);
  RUN(test_constructor_errors);

  status = TEST_END();
  for (int i = 0; i < N_ID; i++) {
    X509_free(g_cert[i]);
    EVP_PKEY_free(g_key[i]);
  }
  free(g_client_crt_pem);
  free(g_client_key_pem);
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
  if (system(cmd) != 0)
    fprintf(stderr, "cannot remove %s\n", g_dir);
  return status;
}
