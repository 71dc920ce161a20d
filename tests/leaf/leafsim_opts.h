/*
 * leafsim_opts.h - fleetgw-leafsim's command line.
 */
#ifndef FLEETGW_LEAFSIM_OPTS_H
#define FLEETGW_LEAFSIM_OPTS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

struct opts {
  const char *gw;
  unsigned leaves;
  const char *prefix;
  unsigned keepalive;
  double connect_rate;
  double rate;
  int qos;
  const char *topic_fmt;
  size_t payload_size;
  const char *sub_fmt;
  double duration;
  double sleep_s;
  bool stats;
  unsigned retry_ms;
  unsigned retries;
  unsigned congestion_ms;
  int start_together_ms; /* -1: each leaf publishes from its own CONNACK */
  unsigned predefined;
  unsigned first_index;
  bool verbose;
  /* --dtls: MQTT-SN over DTLS 1.2, PSK or X.509 */
  bool dtls;
  const char *psk_file;  /* lines client_id,hexkey */
  const char *psk_hex;   /* one key for every leaf */
  const char *cert_dir;  /* DIR/<client id>.crt and .key */
  const char *cert_file; /* one certificate for every leaf */
  const char *key_file;
  const char *ca_file;
  const char *ciphers;
  unsigned mtu;
  unsigned handshake_ms;
};

/* Fills *o from the command line (exits 0 after --help); returns 0 or -1
 * after saying why on stderr. */
int leafsim_parse_args(int argc, char **argv, struct opts *o);
/* HOST:PORT (IPv4) into *out; returns 0 or -1. */
int leafsim_resolve_gw(const char *spec, struct sockaddr_storage *out);

#endif
