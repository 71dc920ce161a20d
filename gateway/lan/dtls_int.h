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

#define DTLS_SECRET_LEN 32
#define DTLS_COOKIE_LEN 16
#define DTLS_ROTATE_MS (5u * 60u * 1000u)

struct udp;

/* One peer address's DTLS association. */
struct dtls_conn {
  struct dtls *d;
  struct dtls_conn *next;        /* hash chain (not for a pending conn) */
  struct dtls_conn *id_next;     /* identity chain (established only) */
  bool in_id_table;
  struct dtls_conn *hs_next;     /* the list of handshakes in progress */
  struct sockaddr_storage addr;
  SSL *ssl;                      /* owns rbio and wbio */
  BIO *rbio, *wbio;
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
  bool rotate_started;
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
  uint8_t io[65536];             /* BIO and SSL_read scratch */
};

/* dtls_ctx.c */
int dtls_ctx_make(struct dtls *d, char *err, size_t errlen);
/* A fresh SSL on two memory BIOs with the per-session options. */
SSL *dtls_ssl_new(struct dtls *d, BIO **rbio, BIO **wbio);
void dtls_secret_rotate(struct dtls *d);
/* Byte size of addr's address and port, written into out[cap]. */
size_t dtls_addr_bytes(const struct sockaddr *addr, uint8_t *out, size_t cap);

#endif
