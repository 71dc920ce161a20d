/*
 * dtls.h - MQTT-SN over DTLS 1.2: the gateway's DTLS server on a UDP port
 * of its own (docs/dtls.md).
 *
 * One UDP socket, one OpenSSL SSL per handshake over memory BIOs, all on the
 * gateway's loop; once a handshake is done its SSL is freed and the module
 * runs the association's AES-GCM / AES-CCM record layer itself, with some
 * 2 KiB of state (docs/dtls.md §6, §10).  A peer costs nothing until it has
 * shown that it receives at its address: a ClientHello without a valid
 * cookie is answered statelessly with a HelloVerifyRequest no larger than
 * itself (RFC 6347 §4.2.1), and only a ClientHello with a valid cookie
 * allocates a session, within max_handshakes overall and
 * max_handshakes_per_ip.  Credentials: a PSK per identity (RFC 4279; the
 * identity is compared byte by byte, an unknown one fails as a wrong key
 * would, RFC 7925 §6) or, when a factory CA is configured, a client
 * certificate whose CN (or first DNS SAN) is the identity.  The owner
 * decides what the identity may do (the binding to the MQTT-SN ClientId is
 * the LAN side's).
 *
 * Each decrypted record is one MQTT-SN datagram, handed to on_datagram with
 * the peer's identity.  A peer that reboots and handshakes again from the
 * same address and port keeps its old session until the new handshake has
 * finished (RFC 6347 §4.2.8), so a forged ClientHello cannot end a session.
 *
 * The callbacks may call dtls_send and dtls_close_peer, not dtls_stop.
 */
#ifndef FLEETGW_DTLS_H
#define FLEETGW_DTLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

struct dtls;

struct dtls_opts {
  const char *bind;              /* IPv4 or IPv6 literal */
  uint16_t port;                 /* 0: an ephemeral port (dtls_port) */
  uint32_t mtu;                  /* record MTU (IP and UDP headers excluded) */
  uint32_t max_sessions;         /* sessions held, handshakes included */
  uint32_t max_handshakes;       /* handshakes in progress at once */
  uint32_t max_handshakes_per_ip;
  uint32_t handshake_timeout_ms; /* a handshake that takes longer is dropped */
  uint32_t idle_timeout_ms;      /* a session silent this long is closed */
  const char *ciphers;           /* NULL: DTLS_DEFAULT_CIPHERS */
  const char *cert_file;         /* the gateway's certificate (and key) ... */
  const char *key_file;
  const char *ca_file;           /* ... and the factory CA that signs leaves' certificates */
};

/* RFC 7925's suites first (no forward secrecy for PSK, as the profile says),
 * then AES-GCM.  The ECDSA suites need an ECDSA cert_file. */
#define DTLS_DEFAULT_CIPHERS                                                              \
  "PSK-AES128-CCM8:ECDHE-ECDSA-AES128-CCM8:PSK-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256"

enum dtls_auth { DTLS_AUTH_PSK = 1, DTLS_AUTH_CERT = 2 };

struct dtls_peer {
  enum dtls_auth auth;
  char identity[257];            /* PSK identity, or the certificate's CN / DNS SAN */
};

struct dtls_env {
  uv_loop_t *loop;
  const struct dtls_opts *o;
  /* The PSK of identity into psk[cap]: its length (1..cap), 0 when unknown. */
  size_t (*psk_lookup)(void *ud, const char *identity, uint8_t *psk, size_t cap);
  /* One decrypted datagram from an authenticated peer. */
  void (*on_datagram)(void *ud, const struct sockaddr *from, const struct dtls_peer *peer,
                      const uint8_t *data, size_t len);
  /* An established session ended (close_notify, alert, idle, replaced, stop). */
  void (*on_closed)(void *ud, const struct sockaddr *from, const struct dtls_peer *peer);
  void *ud;
};

/* The server's counters (C) and gauges (G), one table: it makes struct
 * dtls_stats, and the LAN side copies each into the gateway's metrics as
 * dtls_<name> (metrics.h says what each counts). */
#define DTLS_STATS_MAP(C, G) \
  C(hello_verify_sent) \
  C(hello_verify_withheld) \
  C(cookies_bad) \
  C(handshakes_started) \
  C(handshakes_done) \
  C(handshakes_failed) \
  C(handshakes_timed_out) \
  C(refused_full) \
  C(refused_per_ip) \
  C(records_dropped) \
  C(plain_dropped) \
  C(sessions_replaced) \
  C(identity_replaced) \
  C(idle_closed) \
  C(oversize_refused) \
  G(sessions) \
  G(handshaking)

struct dtls_stats {
#define DTLS_STATS_FIELD(name) uint64_t name;
  DTLS_STATS_MAP(DTLS_STATS_FIELD, DTLS_STATS_FIELD)
#undef DTLS_STATS_FIELD
};

/* Checks the options, sets up OpenSSL (certificates are read here).  Returns
 * 0, UV_EINVAL (err says why) or UV_ENOMEM. */
int dtls_new(const struct dtls_env *env, struct dtls **out, char *err, size_t errlen);
/* Binds the socket and starts the cookie secret's rotation. */
int dtls_start(struct dtls *d);
int dtls_port(const struct dtls *d);
/* Datagrams dropped on the DTLS socket as longer than 2048 bytes. */
uint64_t dtls_datagrams_too_long(const struct dtls *d);
/* Encrypts one datagram to an established peer: 0, UV_ENOTCONN (no session
 * at that address) or UV_EMSGSIZE (larger than dtls_max_payload). */
int dtls_send(struct dtls *d, const struct sockaddr *to, const uint8_t *data, size_t len);
/* The largest datagram dtls_send takes for that peer (0: no session). */
size_t dtls_max_payload(struct dtls *d, const struct sockaddr *to);
/* Sends close_notify and forgets the session (on_closed is not called). */
void dtls_close_peer(struct dtls *d, const struct sockaddr *peer);
/* Ends every association (and handshake) that authenticated as identity
 * with auth: close_notify, and on_closed for the established ones.
 * Returns how many.  A walk of every association: for rare events (a key
 * revoked), not for the datagram path. */
size_t dtls_close_identity(struct dtls *d, const char *identity, enum dtls_auth auth);
/* Closes every session and the socket; done(ud) once every handle is closed. */
void dtls_stop(struct dtls *d, void (*done)(void *), void *ud);
/* After dtls_stop's done (or instead of dtls_start). */
void dtls_free(struct dtls *d);
void dtls_get_stats(const struct dtls *d, struct dtls_stats *out);

#endif
