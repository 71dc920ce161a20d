/*
 * udp.h - the MQTT-SN UDP socket.
 *
 * Receives datagrams (with recvmmsg batching where libuv offers it) and hands
 * each one, with its source address, to the owner's callback; sends
 * datagrams, first with uv_udp_try_send (no allocation, no extra loop turn)
 * and, only if the kernel's send buffer is full, through a queued uv_udp_send
 * with a copy of the bytes.  It knows nothing about MQTT-SN.
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
/* Sends one datagram.  Returns 0 or a negative libuv error (the caller counts
 * it; UDP gives no delivery guarantee anyway): UV_ENOBUFS when the copies
 * queued behind a full kernel buffer already hold 4 MiB. */
int udp_send(struct udp *lan, const struct sockaddr *to, const uint8_t *data, size_t len);
/* Closes the socket; done(ud) runs once the handle is closed and freed. */
void udp_close(struct udp *lan, void (*done)(void *), void *ud);
/* The bound port (useful with port 0). */
int udp_port(const struct udp *lan);

#endif
