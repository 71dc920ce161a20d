#!/usr/bin/env python3
"""Splits a QoS 1 round trip at the gateway's system calls.

Reads the output of
    perf trace -p <fleetgw pid> -e recvmmsg,write,read,sendmmsg,epoll_wait -o trace.txt
taken while leaves publish QoS 1 through a gateway whose upstreams are plain TCP, and prints
three distributions, in ms:

  recv->write         from the recvmmsg that brought a PUBLISH from the LAN to its write to
                      the broker (the gateway, leaf to broker)
  write->puback       from that write to the read of the broker's 4-byte PUBACK on the same
                      connection (the broker and the loopback)
  puback->sendmmsg    from that read to the sendmmsg that carries the PUBACK to the leaf (the
                      gateway, broker to leaf)

What a leaf measures beyond their sum is outside the gateway's system calls: the two UDP
hops and the wake-ups of the processes.  perf trace slows the gateway down, so the figures
are an upper bound.  Usage: trace_split.py trace.txt [udp_fd]
"""
import re
import sys

LINE = re.compile(r"\s*([\d.]+) \(\s*[\d.]+ ms\): \S+ (\w+)\((?:fd|epfd): (\d+).*?\)\s+= (-?\d+)")


def pct(a, p):
    a = sorted(a)
    return a[min(len(a) - 1, int(len(a) * p / 100))] if a else 0.0


def main():
    path = sys.argv[1]
    udp_fd = int(sys.argv[2]) if len(sys.argv) > 2 else None
    events = []
    with open(path) as f:
        for line in f:
            m = LINE.match(line)
            if m:
                events.append((float(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))))
    if udp_fd is None:  # the socket recvmmsg reads is the LAN socket
        udp_fd = next((fd for _, name, fd, _ in events if name == "recvmmsg"), -1)
    last_recv, sent, acked = None, {}, []
    split = {"recv->write": [], "write->puback": [], "puback->sendmmsg": []}
    for t, name, fd, ret in events:
        if name == "recvmmsg" and ret > 0:
            last_recv = t
        elif name == "write" and fd != udp_fd and ret > 4:
            sent[fd] = t
            if last_recv is not None:
                split["recv->write"].append(t - last_recv)
        elif name == "read" and ret == 4 and fd in sent:
            split["write->puback"].append(t - sent.pop(fd))
            acked.append(t)
        elif name == "sendmmsg" and fd == udp_fd:
            split["puback->sendmmsg"] += [t - a for a in acked]
            acked = []
    for k, a in split.items():
        print("%-18s n %6d  p50 %.3f  p99 %.3f  max %.3f ms"
              % (k, len(a), pct(a, 50), pct(a, 99), max(a) if a else 0.0))


if __name__ == "__main__":
    main()
