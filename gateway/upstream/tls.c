/*
 * tls.c - TLS client over memory BIOs (see tls.h).
 *
 * Each tls_conn owns an SSL with one BIO of our own (cbio_method) for
 * both directions: OpenSSL reads ciphertext from the tls_conn's input
 * buffer (filled by tls_feed) and writes ciphertext into its output buffer
 * (drained by tls_take_output).  OpenSSL never sees a socket, so the same
 * code runs under libuv or in a unit test.
 *
 * Memory: the gateway keeps thousands of these alive, mostly idle.
 * SSL_MODE_RELEASE_BUFFERS lets OpenSSL free its record buffers between
 * records, and both ciphertext buffers are freed as soon as they are empty
 * (a BIO_s_mem keeps its largest size for ever: about 2 KiB a connection
 * after the handshake).  The error text is allocated on the first error
 * only.
 */
#include "tls.h"

#include <arpa/inet.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>


#define TLS_ERR_LEN 256

/* The last resumable session of one client identity against one server
 * (host and ALPN).  Every connection of that identity offers it, so after
 * the first full handshake the others resume: they skip the certificate
 * exchange and verification, and share the one parsed copy of the server's
 * certificate chain that the session holds instead of each parsing its own
 * (about 6 KiB a connection).  The key keeps a session from being offered
 * to another server, and the slot's owner (the context's default
 * certificate, or one tls_identity) keeps it from being offered under
 * another client certificate: the broker would take the resumed connection
 * for the identity of the session. */
struct sess_slot {
  SSL_SESSION *sess;  /* NULL until a handshake gave a resumable session */
  char *key;          /* "host\nalpn" the session was made for */
  bool off;           /* a resumption failed here: full handshakes from now on */
};

struct tls_ctx {
  SSL_CTX *ssl_ctx;
  struct sess_slot slot; /* for connections with the context's certificate */
  bool has_cert;         /* the context has a default client certificate */
  struct tls_stats stats;
};

struct tls_identity {
  X509 *cert;
  EVP_PKEY *key;
  int refs;
  struct sess_slot slot;
};

/* Ciphertext waiting in one direction: bytes [off, len) of data.  data is
 * NULL whenever the buffer is empty.  It comes from OpenSSL's allocator
 * (CRYPTO_set_mem_functions, which the unit test uses to make it fail). */
struct cbuf {
  uint8_t *data;
  size_t off, len, cap;
};

struct tls_conn {
  SSL *ssl;
  struct tls_stats *stats;      /* its context's */
  struct sess_slot *slot;       /* where its sessions go, or NULL (no resumption) */
  struct tls_identity *id;      /* holds a reference while slot is the identity's */
  const SSL_SESSION *offered;   /* the slot's session it offered (compared, never used) */
  struct cbuf in;               /* from the peer, for OpenSSL to read */
  struct cbuf out;              /* from OpenSSL, for the peer */
  char *err;                    /* TLS_ERR_LEN bytes once an error was recorded */
  bool established;
  bool got_data;                /* read application data at least once */
  bool oom;                     /* the BIO could not buffer output */
  bool err_lost;                /* an error came without memory for its text */
  bool has_key;                 /* key holds "host\nalpn" (resumption is on) */
  char key[];                   /* "host\nalpn" of this connection */
};

/* Appends OpenSSL's error queue to buf (after what is there already) and
 * clears the queue, so one connection's failure never leaks into the next
 * connection's diagnosis. */
static void append_openssl_errors(char *buf, size_t len)
{
  unsigned long e;
  size_t used = strlen(buf);

  while ((e = ERR_get_error()) != 0) {
    char one[160];
    ERR_error_string_n(e, one, sizeof one);
    if (used + 3 < len) {
      int k = snprintf(buf + used, len - used, "%s%s", used ? "; " : "", one);
      if (k > 0)
        used += (size_t)k < len - used ? (size_t)k : len - used - 1;
    }
  }
}

static void set_err(char *buf, size_t len, const char *what, const char *file)
{
  if (!buf || len == 0) {
    ERR_clear_error();
    return;
  }
  if (file)
    snprintf(buf, len, "%s '%s'", what, file);
  else
    snprintf(buf, len, "%s", what);
  append_openssl_errors(buf, len);
}

static void slot_clear(struct sess_slot *s)
{
  SSL_SESSION_free(s->sess);
  free(s->key);
  s->sess = NULL;
  s->key = NULL;
}

/* ---- the BIO: ciphertext buffers that are freed when empty ---------------- */

static void cbuf_free(struct cbuf *b)
{
  OPENSSL_free(b->data);
  memset(b, 0, sizeof *b);
}

static size_t cbuf_avail(const struct cbuf *b) { return b->len - b->off; }

/* Appends n bytes; false when out of memory (b unchanged). */
static bool cbuf_append(struct cbuf *b, const uint8_t *p, size_t n)
{
  if (n > b->cap - b->len && b->off > 0) {
    memmove(b->data, b->data + b->off, b->len - b->off);
    b->len -= b->off;
    b->off = 0;
  }
  if (n > b->cap - b->len) {
    size_t need = b->len + n, cap = b->cap * 2;
    if (need < b->len)
      return false;
    if (cap < need)
      cap = need;
    uint8_t *d = OPENSSL_realloc(b->data, cap);
    if (!d)
      return false;
    b->data = d;
    b->cap = cap;
  }
  memcpy(b->data + b->len, p, n);
  b->len += n;
  return true;
}

/* Moves up to n bytes out; an emptied buffer is freed. */
static size_t cbuf_take(struct cbuf *b, uint8_t *p, size_t n)
{
  size_t k = cbuf_avail(b);

  if (k > n)
    k = n;
  if (k > 0)
    memcpy(p, b->data + b->off, k);
  b->off += k;
  if (b->off == b->len)
    cbuf_free(b);
  return k;
}

static int cbio_read(BIO *bio, char *buf, size_t len, size_t *got)
{
  struct tls_conn *c = BIO_get_data(bio);

  BIO_clear_retry_flags(bio);
  if (!c || cbuf_avail(&c->in) == 0) {
    /* Empty means "no data yet", not end of file. */
    BIO_set_retry_read(bio);
    *got = 0;
    return 0;
  }
  *got = cbuf_take(&c->in, (uint8_t *)buf, len);
  return 1;
}

static int cbio_write(BIO *bio, const char *buf, size_t len, size_t *put)
{
  struct tls_conn *c = BIO_get_data(bio);

  BIO_clear_retry_flags(bio);
  *put = 0;
  if (!c)
    return 0;
  if (!cbuf_append(&c->out, (const uint8_t *)buf, len)) {
    c->oom = true; /* not retryable: the call fails, and says why */
    return 0;
  }
  *put = len;
  return 1;
}

static long cbio_ctrl(BIO *bio, int cmd, long num, void *ptr)
{
  struct tls_conn *c = BIO_get_data(bio);

  (void)num;
  (void)ptr;
  switch (cmd) {
  case BIO_CTRL_PENDING:
    return c ? (long)cbuf_avail(&c->in) : 0;
  case BIO_CTRL_WPENDING:
    return c ? (long)cbuf_avail(&c->out) : 0;
  case BIO_CTRL_FLUSH:
    return 1;
  default:
    return 0; /* BIO_CTRL_EOF (never), kTLS, push/pop...: not supported */
  }
}

static int cbio_create(BIO *bio)
{
  BIO_set_init(bio, 1);
  return 1;
}

static BIO_METHOD *g_cbio_method;
static int g_cbio_type;
static CRYPTO_ONCE g_cbio_once = CRYPTO_ONCE_STATIC_INIT;

/* One method for the process, never freed (like OpenSSL's own static
 * methods): BIOs may outlive any one tls_ctx. */
static void cbio_method_init(void)
{
  int idx = BIO_get_new_index();
  BIO_METHOD *m;

  if (idx == -1)
    return;
  m = BIO_meth_new(idx | BIO_TYPE_SOURCE_SINK, "fleetgw tls_conn");
  if (!m)
    return;
  if (BIO_meth_set_read_ex(m, cbio_read) != 1 || BIO_meth_set_write_ex(m, cbio_write) != 1 ||
      BIO_meth_set_ctrl(m, cbio_ctrl) != 1 || BIO_meth_set_create(m, cbio_create) != 1) {
    BIO_meth_free(m);
    return;
  }
  g_cbio_type = idx | BIO_TYPE_SOURCE_SINK;
  g_cbio_method = m;
}

static const BIO_METHOD *cbio_method(void)
{
  if (!CRYPTO_THREAD_run_once(&g_cbio_once, cbio_method_init))
    return NULL;
  return g_cbio_method;
}

/* The tls_conn of an SSL made by conn_new (NULL while it is being freed). */
static struct tls_conn *conn_of(const SSL *ssl)
{
  BIO *b = SSL_get_rbio(ssl);

  if (!b || !g_cbio_method || BIO_method_type(b) != g_cbio_type)
    return NULL;
  return BIO_get_data(b);
}

/* OpenSSL hands over each new resumable session (after the handshake in
 * TLS 1.2, with each NewSessionTicket in TLS 1.3): keep the newest in the
 * connection's slot.  Returns 1 when the reference was kept. */
static int new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
  struct tls_conn *c = conn_of(ssl);
  char *key;

  if (!c || !c->slot || !c->has_key || c->slot->off)
    return 0;
  key = strdup(c->key);
  if (!key)
    return 0; /* no resumption then; the connection itself is unaffected */
  slot_clear(c->slot);
  c->slot->sess = sess;
  c->slot->key = key;
  return 1;
}

struct tls_ctx *tls_ctx_new(const char *ca_file, const char *cert_file, const char *key_file,
                            char *err, size_t errlen)
{
  struct tls_ctx *ctx;

  if (err && errlen)
    err[0] = '\0';
  if (!ca_file || (cert_file == NULL) != (key_file == NULL)) {
    set_err(err, errlen, "a CA file is required, and a certificate needs its key", NULL);
    return NULL;
  }
  ERR_clear_error();
  ctx = calloc(1, sizeof *ctx);
  if (!ctx) {
    set_err(err, errlen, "out of memory", NULL);
    return NULL;
  }
  ctx->ssl_ctx = SSL_CTX_new(TLS_client_method());
  if (!ctx->ssl_ctx) {
    set_err(err, errlen, "SSL_CTX_new failed", NULL);
    goto out_free_ctx;
  }
  if (SSL_CTX_set_min_proto_version(ctx->ssl_ctx, TLS1_2_VERSION) != 1) {
    set_err(err, errlen, "cannot set TLS 1.2 as the minimum", NULL);
    goto out_free_ssl_ctx;
  }
  /* Release record buffers when idle: thousands of mostly quiet
   * connections would otherwise each hold ~34 KiB of buffers. */
  SSL_CTX_set_mode(ctx->ssl_ctx, SSL_MODE_RELEASE_BUFFERS);
  /* No renegotiation: TLS 1.2 renegotiation buys a client nothing here and
   * lets a peer make us redo handshakes (TLS 1.3 has none anyway). */
  SSL_CTX_set_options(ctx->ssl_ctx, SSL_OP_NO_RENEGOTIATION);
  SSL_CTX_set_verify(ctx->ssl_ctx, SSL_VERIFY_PEER, NULL);
  /* Client-side resumption with our own one-session slots (struct
   * sess_slot), not OpenSSL's internal cache. */
  SSL_CTX_set_session_cache_mode(ctx->ssl_ctx,
                                 SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
  SSL_CTX_sess_set_new_cb(ctx->ssl_ctx, new_session_cb);
  if (SSL_CTX_load_verify_locations(ctx->ssl_ctx, ca_file, NULL) != 1) {
    set_err(err, errlen, "cannot load CA file", ca_file);
    goto out_free_ssl_ctx;
  }
  if (cert_file) {
    if (SSL_CTX_use_certificate_chain_file(ctx->ssl_ctx, cert_file) != 1) {
      set_err(err, errlen, "cannot load certificate file", cert_file);
      goto out_free_ssl_ctx;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx->ssl_ctx, key_file, SSL_FILETYPE_PEM) != 1) {
      set_err(err, errlen, "cannot load key file", key_file);
      goto out_free_ssl_ctx;
    }
    if (SSL_CTX_check_private_key(ctx->ssl_ctx) != 1) {
      set_err(err, errlen, "key does not match certificate", cert_file);
      goto out_free_ssl_ctx;
    }
    ctx->has_cert = true;
  }
  return ctx;

out_free_ssl_ctx:
  SSL_CTX_free(ctx->ssl_ctx);
out_free_ctx:
  free(ctx);
  return NULL;
}

int tls_ctx_set_max_version(struct tls_ctx *ctx, int version)
{
  int v = version == 12 ? TLS1_2_VERSION : version == 13 ? TLS1_3_VERSION : 0;
  if (!v || SSL_CTX_set_max_proto_version(ctx->ssl_ctx, v) != 1)
    return TLS_ERR_CONFIG;
  return TLS_OK;
}

void tls_ctx_stats(const struct tls_ctx *ctx, struct tls_stats *out)
{
  *out = ctx->stats;
}

void tls_ctx_free(struct tls_ctx *ctx)
{
  if (!ctx)
    return;
  slot_clear(&ctx->slot);
  SSL_CTX_free(ctx->ssl_ctx);
  free(ctx);
}

static bool is_ip_literal(const char *host)
{
  unsigned char addr[16];
  return inet_pton(AF_INET, host, addr) == 1 || inet_pton(AF_INET6, host, addr) == 1;
}

/* Hostname or IP verification and SNI (names only, RFC 6066 §3). */
static int setup_peer_name(struct tls_conn *c, const char *host, char *err, size_t errlen)
{
  X509_VERIFY_PARAM *param = SSL_get0_param(c->ssl);

  if (is_ip_literal(host)) {
    if (X509_VERIFY_PARAM_set1_ip_asc(param, host) != 1) {
      set_err(err, errlen, "cannot set IP to verify", host);
      return -1;
    }
    return 0;
  }
  X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
  if (X509_VERIFY_PARAM_set1_host(param, host, 0) != 1) {
    set_err(err, errlen, "cannot set host name to verify", host);
    return -1;
  }
  if (SSL_set_tlsext_host_name(c->ssl, host) != 1) {
    set_err(err, errlen, "cannot set SNI", host);
    return -1;
  }
  return 0;
}

static int setup_alpn(struct tls_conn *c, const char *alpn, char *err, size_t errlen)
{
  unsigned char wire[256];
  size_t n = strlen(alpn);

  if (n == 0 || n > 255) {
    set_err(err, errlen, "bad ALPN protocol name", alpn);
    return -1;
  }
  wire[0] = (unsigned char)n;
  memcpy(wire + 1, alpn, n);
  /* Unlike most of OpenSSL, SSL_set_alpn_protos returns 0 on success. */
  if (SSL_set_alpn_protos(c->ssl, wire, (unsigned)(n + 1)) != 0) {
    set_err(err, errlen, "cannot set ALPN", alpn);
    return -1;
  }
  return 0;
}

static int setup_client_cert(struct tls_conn *c, const char *cert_file, const char *key_file,
                             char *err, size_t errlen)
{
  if (!cert_file || !key_file) {
    set_err(err, errlen, "a client certificate needs both a certificate and a key", NULL);
    return -1;
  }
  if (SSL_use_certificate_chain_file(c->ssl, cert_file) != 1) {
    set_err(err, errlen, "cannot load certificate file", cert_file);
    return -1;
  }
  if (SSL_use_PrivateKey_file(c->ssl, key_file, SSL_FILETYPE_PEM) != 1) {
    set_err(err, errlen, "cannot load key file", key_file);
    return -1;
  }
  if (SSL_check_private_key(c->ssl) != 1) {
    set_err(err, errlen, "key does not match certificate", cert_file);
    return -1;
  }
  return 0;
}

/* Makes c offer its slot's session when it was made for the same server,
 * and file the sessions it gets there. */
static void use_slot(struct tls_conn *c, struct sess_slot *slot)
{
  c->slot = slot;
  c->has_key = true;
  if (!slot->off && slot->sess && slot->key && strcmp(slot->key, c->key) == 0 &&
      SSL_SESSION_is_resumable(slot->sess) && SSL_set_session(c->ssl, slot->sess) == 1)
    c->offered = slot->sess;
  ERR_clear_error();
}

static struct tls_conn *conn_new(struct tls_ctx *ctx, const char *host, const char *alpn,
                                 char *err, size_t errlen)
{
  struct tls_conn *c;
  const BIO_METHOD *meth;
  BIO *bio;
  size_t hl, al;

  if (err && errlen)
    err[0] = '\0';
  if (!ctx || !host || !host[0]) {
    set_err(err, errlen, "a TLS context and a host name are required", NULL);
    return NULL;
  }
  ERR_clear_error();
  hl = strlen(host);
  al = alpn ? strlen(alpn) : 0;
  /* The key lives in the same allocation as the connection. */
  c = calloc(1, sizeof *c + hl + al + 2);
  if (!c) {
    set_err(err, errlen, "out of memory", NULL);
    return NULL;
  }
  c->stats = &ctx->stats;
  memcpy(c->key, host, hl);
  c->key[hl] = '\n';
  memcpy(c->key + hl + 1, alpn ? alpn : "", al);
  c->ssl = SSL_new(ctx->ssl_ctx);
  if (!c->ssl) {
    set_err(err, errlen, "SSL_new failed", NULL);
    goto out_free_conn;
  }
  meth = cbio_method();
  bio = meth ? BIO_new(meth) : NULL;
  if (!bio) {
    set_err(err, errlen, "out of memory (BIO)", NULL);
    goto out_free_ssl;
  }
  BIO_set_data(bio, c);
  SSL_set_bio(c->ssl, bio, bio); /* the SSL owns it from here, one reference for both */
  SSL_set_connect_state(c->ssl);
  if (setup_peer_name(c, host, err, errlen) < 0)
    goto out_free_ssl;
  if (alpn && setup_alpn(c, alpn, err, errlen) < 0)
    goto out_free_ssl;
  return c;

out_free_ssl:
  SSL_free(c->ssl);
out_free_conn:
  free(c);
  return NULL;
}

struct tls_conn *tls_conn_new(struct tls_ctx *ctx, const char *host, const char *alpn,
                              const char *cert_file, const char *key_file, char *err,
                              size_t errlen)
{
  struct tls_conn *c = conn_new(ctx, host, alpn, err, errlen);

  if (!c)
    return NULL;
  if (cert_file || key_file) {
    /* A certificate of its own, read from files: no slot to share. */
    if (setup_client_cert(c, cert_file, key_file, err, errlen) < 0) {
      tls_conn_free(c);
      return NULL;
    }
    return c;
  }
  use_slot(c, &ctx->slot);
  return c;
}

struct tls_identity *tls_identity_new(const char *cert_pem, const char *key_pem, char *err,
                                      size_t errlen)
{
  struct tls_identity *id;
  BIO *b;

  if (err && errlen)
    err[0] = '\0';
  if (!cert_pem || !key_pem) {
    set_err(err, errlen, "a client identity needs a certificate and a key", NULL);
    return NULL;
  }
  ERR_clear_error();
  id = calloc(1, sizeof *id);
  if (!id) {
    set_err(err, errlen, "out of memory", NULL);
    return NULL;
  }
  id->refs = 1;
  b = BIO_new_mem_buf(cert_pem, -1);
  if (b) {
    id->cert = PEM_read_bio_X509(b, NULL, NULL, NULL);
    BIO_free(b);
  }
  b = BIO_new_mem_buf(key_pem, -1);
  if (b) {
    id->key = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
    BIO_free(b);
  }
  if (!id->cert || !id->key) {
    set_err(err, errlen, id->cert ? "cannot parse the private key" : "cannot parse the certificate",
            NULL);
    goto out_free;
  }
  if (X509_check_private_key(id->cert, id->key) != 1) {
    set_err(err, errlen, "key does not match certificate", NULL);
    goto out_free;
  }
  return id;

out_free:
  X509_free(id->cert);
  EVP_PKEY_free(id->key);
  free(id);
  return NULL;
}

void tls_identity_ref(struct tls_identity *id)
{
  if (id)
    id->refs++;
}

void tls_identity_unref(struct tls_identity *id)
{
  if (!id || --id->refs > 0)
    return;
  slot_clear(&id->slot);
  X509_free(id->cert);
  EVP_PKEY_free(id->key);
  free(id);
}

struct tls_conn *tls_conn_new_identity(struct tls_ctx *ctx, const char *host, const char *alpn,
                                       struct tls_identity *id, char *err, size_t errlen)
{
  struct tls_conn *c;

  if (!id)
    return tls_conn_new(ctx, host, alpn, NULL, NULL, err, errlen);
  c = conn_new(ctx, host, alpn, err, errlen);
  if (!c)
    return NULL;
  if (SSL_use_certificate(c->ssl, id->cert) != 1 || SSL_use_PrivateKey(c->ssl, id->key) != 1 ||
      SSL_check_private_key(c->ssl) != 1) {
    set_err(err, errlen, "cannot use the client identity", NULL);
    tls_conn_free(c);
    return NULL;
  }
  /* The slot lives in the identity: keep it alive as long as c. */
  tls_identity_ref(id);
  c->id = id;
  use_slot(c, &id->slot);
  return c;
}

void tls_conn_free(struct tls_conn *c)
{
  if (!c)
    return;
  SSL_free(c->ssl); /* may still file a session through new_session_cb: before the slot goes */
  cbuf_free(&c->in);
  cbuf_free(&c->out);
  free(c->err);
  tls_identity_unref(c->id);
  free(c);
}

/* The connection's error text, allocated on first use (NULL without
 * memory: the error is then reported without its text). */
static char *err_buf(struct tls_conn *c)
{
  if (!c->err)
    c->err = malloc(TLS_ERR_LEN);
  if (!c->err)
    c->err_lost = true;
  return c->err;
}

static void conn_err(struct tls_conn *c, const char *text)
{
  char *e = err_buf(c);

  if (e)
    snprintf(e, TLS_ERR_LEN, "%s", text);
}

/* Records the reason of a failure: out of memory in our BIO, the
 * verification result when the chain or the name was rejected, then
 * OpenSSL's error queue. */
static void record_failure(struct tls_conn *c, const char *what)
{
  long vr = SSL_get_verify_result(c->ssl);
  char *e = err_buf(c);

  if (!e) {
    ERR_clear_error();
    return;
  }
  if (c->oom)
    snprintf(e, TLS_ERR_LEN, "%s: out of memory buffering ciphertext", what);
  else if (vr != X509_V_OK)
    snprintf(e, TLS_ERR_LEN, "%s: certificate verify failed: %s", what,
             X509_verify_cert_error_string(vr));
  else
    snprintf(e, TLS_ERR_LEN, "%s", what);
  append_openssl_errors(e, TLS_ERR_LEN);
}

/* Maps an SSL_get_error() result after a failed call. */
static int map_ssl_error(struct tls_conn *c, int ret, int fatal_code, const char *what)
{
  int e = SSL_get_error(c->ssl, ret);

  if (c->oom)
    e = SSL_ERROR_SSL; /* our BIO could not take the output: fatal */
  switch (e) {
  case SSL_ERROR_WANT_READ:
  case SSL_ERROR_WANT_WRITE:
    return TLS_WANT_IO;
  case SSL_ERROR_ZERO_RETURN:
    conn_err(c, "peer sent close_notify");
    return TLS_ERR_CLOSED;
  default:
    record_failure(c, what);
    return fatal_code;
  }
}

/* Called when everything received has been consumed.  SSL_MODE_RELEASE_BUFFERS
 * does not cover every path: a read that ends in "want more" after a
 * post-handshake message (TLS 1.3 session tickets) keeps the 16 KiB record
 * buffer, so free it explicitly (SSL_free_buffers refuses while a partial
 * record is buffered). */
static void release_idle_buffers(struct tls_conn *c)
{
  (void)SSL_free_buffers(c->ssl);
}

/* A connection that offered its slot's session failed before any data
 * came: in TLS 1.3 the server's refusal may come after the client's half
 * of the handshake, as an alert in place of the first record.  (Running
 * out of memory says nothing about the session.) */
static void resume_failed(struct tls_conn *c)
{
  if (!c->offered || c->got_data || !c->slot || c->oom)
    return;
  slot_clear(c->slot);
  c->slot->off = true;
}

static void set_established(struct tls_conn *c)
{
  c->established = true;
  if (SSL_session_reused(c->ssl))
    c->stats->resumed++;
  else
    c->stats->full++;
}

int tls_handshake(struct tls_conn *c)
{
  int ret;

  if (c->established)
    return TLS_OK;
  ERR_clear_error();
  ret = SSL_do_handshake(c->ssl);
  if (ret == 1 && !c->oom) {
    set_established(c);
    return TLS_OK;
  }
  ret = map_ssl_error(c, ret, TLS_ERR_HANDSHAKE, "TLS handshake failed");
  /* A handshake that offered the slot's session and failed: the session
   * may be the trouble (an OpenSSL server that verifies clients without a
   * session id context fails every resumption), so this slot does full
   * handshakes from now on. */
  if (ret != TLS_WANT_IO)
    resume_failed(c);
  /* A close_notify during the handshake is a failed handshake too. */
  return ret == TLS_ERR_CLOSED ? TLS_ERR_HANDSHAKE : ret;
}

bool tls_is_established(const struct tls_conn *c) { return c->established; }

int tls_feed(struct tls_conn *c, const uint8_t *data, size_t len)
{
  if (len > 0 && !cbuf_append(&c->in, data, len)) {
    conn_err(c, "out of memory buffering ciphertext");
    return TLS_ERR_NOMEM;
  }
  return TLS_OK;
}

int tls_read(struct tls_conn *c, uint8_t *buf, size_t cap)
{
  size_t got = 0;
  int ret;

  if (c->oom)
    return TLS_ERR_NOMEM; /* output was lost: the connection is dead */
  if (cap == 0)
    return TLS_WANT_IO;
  if (cap > INT_MAX)
    cap = INT_MAX;
  /* Nothing buffered anywhere: SSL_read could not make progress, but it
   * would allocate its 16 KiB record buffer before finding that out and
   * keep it (SSL_MODE_RELEASE_BUFFERS frees it only after a record was
   * consumed).  Skipping the call keeps idle connections small. */
  if (c->established && !SSL_has_pending(c->ssl) && cbuf_avail(&c->in) == 0) {
    release_idle_buffers(c);
    return TLS_WANT_IO;
  }
  ERR_clear_error();
  ret = SSL_read_ex(c->ssl, buf, cap, &got);
  /* Reading may produce output too (TLS 1.3 key update, alerts). */
  if (ret == 1 && !c->oom) {
    if (!c->established && SSL_is_init_finished(c->ssl))
      set_established(c);
    c->got_data = true;
    return (int)got;
  }
  ret = map_ssl_error(c, 0, TLS_ERR_PROTOCOL, "TLS read failed");
  if (ret != TLS_WANT_IO && ret != TLS_ERR_CLOSED)
    resume_failed(c);
  if (ret == TLS_WANT_IO && c->established && !SSL_has_pending(c->ssl))
    release_idle_buffers(c);
  return ret;
}

int tls_write(struct tls_conn *c, const uint8_t *data, size_t len)
{
  size_t done = 0;

  ERR_clear_error();
  while (done < len) {
    size_t wrote = 0;
    /* Our BIO never pushes back, so a write completes unless the
     * connection failed or there was no memory for the output. */
    int ret = SSL_write_ex(c->ssl, data + done, len - done, &wrote);
    if (ret != 1 || c->oom) {
      ret = map_ssl_error(c, 0, TLS_ERR_PROTOCOL, "TLS write failed");
      if (c->oom)
        return TLS_ERR_NOMEM;
      return ret == TLS_WANT_IO ? TLS_ERR_PROTOCOL : ret;
    }
    done += wrote;
  }
  return TLS_OK;
}

size_t tls_pending_output(const struct tls_conn *c) { return cbuf_avail(&c->out); }

size_t tls_take_output(struct tls_conn *c, uint8_t *buf, size_t cap)
{
  return cbuf_take(&c->out, buf, cap);
}

void tls_shutdown(struct tls_conn *c)
{
  /* Before the handshake there is no session to close: nothing to send. */
  if (!c->established)
    return;
  ERR_clear_error();
  (void)SSL_shutdown(c->ssl);
  ERR_clear_error();
}

const char *tls_last_error(const struct tls_conn *c)
{
  if (c->err)
    return c->err;
  return c->err_lost ? "out of memory (no room for the error text)" : "";
}
