/*
 * dtls_bridge.c - fleetgw-dtls-bridge: plaintext MQTT-SN over UDP on one
 * side, DTLS 1.2 on the other, for the Python tests (tests/leaf/mqttsn_leaf.py
 * speaks plain UDP only).
 *
 * It listens on 127.0.0.1:--listen.  Each plaintext source address gets one
 * DTLS client association (leaf_dtls.c) to --connect, from a UDP socket of
 * its own, so the server sees one address per leaf (RFC 6347 §4.1.1: the
 * address is what tells associations apart).  Each plaintext datagram goes
 * out as one record, each record received comes back as one datagram.
 * Datagrams that arrive before the handshake is done wait in a bounded queue.
 *
 * One line per event on stdout, flushed:
 *   listening <port>
 *   handshake ok <peer> cipher=<name>
 *   handshake failed <peer> <reason>
 *   alert <peer> <description>        (RFC 5246 §7.2 names: close_notify, ...)
 *   closed <peer>
 *   dropped <peer> <reason>
 * SIGINT or SIGTERM: close_notify to every peer, then exit 0.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "leaf_dtls.h"

#define QUEUE_MAX 32 /* datagrams held per peer until its handshake is done */
#define DEFAULT_MAX_PEERS 64
#define MAX_DGRAM 65535

struct qdgram {
  size_t len;
  uint8_t *data;
};

struct bridge;

struct peer {
  struct bridge *b;
  struct peer *next;
  struct sockaddr_in addr; /* the plaintext leaf */
  char name[INET_ADDRSTRLEN + 8];
  uv_udp_t up; /* towards --connect */
  struct leaf_dtls *conn;
  bool open;
  size_t nq;
  struct qdgram q[QUEUE_MAX];
};

struct bridge {
  uv_loop_t *loop;
  uv_udp_t lsock;
  uv_signal_t sigint, sigterm;
  struct sockaddr_in server;
  struct leaf_dtls_ctx *ctx;
  struct leaf_dtls_keys keys;
  const char *identity; /* --psk-identity */
  bool use_certs;
  bool from_clientid;
  bool stopping;
  unsigned npeers, max_peers;
  struct peer *peers;
  uint8_t buf[MAX_DGRAM];
};

static void event(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void event(const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  putchar('\n');
  fflush(stdout);
}

static void peer_close_cb(uv_handle_t *h)
{
  struct peer *p = h->data;
  free(p);
}

/* Forgets a peer; its next datagram starts a new association. */
static void peer_remove(struct peer *p)
{
  struct bridge *b = p->b;
  for (struct peer **pp = &b->peers; *pp; pp = &(*pp)->next) {
    if (*pp == p) {
      *pp = p->next;
      break;
    }
  }
  b->npeers--;
  leaf_dtls_free(p->conn);
  p->conn = NULL;
  for (size_t i = 0; i < p->nq; i++)
    free(p->q[i].data);
  p->nq = 0;
  uv_close((uv_handle_t *)&p->up, peer_close_cb);
}

/* One record out; says why when it cannot go. */
static void forward(struct peer *p, const uint8_t *data, size_t len)
{
  int rc = leaf_dtls_send(p->conn, data, len);
  if (rc == LEAF_DTLS_ETOOBIG)
    event("dropped %s %zu bytes exceed the record payload of %zu", p->name, len,
          leaf_dtls_max_data(p->conn));
  else if (rc != LEAF_DTLS_OK)
    event("dropped %s send failed (%d)", p->name, rc);
}

static int on_send(void *ud, const uint8_t *data, size_t len)
{
  struct peer *p = ud;
  uv_buf_t buf = uv_buf_init((char *)data, (unsigned)len);
  int rc = uv_udp_try_send(&p->up, &buf, 1, (const struct sockaddr *)&p->b->server);
  return rc < 0 ? rc : 0;
}

static void on_handshake_done(void *ud)
{
  struct peer *p = ud;
  p->open = true;
  event("handshake ok %s cipher=%s", p->name, leaf_dtls_cipher(p->conn));
  /* In order; a send that kills the association empties the queue. */
  for (size_t i = 0; i < p->nq && p->conn; i++) {
    uint8_t *d = p->q[i].data;
    p->q[i].data = NULL;
    forward(p, d, p->q[i].len);
    free(d);
  }
  p->nq = 0;
}

static void on_plaintext(void *ud, const uint8_t *data, size_t len)
{
  struct peer *p = ud;
  uv_buf_t buf = uv_buf_init((char *)data, (unsigned)len);
  if (uv_udp_try_send(&p->b->lsock, &buf, 1, (const struct sockaddr *)&p->addr) < 0)
    event("dropped %s %zu bytes: plaintext send failed", p->name, len);
}

static void on_error(void *ud, const char *reason)
{
  struct peer *p = ud;
  if (p->open)
    event("closed %s", p->name);
  else
    event("handshake failed %s %s", p->name, reason);
  peer_remove(p);
}

static void on_closed(void *ud)
{
  struct peer *p = ud;
  event("closed %s", p->name);
  peer_remove(p);
}

static void on_alert(void *ud, bool fatal, const char *desc)
{
  struct peer *p = ud;
  (void)fatal;
  event("alert %s %s", p->name, desc);
}

static void up_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
  struct peer *p = h->data;
  (void)suggested;
  buf->base = (char *)p->b->buf; /* each datagram is handled before the next read */
  buf->len = sizeof p->b->buf;
}

static void up_recv(uv_udp_t *h, ssize_t n, const uv_buf_t *buf, const struct sockaddr *from,
                    unsigned flags)
{
  struct peer *p = h->data;
  const struct sockaddr_in *sin = (const struct sockaddr_in *)from;
  if (n <= 0 || !from || !p->conn || (flags & UV_UDP_PARTIAL) || from->sa_family != AF_INET ||
      sin->sin_port != p->b->server.sin_port ||
      sin->sin_addr.s_addr != p->b->server.sin_addr.s_addr)
    return; /* only the server's datagrams, whole */
  (void)leaf_dtls_input(p->conn, (const uint8_t *)buf->base, (size_t)n);
}

/* The ClientId of an MQTT-SN CONNECT (MQTT-SN v1.2 §5.4.4: Length, MsgType
 * 0x04, Flags, ProtocolId, Duration, ClientId); returns 0 or -1. */
static int connect_client_id(const uint8_t *d, size_t len, char *out, size_t cap)
{
  size_t hdr = 1, total = len > 0 ? d[0] : 0;
  if (len >= 3 && d[0] == 0x01) {
    hdr = 3;
    total = (size_t)d[1] << 8 | d[2];
  }
  if (total != len || len < hdr + 5 || d[hdr] != 0x04)
    return -1;
  size_t idlen = len - hdr - 5;
  if (idlen == 0 || idlen >= cap || memchr(d + hdr + 5, '\0', idlen))
    return -1;
  memcpy(out, d + hdr + 5, idlen);
  out[idlen] = '\0';
  return 0;
}

/* A new association for the plaintext peer `from`, or NULL after saying why. */
static struct peer *peer_new(struct bridge *b, const struct sockaddr_in *from, const uint8_t *d,
                             size_t len)
{
  char name[INET_ADDRSTRLEN + 8], ip[INET_ADDRSTRLEN], id[LEAF_DTLS_ID_MAX + 1], err[256];
  struct leaf_dtls_cred cr = {.psk_identity = b->identity};
  struct sockaddr_in local;
  struct peer *p;
  uv_ip4_name(from, ip, sizeof ip);
  snprintf(name, sizeof name, "%s:%u", ip, (unsigned)ntohs(from->sin_port));
  if (b->npeers >= b->max_peers) {
    event("dropped %s %u peers already", name, b->npeers);
    return NULL;
  }
  if (b->from_clientid) {
    if (connect_client_id(d, len, id, sizeof id) != 0) {
      event("dropped %s the first datagram is not a CONNECT with a ClientId", name);
      return NULL;
    }
    cr.psk_identity = id;
  }
  cr.psk = leaf_dtls_key_for(&b->keys, cr.psk_identity ? cr.psk_identity : "", &cr.psk_len);
  if (b->from_clientid && !cr.psk) {
    event("dropped %s no PSK for ClientId %s", name, id);
    return NULL;
  }
  p = calloc(1, sizeof *p);
  if (!p) {
    event("dropped %s out of memory", name);
    return NULL;
  }
  p->b = b;
  p->addr = *from;
  memcpy(p->name, name, sizeof name);
  uv_udp_init(b->loop, &p->up);
  p->up.data = p;
  p->next = b->peers;
  b->peers = p;
  b->npeers++;
  uv_ip4_addr("127.0.0.1", 0, &local);
  int rc = uv_udp_bind(&p->up, (const struct sockaddr *)&local, 0);
  if (rc == 0)
    rc = uv_udp_recv_start(&p->up, up_alloc, up_recv);
  if (rc != 0) {
    event("handshake failed %s UDP socket: %s", name, uv_strerror(rc));
    peer_remove(p);
    return NULL;
  }
  if (leaf_dtls_new(b->ctx, p, &cr, &p->conn, err, sizeof err) != LEAF_DTLS_OK) {
    event("handshake failed %s %s", name, err);
    peer_remove(p);
    return NULL;
  }
  return p;
}

static void queue_dgram(struct peer *p, const uint8_t *d, size_t len)
{
  if (p->nq == QUEUE_MAX) {
    event("dropped %s queue full (%d datagrams before the handshake)", p->name, QUEUE_MAX);
    return;
  }
  if (len > LEAF_DTLS_MTU_MAX) { /* no record could carry it */
    event("dropped %s %zu bytes exceed any record", p->name, len);
    return;
  }
  uint8_t *copy = malloc(len);
  if (!copy) {
    event("dropped %s out of memory", p->name);
    return;
  }
  memcpy(copy, d, len);
  p->q[p->nq].data = copy;
  p->q[p->nq].len = len;
  p->nq++;
}

static void l_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
  struct bridge *b = h->data;
  (void)suggested;
  buf->base = (char *)b->buf;
  buf->len = sizeof b->buf;
}

static void l_recv(uv_udp_t *h, ssize_t n, const uv_buf_t *buf, const struct sockaddr *from,
                   unsigned flags)
{
  struct bridge *b = h->data;
  const struct sockaddr_in *sin = (const struct sockaddr_in *)from;
  const uint8_t *d = (const uint8_t *)buf->base;
  struct peer *p;
  if (n <= 0 || !from || b->stopping || (flags & UV_UDP_PARTIAL) || from->sa_family != AF_INET)
    return;
  for (p = b->peers; p; p = p->next)
    if (p->addr.sin_port == sin->sin_port && p->addr.sin_addr.s_addr == sin->sin_addr.s_addr)
      break;
  if (!p) {
    p = peer_new(b, sin, d, (size_t)n);
    if (!p)
      return;
    queue_dgram(p, d, (size_t)n);
    (void)leaf_dtls_start(p->conn); /* a failure comes through on_error */
    return;
  }
  if (p->open)
    forward(p, d, (size_t)n);
  else
    queue_dgram(p, d, (size_t)n);
}

static void stop(struct bridge *b)
{
  if (b->stopping)
    return;
  b->stopping = true;
  while (b->peers) {
    struct peer *p = b->peers;
    if (p->open) {
      (void)leaf_dtls_shutdown(p->conn); /* close_notify, RFC 5246 §7.2.1 */
      event("closed %s", p->name);
    }
    peer_remove(p);
  }
  uv_close((uv_handle_t *)&b->lsock, NULL);
  uv_close((uv_handle_t *)&b->sigint, NULL);
  uv_close((uv_handle_t *)&b->sigterm, NULL);
}

static void signal_cb(uv_signal_t *h, int signum)
{
  (void)signum;
  stop(h->data);
}

static const char usage[] =
    "usage: fleetgw-dtls-bridge --listen PORT --connect HOST:PORT CREDENTIALS [options]\n"
    "Plain MQTT-SN over UDP on 127.0.0.1:PORT (0 = any free port), one DTLS 1.2\n"
    "client association per plaintext source address towards HOST:PORT (IPv4).\n"
    "\n"
    "Credentials, one kind:\n"
    "  --psk-identity ID --psk-hex HEX   one PSK for every peer\n"
    "  --identity-from-clientid --psk-file FILE\n"
    "                        the identity is the ClientId of the peer's first\n"
    "                        datagram (a CONNECT), its key from FILE (client_id,hexkey)\n"
    "  --cert FILE --key FILE --ca FILE  X.509; the CA verifies the server\n"
    "Options:\n"
    "  --ciphers LIST        OpenSSL cipher list (default: RFC 7925's suites)\n"
    "  --mtu N               DTLS record MTU, 256..16384 (default 1200)\n"
    "  --handshake-timeout-ms MS  give a handshake up after MS (default 10000)\n"
    "  --max-peers N         associations at once (default 64)\n"
    "Prints one line per event: listening <port>, handshake ok <peer> cipher=<name>,\n"
    "handshake failed <peer> <reason>, alert <peer> <desc>, closed <peer>,\n"
    "dropped <peer> <reason>.  SIGINT/SIGTERM: close_notify to every peer, exit 0.\n";

struct bargs {
  unsigned long listen_port, mtu, hs_ms, max_peers;
  const char *connect, *identity, *psk_hex, *psk_file, *cert, *key, *ca, *ciphers;
  bool from_clientid;
};

/* A whole decimal number in [lo, hi]. */
static bool number(const char *s, unsigned long lo, unsigned long hi, unsigned long *out)
{
  char *end;
  errno = 0;
  *out = strtoul(s, &end, 10);
  return s[0] >= '0' && s[0] <= '9' && *end == '\0' && errno == 0 && *out >= lo && *out <= hi;
}

static int parse(int argc, char **argv, struct bargs *a)
{
  static const struct option lo[] = {{"listen", required_argument, NULL, 'l'},
                                     {"connect", required_argument, NULL, 'c'},
                                     {"psk-identity", required_argument, NULL, 'i'},
                                     {"psk-hex", required_argument, NULL, 'x'},
                                     {"psk-file", required_argument, NULL, 'f'},
                                     {"identity-from-clientid", no_argument, NULL, 'I'},
                                     {"cert", required_argument, NULL, 'C'},
                                     {"key", required_argument, NULL, 'K'},
                                     {"ca", required_argument, NULL, 'A'},
                                     {"ciphers", required_argument, NULL, 's'},
                                     {"mtu", required_argument, NULL, 'm'},
                                     {"handshake-timeout-ms", required_argument, NULL, 't'},
                                     {"max-peers", required_argument, NULL, 'p'},
                                     {"help", no_argument, NULL, 'h'},
                                     {NULL, 0, NULL, 0}};
  int c;
  bool ok = true, have_listen = false;
  *a = (struct bargs){.mtu = 1200, .hs_ms = 10000, .max_peers = DEFAULT_MAX_PEERS};
  while (ok && (c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
    switch (c) {
    case 'l':
      ok = number(optarg, 0, 65535, &a->listen_port);
      have_listen = true;
      break;
    case 'c':
      a->connect = optarg;
      break;
    case 'i':
      a->identity = optarg;
      break;
    case 'x':
      a->psk_hex = optarg;
      break;
    case 'f':
      a->psk_file = optarg;
      break;
    case 'I':
      a->from_clientid = true;
      break;
    case 'C':
      a->cert = optarg;
      break;
    case 'K':
      a->key = optarg;
      break;
    case 'A':
      a->ca = optarg;
      break;
    case 's':
      a->ciphers = optarg;
      break;
    case 'm':
      ok = number(optarg, LEAF_DTLS_MTU_MIN, LEAF_DTLS_MTU_MAX, &a->mtu);
      break;
    case 't':
      ok = number(optarg, 1, 3600000, &a->hs_ms);
      break;
    case 'p':
      ok = number(optarg, 1, 100000, &a->max_peers);
      break;
    case 'h':
      fputs(usage, stdout);
      exit(0);
    default:
      ok = false;
      break;
    }
  }
  bool psk1 = a->identity && a->psk_hex, pskf = a->from_clientid && a->psk_file;
  bool certs = a->cert && a->key && a->ca;
  if (!ok || optind < argc || !have_listen || !a->connect || psk1 + pskf + certs != 1 ||
      (!psk1 && (a->identity || a->psk_hex)) || (!pskf && (a->from_clientid || a->psk_file)) ||
      (!certs && (a->cert || a->key || a->ca))) {
    fputs(usage, stderr);
    return -1;
  }
  return 0;
}

/* The context, the keys and the server's address from the arguments. */
static int setup(struct bridge *b, const struct bargs *a)
{
  static const struct leaf_dtls_cbs cbs = {.send = on_send,
                                           .on_handshake_done = on_handshake_done,
                                           .on_plaintext = on_plaintext,
                                           .on_error = on_error,
                                           .on_closed = on_closed,
                                           .on_alert = on_alert};
  struct leaf_dtls_opts o = {.use_certs = a->cert != NULL,
                             .ciphers = a->ciphers,
                             .cert_file = a->cert,
                             .key_file = a->key,
                             .ca_file = a->ca,
                             .mtu = (unsigned)a->mtu,
                             .handshake_ms = (unsigned)a->hs_ms};
  char host[64], err[256];
  const char *colon = strrchr(a->connect, ':');
  unsigned long port;
  if (!colon || (size_t)(colon - a->connect) >= sizeof host ||
      !number(colon + 1, 1, 65535, &port)) {
    fprintf(stderr, "fleetgw-dtls-bridge: --connect: expected IPv4:PORT\n");
    return -1;
  }
  memcpy(host, a->connect, (size_t)(colon - a->connect));
  host[colon - a->connect] = '\0';
  if (uv_ip4_addr(host, (int)port, &b->server) != 0) {
    fprintf(stderr, "fleetgw-dtls-bridge: --connect: %s is not an IPv4 address\n", host);
    return -1;
  }
  b->identity = a->identity;
  b->from_clientid = a->from_clientid;
  b->max_peers = (unsigned)a->max_peers;
  if (leaf_dtls_keys_load(&b->keys, a->psk_hex, a->psk_file, err, sizeof err) != 0 ||
      leaf_dtls_ctx_new(b->loop, &o, &cbs, &b->ctx, err, sizeof err) != LEAF_DTLS_OK) {
    fprintf(stderr, "fleetgw-dtls-bridge: %s\n", err);
    return -1;
  }
  return 0;
}

int main(int argc, char **argv)
{
  struct bargs a;
  struct bridge *b;
  struct sockaddr_in local;
  struct sockaddr_storage bound;
  int namelen = sizeof bound, rc = 1;
  if (parse(argc, argv, &a) != 0)
    return 2;
  b = calloc(1, sizeof *b);
  if (!b) {
    fprintf(stderr, "fleetgw-dtls-bridge: out of memory\n");
    return 1;
  }
  signal(SIGPIPE, SIG_IGN);
  b->loop = uv_default_loop();
  if (setup(b, &a) != 0)
    goto out;
  uv_udp_init(b->loop, &b->lsock);
  b->lsock.data = b;
  uv_ip4_addr("127.0.0.1", (int)a.listen_port, &local);
  int e = uv_udp_bind(&b->lsock, (const struct sockaddr *)&local, 0);
  if (e == 0)
    e = uv_udp_recv_start(&b->lsock, l_alloc, l_recv);
  if (e == 0)
    e = uv_udp_getsockname(&b->lsock, (struct sockaddr *)&bound, &namelen);
  if (e != 0) {
    fprintf(stderr, "fleetgw-dtls-bridge: --listen %lu: %s\n", a.listen_port, uv_strerror(e));
    uv_close((uv_handle_t *)&b->lsock, NULL);
    uv_run(b->loop, UV_RUN_DEFAULT);
    goto out;
  }
  uv_signal_init(b->loop, &b->sigint);
  uv_signal_init(b->loop, &b->sigterm);
  b->sigint.data = b->sigterm.data = b;
  uv_signal_start(&b->sigint, signal_cb, SIGINT);
  uv_signal_start(&b->sigterm, signal_cb, SIGTERM);
  event("listening %u", (unsigned)ntohs(((struct sockaddr_in *)&bound)->sin_port));
  uv_run(b->loop, UV_RUN_DEFAULT);
  rc = 0;
out:
  if (uv_loop_close(b->loop) != 0)
    fprintf(stderr, "fleetgw-dtls-bridge: loop not closed cleanly\n");
  leaf_dtls_ctx_free(b->ctx);
  leaf_dtls_keys_free(&b->keys);
  free(b);
  return rc;
}
