/*
 * dtls_ctx.c - the DTLS server's OpenSSL context: DTLS 1.2 only, the
 * cipher suites, the stateless cookies (HMAC over the peer's address with a
 * rotating secret, RFC 6347 §4.2.1) and the credentials (PSK per identity,
 * or client certificates from a factory CA).  docs/dtls.md §3, §4.
 */
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "dtls_int.h"

size_t dtls_addr_bytes(const struct sockaddr *addr, uint8_t *out, size_t cap)
{
  if (addr->sa_family == AF_INET && cap >= 6) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)addr;
    memcpy(out, &a->sin_addr, 4);
    memcpy(out + 4, &a->sin_port, 2);
    return 6;
  }
  if (addr->sa_family == AF_INET6 && cap >= 18) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)addr;
    memcpy(out, &a->sin6_addr, 16);
    memcpy(out + 16, &a->sin6_port, 2);
    return 18;
  }
  return 0;
}

void dtls_secret_rotate(struct dtls *d)
{
  memcpy(d->secret[1], d->secret[0], DTLS_SECRET_LEN);
  if (RAND_bytes(d->secret[0], DTLS_SECRET_LEN) != 1)
    RAND_priv_bytes(d->secret[0], DTLS_SECRET_LEN);
}

static struct dtls *ctx_owner(SSL *ssl)
{
  return SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
}

/* The peer a cookie is about: the listener's current datagram, or (when
 * OpenSSL checks the cookie again on the session's SSL) the session's. */
static const struct sockaddr *cookie_peer(SSL *ssl, struct dtls *d)
{
  struct dtls_conn *c = SSL_get_app_data(ssl);
  return c ? (const struct sockaddr *)&c->addr : d->cookie_addr;
}

static int cookie_for(SSL *ssl, struct dtls *d, int which, uint8_t out[DTLS_COOKIE_LEN])
{
  uint8_t a[18], mac[EVP_MAX_MD_SIZE];
  unsigned maclen = 0;
  const struct sockaddr *peer = cookie_peer(ssl, d);
  size_t n = peer ? dtls_addr_bytes(peer, a, sizeof a) : 0;
  if (n == 0 || !HMAC(EVP_sha256(), d->secret[which], DTLS_SECRET_LEN, a, n, mac, &maclen) ||
      maclen < DTLS_COOKIE_LEN)
    return 0;
  memcpy(out, mac, DTLS_COOKIE_LEN);
  return 1;
}

static int cookie_generate(SSL *ssl, unsigned char *cookie, unsigned int *len)
{
  if (!cookie_for(ssl, ctx_owner(ssl), 0, cookie))
    return 0;
  *len = DTLS_COOKIE_LEN;
  return 1;
}

/* The current secret or the previous one: a cookie handed out just before
 * a rotation stays good for one more period. */
static int cookie_verify(SSL *ssl, const unsigned char *cookie, unsigned int len)
{
  struct dtls *d = ctx_owner(ssl);
  uint8_t want[DTLS_COOKIE_LEN];
  if (len != DTLS_COOKIE_LEN)
    goto bad;
  for (int i = 0; i < 2; i++)
    if (cookie_for(ssl, d, i, want) && CRYPTO_memcmp(want, cookie, DTLS_COOKIE_LEN) == 0)
      return 1;
bad:
  d->st.cookies_bad++;
  return 0;
}

/* RFC 7925 §6: an unknown identity must fail like a wrong key (decrypt_error),
 * not with unknown_psk_identity, so identities cannot be probed. */
static unsigned psk_server_cb(SSL *ssl, const char *identity, unsigned char *psk,
                              unsigned max_psk_len)
{
  struct dtls_conn *c = SSL_get_app_data(ssl);
  size_t n = 0;
  if (!c || !identity)
    return 0;
  c->peer.auth = DTLS_AUTH_PSK;
  snprintf(c->peer.identity, sizeof c->peer.identity, "%s", identity);
  if (strlen(identity) < sizeof c->peer.identity && c->d->env.psk_lookup)
    n = c->d->env.psk_lookup(c->d->env.ud, identity, psk, max_psk_len);
  if (n == 0 || n > max_psk_len) {
    c->psk_unknown = true;
    n = max_psk_len < 32 ? max_psk_len : 32;
    RAND_bytes(psk, (int)n);
  }
  return (unsigned)n;
}

static int load_certs(struct dtls *d, char *err, size_t errlen)
{
  const struct dtls_opts *o = &d->o;
  if (!o->cert_file && !o->key_file && !o->ca_file)
    return 0;
  if (!o->cert_file || !o->key_file || !o->ca_file) {
    snprintf(err, errlen, "certificate mode needs cert_file, key_file and ca_file together");
    return -1;
  }
  if (SSL_CTX_use_certificate_chain_file(d->ctx, o->cert_file) != 1 ||
      SSL_CTX_use_PrivateKey_file(d->ctx, o->key_file, SSL_FILETYPE_PEM) != 1 ||
      SSL_CTX_check_private_key(d->ctx) != 1 ||
      SSL_CTX_load_verify_locations(d->ctx, o->ca_file, NULL) != 1) {
    snprintf(err, errlen, "cannot load the DTLS certificate, key or CA: %s",
             ERR_reason_error_string(ERR_peek_last_error()));
    return -1;
  }
  /* A client certificate is required unless the peer uses a PSK suite. */
  SSL_CTX_set_verify(d->ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
  return 0;
}

int dtls_ctx_make(struct dtls *d, char *err, size_t errlen)
{
  d->ctx = SSL_CTX_new(DTLS_server_method());
  if (!d->ctx) {
    snprintf(err, errlen, "out of memory (SSL_CTX)");
    return UV_ENOMEM;
  }
  SSL_CTX_set_app_data(d->ctx, d);
  SSL_CTX_set_min_proto_version(d->ctx, DTLS1_2_VERSION);
  SSL_CTX_set_max_proto_version(d->ctx, DTLS1_2_VERSION);
  SSL_CTX_set_options(d->ctx, SSL_OP_COOKIE_EXCHANGE | SSL_OP_NO_QUERY_MTU | SSL_OP_NO_TICKET |
                                  SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
  SSL_CTX_set_session_cache_mode(d->ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_read_ahead(d->ctx, 1);
  if (SSL_CTX_set_cipher_list(d->ctx, d->o.ciphers ? d->o.ciphers : DTLS_DEFAULT_CIPHERS) != 1) {
    snprintf(err, errlen, "no usable DTLS cipher suite in \"%s\"",
             d->o.ciphers ? d->o.ciphers : DTLS_DEFAULT_CIPHERS);
    return UV_EINVAL;
  }
  SSL_CTX_set_cookie_generate_cb(d->ctx, cookie_generate);
  SSL_CTX_set_cookie_verify_cb(d->ctx, cookie_verify);
  SSL_CTX_set_psk_server_callback(d->ctx, psk_server_cb);
  if (load_certs(d, err, errlen) != 0)
    return UV_EINVAL;
  dtls_secret_rotate(d);
  dtls_secret_rotate(d);
  return 0;
}

SSL *dtls_ssl_new(struct dtls *d, BIO **rbio, BIO **wbio)
{
  SSL *ssl = SSL_new(d->ctx);
  BIO *r = BIO_new(BIO_s_mem()), *w = BIO_new(BIO_s_mem());
  if (!ssl || !r || !w) {
    SSL_free(ssl);
    BIO_free(r);
    BIO_free(w);
    return NULL;
  }
  /* An empty memory BIO means "no data yet", not end of file. */
  BIO_set_mem_eof_return(r, -1);
  BIO_set_mem_eof_return(w, -1);
  SSL_set_bio(ssl, r, w);
  SSL_set_mtu(ssl, (long)d->o.mtu);
  SSL_set_accept_state(ssl);
  *rbio = r;
  *wbio = w;
  return ssl;
}
