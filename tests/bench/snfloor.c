/*
 * snfloor.c - the floor of the MQTT-SN latency figures in tests/bench/: a
 * trivial MQTT-SN "gateway" on one UDP socket that answers at once, with no
 * broker behind it.
 *
 *   snfloor --port P
 *
 * CONNECT -> CONNACK accepted, REGISTER -> REGACK with a new topic id,
 * PUBLISH QoS 1 -> PUBACK, QoS 2 -> PUBREC, PUBREL -> PUBCOMP, SUBSCRIBE ->
 * SUBACK, PINGREQ -> PINGRESP, DISCONNECT -> DISCONNECT; anything else is
 * ignored.  It keeps no state per leaf.  Against it, fleetgw-leafsim measures
 * its own round trip: two UDP hops, two wake-ups and its own loop, which is
 * what a relayed figure contains besides the gateway and the broker.
 * Exits on SIGINT or SIGTERM.  libc only.
 */
#define _GNU_SOURCE /* recvmmsg, sendmmsg */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BATCH 64
#define MAXDG 2048

static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
  (void)sig;
  g_stop = 1;
}

/* The answer to one datagram into out (at most 8 bytes), its length or 0. */
static size_t answer(const uint8_t *p, size_t n, uint8_t *out, uint16_t *next_topic)
{
  size_t h = 2; /* length byte + type */
  const uint8_t *b;
  size_t blen;
  uint8_t type;

  if (n < 2)
    return 0;
  if (p[0] == 0x01) {
    if (n < 4)
      return 0;
    h = 4;
  }
  type = p[h - 1];
  b = p + h;
  blen = n - h;
  switch (type) {
  case 0x04: /* CONNECT */
    out[0] = 3, out[1] = 0x05, out[2] = 0;
    return 3;
  case 0x0A: /* REGISTER: TopicId(2) MsgId(2) name */
    if (blen < 4)
      return 0;
    out[0] = 7, out[1] = 0x0B;
    out[2] = (uint8_t)(*next_topic >> 8), out[3] = (uint8_t)*next_topic;
    out[4] = b[2], out[5] = b[3], out[6] = 0;
    if (++*next_topic == 0)
      *next_topic = 1;
    return 7;
  case 0x0C: /* PUBLISH: Flags TopicId(2) MsgId(2) data */
    if (blen < 5)
      return 0;
    switch ((b[0] >> 5) & 3) {
    case 1: /* QoS 1: PUBACK TopicId MsgId rc */
      out[0] = 7, out[1] = 0x0D, out[2] = b[1], out[3] = b[2], out[4] = b[3], out[5] = b[4];
      out[6] = 0;
      return 7;
    case 2: /* QoS 2: PUBREC MsgId */
      out[0] = 4, out[1] = 0x0F, out[2] = b[3], out[3] = b[4];
      return 4;
    default:
      return 0;
    }
  case 0x10: /* PUBREL MsgId -> PUBCOMP */
    if (blen < 2)
      return 0;
    out[0] = 4, out[1] = 0x0E, out[2] = b[0], out[3] = b[1];
    return 4;
  case 0x12: /* SUBSCRIBE: Flags MsgId(2) ... -> SUBACK Flags TopicId MsgId rc */
    if (blen < 3)
      return 0;
    out[0] = 8, out[1] = 0x13, out[2] = b[0] & 0x60, out[3] = 0, out[4] = 0;
    out[5] = b[1], out[6] = b[2], out[7] = 0;
    return 8;
  case 0x16: /* PINGREQ */
    out[0] = 2, out[1] = 0x17;
    return 2;
  case 0x18: /* DISCONNECT */
    out[0] = 2, out[1] = 0x18;
    return 2;
  default:
    return 0;
  }
}

int main(int argc, char **argv)
{
  static uint8_t in[BATCH][MAXDG], out[BATCH][8];
  struct mmsghdr mi[BATCH], mo[BATCH];
  struct iovec ii[BATCH], io[BATCH];
  struct sockaddr_in6 from[BATCH];
  struct sockaddr_in a;
  struct sigaction sa;
  uint16_t next_topic = 1;
  int fd, big = 8 << 20;
  long port;

  if (argc != 3 || strcmp(argv[1], "--port") != 0 || (port = strtol(argv[2], NULL, 10)) <= 0 ||
      port > 65535) {
    fprintf(stderr, "usage: snfloor --port P\n");
    return 2;
  }
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal; /* no SA_RESTART: recvmmsg returns EINTR */
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  fd = socket(AF_INET, SOCK_DGRAM, 0);
  if (fd < 0) {
    perror("snfloor: socket");
    return 1;
  }
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    perror("snfloor: bind");
    return 1;
  }
  while (!g_stop) {
    int n, k = 0;
    for (int i = 0; i < BATCH; i++) {
      ii[i].iov_base = in[i];
      ii[i].iov_len = sizeof in[i];
      memset(&mi[i].msg_hdr, 0, sizeof mi[i].msg_hdr);
      mi[i].msg_hdr.msg_name = &from[i];
      mi[i].msg_hdr.msg_namelen = sizeof from[i];
      mi[i].msg_hdr.msg_iov = &ii[i];
      mi[i].msg_hdr.msg_iovlen = 1;
    }
    n = recvmmsg(fd, mi, BATCH, MSG_WAITFORONE, NULL);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      perror("snfloor: recvmmsg");
      return 1;
    }
    for (int i = 0; i < n; i++) {
      size_t len = answer(in[i], mi[i].msg_len, out[k], &next_topic);
      if (len == 0)
        continue;
      io[k].iov_base = out[k];
      io[k].iov_len = len;
      memset(&mo[k].msg_hdr, 0, sizeof mo[k].msg_hdr);
      mo[k].msg_hdr.msg_name = &from[i];
      mo[k].msg_hdr.msg_namelen = mi[i].msg_hdr.msg_namelen;
      mo[k].msg_hdr.msg_iov = &io[k];
      mo[k].msg_hdr.msg_iovlen = 1;
      k++;
    }
    if (k > 0 && sendmmsg(fd, mo, (unsigned)k, 0) < 0 && errno != EINTR)
      perror("snfloor: sendmmsg");
  }
  close(fd);
  return 0;
}
