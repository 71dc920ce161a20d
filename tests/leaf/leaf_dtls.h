/*
 * leaf_dtls.h - the leaf (client) side of MQTT-SN over DTLS 1.2, for the test
 * tools fleetgw-leafsim and fleetgw-dtls-bridge.
 *
 * Written from RFC 6347 (DTLS 1.2), RFC 4279 (PSK suites) and RFC 7925 (the
 * IoT profile) with OpenSSL's client API, independently of the gateway's
 * server, so that the two sides check each other.
 *
 * One SSL per association on two memory BIOs; the owner moves the datagrams
 * (send callback out, leaf_dtls_input in) and the retransmission timer runs on
 * the owner's libuv loop.  One MQTT-SN datagram is one DTLS record.
 */
#ifndef FLEETGW_LEAF_DTLS_H
#define FLEETGW_LEAF_DTLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

/* Error codes: 0 is success, every failure is negative. */
enum {
  LEAF_DTLS_OK = 0,
  LEAF_DTLS_ENOMEM = -1,  /* an allocation failed */
  LEAF_DTLS_EINVAL = -2,  /* a bad argument or option */
  LEAF_DTLS_ETLS = -3,    /* OpenSSL refused (configuration, credentials) */
  LEAF_DTLS_ESTATE = -4,  /* not established, or already failed or closed */
  LEAF_DTLS_ETOOBIG = -5, /* larger than one record's payload (DTLS_get_data_mtu) */
  LEAF_DTLS_EIO = -6,     /* file not readable or malformed */
};

#define LEAF_DTLS_PSK_MAX 64  /* RFC 4279 §5.3: keys up to 64 octets */
#define LEAF_DTLS_ID_MAX 128  /* RFC 7925 §4.2: identities up to 128 octets */
#define LEAF_DTLS_MTU_MIN 256 /* OpenSSL refuses a smaller record MTU */
#define LEAF_DTLS_MTU_MAX 16384

struct leaf_dtls_ctx;
struct leaf_dtls;

/* Called with the connection's `ud`.  send() gets whole records packed into
 * one datagram; it returns 0 or a negative code (a lost handshake datagram is
 * recovered by retransmission, RFC 6347 §4.2.4).  on_error() reports a fatal
 * end (handshake failure or time-out, fatal alert, bad certificate): the
 * connection is then dead and should be freed.  on_closed() reports the
 * peer's close_notify (answered with ours).  on_alert() (may be NULL) sees
 * every alert received, by its RFC 5246 §7.2 name.  leaf_dtls_free() may be
 * called from inside any callback. */
struct leaf_dtls_cbs {
  int (*send)(void *ud, const uint8_t *data, size_t len);
  void (*on_handshake_done)(void *ud);
  void (*on_plaintext)(void *ud, const uint8_t *data, size_t len);
  void (*on_error)(void *ud, const char *reason);
  void (*on_closed)(void *ud);
  void (*on_alert)(void *ud, bool fatal, const char *desc);
};

struct leaf_dtls_opts {
  bool use_certs;        /* X.509 (ECDHE suites) instead of PSK */
  const char *ciphers;   /* NULL: the default of the mode (RFC 7925 §4.2, §4.3) */
  const char *cert_file; /* certificate mode: one client certificate for all (or NULL) */
  const char *key_file;  /* and its key */
  const char *ca_file;   /* certificate mode: required, verifies the server */
  unsigned mtu;          /* record MTU, LEAF_DTLS_MTU_MIN..MAX (0 = 1200) */
  unsigned handshake_ms; /* give up a handshake after this long (0 = 10000) */
};

/* Per connection: PSK identity and key, or (certificate mode) an optional
 * certificate and key of its own instead of the context's. */
struct leaf_dtls_cred {
  const char *psk_identity;
  const uint8_t *psk;
  size_t psk_len;
  const char *cert_file;
  const char *key_file;
};

/* One SSL_CTX for many connections on `loop`.  On failure *ctx is NULL and
 * err (if not NULL) says why. */
int leaf_dtls_ctx_new(uv_loop_t *loop, const struct leaf_dtls_opts *opts,
                      const struct leaf_dtls_cbs *cbs, struct leaf_dtls_ctx **ctx, char *err,
                      size_t errlen);
/* Frees the context; every connection must have been freed first. */
void leaf_dtls_ctx_free(struct leaf_dtls_ctx *ctx);

/* A new association (not started).  The credentials are copied. */
int leaf_dtls_new(struct leaf_dtls_ctx *ctx, void *ud, const struct leaf_dtls_cred *cred,
                  struct leaf_dtls **out, char *err, size_t errlen);
/* Sends the ClientHello (the HelloVerifyRequest cookie round of RFC 6347
 * §4.2.1 is OpenSSL's) and starts the timers. */
int leaf_dtls_start(struct leaf_dtls *c);
/* One received datagram. */
int leaf_dtls_input(struct leaf_dtls *c, const uint8_t *data, size_t len);
/* One MQTT-SN datagram as one record; LEAF_DTLS_ETOOBIG above max_data. */
int leaf_dtls_send(struct leaf_dtls *c, const uint8_t *data, size_t len);
/* Sends close_notify (RFC 5246 §7.2.1) if established; the connection is
 * closed afterwards. */
int leaf_dtls_shutdown(struct leaf_dtls *c);
/* Frees the connection (its timer closes on the loop). */
void leaf_dtls_free(struct leaf_dtls *c);

bool leaf_dtls_established(const struct leaf_dtls *c);
const char *leaf_dtls_cipher(const struct leaf_dtls *c);
size_t leaf_dtls_max_data(const struct leaf_dtls *c);

/* PSK keys from the command line: --psk-hex (one key for every identity)
 * or --psk-file (lines "client_id,hexkey"; blank lines, lines starting with
 * '#' and a first line "client_id,..." are skipped), looked up by ClientId. */
struct leaf_psk_table;
struct leaf_dtls_keys {
  uint8_t psk[LEAF_DTLS_PSK_MAX];
  size_t psk_len;
  struct leaf_psk_table *table;
};
int leaf_dtls_keys_load(struct leaf_dtls_keys *k, const char *psk_hex, const char *psk_file,
                        char *err, size_t errlen);
/* The key for `id` (its length in *len), or NULL. */
const uint8_t *leaf_dtls_key_for(const struct leaf_dtls_keys *k, const char *id, size_t *len);
void leaf_dtls_keys_free(struct leaf_dtls_keys *k);

#endif
