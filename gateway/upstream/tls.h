/*
 * tls.h - TLS as a layer over bytes (OpenSSL with memory BIOs).
 *
 * This module knows OpenSSL and nothing else: no sockets, no MQTT.  The owner
 * moves ciphertext between the network and the tls_conn:
 *
 *   network read  -> tls_feed(c, ciphertext)        then tls_read() plaintext
 *   plaintext out -> tls_write(c, plaintext)        then tls_take_output()
 *   after any call, tls_pending_output() > 0 means ciphertext must be sent.
 *
 * Server verification: the peer chain is checked against the context's CA
 * file, and the host name (or IP) given to tls_conn_new is checked against the
 * certificate (X509_VERIFY_PARAM_set1_host).  SNI is always sent for a host
 * name (never for an IP literal, RFC 6066 §3).  ALPN is optional ("x-amzn-mqtt-ca"
 * for AWS IoT on port 443).  TLS 1.2 is the minimum.
 */
#ifndef FLEETGW_TLS_H
#define FLEETGW_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct tls_ctx;   /* shared: CA store, protocol limits, default client cert */
struct tls_conn;  /* one per connection */

enum tls_err {
  TLS_OK = 0,
  TLS_WANT_IO = -1,     /* need more ciphertext from the peer (or to send output) */
  TLS_ERR_CONFIG = -2,  /* bad CA / certificate / key file */
  TLS_ERR_HANDSHAKE = -3, /* handshake or verification failed */
  TLS_ERR_PROTOCOL = -4,  /* fatal alert or protocol error after the handshake */
  TLS_ERR_CLOSED = -5,    /* peer sent close_notify */
  TLS_ERR_NOMEM = -6,
};

/* ca_file: PEM bundle to verify the server (required).  cert_file/key_file:
 * default client certificate and key for connections of this context (may be
 * NULL: then each connection brings its own, or none).  On error returns NULL
 * and writes a reason (file name and OpenSSL's text, never key material) into
 * err[errlen]. */
struct tls_ctx *tls_ctx_new(const char *ca_file, const char *cert_file, const char *key_file,
                            char *err, size_t errlen);
void tls_ctx_free(struct tls_ctx *ctx);
/* The newest protocol version the context's connections offer: 13 (TLS 1.3,
 * OpenSSL's own default) or 12 (TLS 1.2 only: less memory a connection and
 * a cheaper resumption: docs/architecture.md §8).  Returns TLS_OK or TLS_ERR_CONFIG for
 * any other value.  Takes effect for connections made after it. */
int tls_ctx_set_max_version(struct tls_ctx *ctx, int version);

/* Completed handshakes of the context's connections. */
struct tls_stats {
  uint64_t full;     /* a full handshake: the server's certificate verified */
  uint64_t resumed;  /* a session resumed */
};
void tls_ctx_stats(const struct tls_ctx *ctx, struct tls_stats *out);

/* host: the name to verify and to send as SNI.  alpn: NULL or a protocol
 * name.  cert_file/key_file: per-connection client certificate overriding the
 * context's (NULL to use the context's).  Returns NULL on error with a reason
 * in err. */
struct tls_conn *tls_conn_new(struct tls_ctx *ctx, const char *host, const char *alpn,
                              const char *cert_file, const char *key_file, char *err,
                              size_t errlen);
void tls_conn_free(struct tls_conn *c);

/* A client identity held in memory (a provisioned leaf's certificate and
 * key from the registry): parsed once, reference-counted, shared by every
 * connection attempt of its session.  tls_identity_new returns NULL with a
 * reason in err (never key material); the caller may wipe key_pem at once. */
struct tls_identity;
struct tls_identity *tls_identity_new(const char *cert_pem, const char *key_pem, char *err,
                                      size_t errlen);
void tls_identity_ref(struct tls_identity *id);
void tls_identity_unref(struct tls_identity *id);
/* As tls_conn_new, with the client certificate and key of id. */
struct tls_conn *tls_conn_new_identity(struct tls_ctx *ctx, const char *host, const char *alpn,
                                       struct tls_identity *id, char *err, size_t errlen);

/* Start or continue the handshake.  TLS_OK when complete, TLS_WANT_IO while
 * in progress, TLS_ERR_HANDSHAKE on failure (reason via tls_last_error). */
int tls_handshake(struct tls_conn *c);
bool tls_is_established(const struct tls_conn *c);

/* Ciphertext from the network.  Returns TLS_OK or TLS_ERR_NOMEM. */
int tls_feed(struct tls_conn *c, const uint8_t *data, size_t len);
/* Decrypted bytes: returns > 0 bytes read, TLS_WANT_IO when nothing more
 * is available, or a negative tls_err. */
int tls_read(struct tls_conn *c, uint8_t *buf, size_t cap);
/* Encrypt plaintext (all of it is consumed or an error returned). */
int tls_write(struct tls_conn *c, const uint8_t *data, size_t len);
/* Ciphertext waiting to be sent. */
size_t tls_pending_output(const struct tls_conn *c);
/* Move up to cap bytes of pending ciphertext into buf; returns the count. */
size_t tls_take_output(struct tls_conn *c, uint8_t *buf, size_t cap);
/* Queue a close_notify alert (send its output, then close the socket). */
void tls_shutdown(struct tls_conn *c);
/* The last error's description (OpenSSL's queue text, verification result). */
const char *tls_last_error(const struct tls_conn *c);

#endif
