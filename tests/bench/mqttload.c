/*
 * mqttload.c - a tiny MQTT 3.1.1 load tool for tests/bench/ (plain TCP only).
 *
 *   mqttload pub --port P [-n CONNS] [--rate R] [--qos 0|1] [--duration S] ...
 *       N connections publish R messages/s in total (0 = as fast as TCP takes
 *       them); QoS 1 keeps one publish in flight per connection, like the
 *       leaves do, and measures the PUBACK round trip.
 *   mqttload sub --port P --topic FILTER [--duration S] [--idle S] ...
 *       one connection counts the PUBLISHes it receives.  With --check it also
 *       checks each publisher's order: payloads that begin "<client id> <seq> "
 *       (fleetgw-leafsim's) are counted per client id as new, duplicate or
 *       out of order, and the seqs below a client's highest that never came
 *       are its holes.  SIGUSR1 prints the JSON line so far and carries on.
 *   mqttload proxy --port P --listen-port L
 *       a TCP proxy to the broker that can be cut and restored, as an uplink
 *       drops and comes back: SIGUSR1 closes every connection and accepts and
 *       closes new ones at once; SIGUSR2 forwards again.  It records the
 *       monotonic time of every connection it forwarded (the upstream
 *       reconnect pacing after an outage).
 * All print one JSON line on stdout at exit (end of --duration, SIGINT or
 * SIGTERM; the proxy only at SIGINT or SIGTERM).
 *
 * Why not mosquitto_pub/mosquitto_sub: they cannot publish at a rate, nor
 * count.  Why not libmosquitto or paho: libmosquitto-dev is not installed on
 * the project's machines and paho (Python) cannot produce the rates that
 * mosquitto takes on this box.  This file needs libc only, and uses epoll
 * (no select(), no descriptor limit).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef SO_REUSEPORT
#define SO_REUSEPORT 15 /* Linux's; hidden by _POSIX_C_SOURCE */
#endif

#define OUT_HIGH 65536 /* stop queueing publishes on a connection above this */
#define IN_MAX (1u << 20)

static volatile sig_atomic_t stop_flag;
static volatile sig_atomic_t cut_flag, restore_flag; /* proxy: SIGUSR1, SIGUSR2 */
static volatile sig_atomic_t report_flag;            /* sub --check: SIGUSR1 */

/* QoS 1: connections with nothing in flight, in the order their PUBACK came
 * (a ring of indices), so the publisher never scans every connection. */
static unsigned *ready_ring;
static size_t ready_head, ready_count, ready_cap;

static void ready_push(unsigned idx)
{
  ready_ring[(ready_head + ready_count) % ready_cap] = idx;
  ready_count++;
}

static unsigned ready_pop(void)
{
  unsigned idx = ready_ring[ready_head];
  ready_head = (ready_head + 1) % ready_cap;
  ready_count--;
  return idx;
}

static void on_signal(int sig)
{
  if (sig == SIGUSR1)
    report_flag = 1;
  else
    stop_flag = 1;
}

static uint64_t now_ns(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Latency histogram: exact below 1024 us, then 512 buckets per power of 2. */
#define H_SUB 512u
#define H_BUCKETS (2 * H_SUB + 22 * H_SUB)
struct hist {
  uint64_t count[H_BUCKETS];
  uint64_t n, max;
};

static unsigned hist_index(uint64_t v)
{
  if (v > UINT32_MAX)
    v = UINT32_MAX;
  if (v < 2 * H_SUB)
    return (unsigned)v;
  unsigned e = 63u - (unsigned)__builtin_clzll(v) - 9u;
  return 2 * H_SUB + (e - 1) * H_SUB + (unsigned)((v >> e) - H_SUB);
}

static uint64_t hist_pct(const struct hist *h, double pct)
{
  uint64_t rank = (uint64_t)ceil(pct / 100.0 * (double)h->n), seen = 0;
  if (h->n == 0)
    return 0;
  if (rank < 1)
    rank = 1;
  for (unsigned i = 0; i < H_BUCKETS; i++) {
    seen += h->count[i];
    if (seen >= rank) {
      if (i < 2 * H_SUB)
        return i;
      unsigned e = (i - 2 * H_SUB) / H_SUB + 1;
      uint64_t v = (((uint64_t)((i - 2 * H_SUB) % H_SUB + H_SUB)) << e) + ((1ull << e) >> 1);
      return v > h->max ? h->max : v;
    }
  }
  return h->max;
}

struct conn {
  int fd;
  unsigned idx;
  bool connected; /* CONNACK accepted */
  bool want_out;  /* EPOLLOUT registered */
  uint8_t *out;
  size_t out_len, out_cap;
  uint8_t *in;
  size_t in_len, in_cap;
  char id[64];
  char topic[256];
  uint16_t next_pid;
  bool inflight; /* QoS 1 publish awaiting PUBACK */
  uint16_t inflight_pid;
  uint64_t inflight_t;
};

struct opts {
  bool sub;
  bool proxy;
  bool check;            /* sub: per-publisher order check (--check) */
  unsigned listen_port;  /* proxy */
  char host[64];
  unsigned port;
  unsigned conns;
  double rate;
  int qos;
  double duration;
  double idle;
  const char *topic;
  const char *prefix;
  size_t payload_size;
};

/* sub --check: per publisher (the client id that begins the payload), the
 * seqs that arrived, as a bitmap.  An open-addressing table by client id. */
#define SEQ_MAX (1u << 28) /* a larger seq is taken for garbage */
struct seqrec {
  char id[64];
  uint64_t max, distinct;
  uint8_t *bits;
  size_t nbits;
};

static struct {
  struct seqrec *tab;
  size_t cap, used;
  uint64_t dups, out_of_order, unparsed, t_last_new;
  char dup_sample[8][80]; /* the first duplicates, "<client id> <seq>" */
} chk;

static size_t seq_slot(const struct seqrec *tab, size_t cap, const char *id, size_t n)
{
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (size_t i = 0; i < n; i++)
    h = (h ^ (uint8_t)id[i]) * 1099511628211ull;
  size_t i = (size_t)h & (cap - 1);
  while (tab[i].id[0] && (strlen(tab[i].id) != n || memcmp(tab[i].id, id, n) != 0))
    i = (i + 1) & (cap - 1);
  return i;
}

static struct seqrec *seq_find(const char *id, size_t n)
{
  if ((chk.used + 1) * 2 > chk.cap) {
    size_t cap = chk.cap ? chk.cap * 2 : 1024;
    struct seqrec *tab = calloc(cap, sizeof *tab);
    if (!tab)
      return NULL;
    for (size_t k = 0; k < chk.cap; k++)
      if (chk.tab[k].id[0])
        tab[seq_slot(tab, cap, chk.tab[k].id, strlen(chk.tab[k].id))] = chk.tab[k];
    free(chk.tab);
    chk.tab = tab;
    chk.cap = cap;
  }
  struct seqrec *r = &chk.tab[seq_slot(chk.tab, chk.cap, id, n)];
  if (!r->id[0]) {
    memcpy(r->id, id, n);
    r->id[n] = '\0';
    chk.used++;
  }
  return r;
}

/* Notes one payload "<client id> <seq> ...".  Returns -1 when out of memory. */
static int seq_note(const uint8_t *pl, size_t n, uint64_t t)
{
  size_t i = 0, j, digits = 0;
  uint64_t seq = 0;
  while (i < n && pl[i] != ' ' && pl[i] != '\0')
    i++;
  for (j = i + 1; j < n && pl[j] >= '0' && pl[j] <= '9' && digits < 10; j++, digits++)
    seq = seq * 10 + (uint64_t)(pl[j] - '0');
  if (i == 0 || i >= sizeof chk.tab[0].id || i >= n || digits == 0 || j >= n || pl[j] != ' ' ||
      seq >= SEQ_MAX) {
    chk.unparsed++;
    return 0;
  }
  struct seqrec *r = seq_find((const char *)pl, i);
  if (!r)
    return -1;
  if (seq >= r->nbits) {
    size_t nb = r->nbits ? r->nbits : 256;
    while (nb <= seq)
      nb *= 2;
    uint8_t *b = realloc(r->bits, nb / 8);
    if (!b)
      return -1;
    memset(b + r->nbits / 8, 0, (nb - r->nbits) / 8);
    r->bits = b;
    r->nbits = nb;
  }
  uint8_t bit = (uint8_t)(1u << (seq % 8));
  if (r->bits[seq / 8] & bit) {
    if (chk.dups < 8) {
      char *d = chk.dup_sample[chk.dups];
      snprintf(d, sizeof chk.dup_sample[0], "%s %" PRIu64, r->id, seq);
      for (; *d; d++)
        if (*d == '"' || *d == '\\' || (unsigned char)*d < 0x20 || (unsigned char)*d > 0x7E)
          *d = '?'; /* it goes into the JSON line as it is */
    }
    chk.dups++; /* a re-delivery (at least once) */
    return 0;
  }
  r->bits[seq / 8] |= bit;
  r->distinct++;
  if (seq < r->max)
    chk.out_of_order++; /* a first arrival behind a later seq of its publisher */
  else
    r->max = seq;
  chk.t_last_new = t;
  return 0;
}

static double mono_s(uint64_t ns)
{
  return (double)ns / 1e9;
}

/* The --check part of the sub's JSON line. */
static void seq_report(void)
{
  uint64_t distinct = 0, holes = 0, holed = 0;
  const char *first_holed = "";
  for (size_t k = 0; k < chk.cap; k++) {
    const struct seqrec *r = &chk.tab[k];
    if (!r->id[0])
      continue;
    /* Seqs 1..max that never came (leafsim numbers from 1; a seq 0 counts
     * as an arrival but fills no hole). */
    uint64_t have = r->distinct - ((r->bits[0] & 1u) ? 1u : 0u);
    distinct += r->distinct;
    if (r->max > have) {
      holes += r->max - have;
      if (holed++ == 0)
        first_holed = r->id;
    }
  }
  printf(",\"check\":{\"publishers\":%zu,\"distinct\":%" PRIu64 ",\"duplicates\":%" PRIu64
         ",\"out_of_order\":%" PRIu64 ",\"holes\":%" PRIu64 ",\"publishers_with_holes\":%" PRIu64
         ",\"first_with_holes\":\"%s\",\"unparsed\":%" PRIu64 ",\"t_last_new\":%.6f}",
         chk.used, distinct, chk.dups, chk.out_of_order, holes, holed, first_holed, chk.unparsed,
         mono_s(chk.t_last_new));
  printf(",\"duplicates_sample\":[");
  for (uint64_t k = 0; k < chk.dups && k < 8; k++)
    printf("%s\"%s\"", k ? "," : "", chk.dup_sample[k]);
  printf("]");
}

struct stats {
  uint64_t connacks, sent, acked, received, errors;
  uint64_t t_first_rx, t_last_rx;
  struct hist lat;
};

static int out_reserve(struct conn *c, size_t more)
{
  if (c->out_len + more <= c->out_cap)
    return 0;
  size_t cap = c->out_cap ? c->out_cap : 4096;
  while (cap < c->out_len + more)
    cap *= 2;
  uint8_t *p = realloc(c->out, cap);
  if (!p)
    return -1;
  c->out = p;
  c->out_cap = cap;
  return 0;
}

/* Appends one packet: fixed-header byte, Remaining Length, then body parts. */
static int put_packet(struct conn *c, uint8_t first, const uint8_t *a, size_t alen,
                      const uint8_t *b, size_t blen)
{
  size_t rl = alen + blen;
  uint8_t hdr[5];
  size_t hl = 0;
  hdr[hl++] = first;
  do {
    uint8_t d = rl % 128;
    rl /= 128;
    hdr[hl++] = (uint8_t)(d | (rl ? 0x80 : 0));
  } while (rl && hl < 5);
  if (out_reserve(c, hl + alen + blen) != 0)
    return -1;
  memcpy(c->out + c->out_len, hdr, hl);
  c->out_len += hl;
  if (alen)
    memcpy(c->out + c->out_len, a, alen);
  c->out_len += alen;
  if (blen)
    memcpy(c->out + c->out_len, b, blen);
  c->out_len += blen;
  return 0;
}

static size_t put_str(uint8_t *p, const char *s)
{
  size_t n = strlen(s);
  p[0] = (uint8_t)(n >> 8);
  p[1] = (uint8_t)n;
  memcpy(p + 2, s, n);
  return n + 2;
}

static int send_connect(struct conn *c)
{
  uint8_t v[128];
  size_t n = put_str(v, "MQTT");
  v[n++] = 4;    /* protocol level 3.1.1 */
  v[n++] = 0x02; /* clean session */
  v[n++] = 0;    /* keep-alive 0: runs are short */
  v[n++] = 0;
  n += put_str(v + n, c->id);
  return put_packet(c, 0x10, v, n, NULL, 0);
}

static int send_subscribe(struct conn *c, const char *filter, int qos)
{
  uint8_t v[300];
  size_t n = 0;
  if (strlen(filter) > 256)
    return -1;
  v[n++] = 0;
  v[n++] = 1; /* packet id */
  n += put_str(v + n, filter);
  v[n++] = (uint8_t)qos;
  return put_packet(c, 0x82, v, n, NULL, 0);
}

static int send_publish(struct conn *c, int qos, const uint8_t *payload, size_t plen)
{
  uint8_t v[300];
  size_t n = put_str(v, c->topic);
  if (qos > 0) {
    if (++c->next_pid == 0)
      c->next_pid = 1;
    v[n++] = (uint8_t)(c->next_pid >> 8);
    v[n++] = (uint8_t)c->next_pid;
    c->inflight = true;
    c->inflight_pid = c->next_pid;
    c->inflight_t = now_ns();
  }
  return put_packet(c, (uint8_t)(0x30 | (qos << 1)), v, n, payload, plen);
}

static int flush_out(int ep, struct conn *c)
{
  size_t off = 0;
  while (off < c->out_len) {
    ssize_t w = send(c->fd, c->out + off, c->out_len - off, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        break;
      return -1;
    }
    off += (size_t)w;
  }
  memmove(c->out, c->out + off, c->out_len - off);
  c->out_len -= off;
  bool want = c->out_len > 0;
  if (want != c->want_out) {
    struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0u), .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = want;
  }
  return 0;
}

/* Handles every whole packet in the input buffer. */
static int handle_input(struct conn *c, const struct opts *o, struct stats *st)
{
  size_t pos = 0;
  while (pos < c->in_len) {
    size_t rl = 0, mult = 1, i = pos + 1;
    bool whole = false;
    while (i < c->in_len && i - pos <= 4) {
      rl += (size_t)(c->in[i] & 0x7F) * mult;
      mult *= 128;
      if (!(c->in[i++] & 0x80)) {
        whole = true;
        break;
      }
    }
    if (!whole) {
      if (i - pos > 4)
        return -1; /* a Remaining Length of more than 4 bytes */
      break;
    }
    if (c->in_len - i < rl)
      break;
    const uint8_t *p = c->in + i;
    uint8_t type = c->in[pos] >> 4;
    switch (type) {
    case 2: /* CONNACK */
      if (rl != 2 || p[1] != 0)
        return -1;
      c->connected = true;
      st->connacks++;
      break;
    case 3: { /* PUBLISH */
      int q = (c->in[pos] >> 1) & 3;
      uint64_t t = now_ns();
      if (st->t_first_rx == 0)
        st->t_first_rx = t;
      st->t_last_rx = t;
      st->received++;
      if (o->check && rl >= 2) {
        size_t off = 2 + (((size_t)p[0] << 8) | p[1]) + (q > 0 ? 2u : 0u);
        if (off <= rl && seq_note(p + off, rl - off, t) != 0)
          return -1;
      }
      if (q > 0 && rl >= 2) {
        size_t tl = ((size_t)p[0] << 8) | p[1];
        if (tl + 4 <= rl) {
          uint8_t ack[2] = {p[2 + tl], p[3 + tl]};
          if (put_packet(c, q == 1 ? 0x40 : 0x50, ack, 2, NULL, 0) != 0)
            return -1;
        }
      }
      break;
    }
    case 4: /* PUBACK */
      if (rl == 2 && c->inflight && (((uint16_t)p[0] << 8) | p[1]) == c->inflight_pid) {
        uint64_t us = (now_ns() - c->inflight_t) / 1000u;
        struct hist *h = &st->lat;
        h->count[hist_index(us)]++;
        h->n++;
        if (us > h->max)
          h->max = us;
        c->inflight = false;
        st->acked++;
        ready_push(c->idx);
      }
      break;
    case 9:  /* SUBACK */
    case 13: /* PINGRESP */
      break;
    default:
      st->errors++;
      break;
    }
    pos = i + rl;
  }
  memmove(c->in, c->in + pos, c->in_len - pos);
  c->in_len -= pos;
  return 0;
}

static int read_in(struct conn *c, const struct opts *o, struct stats *st)
{
  for (;;) {
    if (c->in_cap - c->in_len < 16384) {
      size_t cap = c->in_cap ? c->in_cap * 2 : 65536;
      if (cap > IN_MAX) {
        fprintf(stderr, "mqttload: %s: input buffer overflow\n", c->id);
        return -1;
      }
      uint8_t *p = realloc(c->in, cap);
      if (!p)
        return -1;
      c->in = p;
      c->in_cap = cap;
    }
    ssize_t r = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
    if (r == 0) {
      fprintf(stderr, "mqttload: %s: closed by the broker\n", c->id);
      return -1;
    }
    if (r < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        return 0;
      return -1;
    }
    c->in_len += (size_t)r;
    if (handle_input(c, o, st) != 0) {
      fprintf(stderr, "mqttload: %s: malformed or refused packet\n", c->id);
      return -1;
    }
  }
}

static int open_conn(int ep, struct conn *c, const struct opts *o)
{
  struct sockaddr_in a;
  int one = 1;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)o->port);
  if (inet_pton(AF_INET, o->host, &a.sin_addr) != 1)
    return -1;
  c->fd = socket(AF_INET, SOCK_STREAM, 0);
  if (c->fd < 0)
    return -1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(c->fd, (struct sockaddr *)&a, sizeof a) != 0)
    return -1;
  fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
  if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) != 0)
    return -1;
  return send_connect(c);
}

static void expand(const char *fmt, const char *id, char *out, size_t cap)
{
  size_t n = 0;
  for (const char *p = fmt; *p && n + 1 < cap; p++) {
    if (p[0] == '%' && p[1] == 's') {
      size_t l = strlen(id);
      if (n + l >= cap)
        break;
      memcpy(out + n, id, l);
      n += l;
      p++;
    } else {
      out[n++] = *p;
    }
  }
  out[n] = '\0';
}

static const char usage[] =
    "usage: mqttload pub|sub [options]   (MQTT 3.1.1, plain TCP, IPv4)\n"
    "  --host IP           broker address (default 127.0.0.1)\n"
    "  --port P            broker port (default 1883)\n"
    "  -n, --conns N       pub: connections (default 1)\n"
    "  --rate R            pub: messages/s over all connections (default 0 = max)\n"
    "  --qos Q             pub: 0 or 1 (one in flight per connection); sub: granted QoS\n"
    "  --topic T           pub: topic, %s = client id (default bench/%s); sub: filter\n"
    "  --prefix STR        client id prefix (default mqttload- / mqttload-sub-)\n"
    "  --payload-size B    pub: payload bytes (default 32)\n"
    "  --duration S        run S seconds (default 10; 0 = until SIGINT/SIGTERM)\n"
    "  --idle S            sub: also stop S s after the last message (default 0 = no)\n"
    "  --check             sub: check each publisher's order (payload \"<id> <seq> ...\")\n"
    "usage: mqttload proxy --port P --listen-port L [--host IP]\n"
    "  a TCP proxy on 127.0.0.1:L to the broker; SIGUSR1 cuts it, SIGUSR2 restores it;\n"
    "  several may listen on L (SO_REUSEPORT) when one has too few descriptors\n";

static int parse(int argc, char **argv, struct opts *o)
{
  static const struct option lo[] = {
      {"host", required_argument, NULL, 'H'},  {"port", required_argument, NULL, 'p'},
      {"conns", required_argument, NULL, 'n'}, {"rate", required_argument, NULL, 'r'},
      {"qos", required_argument, NULL, 'q'},   {"topic", required_argument, NULL, 't'},
      {"prefix", required_argument, NULL, 'P'}, {"payload-size", required_argument, NULL, 's'},
      {"duration", required_argument, NULL, 'd'}, {"idle", required_argument, NULL, 'i'},
      {"check", no_argument, NULL, 'c'},       {"listen-port", required_argument, NULL, 'L'},
      {"help", no_argument, NULL, 'h'},        {NULL, 0, NULL, 0}};
  int ch;
  if (argc < 2 || (strcmp(argv[1], "pub") != 0 && strcmp(argv[1], "sub") != 0 &&
                    strcmp(argv[1], "proxy") != 0)) {
    fputs(usage, argc >= 2 && strcmp(argv[1], "--help") == 0 ? stdout : stderr);
    return argc >= 2 && strcmp(argv[1], "--help") == 0 ? 1 : -1;
  }
  *o = (struct opts){.port = 1883, .conns = 1, .duration = 10, .topic = "bench/%s",
                     .prefix = "mqttload-", .payload_size = 32};
  snprintf(o->host, sizeof o->host, "127.0.0.1");
  o->sub = strcmp(argv[1], "sub") == 0;
  o->proxy = strcmp(argv[1], "proxy") == 0;
  optind = 2;
  while ((ch = getopt_long(argc, argv, "n:h", lo, NULL)) != -1) {
    switch (ch) {
    case 'H':
      snprintf(o->host, sizeof o->host, "%s", optarg);
      break;
    case 'p':
      o->port = (unsigned)strtoul(optarg, NULL, 10);
      break;
    case 'n':
      o->conns = (unsigned)strtoul(optarg, NULL, 10);
      break;
    case 'r':
      o->rate = strtod(optarg, NULL);
      break;
    case 'q':
      o->qos = atoi(optarg);
      break;
    case 't':
      o->topic = optarg;
      break;
    case 'P':
      o->prefix = optarg;
      break;
    case 's':
      o->payload_size = strtoul(optarg, NULL, 10);
      break;
    case 'd':
      o->duration = strtod(optarg, NULL);
      break;
    case 'i':
      o->idle = strtod(optarg, NULL);
      break;
    case 'c':
      o->check = true;
      break;
    case 'L':
      o->listen_port = (unsigned)strtoul(optarg, NULL, 10);
      break;
    case 'h':
      fputs(usage, stdout);
      return 1;
    default:
      fputs(usage, stderr);
      return -1;
    }
  }
  if (o->port == 0 || o->port > 65535 || o->conns == 0 || o->rate < 0 || o->qos < 0 ||
      o->qos > 1 || o->payload_size > 65536 || o->duration < 0) {
    fputs("mqttload: bad option value\n", stderr);
    return -1;
  }
  if (o->proxy && (o->listen_port == 0 || o->listen_port > 65535)) {
    fputs("mqttload: proxy needs --listen-port 1..65535\n", stderr);
    return -1;
  }
  if (o->sub) {
    o->conns = 1;
    if (strcmp(o->prefix, "mqttload-") == 0)
      o->prefix = "mqttload-sub-"; /* never take over a publisher's client id */
  }
  return 0;
}

/* The sub's JSON line (at exit, and at SIGUSR1 with --check). */
static void sub_report(const struct opts *o, const struct stats *st)
{
  double span = st->t_last_rx > st->t_first_rx ? (double)(st->t_last_rx - st->t_first_rx) / 1e9 : 0;
  printf("{\"mode\":\"sub\",\"received\":%" PRIu64 ",\"span_s\":%.3f,\"rate\":%.1f",
         st->received, span, span > 0 ? (double)st->received / span : 0.0);
  if (o->check) {
    printf(",\"t_first_rx\":%.6f,\"t_last_rx\":%.6f", mono_s(st->t_first_rx),
           mono_s(st->t_last_rx));
    seq_report();
  }
  printf("}\n");
  fflush(stdout);
}

/* ------------------------------------------------------------------------ */
/* proxy: a cut-able uplink                                                  */
/* ------------------------------------------------------------------------ */

/* One forwarded connection: fd[0] the client's (the gateway), fd[1] the
 * broker's.  What was read from fd[d] and could not be written to fd[1 - d]
 * yet waits in pend[d]; fd[d] is not read again until it is gone. */
struct px_pair;
struct px_tag {
  struct px_pair *p;
  int side;
};
struct px_pair {
  int fd[2];
  uint32_t ev[2]; /* the epoll events registered */
  bool connecting; /* the broker side's connect() is in progress */
  bool dead;
  uint8_t *pend[2];
  size_t pend_len[2], pend_off[2];
  struct px_tag tag[2];
  struct px_pair *next;
};

static void px_signal(int sig)
{
  if (sig == SIGUSR1)
    cut_flag = 1;
  else if (sig == SIGUSR2)
    restore_flag = 1;
  else
    stop_flag = 1;
}

static void px_update(int ep, struct px_pair *p)
{
  for (int s = 0; s < 2; s++) {
    uint32_t want = 0;
    if (!p->connecting && p->pend_len[s] == 0)
      want |= EPOLLIN;
    if ((s == 1 && p->connecting) || p->pend_len[1 - s] > 0)
      want |= EPOLLOUT;
    if (want != p->ev[s]) {
      struct epoll_event e = {.events = want, .data.ptr = &p->tag[s]};
      epoll_ctl(ep, EPOLL_CTL_MOD, p->fd[s], &e);
      p->ev[s] = want;
    }
  }
}

static void px_kill(int ep, struct px_pair *p)
{
  if (p->dead)
    return;
  p->dead = true;
  for (int s = 0; s < 2; s++) {
    epoll_ctl(ep, EPOLL_CTL_DEL, p->fd[s], NULL);
    close(p->fd[s]);
    free(p->pend[s]);
    p->pend[s] = NULL;
  }
}

/* Writes pend[d] to fd[1 - d]; -1 when the connection broke. */
static int px_flush(struct px_pair *p, int d)
{
  while (p->pend_off[d] < p->pend_len[d]) {
    ssize_t w = send(p->fd[1 - d], p->pend[d] + p->pend_off[d], p->pend_len[d] - p->pend_off[d],
                     MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
    }
    p->pend_off[d] += (size_t)w;
  }
  p->pend_len[d] = p->pend_off[d] = 0;
  return 0;
}

/* Reads fd[d] and forwards it to fd[1 - d]; -1 when either end closed. */
static int px_forward(struct px_pair *p, int d)
{
  static uint8_t buf[65536];
  for (;;) {
    ssize_t r = recv(p->fd[d], buf, sizeof buf, 0);
    if (r == 0)
      return -1;
    if (r < 0) {
      if (errno == EINTR)
        continue;
      return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
    }
    size_t off = 0;
    while (off < (size_t)r) {
      ssize_t w = send(p->fd[1 - d], buf + off, (size_t)r - off, MSG_NOSIGNAL);
      if (w < 0 && errno == EINTR)
        continue;
      if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
        return -1;
      if (w < 0)
        break;
      off += (size_t)w;
    }
    if (off < (size_t)r) { /* the other end is full: keep the rest, stop reading */
      p->pend[d] = malloc((size_t)r - off);
      if (!p->pend[d])
        return -1;
      memcpy(p->pend[d], buf + off, (size_t)r - off);
      p->pend_len[d] = (size_t)r - off;
      p->pend_off[d] = 0;
      return 0;
    }
  }
}

static int proxy_main(const struct opts *o)
{
  struct sockaddr_in la, ba;
  int one = 1;
  signal(SIGINT, px_signal);
  signal(SIGTERM, px_signal);
  signal(SIGUSR1, px_signal);
  signal(SIGUSR2, px_signal);
  signal(SIGPIPE, SIG_IGN);
  memset(&la, 0, sizeof la);
  la.sin_family = AF_INET;
  la.sin_port = htons((uint16_t)o->listen_port);
  la.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  memset(&ba, 0, sizeof ba);
  ba.sin_family = AF_INET;
  ba.sin_port = htons((uint16_t)o->port);
  if (inet_pton(AF_INET, o->host, &ba.sin_addr) != 1)
    return 2;
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  int ep = epoll_create1(0);
  if (lfd < 0 || ep < 0)
    return 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  /* Several proxies may share the port (the kernel spreads the connections
   * over them): one takes two descriptors per connection. */
  setsockopt(lfd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  if (bind(lfd, (struct sockaddr *)&la, sizeof la) != 0 || listen(lfd, 4096) != 0) {
    fprintf(stderr, "mqttload: proxy: listen on %u: %s\n", o->listen_port, strerror(errno));
    return 1;
  }
  struct epoll_event le = {.events = EPOLLIN, .data.ptr = NULL};
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &le);
  fprintf(stderr, "mqttload: proxy listening on 127.0.0.1:%u for %s:%u\n", o->listen_port,
          o->host, o->port);

  struct px_pair *pairs = NULL;
  bool up = true;
  uint64_t accepted = 0, refused = 0, cuts = 0, restores = 0, cut_closed = 0, failed = 0;
  size_t live = 0, max_live = 0;
  double *times = NULL;
  size_t ntimes = 0, cap_times = 0;
  struct epoll_event evs[256];
  while (!stop_flag) {
    if (cut_flag) {
      cut_flag = 0;
      up = false;
      cuts++;
      for (struct px_pair *p = pairs; p; p = p->next)
        if (!p->dead) {
          px_kill(ep, p);
          cut_closed++;
        }
    }
    if (restore_flag) {
      restore_flag = 0;
      up = true;
      restores++;
    }
    int n = epoll_wait(ep, evs, 256, 50);
    for (int k = 0; k < n; k++) {
      struct px_tag *tg = evs[k].data.ptr;
      if (!tg) { /* the listening socket */
        for (;;) {
          int c = accept(lfd, NULL, NULL);
          if (c < 0)
            break;
          fcntl(c, F_SETFL, fcntl(c, F_GETFL) | O_NONBLOCK);
          if (!up) { /* the line is down: accepted and closed at once */
            close(c);
            refused++;
            continue;
          }
          struct px_pair *p = calloc(1, sizeof *p);
          int b = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
          if (!p || b < 0) {
            close(c);
            if (b >= 0)
              close(b);
            free(p);
            failed++;
            continue;
          }
          setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          setsockopt(b, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          p->fd[0] = c;
          p->fd[1] = b;
          p->tag[0] = (struct px_tag){p, 0};
          p->tag[1] = (struct px_tag){p, 1};
          int cr = connect(b, (struct sockaddr *)&ba, sizeof ba);
          p->connecting = cr != 0;
          if (cr != 0 && errno != EINPROGRESS) {
            close(c);
            close(b);
            free(p);
            failed++;
            continue;
          }
          for (int s = 0; s < 2; s++) {
            struct epoll_event e = {.events = 0, .data.ptr = &p->tag[s]};
            epoll_ctl(ep, EPOLL_CTL_ADD, p->fd[s], &e);
          }
          p->next = pairs;
          pairs = p;
          px_update(ep, p);
          accepted++;
          if (++live > max_live)
            max_live = live;
          if (ntimes == cap_times) {
            size_t nc = cap_times ? cap_times * 2 : 4096;
            double *t = realloc(times, nc * sizeof *t);
            if (t) {
              times = t;
              cap_times = nc;
            }
          }
          if (ntimes < cap_times)
            times[ntimes++] = mono_s(now_ns());
        }
        continue;
      }
      struct px_pair *p = tg->p;
      int s = tg->side;
      if (p->dead)
        continue;
      int bad = 0;
      if (s == 1 && p->connecting && (evs[k].events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(p->fd[1], SOL_SOCKET, SO_ERROR, &err, &el);
        if (err != 0)
          bad = 1;
        p->connecting = false;
      } else {
        if ((evs[k].events & EPOLLOUT) && px_flush(p, 1 - s) != 0)
          bad = 1;
        if (!bad && (evs[k].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) && !p->connecting &&
            p->pend_len[s] == 0 && px_forward(p, s) != 0)
          bad = 1;
      }
      if (bad) {
        px_kill(ep, p);
      } else {
        px_update(ep, p);
      }
    }
    /* Free what died in this batch (no event of theirs is pending now). */
    for (struct px_pair **pp = &pairs; *pp;) {
      if ((*pp)->dead) {
        struct px_pair *d = *pp;
        *pp = d->next;
        free(d);
        live--;
      } else {
        pp = &(*pp)->next;
      }
    }
  }
  printf("{\"mode\":\"proxy\",\"accepted\":%" PRIu64 ",\"refused\":%" PRIu64 ",\"failed\":%" PRIu64
         ",\"cuts\":%" PRIu64 ",\"restores\":%" PRIu64 ",\"closed_by_cuts\":%" PRIu64
         ",\"max_live\":%zu,\"accept_times\":[",
         accepted, refused, failed, cuts, restores, cut_closed, max_live);
  for (size_t i = 0; i < ntimes; i++)
    printf("%s%.6f", i ? "," : "", times[i]);
  printf("]}\n");
  for (struct px_pair *p = pairs; p;) {
    struct px_pair *nx = p->next;
    px_kill(ep, p);
    free(p);
    p = nx;
  }
  free(times);
  close(lfd);
  close(ep);
  return 0;
}

int main(int argc, char **argv)
{
  struct opts o;
  struct stats *st;
  struct conn *cs;
  uint8_t *payload;
  int rc = parse(argc, argv, &o);
  if (rc != 0)
    return rc > 0 ? 0 : 2;

  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  if (o.proxy)
    return proxy_main(&o);
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  if (o.sub && o.check)
    signal(SIGUSR1, on_signal); /* a report now, and carry on */
  signal(SIGPIPE, SIG_IGN);

  st = calloc(1, sizeof *st);
  cs = calloc(o.conns, sizeof *cs);
  payload = malloc(o.payload_size + 1);
  int ep = epoll_create1(0);
  ready_cap = o.conns;
  ready_ring = calloc(o.conns, sizeof *ready_ring);
  if (!st || !cs || !payload || !ready_ring || ep < 0) {
    fputs("mqttload: out of memory\n", stderr);
    return 1;
  }
  for (size_t i = 0; i < o.payload_size; i++)
    payload[i] = (uint8_t)('a' + i % 26);

  for (unsigned i = 0; i < o.conns; i++) {
    struct conn *c = &cs[i];
    c->idx = i;
    ready_push(i);
    snprintf(c->id, sizeof c->id, "%s%u", o.prefix, i);
    expand(o.topic, c->id, c->topic, sizeof c->topic);
    if (open_conn(ep, c, &o) != 0) {
      fprintf(stderr, "mqttload: connection %u to %s:%u: %s\n", i, o.host, o.port,
              strerror(errno));
      return 1;
    }
    if (o.sub && send_subscribe(c, o.topic, o.qos) != 0)
      return 1;
    flush_out(ep, c);
  }

  /* Wait until every connection has its CONNACK, then start the clock. */
  struct epoll_event evs[256];
  uint64_t t_conn = now_ns();
  while (st->connacks < o.conns && !stop_flag && now_ns() - t_conn < 10000000000ull) {
    int n = epoll_wait(ep, evs, 256, 100);
    for (int k = 0; k < n; k++) {
      struct conn *c = evs[k].data.ptr;
      if (read_in(c, &o, st) != 0) {
        fprintf(stderr, "mqttload: connection %s lost while connecting\n", c->id);
        return 1;
      }
    }
  }
  if (st->connacks < o.conns) {
    fprintf(stderr, "mqttload: only %" PRIu64 " of %u connections up\n", st->connacks, o.conns);
    return 1;
  }
  if (o.sub) /* tell the driver we are subscribed */
    fprintf(stderr, "mqttload: subscribed to %s\n", o.topic);

  uint64_t t0 = now_ns();
  uint64_t end = o.duration > 0 ? t0 + (uint64_t)(o.duration * 1e9) : UINT64_MAX;
  unsigned rr = 0;
  uint64_t lost = 0;
  bool idle = false;
  while (!stop_flag && now_ns() < end) {
    uint64_t t = now_ns();
    if (report_flag) {
      report_flag = 0;
      sub_report(&o, st);
    }
    if (o.sub && o.idle > 0 && st->t_last_rx && t - st->t_last_rx > (uint64_t)(o.idle * 1e9))
      break;
    if (!o.sub) {
      /* Offer what is due (or, at rate 0, fill every connection's buffer),
       * round robin over connections that can take more. */
      uint64_t due = o.rate > 0 ? (uint64_t)((double)(t - t0) * o.rate / 1e9) + 1 : UINT64_MAX;
      unsigned blocked = 0;
      while (o.qos == 1 && st->sent < due && ready_count > 0) {
        struct conn *c = &cs[ready_pop()];
        if (send_publish(c, o.qos, payload, o.payload_size) != 0)
          return 1;
        st->sent++;
        if (flush_out(ep, c) != 0)
          lost++;
      }
      while (o.qos == 0 && st->sent < due && blocked < o.conns) {
        struct conn *c = &cs[rr];
        rr = (rr + 1) % o.conns;
        if ((o.qos == 1 && c->inflight) || c->out_len >= OUT_HIGH) {
          blocked++;
          continue;
        }
        blocked = 0;
        if (send_publish(c, o.qos, payload, o.payload_size) != 0)
          return 1;
        st->sent++;
        if (c->out_len >= OUT_HIGH / 2 && flush_out(ep, c) != 0)
          lost++;
      }
      for (unsigned i = 0; o.qos == 0 && i < o.conns; i++)
        if (cs[i].out_len && flush_out(ep, &cs[i]) != 0)
          lost++;
      idle = o.qos == 1 ? ready_count == 0 : blocked >= o.conns;
    }
    /* Block in epoll_wait when there is nothing to send (QoS 1: all in
     * flight; QoS 0: every buffer full), rather than spin and take the CPU
     * that the broker needs. */
    int timeout = o.sub ? 50 : (o.rate > 0 ? 1 : (idle ? 100 : 0));
    int n = epoll_wait(ep, evs, 256, timeout);
    for (int k = 0; k < n; k++) {
      struct conn *c = evs[k].data.ptr;
      if ((evs[k].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) && read_in(c, &o, st) != 0) {
        fprintf(stderr, "mqttload: connection %s lost\n", c->id);
        return 1;
      }
      if (c->out_len && flush_out(ep, c) != 0)
        lost++;
    }
  }
  uint64_t t1 = now_ns();
  /* QoS 1: give the last PUBACKs a moment. */
  uint64_t grace = now_ns() + 1000000000ull;
  while (!o.sub && o.qos == 1 && st->acked < st->sent && now_ns() < grace) {
    int n = epoll_wait(ep, evs, 256, 10);
    for (int k = 0; k < n; k++)
      if (read_in(evs[k].data.ptr, &o, st) != 0)
        break;
  }
  double secs = (double)(t1 - t0) / 1e9;
  if (o.sub) {
    sub_report(&o, st);
  } else {
    printf("{\"mode\":\"pub\",\"conns\":%u,\"qos\":%d,\"sent\":%" PRIu64 ",\"acked\":%" PRIu64
           ",\"elapsed_s\":%.3f,\"rate\":%.1f,\"write_errors\":%" PRIu64 ",\"errors\":%" PRIu64
           ",\"latency_us\":{\"count\":%" PRIu64 ",\"p50\":%" PRIu64 ",\"p90\":%" PRIu64
           ",\"p99\":%" PRIu64 ",\"max\":%" PRIu64 "}}\n",
           o.conns, o.qos, st->sent, st->acked, secs, secs > 0 ? (double)st->sent / secs : 0.0,
           lost, st->errors, st->lat.n, hist_pct(&st->lat, 50), hist_pct(&st->lat, 90),
           hist_pct(&st->lat, 99), st->lat.max);
  }
  for (unsigned i = 0; i < o.conns; i++) {
    /* A clean DISCONNECT, so the broker logs no protocol error. */
    static const uint8_t bye[2] = {0xE0, 0x00};
    if (cs[i].fd > 0) {
      (void)send(cs[i].fd, bye, 2, MSG_NOSIGNAL);
      close(cs[i].fd);
    }
    free(cs[i].in);
    free(cs[i].out);
  }
  close(ep);
  free(ready_ring);
  free(cs);
  free(st);
  free(payload);
  return 0;
}
