/*
 * dtls_int.h - what dtls.c (sessions, demultiplexing, timers) and
 * dtls_ctx.c (OpenSSL context, cookies, credentials) share.
 */
#ifndef FLEETGW_DTLS_INT_H
#define FLEETGW_DTLS_INT_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "dtls.h"
#include "dtls_record.h"

#define DTLS_SECRET_LEN 32
#define DTLS_COOKIE_LEN 16
#define DTLS_ROTATE_MS (5u * 60u * 1000u)
/* After a burst of at least DTLS_TRIM_PEAK handshakes at once, the heap
 * their SSLs held is given back DTLS_SETTLE_MS after the last one ended. */
#define DTLS_TRIM_PEAK 16u
#define DTLS_SETTLE_MS 200u

struct udp;

/* An established association's record layer once its SSL is gone
 * (docs/dtls.md §6): the AES-GCM (RFC 5288) or AES-CCM / CCM_8 (RFC 6655,
 * RFC 7251) protection of epoch 1, keyed from the handshake's key block. */
struct dtls_aead {
  EVP_CIPHER_CTX *open;          /* the client's write direction, to decrypt */
  EVP_CIPHER_CTX *seal;          /* the server's, to encrypt */
  uint64_t tx_seq;               /* the next record's sequence number */
  struct dtls_replay replay;     /* the client's records accepted so far */
  uint16_t data_mtu;             /* the largest datagram one record carries */
  uint8_t tag_len;
};

/* One peer address's DTLS association. */
struct dtls_conn {
  struct dtls *d;
  struct dtls_conn *next;        /* hash chain (not for a pending conn) */
  struct dtls_conn *id_next;     /* identity chain (established only) */
  bool in_id_table;
  struct dtls_conn *hs_next;     /* the list of handshakes in progress */
  struct sockaddr_storage addr;
  SSL *ssl;                      /* owns rbio and wbio; NULL once own is set */
  BIO *rbio, *wbio;
  bool own;                      /* established, the record layer is k */
  struct dtls_aead k;            /* tx_seq also tracks epoch 1 during the handshake */
  uint8_t *flight;               /* own: the server's last flight, until the client */
  uint16_t flight_len;           /* has shown it has it (its first record after) */
  uv_timer_t timer;
  bool established;
  bool psk_unknown;              /* the identity had no key: the handshake must fail */
  bool busy;                     /* inside a callback: close after it */
  bool dead;                     /* closed while busy */
  struct dtls_conn *pending;     /* a new handshake from the same address (reboot) */
  struct dtls_conn *owner;       /* for a pending conn: the session it would replace */
  uint64_t started_ms;
  uint64_t last_rx_ms;
  struct dtls_peer peer;
};

struct dtls {
  struct dtls_env env;
  struct dtls_opts o;
  SSL_CTX *ctx;
  struct udp *udp;
  SSL *listener;                 /* runs DTLSv1_listen for addresses with no session */
  const struct sockaddr *cookie_addr; /* the peer the cookie callbacks are about */
  uint8_t secret[2][DTLS_SECRET_LEN]; /* current, previous */
  uv_timer_t rotate;
  uv_timer_t settle;             /* started with rotate */
  bool rotate_started;
  uint32_t hs_peak;              /* most handshakes at once since the last trim */
  struct dtls_conn **buckets;
  struct dtls_conn **id_buckets; /* established sessions by identity */
  size_t nbuckets;              /* of both tables */
  struct dtls_conn *handshakes;
  uint32_t n_conns;              /* every conn, pending ones included */
  unsigned open_handles;         /* closes still to come */
  bool stopping;
  void (*done)(void *);
  void *done_ud;
  struct dtls_stats st;
  uint8_t io[65536];             /* BIO and SSL_read scratch, records opened */
  uint8_t tx[16384 + 64];        /* records sealed (dtls_send may run inside a callback) */
};

/* dtls_ctx.c */
int dtls_ctx_make(struct dtls *d, char *err, size_t errlen);
/* A fresh SSL on two memory BIOs with the per-session options. */
SSL *dtls_ssl_new(struct dtls *d, BIO **rbio, BIO **wbio);
void dtls_secret_rotate(struct dtls *d);
/* Takes the record layer over from ssl, whose handshake is done: the keys
 * from its key block, checked by opening the server's own Finished in
 * flight (what it last sent), and the data MTU.  0, or -1 when the suite is
 * not one of the AEAD suites above or anything fails (ssl goes on as the
 * record layer).  k->tx_seq must already be the next sequence number. */
int dtls_aead_take(SSL *ssl, struct dtls_aead *k, const uint8_t *flight, size_t len);
/* One record of type with data[len] into out[cap], its header included: its
 * length, 0 when it cannot be sealed. */
size_t dtls_aead_seal(struct dtls_aead *k, uint8_t type, const uint8_t *data, size_t len,
                      uint8_t *out, size_t cap);
/* Opens the record r (frag: its fragment) into buf[cap]: *plain and the
 * plaintext's length, or -1 when it is not authentic.  The replay window is
 * the caller's. */
int dtls_aead_open(struct dtls_aead *k, const struct dtls_record *r, const uint8_t *frag,
                   uint8_t *buf, size_t cap, const uint8_t **plain);
void dtls_aead_free(struct dtls_aead *k);
/* Byte size of addr's address and port, written into out[cap]. */
size_t dtls_addr_bytes(const struct sockaddr *addr, uint8_t *out, size_t cap);

#endif
