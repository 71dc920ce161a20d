/*
 * dtls.c - the DTLS server's sessions (dtls.h): demultiplexing by address,
 * the stateless cookie gate before any state, handshakes and their
 * retransmission timers, record packing into datagrams, the record layer of
 * an established association once its SSL is freed, the reboot rule of
 * RFC 6347 §4.2.8, idle time-outs.  docs/dtls.md.
 */
#include "dtls.h"

#include <openssl/err.h>
#include <openssl/x509v3.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "dtls_int.h"
#include "dtls_record.h"
#include "log.h"
#include "udp.h"

#define MOD "dtls"

/* ---- the table ----------------------------------------------------------- */

/* Address and port, compared and hashed in place: this runs for every
 * datagram. */
static bool addr_eq(const struct sockaddr *a, const struct sockaddr *b)
{
  if (a->sa_family != b->sa_family)
    return false;
  if (a->sa_family == AF_INET) {
    const struct sockaddr_in *x = (const struct sockaddr_in *)a, *y = (const struct sockaddr_in *)b;
    return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
  }
  if (a->sa_family == AF_INET6) {
    const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a,
                              *y = (const struct sockaddr_in6 *)b;
    return x->sin6_port == y->sin6_port && memcmp(&x->sin6_addr, &y->sin6_addr, 16) == 0;
  }
  return false;
}

static size_t bucket_of(const struct dtls *d, const struct sockaddr *a)
{
  uint64_t h = 1469598103934665603ull;
  const uint8_t *b = NULL, *port = NULL;
  size_t n = 0;
  if (a->sa_family == AF_INET) {
    b = (const uint8_t *)&((const struct sockaddr_in *)a)->sin_addr;
    port = (const uint8_t *)&((const struct sockaddr_in *)a)->sin_port;
    n = 4;
  } else if (a->sa_family == AF_INET6) {
    b = (const uint8_t *)&((const struct sockaddr_in6 *)a)->sin6_addr;
    port = (const uint8_t *)&((const struct sockaddr_in6 *)a)->sin6_port;
    n = 16;
  }
  for (size_t i = 0; i < n; i++)
    h = (h ^ b[i]) * 1099511628211ull;
  if (port)
    h = ((h ^ port[0]) * 1099511628211ull ^ port[1]) * 1099511628211ull;
  return (size_t)h & (d->nbuckets - 1);
}

static struct dtls_conn *lookup(struct dtls *d, const struct sockaddr *a)
{
  for (struct dtls_conn *c = d->buckets[bucket_of(d, a)]; c; c = c->next)
    if (addr_eq((struct sockaddr *)&c->addr, a))
      return c;
  return NULL;
}

static void table_insert(struct dtls *d, struct dtls_conn *c)
{
  size_t b = bucket_of(d, (struct sockaddr *)&c->addr);
  c->next = d->buckets[b];
  d->buckets[b] = c;
}

static void table_remove(struct dtls *d, struct dtls_conn *c)
{
  for (struct dtls_conn **pp = &d->buckets[bucket_of(d, (struct sockaddr *)&c->addr)]; *pp;
       pp = &(*pp)->next) {
    if (*pp == c) {
      *pp = c->next;
      return;
    }
  }
}

/* ---- sessions by identity: at most one each ------------------------------ */

static size_t id_bucket(const struct dtls *d, const struct dtls_peer *p)
{
  uint64_t h = 1469598103934665603ull ^ (uint64_t)p->auth;
  for (const char *s = p->identity; *s; s++)
    h = (h ^ (uint8_t)*s) * 1099511628211ull;
  return (size_t)h & (d->nbuckets - 1);
}

static struct dtls_conn *id_lookup(struct dtls *d, const struct dtls_peer *p)
{
  for (struct dtls_conn *c = d->id_buckets[id_bucket(d, p)]; c; c = c->id_next)
    if (!c->dead && c->peer.auth == p->auth && strcmp(c->peer.identity, p->identity) == 0)
      return c;
  return NULL;
}

static void id_insert(struct dtls *d, struct dtls_conn *c)
{
  size_t b = id_bucket(d, &c->peer);
  c->id_next = d->id_buckets[b];
  d->id_buckets[b] = c;
  c->in_id_table = true;
}

static void id_remove(struct dtls *d, struct dtls_conn *c)
{
  if (!c->in_id_table)
    return;
  for (struct dtls_conn **pp = &d->id_buckets[id_bucket(d, &c->peer)]; *pp;
       pp = &(*pp)->id_next) {
    if (*pp == c) {
      *pp = c->id_next;
      break;
    }
  }
  c->in_id_table = false;
}

/* A burst of handshakes has settled: the 50-odd KiB each one's SSL held
 * (docs/dtls.md §10) are free, but glibc keeps freed heap resident, so it
 * is given back; a burst still going on gives it back when it ends. */
static void settle_cb(uv_timer_t *t)
{
  struct dtls *d = t->data;
  if (d->st.handshaking != 0)
    return;
  d->hs_peak = 0;
#ifdef __GLIBC__
  malloc_trim(0);
#endif
}

static void hs_remove(struct dtls *d, struct dtls_conn *c)
{
  for (struct dtls_conn **pp = &d->handshakes; *pp; pp = &(*pp)->hs_next) {
    if (*pp == c) {
      *pp = c->hs_next;
      d->st.handshaking--;
      if (d->st.handshaking == 0 && d->hs_peak >= DTLS_TRIM_PEAK && d->rotate_started &&
          !d->stopping && !uv_is_active((uv_handle_t *)&d->settle))
        uv_timer_start(&d->settle, settle_cb, DTLS_SETTLE_MS, 0);
      return;
    }
  }
}

static bool same_ip(const struct sockaddr *a, const struct sockaddr *b)
{
  if (a->sa_family != b->sa_family)
    return false;
  if (a->sa_family == AF_INET)
    return memcmp(&((const struct sockaddr_in *)a)->sin_addr,
                  &((const struct sockaddr_in *)b)->sin_addr, 4) == 0;
  return memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
                &((const struct sockaddr_in6 *)b)->sin6_addr, 16) == 0;
}

static uint32_t handshakes_from_ip(const struct dtls *d, const struct sockaddr *a)
{
  uint32_t n = 0;
  for (const struct dtls_conn *c = d->handshakes; c; c = c->hs_next)
    if (same_ip((const struct sockaddr *)&c->addr, a))
      n++;
  return n;
}

/* ---- sending ------------------------------------------------------------- */

/* Records buf[len] go out packed into datagrams of at most the MTU, never
 * a record split across two (RFC 6347 §4.1.1).  With c, the sequence
 * number after the last one sent in epoch 1 is kept in c->k.tx_seq: it is
 * where the association's own record layer starts (docs/dtls.md §6). */
static void send_records(struct dtls *d, const uint8_t *buf, size_t len,
                         const struct sockaddr *to, struct dtls_conn *c)
{
  size_t off = 0, start = 0;
  struct dtls_record r;
  while (off < len) {
    size_t rl = dtls_record_parse(buf + off, len - off, &r);
    if (rl == 0)
      rl = len - off; /* cannot happen with OpenSSL's output; send it whole */
    else if (c && r.epoch == 1 && r.seq >= c->k.tx_seq)
      c->k.tx_seq = r.seq + 1;
    if (off > start && off + rl - start > d->o.mtu) {
      udp_send(d->udp, to, buf + start, off - start);
      start = off;
    }
    off += rl;
  }
  if (off > start)
    udp_send(d->udp, to, buf + start, off - start);
}

/* Everything the SSL wrote goes out.  Returns the length of the last part
 * read, which stays in d->io until it is next used. */
static size_t flush(struct dtls *d, BIO *wbio, const struct sockaddr *to, struct dtls_conn *c)
{
  int n;
  size_t last = 0;
  while ((n = BIO_read(wbio, d->io, (int)sizeof d->io)) > 0) {
    last = (size_t)n;
    send_records(d, d->io, last, to, c);
  }
  return last;
}

/* One record sealed by an association's own record layer, sent. */
static int own_send(struct dtls_conn *c, uint8_t type, const uint8_t *data, size_t len)
{
  struct dtls *d = c->d;
  size_t n = dtls_aead_seal(&c->k, type, data, len, d->tx, sizeof d->tx);
  if (n == 0)
    return UV_EIO;
  udp_send(d->udp, (struct sockaddr *)&c->addr, d->tx, n);
  return 0;
}

/* ---- closing ------------------------------------------------------------- */

static void conn_closed_cb(uv_handle_t *h)
{
  struct dtls_conn *c = h->data;
  struct dtls *d = c->d;
  SSL_free(c->ssl);
  dtls_aead_free(&c->k);
  free(c->flight);
  free(c);
  d->open_handles--;
  if (d->stopping && d->open_handles == 0 && d->done)
    d->done(d->done_ud);
}

/* Forgets c (and its pending successor).  notify: tell the owner, when c
 * was an established session. */
static void conn_free(struct dtls_conn *c, bool notify)
{
  struct dtls *d = c->d;
  if (c->busy) {
    c->dead = true;
    return;
  }
  if (c->pending) {
    c->pending->owner = NULL;
    conn_free(c->pending, false);
    c->pending = NULL;
  }
  if (c->owner)
    c->owner->pending = NULL;
  else
    table_remove(d, c);
  id_remove(d, c);
  if (c->established) {
    d->st.sessions--;
    if (notify && d->env.on_closed)
      d->env.on_closed(d->env.ud, (struct sockaddr *)&c->addr, &c->peer);
  } else {
    hs_remove(d, c);
  }
  d->n_conns--;
  uv_timer_stop(&c->timer);
  uv_close((uv_handle_t *)&c->timer, conn_closed_cb);
}

static void conn_shutdown(struct dtls_conn *c, bool notify)
{
  static const uint8_t close_notify[2] = {1, 0}; /* warning, close_notify */
  if (c->established && !c->dead) {
    if (c->own) {
      own_send(c, DTLS_CT_ALERT, close_notify, sizeof close_notify);
    } else {
      SSL_shutdown(c->ssl);
      flush(c->d, c->wbio, (struct sockaddr *)&c->addr, c);
    }
  }
  conn_free(c, notify);
}

/* ---- timers -------------------------------------------------------------- */

static void fail_handshake(struct dtls_conn *c, const char *why)
{
  static struct log_ratelimit rl;
  char a[64] = "";
  const struct sockaddr *sa = (struct sockaddr *)&c->addr;
  uv_ip_name(sa, a, sizeof a);
  c->d->st.handshakes_failed++;
  log_ratelimited(&rl, LOG_WARN, MOD, "handshake from %s failed: %s", a, why);
  conn_free(c, false);
}

static void timer_cb(uv_timer_t *t);

static void arm(struct dtls_conn *c)
{
  struct dtls *d = c->d;
  uint64_t now = uv_now(d->env.loop), due;
  struct timeval tv;
  if (c->established) {
    due = c->last_rx_ms + d->o.idle_timeout_ms;
  } else {
    due = c->started_ms + d->o.handshake_timeout_ms;
    if (DTLSv1_get_timeout(c->ssl, &tv) == 1) {
      uint64_t t = now + (uint64_t)tv.tv_sec * 1000u + (uint64_t)tv.tv_usec / 1000u;
      if (t < due)
        due = t;
    }
  }
  uv_timer_start(&c->timer, timer_cb, due > now ? due - now : 0, 0);
}

static void timer_cb(uv_timer_t *t)
{
  struct dtls_conn *c = t->data;
  struct dtls *d = c->d;
  uint64_t now = uv_now(d->env.loop);
  if (c->established) {
    if (now >= c->last_rx_ms + d->o.idle_timeout_ms) {
      d->st.idle_closed++;
      conn_shutdown(c, true);
      return;
    }
  } else if (now >= c->started_ms + d->o.handshake_timeout_ms) {
    d->st.handshakes_timed_out++;
    conn_free(c, false);
    return;
  } else if (DTLSv1_handle_timeout(c->ssl) < 0) {
    fail_handshake(c, "retransmission failed");
    return;
  } else {
    flush(d, c->wbio, (struct sockaddr *)&c->addr, c);
  }
  arm(c);
}

/* ---- handshakes and records ---------------------------------------------- */

/* The certificate's CN, else its first DNS subjectAltName. */
static int cert_identity(SSL *ssl, char *out, size_t cap)
{
  X509 *x = SSL_get1_peer_certificate(ssl);
  GENERAL_NAMES *sans;
  int n = -1;
  if (!x)
    return -1;
  n = X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, out, (int)cap);
  if (n <= 0 && (sans = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL))) {
    for (int i = 0; i < sk_GENERAL_NAME_num(sans) && n <= 0; i++) {
      const GENERAL_NAME *g = sk_GENERAL_NAME_value(sans, i);
      if (g->type == GEN_DNS && g->d.dNSName->length > 0 &&
          (size_t)g->d.dNSName->length < cap) {
        memcpy(out, g->d.dNSName->data, (size_t)g->d.dNSName->length);
        out[g->d.dNSName->length] = '\0';
        n = g->d.dNSName->length;
      }
    }
    GENERAL_NAMES_free(sans);
  }
  X509_free(x);
  /* An identity with an embedded NUL would compare differently later. */
  return n > 0 && strlen(out) == (size_t)n ? 0 : -1;
}

/* The handshake finished: c is a session; a pending one replaces its owner. */
static int established(struct dtls_conn *c)
{
  struct dtls *d = c->d;
  if (c->psk_unknown)
    return -1; /* cannot complete with a random key; belt and braces */
  if (SSL_get0_peer_certificate(c->ssl) != NULL || c->peer.auth != DTLS_AUTH_PSK) {
    c->peer.auth = DTLS_AUTH_CERT;
    if (cert_identity(c->ssl, c->peer.identity, sizeof c->peer.identity) != 0)
      return -1;
  }
  hs_remove(d, c);
  c->established = true;
  c->last_rx_ms = uv_now(d->env.loop);
  d->st.handshakes_done++;
  d->st.sessions++;
  if (c->owner) {
    struct dtls_conn *old = c->owner;
    old->pending = NULL;
    c->owner = NULL;
    d->st.sessions_replaced++;
    conn_free(old, true); /* RFC 6347 §4.2.8: abandoned after a good Finished */
    table_insert(d, c);
  }
  /* One session per identity: a leaf that comes back from another address
   * has left its old one behind, and one key cannot hold many.  The owner
   * is not told: the leaf's next CONNECT or wake-up moves its session
   * (docs/dtls.md §9). */
  {
    struct dtls_conn *old = id_lookup(d, &c->peer);
    if (old && old != c) {
      d->st.identity_replaced++;
      conn_shutdown(old, false);
    }
  }
  id_insert(d, c);
  return 0;
}

static const char *ssl_why(void)
{
  unsigned long e = ERR_get_error();
  const char *r = e ? ERR_reason_error_string(e) : NULL;
  ERR_clear_error();
  return r ? r : "protocol error";
}

/* The handshake is done: unless its suite is not one the module seals
 * itself, the SSL goes, and with it everything OpenSSL keeps for an
 * association (docs/dtls.md §6); flight[len] (owned) is what the server
 * sent last, kept to be sent again while the client may not have it. */
static void take_over(struct dtls_conn *c, uint8_t *flight, size_t len)
{
  static struct log_ratelimit rl;
  if (!flight || len > UINT16_MAX || dtls_aead_take(c->ssl, &c->k, flight, len) != 0) {
    free(flight);
    log_ratelimited(&rl, LOG_INFO, MOD, "%s: OpenSSL's record layer kept for this association",
                    SSL_get_cipher_name(c->ssl));
    return;
  }
  c->own = true;
  c->flight = flight;
  c->flight_len = (uint16_t)len;
  SSL_free(c->ssl);
  c->ssl = NULL;
  c->rbio = c->wbio = NULL;
}

static void handshake_step(struct dtls_conn *c)
{
  int rc = SSL_do_handshake(c->ssl);
  size_t out = flush(c->d, c->wbio, (struct sockaddr *)&c->addr, c);
  if (rc == 1) {
    /* Copied first: established() may send for another association. */
    uint8_t *flight = out ? malloc(out) : NULL;
    if (flight)
      memcpy(flight, c->d->io, out);
    if (established(c) != 0) {
      free(flight);
      fail_handshake(c, "no usable identity");
      return;
    }
    take_over(c, flight, out);
  } else if (SSL_get_error(c->ssl, rc) != SSL_ERROR_WANT_READ) {
    fail_handshake(c, c->psk_unknown ? "unknown PSK identity" : ssl_why());
    return;
  }
  arm(c);
}

/* Every record of the datagram just written: each one an MQTT-SN message. */
static void read_records(struct dtls_conn *c)
{
  struct dtls *d = c->d;
  int n, err;
  c->busy = true;
  while (!c->dead && (n = SSL_read(c->ssl, d->io, (int)sizeof d->io)) > 0) {
    c->last_rx_ms = uv_now(d->env.loop);
    if (d->env.on_datagram)
      d->env.on_datagram(d->env.ud, (struct sockaddr *)&c->addr, &c->peer, d->io, (size_t)n);
  }
  c->busy = false;
  if (c->dead) {
    c->dead = false;
    conn_shutdown(c, false);
    return;
  }
  err = SSL_get_error(c->ssl, n);
  flush(d, c->wbio, (struct sockaddr *)&c->addr, c);
  if (err == SSL_ERROR_WANT_READ) {
    ERR_clear_error(); /* bad records are dropped silently (RFC 6347 §4.1.2.7) */
    arm(c);
    return;
  }
  conn_shutdown(c, true); /* close_notify or a fatal alert */
}

static struct dtls_conn *conn_new(struct dtls *d, const struct sockaddr *from)
{
  struct dtls_conn *c = calloc(1, sizeof *c);
  if (!c)
    return NULL;
  c->d = d;
  memcpy(&c->addr, from,
         from->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
  uv_timer_init(d->env.loop, &c->timer);
  c->timer.data = c;
  c->started_ms = uv_now(d->env.loop);
  d->open_handles++;
  d->n_conns++;
  return c;
}

/* The listener verified the cookie: it becomes the peer's SSL and a fresh
 * one listens.  Returns the new conn, or NULL (refused, counted). */
static struct dtls_conn *admit_handshake(struct dtls *d, const struct sockaddr *from)
{
  struct dtls_conn *c;
  BIO *r, *w;
  SSL *fresh;
  if (d->n_conns >= d->o.max_sessions || d->st.handshaking >= d->o.max_handshakes) {
    d->st.refused_full++;
    return NULL;
  }
  if (handshakes_from_ip(d, from) >= d->o.max_handshakes_per_ip) {
    d->st.refused_per_ip++;
    return NULL;
  }
  fresh = dtls_ssl_new(d, &r, &w);
  if (!fresh || !(c = conn_new(d, from))) {
    SSL_free(fresh);
    return NULL;
  }
  c->ssl = d->listener;
  c->rbio = SSL_get_rbio(c->ssl);
  c->wbio = SSL_get_wbio(c->ssl);
  SSL_set_app_data(c->ssl, c);
  d->listener = fresh;
  c->hs_next = d->handshakes;
  d->handshakes = c;
  d->st.handshaking++;
  d->st.handshakes_started++;
  if (d->st.handshaking > d->hs_peak)
    d->hs_peak = (uint32_t)d->st.handshaking;
  return c;
}

/* A fresh listener SSL in place of one whose state must go (after a fatal
 * error, or a verified ClientHello that was refused); when none can be
 * made, the old one is cleared for reuse. */
static void renew_listener(struct dtls *d)
{
  BIO *r, *w;
  SSL *fresh = dtls_ssl_new(d, &r, &w);
  if (!fresh) {
    SSL_clear(d->listener);
    return;
  }
  SSL_free(d->listener);
  d->listener = fresh;
}

/* A ClientHello from an address with no session, or from one whose session
 * it may replace (owner).  Without a valid cookie it gets a
 * HelloVerifyRequest and costs nothing; with one, a handshake begins. */
static void client_hello(struct dtls *d, const struct sockaddr *from, const uint8_t *p,
                         size_t n, struct dtls_conn *owner)
{
  BIO *lr = SSL_get_rbio(d->listener), *lw = SSL_get_wbio(d->listener);
  BIO_ADDR *peer = BIO_ADDR_new();
  struct dtls_conn *c;
  int rc, out;

  if (!peer)
    return;
  (void)BIO_reset(lr);
  (void)BIO_reset(lw);
  BIO_write(lr, p, (int)n);
  d->cookie_addr = from;
  rc = DTLSv1_listen(d->listener, peer);
  d->cookie_addr = NULL;
  BIO_ADDR_free(peer);
  if (rc <= 0) {
    /* The answer, when any, is a HelloVerifyRequest: sent only if it is no
     * larger than what asked for it, so it cannot amplify a spoofed one. */
    out = (int)BIO_ctrl_pending(lw);
    if (out > 0 && (size_t)out <= n) {
      d->st.hello_verify_sent++;
      flush(d, lw, from, NULL);
    } else if (out > 0) {
      d->st.hello_verify_withheld++;
    }
    (void)BIO_reset(lw);
    ERR_clear_error();
    if (rc < 0) /* the listener is unusable after a fatal error */
      renew_listener(d);
    return;
  }
  c = admit_handshake(d, from);
  if (!c) {
    renew_listener(d); /* drop the verified listener's state */
    return;
  }
  if (owner) {
    c->owner = owner;
    owner->pending = c;
  } else {
    table_insert(d, c);
  }
  handshake_step(c);
}

/* One datagram to an association whose record layer is its own: each
 * record is opened (those that are not authentic, not of epoch 1 or seen
 * before are dropped, RFC 6347 §4.1.2.6-7) and each MQTT-SN message handed
 * on.  The idle timer is not moved: it looks at last_rx_ms when it fires. */
static void own_input(struct dtls_conn *c, const uint8_t *p, size_t n)
{
  struct dtls *d = c->d;
  struct dtls_record r;
  bool resend = false;
  int end = 0; /* 1: close_notify received, 2: a fatal alert */
  c->busy = true;
  for (size_t off = 0, used; !c->dead && !end && off < n; off += used) {
    const uint8_t *plain;
    int len;
    if ((used = dtls_record_parse(p + off, n - off, &r)) == 0)
      break;
    if (r.epoch == 0) {
      /* The client's last flight again (RFC 6347 §4.2.4): it has not had
       * the server's. */
      resend |= r.type == DTLS_CT_HANDSHAKE || r.type == DTLS_CT_CHANGE_CIPHER_SPEC;
      continue;
    }
    if (r.epoch != 1 || r.version != DTLS_VERSION_1_2 || !dtls_replay_fresh(&c->k.replay, r.seq))
      continue;
    len = dtls_aead_open(&c->k, &r, p + off + DTLS_RECORD_HEADER, d->io, sizeof d->io, &plain);
    if (len < 0)
      continue;
    dtls_replay_mark(&c->k.replay, r.seq);
    if (r.type == DTLS_CT_HANDSHAKE) { /* its Finished again; nothing else is taken */
      resend = true;
      continue;
    }
    free(c->flight); /* the client has the server's Finished */
    c->flight = NULL;
    if (r.type == DTLS_CT_APPLICATION_DATA) {
      c->last_rx_ms = uv_now(d->env.loop);
      if (d->env.on_datagram)
        d->env.on_datagram(d->env.ud, (struct sockaddr *)&c->addr, &c->peer, plain, (size_t)len);
    } else if (r.type == DTLS_CT_ALERT && len >= 2) {
      end = plain[0] == 2 ? 2 : plain[1] == 0 ? 1 : 0; /* other warnings are ignored */
    }
  }
  c->busy = false;
  if (c->dead) {
    c->dead = false;
    conn_shutdown(c, false);
  } else if (end == 1) {
    conn_shutdown(c, true); /* answered with close_notify */
  } else if (end == 2) {
    conn_free(c, true);
  } else if (resend && c->flight && n >= c->flight_len) {
    /* never more than what asked for it */
    send_records(d, c->flight, c->flight_len, (struct sockaddr *)&c->addr, NULL);
  }
}

static void feed(struct dtls_conn *c, const uint8_t *p, size_t n)
{
  if (c->own) {
    own_input(c, p, n);
    return;
  }
  BIO_write(c->rbio, p, (int)n);
  if (c->established)
    read_records(c);
  else
    handshake_step(c);
}

static void on_udp(void *ud, const struct sockaddr *from, const uint8_t *p, size_t n)
{
  struct dtls *d = ud;
  enum dtls_kind kind = dtls_classify(p, n);
  struct dtls_conn *c;
  struct dtls_record r;

  if (d->stopping)
    return;
  if (kind == DTLS_NOT_DTLS) {
    d->st.plain_dropped++;
    return;
  }
  c = lookup(d, from);
  if (!c) {
    if (kind == DTLS_CLIENT_HELLO)
      client_hello(d, from, p, n, NULL);
    else
      d->st.records_dropped++;
    return;
  }
  if (!c->established) {
    feed(c, p, n);
    return;
  }
  /* An established peer: a new ClientHello starts a second handshake (a
   * reboot), which replaces this session only once it has finished. */
  if (kind == DTLS_CLIENT_HELLO && !c->pending) {
    client_hello(d, from, p, n, c);
    return;
  }
  dtls_record_parse(p, n, &r);
  if (c->pending && r.epoch == 0) {
    feed(c->pending, p, n);
    return;
  }
  /* Records of a later epoch may be the new handshake's Finished: the old
   * session drops what it cannot decrypt. */
  if (c->pending)
    feed(c->pending, p, n);
  if ((c = lookup(d, from)) != NULL && c->established)
    feed(c, p, n);
}

/* ---- the API ------------------------------------------------------------- */

int dtls_new(const struct dtls_env *env, struct dtls **out, char *err, size_t errlen)
{
  struct dtls *d;
  size_t nb = 64;
  const struct dtls_opts *o = env->o;
  BIO *r, *w;
  int rc;

  if (!o->bind || o->mtu < 256 || o->mtu > 16384 || !o->max_sessions || !o->max_handshakes ||
      !o->max_handshakes_per_ip || !o->handshake_timeout_ms || !o->idle_timeout_ms) {
    snprintf(err, errlen, "bad DTLS options (bind, mtu 256..16384, non-zero limits and timers)");
    return UV_EINVAL;
  }
  d = calloc(1, sizeof *d);
  if (!d)
    return UV_ENOMEM;
  d->env = *env;
  d->o = *o;
  d->env.o = &d->o;
  while (nb < o->max_sessions && nb < (1u << 20))
    nb <<= 1;
  d->nbuckets = nb;
  d->buckets = calloc(nb, sizeof *d->buckets);
  d->id_buckets = calloc(nb, sizeof *d->id_buckets);
  if (!d->buckets || !d->id_buckets) {
    free(d->buckets);
    free(d->id_buckets);
    free(d);
    return UV_ENOMEM;
  }
  if ((rc = dtls_ctx_make(d, err, errlen)) != 0 || !(d->listener = dtls_ssl_new(d, &r, &w))) {
    SSL_CTX_free(d->ctx);
    free(d->buckets);
    free(d->id_buckets);
    free(d);
    return rc ? rc : UV_ENOMEM;
  }
  *out = d;
  return 0;
}

static void rotate_cb(uv_timer_t *t)
{
  dtls_secret_rotate(t->data);
}

int dtls_start(struct dtls *d)
{
  int rc = udp_open(d->env.loop, d->o.bind, d->o.port, 1u << 20, on_udp, d, &d->udp);
  if (rc != 0)
    return rc;
  d->open_handles++; /* the socket */
  uv_timer_init(d->env.loop, &d->rotate);
  d->rotate.data = d;
  uv_timer_init(d->env.loop, &d->settle);
  d->settle.data = d;
  d->open_handles += 2;
  d->rotate_started = true;
  uv_timer_start(&d->rotate, rotate_cb, DTLS_ROTATE_MS, DTLS_ROTATE_MS);
  return 0;
}

uint64_t dtls_datagrams_too_long(const struct dtls *d)
{
  struct udp_rx_stats rx = {0, 0, 0};
  if (d->udp)
    udp_get_rx_stats(d->udp, &rx);
  return rx.too_long;
}

int dtls_port(const struct dtls *d)
{
  return d->udp ? udp_port(d->udp) : -1;
}

int dtls_send(struct dtls *d, const struct sockaddr *to, const uint8_t *data, size_t len)
{
  struct dtls_conn *c = lookup(d, to);
  if (!c || !c->established || c->dead)
    return UV_ENOTCONN;
  if (len > (c->own ? c->k.data_mtu : (size_t)DTLS_get_data_mtu(c->ssl))) {
    d->st.oversize_refused++;
    return UV_EMSGSIZE;
  }
  if (c->own)
    return own_send(c, DTLS_CT_APPLICATION_DATA, data, len);
  if (SSL_write(c->ssl, data, (int)len) != (int)len) {
    ERR_clear_error();
    return UV_EIO;
  }
  flush(d, c->wbio, to, c);
  return 0;
}

size_t dtls_max_payload(struct dtls *d, const struct sockaddr *to)
{
  struct dtls_conn *c = lookup(d, to);
  if (!c || !c->established)
    return 0;
  return c->own ? c->k.data_mtu : (size_t)DTLS_get_data_mtu(c->ssl);
}

void dtls_close_peer(struct dtls *d, const struct sockaddr *peer)
{
  struct dtls_conn *c = lookup(d, peer);
  if (c)
    conn_shutdown(c, false);
}

static bool is_identity(const struct dtls_conn *c, const char *identity, enum dtls_auth auth)
{
  return !c->dead && c->peer.auth == auth && strcmp(c->peer.identity, identity) == 0;
}

size_t dtls_close_identity(struct dtls *d, const char *identity, enum dtls_auth auth)
{
  size_t n = 0;
  for (size_t i = 0; i < d->nbuckets; i++) {
  again:
    for (struct dtls_conn *c = d->buckets[i]; c; c = c->next) {
      /* A handshake in progress has its identity from the PSK callback: it
       * may have been given the key now revoked. */
      if (c->pending && is_identity(c->pending, identity, auth)) {
        conn_free(c->pending, false);
        n++;
        goto again;
      }
      if (is_identity(c, identity, auth)) {
        conn_shutdown(c, true);
        n++;
        goto again;
      }
    }
  }
  return n;
}

static void handle_closed(uv_handle_t *h)
{
  struct dtls *d = h->data;
  d->open_handles--;
  if (d->open_handles == 0 && d->done)
    d->done(d->done_ud);
}

static void udp_closed(void *ud)
{
  struct dtls *d = ud;
  d->open_handles--;
  if (d->open_handles == 0 && d->done)
    d->done(d->done_ud);
}

void dtls_stop(struct dtls *d, void (*done)(void *), void *ud)
{
  d->done = done;
  d->done_ud = ud;
  d->stopping = true;
  d->open_handles++; /* held during the loop below */
  for (size_t i = 0; i < d->nbuckets; i++)
    while (d->buckets[i])
      conn_shutdown(d->buckets[i], true);
  if (d->rotate_started) {
    uv_timer_stop(&d->rotate);
    uv_close((uv_handle_t *)&d->rotate, handle_closed);
    uv_close((uv_handle_t *)&d->settle, handle_closed);
    d->rotate_started = false;
  }
  if (d->udp) {
    udp_close(d->udp, udp_closed, d);
    d->udp = NULL;
  }
  d->open_handles--;
  if (d->open_handles == 0 && done)
    done(ud);
}

void dtls_free(struct dtls *d)
{
  if (!d)
    return;
  SSL_free(d->listener);
  SSL_CTX_free(d->ctx);
  OPENSSL_cleanse(d->secret, sizeof d->secret);
  free(d->buckets);
  free(d->id_buckets);
  free(d);
}

void dtls_get_stats(const struct dtls *d, struct dtls_stats *out)
{
  *out = d->st;
}
