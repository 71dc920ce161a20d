/*
 * leaf_dtls.c - a DTLS 1.2 client association over memory BIOs, driven by a
 * libuv loop (see leaf_dtls.h).
 *
 * Memory BIOs keep no datagram boundaries, so the two directions are framed
 * here: one received datagram is written into the read BIO and drained
 * before the next; what OpenSSL writes is split on record headers and whole
 * records are packed into datagrams of at most the MTU, a record never
 * spanning two (RFC 6347 §4.1.1).
 */
#include "leaf_dtls.h"

#include <ctype.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

/* RFC 7925 §4.2: TLS_PSK_WITH_AES_128_CCM_8 is the PSK profile's mandatory
 * suite; §4.3/§4.4: TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 on secp256r1. */
#define DEFAULT_PSK_CIPHERS "PSK-AES128-CCM8:PSK-AES128-GCM-SHA256"
#define DEFAULT_CERT_CIPHERS                                                                       \
  "ECDHE-ECDSA-AES128-CCM8:ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"
#define CERT_GROUPS "P-256:X25519:P-384"
#define REC_HDR 13      /* RFC 6347 §4.1: type, version, epoch, sequence, length */
#define MAX_PLAIN 16384 /* RFC 6347 §4.1: DTLSPlaintext.length <= 2^14 */
#define DEFAULT_MTU 1200
#define DEFAULT_HANDSHAKE_MS 10000
#define PSK_TABLE_MAX 4000000u
#define PSK_LINE_MAX 512

struct leaf_dtls_ctx {
  uv_loop_t *loop;
  SSL_CTX *ssl_ctx;
  struct leaf_dtls_cbs cbs;
  unsigned mtu;
  unsigned handshake_ms;
  bool use_certs;
};

enum cstate { C_NEW, C_HANDSHAKE, C_OPEN, C_CLOSED, C_FAILED };

struct leaf_dtls {
  struct leaf_dtls_ctx *ctx;
  void *ud;
  SSL *ssl;
  BIO *rbio, *wbio;  /* owned by ssl */
  uv_timer_t *timer; /* freed by its close callback */
  enum cstate st;
  uint64_t deadline; /* loop ms: the handshake gives up */
  unsigned busy;     /* entry points on the stack: a free waits for 0 */
  bool doomed;
  bool alert_new;
  int alert_in;  /* last alert received (level << 8 | description), or -1 */
  int alert_out; /* last alert sent, or -1 */
  char identity[LEAF_DTLS_ID_MAX + 1];
  uint8_t psk[LEAF_DTLS_PSK_MAX];
  size_t psk_len;
};

static void seterr(char *err, size_t len, const char *fmt, ...)
{
  va_list ap;
  if (!err || len == 0)
    return;
  va_start(ap, fmt);
  vsnprintf(err, len, fmt, ap);
  va_end(ap);
}

static const char *ssl_reason(void)
{
  const char *r = ERR_reason_error_string(ERR_peek_last_error());
  return r ? r : "unknown OpenSSL error";
}

/* An alert's RFC 5246 §7.2 name, e.g. "bad_record_mac", from OpenSSL's
 * long description ("bad record mac"). */
static void alert_name(int alert, char *out, size_t cap)
{
  const char *s = SSL_alert_desc_string_long(alert);
  size_t i = 0;
  for (; s[i] && i + 1 < cap; i++)
    out[i] = s[i] == ' ' ? '_' : (char)tolower((unsigned char)s[i]);
  out[i] = '\0';
}

static int hex_key(const char *hex, uint8_t *out, size_t cap)
{
  size_t n = 0;
  if (!hex[0] || OPENSSL_hexstr2buf_ex(out, cap, &n, hex, '\0') != 1)
    return -1;
  return (int)n;
}

/* ------------------------------------------------------------------------ */
/* Context                                                                   */
/* ------------------------------------------------------------------------ */

static int ctx_creds(struct leaf_dtls_ctx *ctx, const struct leaf_dtls_opts *o, char *err,
                     size_t errlen)
{
  SSL_CTX *sc = ctx->ssl_ctx;
  if (!o->use_certs) {
    /* PSK: no server certificate to verify (RFC 4279 §2). */
    SSL_CTX_set_verify(sc, SSL_VERIFY_NONE, NULL);
    return LEAF_DTLS_OK;
  }
  if (SSL_CTX_load_verify_locations(sc, o->ca_file, NULL) != 1) {
    seterr(err, errlen, "CA file %s: %s", o->ca_file, ssl_reason());
    return LEAF_DTLS_ETLS;
  }
  SSL_CTX_set_verify(sc, SSL_VERIFY_PEER, NULL);
  if (SSL_CTX_set1_groups_list(sc, CERT_GROUPS) != 1) {
    seterr(err, errlen, "groups %s: %s", CERT_GROUPS, ssl_reason());
    return LEAF_DTLS_ETLS;
  }
  if (o->cert_file && (SSL_CTX_use_certificate_chain_file(sc, o->cert_file) != 1 ||
                       SSL_CTX_use_PrivateKey_file(sc, o->key_file, SSL_FILETYPE_PEM) != 1 ||
                       SSL_CTX_check_private_key(sc) != 1)) {
    seterr(err, errlen, "certificate %s / key %s: %s", o->cert_file, o->key_file, ssl_reason());
    return LEAF_DTLS_ETLS;
  }
  return LEAF_DTLS_OK;
}

int leaf_dtls_ctx_new(uv_loop_t *loop, const struct leaf_dtls_opts *o,
                      const struct leaf_dtls_cbs *cbs, struct leaf_dtls_ctx **out, char *err,
                      size_t errlen)
{
  struct leaf_dtls_ctx *ctx;
  unsigned mtu = o && o->mtu ? o->mtu : DEFAULT_MTU;
  int rc;
  *out = NULL;
  if (!loop || !o || !cbs || !cbs->send || !cbs->on_error || !cbs->on_handshake_done ||
      !cbs->on_plaintext || mtu < LEAF_DTLS_MTU_MIN || mtu > LEAF_DTLS_MTU_MAX ||
      (!o->cert_file != !o->key_file) || (o->use_certs && !o->ca_file)) {
    seterr(err, errlen,
           "bad options (MTU %u..%u; certificates need a CA file; a certificate "
           "needs its key)",
           LEAF_DTLS_MTU_MIN, LEAF_DTLS_MTU_MAX);
    return LEAF_DTLS_EINVAL;
  }
  ctx = calloc(1, sizeof *ctx);
  if (!ctx) {
    seterr(err, errlen, "out of memory");
    return LEAF_DTLS_ENOMEM;
  }
  ctx->loop = loop;
  ctx->cbs = *cbs;
  ctx->mtu = mtu;
  ctx->handshake_ms = o->handshake_ms ? o->handshake_ms : DEFAULT_HANDSHAKE_MS;
  ctx->use_certs = o->use_certs;
  ctx->ssl_ctx = SSL_CTX_new(DTLS_client_method());
  if (!ctx->ssl_ctx) {
    seterr(err, errlen, "SSL_CTX_new: %s", ssl_reason());
    free(ctx);
    return LEAF_DTLS_ENOMEM;
  }
  /* DTLS 1.2 only (RFC 7925 §18); no compression (§8), no renegotiation
   * (§17); no resumption, hence no tickets; the MTU is set explicitly per
   * connection, so OpenSSL must not query the (memory) BIO for one. */
  SSL_CTX_set_min_proto_version(ctx->ssl_ctx, DTLS1_2_VERSION);
  SSL_CTX_set_max_proto_version(ctx->ssl_ctx, DTLS1_2_VERSION);
  SSL_CTX_set_options(ctx->ssl_ctx, SSL_OP_NO_QUERY_MTU | SSL_OP_NO_COMPRESSION |
                                        SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_TICKET);
  const char *ciphers = o->ciphers     ? o->ciphers
                        : o->use_certs ? DEFAULT_CERT_CIPHERS
                                       : DEFAULT_PSK_CIPHERS;
  if (SSL_CTX_set_cipher_list(ctx->ssl_ctx, ciphers) != 1) {
    seterr(err, errlen, "cipher list \"%s\": %s", ciphers, ssl_reason());
    rc = LEAF_DTLS_EINVAL;
    goto fail;
  }
  rc = ctx_creds(ctx, o, err, errlen);
  if (rc != LEAF_DTLS_OK)
    goto fail;
  *out = ctx;
  return LEAF_DTLS_OK;
fail:
  leaf_dtls_ctx_free(ctx);
  return rc;
}

void leaf_dtls_ctx_free(struct leaf_dtls_ctx *ctx)
{
  if (!ctx)
    return;
  SSL_CTX_free(ctx->ssl_ctx);
  free(ctx);
}

/* ------------------------------------------------------------------------ */
/* One association                                                           */
/* ------------------------------------------------------------------------ */

static unsigned psk_cb(SSL *ssl, const char *hint, char *identity, unsigned max_identity,
                       unsigned char *psk, unsigned max_psk)
{
  struct leaf_dtls *c = SSL_get_app_data(ssl);
  size_t il = strlen(c->identity);
  (void)hint; /* RFC 4279 §5.2: without a profile that says otherwise, ignored */
  if (il + 1 > max_identity || c->psk_len > max_psk)
    return 0;
  memcpy(identity, c->identity, il + 1);
  memcpy(psk, c->psk, c->psk_len);
  return (unsigned)c->psk_len;
}

static void info_cb(const SSL *ssl, int where, int ret)
{
  struct leaf_dtls *c = SSL_get_app_data(ssl);
  if (!(where & SSL_CB_ALERT))
    return;
  if (where & SSL_CB_READ) {
    c->alert_in = ret;
    c->alert_new = true;
  } else {
    c->alert_out = ret;
  }
}

static void timer_close_cb(uv_handle_t *h)
{
  free(h);
}

static void destroy(struct leaf_dtls *c)
{
  SSL_free(c->ssl); /* frees both BIOs */
  OPENSSL_cleanse(c->psk, sizeof c->psk);
  if (c->timer) {
    c->timer->data = NULL;
    uv_close((uv_handle_t *)c->timer, timer_close_cb);
  }
  free(c);
}

static int conn_creds(struct leaf_dtls *c, const struct leaf_dtls_cred *cr, char *err,
                      size_t errlen)
{
  if (c->ctx->use_certs) {
    if (!cr || !cr->cert_file)
      return LEAF_DTLS_OK; /* the context's certificate (or none) */
    if (SSL_use_certificate_chain_file(c->ssl, cr->cert_file) != 1 ||
        SSL_use_PrivateKey_file(c->ssl, cr->key_file, SSL_FILETYPE_PEM) != 1 ||
        SSL_check_private_key(c->ssl) != 1) {
      seterr(err, errlen, "certificate %s / key %s: %s", cr->cert_file,
             cr->key_file ? cr->key_file : "(none)", ssl_reason());
      return LEAF_DTLS_ETLS;
    }
    return LEAF_DTLS_OK;
  }
  /* RFC 7925 §4.2: identities up to 128 octets, keys up to 64. */
  if (!cr || !cr->psk_identity || !cr->psk || cr->psk_identity[0] == '\0' ||
      strlen(cr->psk_identity) > LEAF_DTLS_ID_MAX || cr->psk_len == 0 ||
      cr->psk_len > LEAF_DTLS_PSK_MAX) {
    seterr(err, errlen, "PSK mode needs an identity of 1..%d octets and a key of 1..%d",
           LEAF_DTLS_ID_MAX, LEAF_DTLS_PSK_MAX);
    return LEAF_DTLS_EINVAL;
  }
  strcpy(c->identity, cr->psk_identity);
  memcpy(c->psk, cr->psk, cr->psk_len);
  c->psk_len = cr->psk_len;
  SSL_set_psk_client_callback(c->ssl, psk_cb);
  return LEAF_DTLS_OK;
}

int leaf_dtls_new(struct leaf_dtls_ctx *ctx, void *ud, const struct leaf_dtls_cred *cred,
                  struct leaf_dtls **out, char *err, size_t errlen)
{
  struct leaf_dtls *c;
  int rc = LEAF_DTLS_ENOMEM;
  *out = NULL;
  c = calloc(1, sizeof *c);
  if (!c) {
    seterr(err, errlen, "out of memory");
    return LEAF_DTLS_ENOMEM;
  }
  c->ctx = ctx;
  c->ud = ud;
  c->alert_in = c->alert_out = -1;
  c->timer = malloc(sizeof *c->timer);
  c->ssl = SSL_new(ctx->ssl_ctx);
  c->rbio = BIO_new(BIO_s_mem());
  c->wbio = BIO_new(BIO_s_mem());
  if (!c->timer || !c->ssl || !c->rbio || !c->wbio) {
    BIO_free(c->rbio);
    BIO_free(c->wbio);
    free(c->timer);
    c->timer = NULL;
    seterr(err, errlen, "out of memory");
    goto fail;
  }
  uv_timer_init(ctx->loop, c->timer);
  c->timer->data = c;
  /* An empty BIO means "no datagram yet" (retry), not end of file. */
  BIO_set_mem_eof_return(c->rbio, -1);
  BIO_set_mem_eof_return(c->wbio, -1);
  SSL_set_bio(c->ssl, c->rbio, c->wbio);
  SSL_set_app_data(c->ssl, c);
  SSL_set_connect_state(c->ssl);
  SSL_set_info_callback(c->ssl, info_cb);
  /* RFC 6347 §4.1.1.1: records fit the path MTU; without an explicit MTU
   * OpenSSL would fall back to its 256-byte minimum. */
  if (SSL_set_mtu(c->ssl, (long)ctx->mtu) <= 0) {
    seterr(err, errlen, "MTU %u refused: %s", ctx->mtu, ssl_reason());
    rc = LEAF_DTLS_EINVAL;
    goto fail;
  }
  rc = conn_creds(c, cred, err, errlen);
  if (rc != LEAF_DTLS_OK)
    goto fail;
  *out = c;
  return LEAF_DTLS_OK;
fail:
  destroy(c);
  return rc;
}

/* Sends what OpenSSL wrote: whole records, packed into datagrams <= MTU. */
static void flush(struct leaf_dtls *c)
{
  char *p = NULL;
  long n = BIO_get_mem_data(c->wbio, &p);
  size_t off = 0, total = n > 0 ? (size_t)n : 0;
  while (off < total) {
    size_t start = off, dg = 0;
    while (off < total) {
      size_t left = total - off, rec = left;
      if (left >= REC_HDR)
        rec = REC_HDR + ((size_t)(uint8_t)p[off + 11] << 8 | (uint8_t)p[off + 12]);
      if (rec > left)
        rec = left; /* cannot happen: OpenSSL writes whole records */
      if (dg > 0 && dg + rec > c->ctx->mtu)
        break;
      dg += rec;
      off += rec;
    }
    (void)c->ctx->cbs.send(c->ud, (const uint8_t *)p + start, dg);
  }
  (void)BIO_reset(c->wbio);
}

static void report_alert(struct leaf_dtls *c)
{
  char name[64];
  if (!c->alert_new)
    return;
  c->alert_new = false;
  if (c->ctx->cbs.on_alert) {
    alert_name(c->alert_in, name, sizeof name);
    c->ctx->cbs.on_alert(c->ud, (c->alert_in >> 8) == SSL3_AL_FATAL, name);
  }
}

static void fail(struct leaf_dtls *c, const char *reason)
{
  c->st = C_FAILED;
  uv_timer_stop(c->timer);
  c->ctx->cbs.on_error(c->ud, reason);
}

/* A fatal SSL error: says why as precisely as it can. */
static void fail_ssl(struct leaf_dtls *c)
{
  char reason[256], name[64];
  long vr = SSL_get_verify_result(c->ssl);
  int n;
  if (c->alert_in >= 0 && (c->alert_in >> 8) == SSL3_AL_FATAL) {
    alert_name(c->alert_in, name, sizeof name);
    n = snprintf(reason, sizeof reason, "received fatal alert %s", name);
  } else if (c->ctx->use_certs && vr != X509_V_OK) {
    n = snprintf(reason, sizeof reason, "certificate verify failed: %s",
                 X509_verify_cert_error_string(vr));
  } else {
    n = snprintf(reason, sizeof reason, "%s", ssl_reason());
  }
  if (c->alert_out >= 0 && n > 0 && (size_t)n < sizeof reason) {
    alert_name(c->alert_out, name, sizeof name);
    snprintf(reason + n, sizeof reason - (size_t)n, " (sent alert %s)", name);
  }
  fail(c, reason);
}

/* The peer's close_notify: answered with ours (RFC 5246 §7.2.1). */
static void peer_closed(struct leaf_dtls *c)
{
  ERR_clear_error();
  (void)SSL_shutdown(c->ssl);
  flush(c);
  c->st = C_CLOSED;
  uv_timer_stop(c->timer);
  if (c->ctx->cbs.on_closed)
    c->ctx->cbs.on_closed(c->ud);
  else
    c->ctx->cbs.on_error(c->ud, "closed by the peer (close_notify)");
}

static void timer_cb(uv_timer_t *t);

/* Re-arms the timer at the earlier of OpenSSL's retransmission deadline
 * (RFC 6347 §4.2.4.1: 1 s, doubled on each retransmission) and the end of
 * the handshake's time. */
static void rearm(struct leaf_dtls *c)
{
  struct timeval tv;
  uint64_t ms = UINT64_MAX;
  if (c->doomed || (c->st != C_HANDSHAKE && c->st != C_OPEN)) {
    uv_timer_stop(c->timer);
    return;
  }
  if (DTLSv1_get_timeout(c->ssl, &tv) == 1)
    ms = (uint64_t)tv.tv_sec * 1000u + ((uint64_t)tv.tv_usec + 999u) / 1000u;
  if (c->st == C_HANDSHAKE) {
    uint64_t now = uv_now(c->ctx->loop);
    uint64_t left = c->deadline > now ? c->deadline - now : 0;
    if (left < ms)
      ms = left;
  }
  if (ms == UINT64_MAX)
    uv_timer_stop(c->timer);
  else
    uv_timer_start(c->timer, timer_cb, ms ? ms : 1, 0); /* never 0: see leafsim arm() */
}

/* Leaves an entry point: frees a connection doomed meanwhile, else re-arms. */
static void leave(struct leaf_dtls *c)
{
  if (--c->busy > 0)
    return;
  if (c->doomed)
    destroy(c);
  else
    rearm(c);
}

/* Runs the handshake and reads records until OpenSSL wants another datagram.
 * Returns 0, or LEAF_DTLS_ETLS when the association failed. */
static int pump(struct leaf_dtls *c)
{
  uint8_t plain[MAX_PLAIN];
  if (c->st == C_HANDSHAKE) {
    ERR_clear_error();
    int r = SSL_do_handshake(c->ssl);
    flush(c);
    report_alert(c);
    if (r == 1) {
      c->st = C_OPEN;
      c->ctx->cbs.on_handshake_done(c->ud);
    } else {
      int e = SSL_get_error(c->ssl, r);
      if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
        fail_ssl(c);
        return LEAF_DTLS_ETLS;
      }
    }
  }
  while (c->st == C_OPEN && !c->doomed) {
    ERR_clear_error();
    int n = SSL_read(c->ssl, plain, sizeof plain);
    flush(c);
    report_alert(c);
    if (n > 0) {
      c->ctx->cbs.on_plaintext(c->ud, plain, (size_t)n);
      continue;
    }
    int e = SSL_get_error(c->ssl, n);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
      break;
    if (e == SSL_ERROR_ZERO_RETURN) {
      peer_closed(c);
      break;
    }
    fail_ssl(c);
    return LEAF_DTLS_ETLS;
  }
  return LEAF_DTLS_OK;
}

static void timer_cb(uv_timer_t *t)
{
  struct leaf_dtls *c = t->data;
  if (!c || c->doomed)
    return;
  c->busy++;
  if (c->st == C_HANDSHAKE && uv_now(c->ctx->loop) >= c->deadline) {
    char reason[64];
    snprintf(reason, sizeof reason, "handshake timed out after %u ms", c->ctx->handshake_ms);
    fail(c, reason);
  } else if (c->st == C_HANDSHAKE || c->st == C_OPEN) {
    ERR_clear_error();
    int r = DTLSv1_handle_timeout(c->ssl); /* RFC 6347 §4.2.4: resend the flight */
    flush(c);
    if (r < 0)
      fail_ssl(c);
  }
  leave(c);
}

int leaf_dtls_start(struct leaf_dtls *c)
{
  if (c->st != C_NEW || c->doomed)
    return LEAF_DTLS_ESTATE;
  c->st = C_HANDSHAKE;
  c->deadline = uv_now(c->ctx->loop) + c->ctx->handshake_ms;
  c->busy++;
  int rc = pump(c);
  leave(c);
  return rc;
}

int leaf_dtls_input(struct leaf_dtls *c, const uint8_t *data, size_t len)
{
  int rc;
  if ((c->st != C_HANDSHAKE && c->st != C_OPEN) || c->doomed)
    return LEAF_DTLS_ESTATE;
  if (len == 0 || len > INT_MAX)
    return LEAF_DTLS_EINVAL;
  c->busy++;
  /* One datagram at a time: whatever the last one left is dropped. */
  (void)BIO_reset(c->rbio);
  if (BIO_write(c->rbio, data, (int)len) != (int)len) {
    fail(c, "out of memory");
    rc = LEAF_DTLS_ENOMEM;
  } else {
    rc = pump(c);
  }
  leave(c);
  return rc;
}

int leaf_dtls_send(struct leaf_dtls *c, const uint8_t *data, size_t len)
{
  int rc = LEAF_DTLS_OK;
  if (c->st != C_OPEN || c->doomed)
    return LEAF_DTLS_ESTATE;
  if (len == 0)
    return LEAF_DTLS_EINVAL;
  if (len > leaf_dtls_max_data(c))
    return LEAF_DTLS_ETOOBIG; /* OpenSSL would write a record over the MTU */
  c->busy++;
  ERR_clear_error();
  int n = SSL_write(c->ssl, data, (int)len);
  flush(c);
  if (n != (int)len) {
    fail_ssl(c);
    rc = LEAF_DTLS_ETLS;
  }
  leave(c);
  return rc;
}

int leaf_dtls_shutdown(struct leaf_dtls *c)
{
  if (c->doomed)
    return LEAF_DTLS_ESTATE;
  c->busy++;
  if (c->st == C_OPEN) {
    ERR_clear_error();
    (void)SSL_shutdown(c->ssl);
    flush(c);
  }
  if (c->st != C_FAILED)
    c->st = C_CLOSED;
  leave(c);
  return LEAF_DTLS_OK;
}

void leaf_dtls_free(struct leaf_dtls *c)
{
  if (!c)
    return;
  if (c->busy > 0) {
    c->doomed = true;
    uv_timer_stop(c->timer);
    return;
  }
  destroy(c);
}

bool leaf_dtls_established(const struct leaf_dtls *c)
{
  return c->st == C_OPEN;
}

const char *leaf_dtls_cipher(const struct leaf_dtls *c)
{
  const char *n = SSL_get_cipher_name(c->ssl);
  return n ? n : "(none)";
}

size_t leaf_dtls_max_data(const struct leaf_dtls *c)
{
  return c->st == C_OPEN ? DTLS_get_data_mtu(c->ssl) : 0;
}

/* ------------------------------------------------------------------------ */
/* PSK files                                                                 */
/* ------------------------------------------------------------------------ */

struct psk_entry {
  char *id;
  uint8_t key[LEAF_DTLS_PSK_MAX];
  size_t len;
};

struct leaf_psk_table {
  struct psk_entry *e;
  size_t n, cap;
};

static int entry_cmp(const void *a, const void *b)
{
  return strcmp(((const struct psk_entry *)a)->id, ((const struct psk_entry *)b)->id);
}

static void table_free(struct leaf_psk_table *t)
{
  for (size_t i = 0; t && i < t->n; i++)
    free(t->e[i].id);
  if (t)
    OPENSSL_clear_free(t->e, t->cap * sizeof *t->e);
  free(t);
}

/* One "client_id,hexkey" line, without its end of line: 0, or a message. */
static const char *psk_line(struct leaf_psk_table *t, const char *line, unsigned lineno)
{
  const char *comma = strchr(line, ',');
  size_t idlen = comma ? (size_t)(comma - line) : 0;
  if (!line[0] || line[0] == '#' || (lineno == 1 && strncmp(line, "client_id,", 10) == 0))
    return NULL;
  if (idlen == 0 || idlen > LEAF_DTLS_ID_MAX)
    return "expected client_id,hexkey";
  if (t->n == t->cap) {
    size_t cap = t->cap ? t->cap * 2 : 64;
    struct psk_entry *e = cap > PSK_TABLE_MAX ? NULL : OPENSSL_malloc(cap * sizeof *e);
    if (!e)
      return "too many keys, or out of memory";
    if (t->n)
      memcpy(e, t->e, t->n * sizeof *e);
    OPENSSL_clear_free(t->e, t->cap * sizeof *t->e); /* no key left behind by realloc */
    t->e = e;
    t->cap = cap;
  }
  struct psk_entry *e = &t->e[t->n];
  int klen = hex_key(comma + 1, e->key, sizeof e->key);
  if (klen <= 0)
    return "the key is not 1..64 bytes of hex";
  e->len = (size_t)klen;
  e->id = strndup(line, idlen);
  if (!e->id)
    return "out of memory";
  t->n++;
  return NULL;
}

static int table_load(const char *path, struct leaf_psk_table **out, char *err, size_t errlen)
{
  char line[PSK_LINE_MAX + 2];
  const char *why = NULL;
  unsigned lineno = 0;
  struct leaf_psk_table *t = calloc(1, sizeof *t);
  FILE *f = t ? fopen(path, "r") : NULL;
  *out = NULL;
  if (!f) {
    seterr(err, errlen, "--psk-file %s: %s", path, t ? "cannot open" : "out of memory");
    free(t);
    return t ? LEAF_DTLS_EIO : LEAF_DTLS_ENOMEM;
  }
  while (!why && fgets(line, sizeof line, f)) {
    size_t n = strlen(line);
    lineno++;
    if (n > 0 && line[n - 1] != '\n' && !feof(f))
      why = "line too long";
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r' || line[n - 1] == ' '))
      line[--n] = '\0';
    if (!why)
      why = psk_line(t, line, lineno);
  }
  if (!why && ferror(f))
    why = "read error";
  fclose(f);
  if (!why && t->n > 0) {
    qsort(t->e, t->n, sizeof *t->e, entry_cmp);
    for (size_t i = 1; i < t->n && !why; i++)
      if (strcmp(t->e[i - 1].id, t->e[i].id) == 0)
        why = "a ClientId appears twice";
  }
  if (why) {
    seterr(err, errlen, "--psk-file %s line %u: %s", path, lineno, why);
    table_free(t);
    return LEAF_DTLS_EIO;
  }
  *out = t;
  return LEAF_DTLS_OK;
}

int leaf_dtls_keys_load(struct leaf_dtls_keys *k, const char *psk_hex, const char *psk_file,
                        char *err, size_t errlen)
{
  int n;
  memset(k, 0, sizeof *k);
  if (psk_hex) {
    n = hex_key(psk_hex, k->psk, sizeof k->psk);
    if (n <= 0) {
      seterr(err, errlen, "--psk-hex: expected 1..%d bytes of hex", LEAF_DTLS_PSK_MAX);
      return LEAF_DTLS_EINVAL;
    }
    k->psk_len = (size_t)n;
  }
  return psk_file ? table_load(psk_file, &k->table, err, errlen) : LEAF_DTLS_OK;
}

const uint8_t *leaf_dtls_key_for(const struct leaf_dtls_keys *k, const char *id, size_t *len)
{
  struct psk_entry key = {.id = (char *)id};
  const struct psk_entry *e = NULL;
  if (!k->table) {
    *len = k->psk_len;
    return k->psk_len ? k->psk : NULL;
  }
  if (k->table->n)
    e = bsearch(&key, k->table->e, k->table->n, sizeof *k->table->e, entry_cmp);
  if (e)
    *len = e->len;
  return e ? e->key : NULL;
}

void leaf_dtls_keys_free(struct leaf_dtls_keys *k)
{
  table_free(k->table);
  k->table = NULL;
  OPENSSL_cleanse(k->psk, sizeof k->psk);
}
