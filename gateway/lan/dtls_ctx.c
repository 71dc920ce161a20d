/*
 * dtls_ctx.c - the DTLS server's OpenSSL context: DTLS 1.2 only, the
 * cipher suites, the stateless cookies (HMAC over the peer's address with a
 * rotating secret, RFC 6347 §4.2.1) and the credentials (PSK per identity,
 * or client certificates from a factory CA); and the AEAD record protection
 * an established association keeps when its SSL is freed.  docs/dtls.md
 * §3, §4, §6.
 */
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/hmac.h>
#include <openssl/kdf.h>
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
  /* No record is larger than the MTU: the write buffer of a handshake
   * need not be 16 KiB (docs/dtls.md §10). */
  SSL_CTX_set_max_send_fragment(d->ctx, d->o.mtu < 512 ? 512 : d->o.mtu);
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

/* ---- the record layer after the handshake (docs/dtls.md §6) ------------- */

#define AEAD_FIXED_IV 4    /* the salt from the key block (RFC 5288 §3, RFC 6655 §3) */
#define AEAD_EXPLICIT_IV 8 /* carried in each record */
#define KEY_MAX 32

/* The suite's cipher, or NULL when it is not AES-GCM or AES-CCM. */
static const EVP_CIPHER *aead_cipher(const SSL_CIPHER *ci, uint8_t *tag_len)
{
  *tag_len = 16;
  if (!SSL_CIPHER_is_aead(ci))
    return NULL;
  switch (SSL_CIPHER_get_cipher_nid(ci)) {
  case NID_aes_128_gcm:
    return EVP_aes_128_gcm();
  case NID_aes_256_gcm:
    return EVP_aes_256_gcm();
  case NID_aes_128_ccm:
  case NID_aes_256_ccm:
    if (strstr(SSL_CIPHER_get_name(ci), "CCM8"))
      *tag_len = 8;
    return SSL_CIPHER_get_cipher_nid(ci) == NID_aes_128_ccm ? EVP_aes_128_ccm()
                                                            : EVP_aes_256_ccm();
  default:
    return NULL;
  }
}

/* RFC 5246 §6.3: key_block = PRF(master_secret, "key expansion",
 * server_random + client_random), with the suite's PRF hash. */
static int key_block(SSL *ssl, const EVP_MD *md, uint8_t *out, size_t len)
{
  uint8_t master[SSL_MAX_MASTER_KEY_LENGTH], seed[13 + 2 * SSL3_RANDOM_SIZE];
  size_t mlen = SSL_SESSION_get_master_key(SSL_get_session(ssl), master, sizeof master);
  EVP_KDF *kdf = EVP_KDF_fetch(NULL, OSSL_KDF_NAME_TLS1_PRF, NULL);
  EVP_KDF_CTX *kctx = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
  OSSL_PARAM p[4];
  int ok = 0;

  memcpy(seed, "key expansion", 13);
  if (kctx && md && mlen > 0 &&
      SSL_get_server_random(ssl, seed + 13, SSL3_RANDOM_SIZE) == SSL3_RANDOM_SIZE &&
      SSL_get_client_random(ssl, seed + 13 + SSL3_RANDOM_SIZE, SSL3_RANDOM_SIZE) ==
          SSL3_RANDOM_SIZE) {
    p[0] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)EVP_MD_get0_name(md),
                                            0);
    p[1] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SECRET, master, mlen);
    p[2] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SEED, seed, sizeof seed);
    p[3] = OSSL_PARAM_construct_end();
    ok = EVP_KDF_derive(kctx, out, len, p) == 1;
  }
  OPENSSL_cleanse(master, sizeof master);
  EVP_KDF_CTX_free(kctx);
  EVP_KDF_free(kdf);
  return ok ? 0 : -1;
}

/* A context in OpenSSL's TLS AEAD mode (the tlsaad parameter, then one
 * EVP_Cipher in place over explicit nonce, text and tag): the salt fixed,
 * the explicit nonce taken from each record when opening, and when sealing
 * the sequence number (CCM) or a counter the cipher keeps (GCM). */
static EVP_CIPHER_CTX *aead_ctx(const EVP_CIPHER *c, int enc, const uint8_t *key,
                                const uint8_t *salt, uint8_t tag_len)
{
  EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
  int ok;
  if (!x)
    return NULL;
  if (EVP_CIPHER_get_mode(c) == EVP_CIPH_GCM_MODE)
    ok = EVP_CipherInit_ex(x, c, NULL, key, NULL, enc) == 1 &&
         EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_GCM_SET_IV_FIXED, AEAD_FIXED_IV, (void *)salt) > 0;
  else
    ok = EVP_CipherInit_ex(x, c, NULL, NULL, NULL, enc) == 1 &&
         EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_SET_IVLEN, AEAD_FIXED_IV + AEAD_EXPLICIT_IV,
                             NULL) > 0 &&
         EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_SET_TAG, tag_len, NULL) > 0 &&
         EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_CCM_SET_IV_FIXED, AEAD_FIXED_IV, (void *)salt) > 0 &&
         EVP_CipherInit_ex(x, NULL, NULL, key, NULL, -1) == 1;
  if (!ok) {
    EVP_CIPHER_CTX_free(x);
    return NULL;
  }
  return x;
}

/* The tlsaad parameter set directly: EVP_CTRL_AEAD_TLS1_AAD would also read
 * the tag length back, a second parameter call per record. */
static int aead_run(EVP_CIPHER_CTX *x, const struct dtls_record *r, uint8_t *buf, size_t n)
{
  uint8_t aad[DTLS_AEAD_AAD_LEN];
  OSSL_PARAM p[2];
  dtls_aead_aad(aad, r);
  p[0] = OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TLS1_AAD, aad, sizeof aad);
  p[1] = OSSL_PARAM_construct_end();
  if (EVP_CIPHER_CTX_set_params(x, p) != 1 || EVP_Cipher(x, buf, buf, (unsigned)n) < 0) {
    ERR_clear_error();
    return -1;
  }
  return 0;
}

static int open_with(EVP_CIPHER_CTX *x, uint8_t tag_len, const struct dtls_record *r,
                     const uint8_t *frag, uint8_t *buf, size_t cap, const uint8_t **plain)
{
  size_t n = r->length, over = AEAD_EXPLICIT_IV + tag_len;
  if (n < over || n > cap)
    return -1;
  memcpy(buf, frag, n);
  if (aead_run(x, r, buf, n) != 0)
    return -1;
  *plain = buf + AEAD_EXPLICIT_IV;
  return (int)(n - over);
}

int dtls_aead_open(struct dtls_aead *k, const struct dtls_record *r, const uint8_t *frag,
                   uint8_t *buf, size_t cap, const uint8_t **plain)
{
  return open_with(k->open, k->tag_len, r, frag, buf, cap, plain);
}

size_t dtls_aead_seal(struct dtls_aead *k, uint8_t type, const uint8_t *data, size_t len,
                      uint8_t *out, size_t cap)
{
  size_t body = AEAD_EXPLICIT_IV + len + k->tag_len;
  struct dtls_record r = {.type = type, .version = DTLS_VERSION_1_2, .epoch = 1,
                          .seq = k->tx_seq, .length = (uint16_t)(AEAD_EXPLICIT_IV + len)};
  if (len > 16384 || DTLS_RECORD_HEADER + body > cap || k->tx_seq > DTLS_SEQ_MAX)
    return 0;
  memcpy(out + DTLS_RECORD_HEADER + AEAD_EXPLICIT_IV, data, len);
  if (aead_run(k->seal, &r, out + DTLS_RECORD_HEADER, body) != 0)
    return 0;
  dtls_record_header(out, type, DTLS_VERSION_1_2, 1, k->tx_seq++, (uint16_t)body);
  return DTLS_RECORD_HEADER + body;
}

/* The server's Finished in its last flight opens with the server's key:
 * the key block was derived as the peer derived it. */
static int check_finished(const EVP_CIPHER *c, const uint8_t *key, const uint8_t *salt,
                          uint8_t tag_len, const uint8_t *flight, size_t len)
{
  EVP_CIPHER_CTX *x = aead_ctx(c, 0, key, salt, tag_len);
  struct dtls_record r;
  uint8_t buf[256];
  const uint8_t *plain = NULL;
  int rc = -1;
  for (size_t off = 0, used; x && off < len; off += used) {
    if ((used = dtls_record_parse(flight + off, len - off, &r)) == 0)
      break;
    if (r.epoch == 1 && r.type == DTLS_CT_HANDSHAKE) {
      int n = open_with(x, tag_len, &r, flight + off + DTLS_RECORD_HEADER, buf, sizeof buf,
                        &plain);
      rc = n >= 12 && plain[0] == 20 /* finished */ ? 0 : -1;
      break;
    }
  }
  EVP_CIPHER_CTX_free(x);
  return rc;
}

int dtls_aead_take(SSL *ssl, struct dtls_aead *k, const uint8_t *flight, size_t len)
{
  const SSL_CIPHER *ci = SSL_get_current_cipher(ssl);
  const EVP_CIPHER *c = ci ? aead_cipher(ci, &k->tag_len) : NULL;
  uint8_t kb[2 * (KEY_MAX + AEAD_FIXED_IV)];
  size_t kl = c ? (size_t)EVP_CIPHER_get_key_length(c) : 0;
  /* client_write_key, server_write_key, client_write_IV, server_write_IV
   * (no MAC keys with an AEAD suite) */
  const uint8_t *ckey = kb, *skey = kb + kl, *csalt = kb + 2 * kl, *ssalt = csalt + AEAD_FIXED_IV;
  long mtu = SSL_version(ssl) == DTLS1_2_VERSION ? (long)DTLS_get_data_mtu(ssl) : 0;
  int rc = -1;

  k->open = k->seal = NULL;
  if (!c || kl == 0 || kl > KEY_MAX || mtu <= 0 || mtu > 16384 ||
      key_block(ssl, SSL_CIPHER_get_handshake_digest(ci), kb, 2 * (kl + AEAD_FIXED_IV)) != 0)
    goto out;
  if (check_finished(c, skey, ssalt, k->tag_len, flight, len) != 0 ||
      !(k->open = aead_ctx(c, 0, ckey, csalt, k->tag_len)) ||
      !(k->seal = aead_ctx(c, 1, skey, ssalt, k->tag_len))) {
    dtls_aead_free(k);
    goto out;
  }
  k->data_mtu = (uint16_t)mtu;
  memset(&k->replay, 0, sizeof k->replay);
  rc = 0;
out:
  OPENSSL_cleanse(kb, sizeof kb);
  ERR_clear_error();
  return rc;
}

void dtls_aead_free(struct dtls_aead *k)
{
  EVP_CIPHER_CTX_free(k->open);
  EVP_CIPHER_CTX_free(k->seal);
  k->open = k->seal = NULL;
}
