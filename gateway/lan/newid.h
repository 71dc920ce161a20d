/*
 * newid.h - how fast new identities may appear on the LAN.
 *
 * A ClientId the registry has never seen costs a device row, an audit row
 * and, once admitted, a provisioning run (a cloud certificate).  So new
 * identities are rate-limited before admission looks at them, by three
 * token buckets that must all have a token:
 *
 *   - per source address and port: one UDP socket cycling through ClientIds
 *     is never one device rebooting (a reboot keeps the ClientId and changes
 *     the port);
 *   - per source IP, with a larger allowance for listed protocol converters
 *     that front many leaves from one IP;
 *   - gateway-wide.
 *
 * Each limit is "count new identities per period": a bucket holds at most
 * count tokens and refills at count/period.  Buckets live in one fixed-size
 * table (no allocation per source); a full bucket carries no information, so
 * its slot is free for another source.  When every slot a source could use
 * holds a non-full bucket, the new identity is refused (NEWID_TABLE_FULL):
 * a flood from very many spoofed sources costs no memory, only refusals.
 */
#ifndef FLEETGW_NEWID_H
#define FLEETGW_NEWID_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct newid_limit {
  uint32_t count;              /* 0: this limit is off */
  uint32_t period_s;
};

struct newid_opts {
  struct newid_limit per_port;
  struct newid_limit per_ip;
  struct newid_limit per_converter;  /* per_ip for a listed converter IP */
  struct newid_limit global;
  uint32_t slots;              /* table size (sources tracked at once), > 0 */
};

struct newid_slot;

struct newid {
  struct newid_opts o;
  struct newid_slot *slots;
  double global_tokens;
  uint64_t global_at;          /* ms of the last refill */
};

enum newid_result {
  NEWID_OK = 0,
  NEWID_PORT = 1,              /* this address and port presented too many */
  NEWID_IP = 2,                /* this IP presented too many */
  NEWID_GLOBAL = 3,            /* the gateway took too many new ones */
  NEWID_TABLE_FULL = 4,        /* too many sources at once */
};

/* Returns 0, or -1 when out of memory. */
int newid_init(struct newid *n, const struct newid_opts *o, uint64_t now_ms);
/* New limits (a configuration reload); the table's size (slots) stays. */
void newid_set_limits(struct newid *n, const struct newid_opts *o);
void newid_free(struct newid *n);
/* May `from` present a new identity at now_ms?  converter: its IP is a
 * listed protocol converter.  Takes one token from each bucket when all
 * have one (NEWID_OK); otherwise takes none and says which limit refused. */
int newid_take(struct newid *n, const struct sockaddr *from, bool converter, uint64_t now_ms);
const char *newid_result_str(int r);

#endif
