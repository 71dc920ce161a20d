/*
 * udp.c - the MQTT-SN UDP socket (udp.h).
 *
 * Sends are batched: udp_send copies the datagram into the socket's batch
 * and the batch goes out in one sendmmsg(2) at the end of the loop turn's
 * I/O callbacks (a uv_check), before the loop next waits (a uv_prepare:
 * what timers sent), when it is full, or on udp_flush.  A loop turn that
 * answers many leaves (a group commit's PUBACKs, a recvmmsg batch of
 * publishes) then costs one system call instead of one a datagram.  A
 * datagram waits at most for the rest of the callbacks of its loop turn.
 * Order is kept: what the kernel does not take (EAGAIN) goes, in order, to
 * libuv's send queue, and while that queue holds anything every new
 * datagram goes behind it.
 */
#define _GNU_SOURCE /* sendmmsg */
#include "udp.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "log.h"

/* With UV_UDP_RECVMMSG libuv cuts the buffer it is given into slots of its
 * own fixed size, 64 KiB (UV__UDP_DGRAM_MAXSIZE in libuv's src/unix/udp.c:
 * the largest UDP payload), and reads at most 20 of them in one recvmmsg(2).
 * A smaller buffer reads one datagram a system call.  So the buffer is 20
 * slots: 1.25 MiB of address space, of which only the pages the datagrams
 * land on (the first of each slot) are ever resident. */
#define RECV_SLOT (64u * 1024u)
#define RECV_SLOTS 20u
/* The largest datagram taken from a LAN peer: > any MQTT-SN datagram on a
 * LAN (MTU-bound; a DTLS peer fragments its handshake to the MTU).  Longer
 * ones are dropped. */
#define LAN_MAX_DATAGRAM 2048
/* Datagrams queued when the kernel's send buffer is full: beyond these
 * bytes a send is refused (and counted by the caller), so a slow or
 * saturated interface cannot make the gateway hold unbounded copies. */
#define UDP_QUEUE_MAX_BYTES (4u * 1024u * 1024u)
/* The send batch: at most this many datagrams and bytes. */
#define SEND_BATCH 64
#define SEND_ARENA (64u * 1024u)

struct udp {
  uv_udp_t udp;
  uv_prepare_t prep;
  uv_check_t check;
  int handles;                 /* open handles; freed when the last closes */
  udp_recv_cb cb;
  void *ud;
  void (*done)(void *);
  void *done_ud;
  uint64_t *errors;            /* the owner's counter of failed sends, or NULL */
  struct udp *next_dirty;      /* the sockets with a batch waiting (udp_flush_all) */
  bool dirty;
  size_t queued_bytes;         /* copies waiting in libuv's send queue */
  uint32_t nsend;              /* datagrams in the batch */
  size_t arena_used;
  struct mmsghdr msgs[SEND_BATCH];
  struct iovec iov[SEND_BATCH];
  struct sockaddr_storage to[SEND_BATCH];
  uint8_t arena[SEND_ARENA];
  char *rbuf;                  /* RECV_SLOTS * RECV_SLOT bytes */
  struct udp_rx_stats rx;
};

/* The loop is single-threaded and so is every socket on it: one list. */
static struct udp *dirty_head;

static int queue_copy(struct udp *lan, const struct sockaddr *to, const uint8_t *data,
                      size_t len);
static void close_handles(struct udp *lan);
static void on_prepare(uv_prepare_t *h);
static void on_check(uv_check_t *h);

struct send_req {
  uv_udp_send_t req;
  struct udp *owner;
  size_t len;
  uint8_t data[];
};

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
  struct udp *lan = h->data;
  (void)suggested;
  /* One buffer: libuv hands it back in recv_cb before asking again. */
  buf->base = lan->rbuf;
  buf->len = RECV_SLOTS * RECV_SLOT;
}

static void recv_cb(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf, const struct sockaddr *addr,
                    unsigned flags)
{
  struct udp *lan = h->data;
  (void)buf;
  if (nread < 0) {
    static struct log_ratelimit rl;
    log_ratelimited(&rl, LOG_WARN, "lan", "receive error: %s", uv_strerror((int)nread));
    return;
  }
  if (addr == NULL) { /* nothing more to read, or the end of a recvmmsg batch */
    if (flags & UV_UDP_MMSG_FREE)
      lan->rx.reads++;
    return;
  }
  if (!(flags & UV_UDP_MMSG_CHUNK))
    lan->rx.reads++; /* read by recvmsg(2), one at a time */
  lan->rx.datagrams++;
  if ((flags & UV_UDP_PARTIAL) || nread > LAN_MAX_DATAGRAM) {
    static struct log_ratelimit rl;
    lan->rx.too_long++;
    log_ratelimited(&rl, LOG_WARN, "lan", "datagram longer than %d bytes dropped",
                    LAN_MAX_DATAGRAM);
    return;
  }
  lan->cb(lan->ud, addr, (const uint8_t *)buf->base, (size_t)nread);
}

int udp_open(uv_loop_t *loop, const char *bind_ip, uint16_t port, uint32_t rcvbuf,
             udp_recv_cb cb, void *ud, struct udp **out)
{
  struct sockaddr_storage ss;
  struct udp *lan;
  int family, rc;

  memset(&ss, 0, sizeof ss);
  if (uv_ip4_addr(bind_ip, port, (struct sockaddr_in *)&ss) == 0) {
    family = AF_INET;
  } else if (uv_ip6_addr(bind_ip, port, (struct sockaddr_in6 *)&ss) == 0) {
    family = AF_INET6;
  } else {
    return UV_EINVAL;
  }
  lan = calloc(1, sizeof *lan);
  if (!lan)
    return UV_ENOMEM;
  /* Not calloc: the pages no datagram lands on are never touched. */
  lan->rbuf = malloc(RECV_SLOTS * RECV_SLOT);
  if (!lan->rbuf) {
    free(lan);
    return UV_ENOMEM;
  }
  lan->cb = cb;
  lan->ud = ud;
  rc = uv_udp_init_ex(loop, &lan->udp, (unsigned)family | UV_UDP_RECVMMSG);
  if (rc != 0) {
    free(lan->rbuf);
    free(lan);
    return rc;
  }
  lan->udp.data = lan;
  lan->handles = 1;
  /* The batch's flushes.  Unreferenced: they must not keep the loop alive
   * once everything else has closed. */
  if ((rc = uv_prepare_init(loop, &lan->prep)) != 0)
    goto fail_close;
  lan->prep.data = lan;
  lan->handles++;
  if ((rc = uv_check_init(loop, &lan->check)) != 0)
    goto fail_close;
  lan->check.data = lan;
  lan->handles++;
  uv_prepare_start(&lan->prep, on_prepare);
  uv_check_start(&lan->check, on_check);
  uv_unref((uv_handle_t *)&lan->prep);
  uv_unref((uv_handle_t *)&lan->check);
  rc = uv_udp_bind(&lan->udp, (const struct sockaddr *)&ss, 0);
  if (rc != 0)
    goto fail_close;
  if (rcvbuf > 0) {
    int v = (int)rcvbuf;
    if (uv_recv_buffer_size((uv_handle_t *)&lan->udp, &v) != 0)
      LOGW("lan", "could not set the UDP receive buffer to %u bytes", rcvbuf);
  }
  rc = uv_udp_recv_start(&lan->udp, alloc_cb, recv_cb);
  if (rc != 0)
    goto fail_close;
  *out = lan;
  return 0;

fail_close:
  /* The handles were initialised: they must be closed before it is freed. */
  lan->done = NULL;
  close_handles(lan);
  return rc;
}

static void send_cb(uv_udp_send_t *req, int status)
{
  struct send_req *r = (struct send_req *)req;
  r->owner->queued_bytes -= r->len;
  if (status != 0 && status != UV_ECANCELED && r->owner->errors)
    (*r->owner->errors)++;
  if (status != 0) {
    static struct log_ratelimit rl;
    log_ratelimited(&rl, LOG_WARN, "lan", "send failed: %s", uv_strerror(status));
  }
  free(req);
}

/* A copy of the datagram behind the others in libuv's queue, within the
 * queue's bound. */
static int queue_copy(struct udp *lan, const struct sockaddr *to, const uint8_t *data,
                      size_t len)
{
  struct send_req *r;
  uv_buf_t b;
  int rc;

  if (lan->queued_bytes + len > UDP_QUEUE_MAX_BYTES)
    return UV_ENOBUFS;
  r = malloc(sizeof *r + len);
  if (!r)
    return UV_ENOMEM;
  memcpy(r->data, data, len);
  r->len = len;
  r->owner = lan;
  b = uv_buf_init((char *)r->data, (unsigned)len);
  rc = uv_udp_send(&r->req, &lan->udp, &b, 1, to, send_cb);
  if (rc != 0) {
    free(r);
    return rc;
  }
  lan->queued_bytes += len;
  return 0;
}

static void send_failed(struct udp *lan, int err)
{
  static struct log_ratelimit rl;
  if (lan->errors)
    (*lan->errors)++;
  log_ratelimited(&rl, LOG_WARN, "lan", "send failed: %s", uv_strerror(err));
}

/* Sends the batch: one sendmmsg for all of it where the kernel takes it.
 * A datagram the kernel refuses (an unreachable address) is counted and
 * skipped; from the first EAGAIN on, the rest goes to libuv's queue. */
static void flush(struct udp *lan)
{
  uv_os_fd_t fd;
  uint32_t i = 0;

  if (lan->nsend == 0)
    return;
  if (uv_fileno((const uv_handle_t *)&lan->udp, &fd) != 0) {
    for (; i < lan->nsend; i++)
      send_failed(lan, UV_EBADF);
  }
  while (i < lan->nsend) {
    int n = sendmmsg(fd, lan->msgs + i, lan->nsend - i, MSG_DONTWAIT);
    if (n > 0) {
      i += (uint32_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)) {
      /* The kernel's buffer is full: the rest waits in libuv's queue, in order. */
      for (; i < lan->nsend; i++) {
        int rc = queue_copy(lan, (const struct sockaddr *)&lan->to[i], lan->iov[i].iov_base,
                            lan->iov[i].iov_len);
        if (rc != 0)
          send_failed(lan, rc);
      }
      break;
    }
    /* This one datagram was refused: count it, go on with the next. */
    send_failed(lan, n < 0 ? uv_translate_sys_error(errno) : UV_EIO);
    i++;
  }
  lan->nsend = 0;
  lan->arena_used = 0;
}

void udp_flush(struct udp *lan)
{
  struct udp **pp;
  flush(lan);
  if (!lan->dirty)
    return;
  for (pp = &dirty_head; *pp; pp = &(*pp)->next_dirty)
    if (*pp == lan) {
      *pp = lan->next_dirty;
      break;
    }
  lan->dirty = false;
  lan->next_dirty = NULL;
}

void udp_flush_all(void)
{
  while (dirty_head) {
    struct udp *lan = dirty_head;
    dirty_head = lan->next_dirty;
    lan->next_dirty = NULL;
    lan->dirty = false;
    flush(lan);
  }
}

static void on_turn(uv_handle_t *h)
{
  udp_flush(h->data);
}

static void on_prepare(uv_prepare_t *h)
{
  on_turn((uv_handle_t *)h);
}

static void on_check(uv_check_t *h)
{
  on_turn((uv_handle_t *)h);
}

static socklen_t addr_len(const struct sockaddr *sa)
{
  return sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

int udp_send(struct udp *lan, const struct sockaddr *to, const uint8_t *data, size_t len)
{
  struct mmsghdr *mh;
  uint32_t i;

  if (to->sa_family != AF_INET && to->sa_family != AF_INET6)
    return UV_EINVAL;
  if (lan->queued_bytes > 0) {
    /* Earlier datagrams wait in libuv's queue: behind them, in order. */
    udp_flush(lan);
    return queue_copy(lan, to, data, len);
  }
  if (len > SEND_ARENA) {
    udp_flush(lan);
    return queue_copy(lan, to, data, len);
  }
  if (lan->nsend == SEND_BATCH || lan->arena_used + len > SEND_ARENA)
    flush(lan);
  if (lan->queued_bytes > 0) /* that flush met a full buffer */
    return queue_copy(lan, to, data, len);
  i = lan->nsend++;
  memcpy(lan->arena + lan->arena_used, data, len);
  lan->iov[i].iov_base = lan->arena + lan->arena_used;
  lan->iov[i].iov_len = len;
  lan->arena_used += len;
  memcpy(&lan->to[i], to, addr_len(to));
  mh = &lan->msgs[i];
  memset(mh, 0, sizeof *mh);
  mh->msg_hdr.msg_name = &lan->to[i];
  mh->msg_hdr.msg_namelen = addr_len(to);
  mh->msg_hdr.msg_iov = &lan->iov[i];
  mh->msg_hdr.msg_iovlen = 1;
  if (!lan->dirty) {
    lan->dirty = true;
    lan->next_dirty = dirty_head;
    dirty_head = lan;
  }
  return 0;
}

void udp_count_errors(struct udp *lan, uint64_t *counter)
{
  lan->errors = counter;
}

static void close_cb(uv_handle_t *h)
{
  struct udp *lan = h->data;
  void (*done)(void *);
  void *ud;

  if (--lan->handles > 0)
    return;
  done = lan->done;
  ud = lan->done_ud;
  free(lan->rbuf);
  free(lan);
  if (done)
    done(ud);
}

static void close_handles(struct udp *lan)
{
  int n = lan->handles;
  /* Out of the dirty list first: nothing may flush it once it is closing. */
  lan->nsend = 0;
  udp_flush(lan);
  uv_close((uv_handle_t *)&lan->udp, close_cb);
  if (n > 1)
    uv_close((uv_handle_t *)&lan->prep, close_cb);
  if (n > 2)
    uv_close((uv_handle_t *)&lan->check, close_cb);
}

void udp_close(struct udp *lan, void (*done)(void *), void *ud)
{
  lan->done = done;
  lan->done_ud = ud;
  uv_udp_recv_stop(&lan->udp);
  udp_flush(lan); /* what was sent before the close goes out */
  close_handles(lan);
}

void udp_get_rx_stats(const struct udp *lan, struct udp_rx_stats *out)
{
  *out = lan->rx;
}

int udp_port(const struct udp *lan)
{
  struct sockaddr_storage ss;
  int len = sizeof ss;
  if (uv_udp_getsockname(&lan->udp, (struct sockaddr *)&ss, &len) != 0)
    return -1;
  if (ss.ss_family == AF_INET)
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
  return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}
