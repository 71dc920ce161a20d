#include "udp.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

/* With UV_UDP_RECVMMSG libuv splits one large buffer into datagram-sized
 * slots and reads up to this many datagrams in one system call. */
#define LAN_SLOT 2048 /* > any MQTT-SN datagram we accept on a LAN (MTU-bound) */
#define LAN_BATCH 32
/* Datagrams queued when the kernel's send buffer is full: beyond these
 * bytes a send is refused (and counted by the caller), so a slow or
 * saturated interface cannot make the gateway hold unbounded copies. */
#define UDP_QUEUE_MAX_BYTES (4u * 1024u * 1024u)

struct udp {
  uv_udp_t udp;
  udp_recv_cb cb;
  void *ud;
  void (*done)(void *);
  void *done_ud;
  size_t queued_bytes;         /* copies waiting in libuv's send queue */
  char rbuf[LAN_SLOT * LAN_BATCH];
};

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
  buf->len = sizeof lan->rbuf;
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
  if (addr == NULL) /* nothing more to read, or the end of a recvmmsg batch */
    return;
  if (flags & UV_UDP_PARTIAL) {
    static struct log_ratelimit rl;
    log_ratelimited(&rl, LOG_WARN, "lan", "datagram larger than %d bytes truncated, dropped",
                    LAN_SLOT);
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
  lan->cb = cb;
  lan->ud = ud;
  rc = uv_udp_init_ex(loop, &lan->udp, (unsigned)family | UV_UDP_RECVMMSG);
  if (rc != 0) {
    free(lan);
    return rc;
  }
  lan->udp.data = lan;
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
  /* The handle was initialised: it must be closed before it is freed. */
  lan->done = NULL;
  uv_close((uv_handle_t *)&lan->udp, (uv_close_cb)free);
  return rc;
}

static void send_cb(uv_udp_send_t *req, int status)
{
  struct send_req *r = (struct send_req *)req;
  r->owner->queued_bytes -= r->len;
  if (status != 0) {
    static struct log_ratelimit rl;
    log_ratelimited(&rl, LOG_WARN, "lan", "send failed: %s", uv_strerror(status));
  }
  free(req);
}

int udp_send(struct udp *lan, const struct sockaddr *to, const uint8_t *data, size_t len)
{
  uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
  struct send_req *r;
  int rc;

  rc = uv_udp_try_send(&lan->udp, &b, 1, to);
  if (rc >= 0)
    return 0;
  if (rc != UV_EAGAIN)
    return rc;
  /* The socket's send buffer is full (or earlier sends are queued): queue a
   * copy so the caller's buffer can be reused at once, within a bound. */
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

static void close_cb(uv_handle_t *h)
{
  struct udp *lan = h->data;
  void (*done)(void *) = lan->done;
  void *ud = lan->done_ud;
  free(lan);
  if (done)
    done(ud);
}

void udp_close(struct udp *lan, void (*done)(void *), void *ud)
{
  lan->done = done;
  lan->done_ud = ud;
  uv_udp_recv_stop(&lan->udp);
  uv_close((uv_handle_t *)&lan->udp, close_cb);
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
