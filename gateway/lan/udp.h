/*
 * udp.h - the MQTT-SN UDP socket.
 *
 * Receives datagrams, up to 20 in one recvmmsg(2), and hands each one, with
 * its source address, to the owner's callback (one longer than 2048 bytes is
 * dropped and counted); sends
 * datagrams in batches: copied into the socket's batch, they go out in one
 * sendmmsg at the end of the loop turn's callbacks (or when the batch is
 * full, or on udp_flush), and only if the kernel's send buffer is full
 * through a queued uv_udp_send with a copy of the bytes.  Order is kept.
 * It knows nothing about MQTT-SN.
 */
#ifndef FLEETGW_UDP_H
#define FLEETGW_UDP_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct udp;

typedef void (*udp_recv_cb)(void *ud, const struct sockaddr *from, const uint8_t *data,
                            size_t len);

/* Binds bind_ip:port (IPv4 or IPv6 literal) with SO_RCVBUF = rcvbuf bytes.
 * Returns 0 or a negative libuv error. */
int udp_open(uv_loop_t *loop, const char *bind_ip, uint16_t port, uint32_t rcvbuf,
             udp_recv_cb cb, void *ud, struct udp **out);
/* Sends one datagram (the bytes are copied: data may be reused at once).
 * Returns 0 or a negative libuv error (the caller counts it; UDP gives no
 * delivery guarantee anyway): UV_ENOBUFS when the copies queued behind a
 * full kernel buffer already hold 4 MiB.  A failure found when the batch
 * goes out is counted in the udp_count_errors counter and logged. */
int udp_send(struct udp *lan, const struct sockaddr *to, const uint8_t *data, size_t len);
/* Sends lan's batch now (without waiting for the end of the loop turn). */
void udp_flush(struct udp *lan);
/* Sends the batch of every socket that has one: for a caller that has just
 * answered many leaves and is about to do slower work in the same turn. */
void udp_flush_all(void);
/* The counter to bump for a datagram refused when its batch went out. */
void udp_count_errors(struct udp *lan, uint64_t *counter);
/* Closes the socket; done(ud) runs once the handle is closed and freed. */
void udp_close(struct udp *lan, void (*done)(void *), void *ud);
/* What the socket has read: datagrams, the system calls that read them
 * (recvmmsg batches) and the datagrams dropped as too long. */
struct udp_rx_stats {
  uint64_t datagrams;
  uint64_t reads;
  uint64_t too_long;
};
void udp_get_rx_stats(const struct udp *lan, struct udp_rx_stats *out);
/* The bound port (useful with port 0). */
int udp_port(const struct udp *lan);

#endif
