/*
 * leafsim_opts.c - fleetgw-leafsim's command line: the options, their
 * defaults and checks, and the gateway's address.
 */
#include "leafsim_opts.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: fleetgw-leafsim [options]\n"
    "Simulates many MQTT-SN v1.2 leaves, each with its own UDP socket on 127.0.0.1.\n"
    "\n"
    "  --gw HOST:PORT        gateway address (default 127.0.0.1:1884)\n"
    "  -n, --leaves N        number of leaves (default 20)\n"
    "  --prefix STR          client ids are <prefix><i> (default \"leaf-\")\n"
    "  --first-index I       number of the first leaf (default 0)\n"
    "  --keepalive S         MQTT-SN keep-alive Duration in seconds (default 60, 0 = none)\n"
    "  --connect-rate R      CONNECTs per second (default 0 = all at once)\n"
    "  --rate R              publishes per second per leaf (default 0 = none; may be < 1)\n"
    "  --qos Q               publish QoS: -1, 0, 1 or 2 (default 0); QoS 1/2 keep one\n"
    "                        publish in flight per leaf, as constrained devices do\n"
    "  --topic FMT           publish topic, registered with REGISTER; %s = client id\n"
    "                        (default \"fleet/%s/telemetry\")\n"
    "  --predefined ID       publish on pre-defined topic id ID instead (no REGISTER;\n"
    "                        required for --qos -1)\n"
    "  --payload-size B      payload bytes (default 32); \"<client id> <seq> \" then padding\n"
    "  --subscribe FMT       subscribe to FMT (%s = client id) and print each received\n"
    "                        publish as \"<client id> <topic> <payload>\" on stdout\n"
    "                        (bytes outside printable ASCII as \\xHH)\n"
    "  --duration S          run S seconds (default 0 = until SIGINT/SIGTERM); then drain\n"
    "                        in-flight publishes, DISCONNECT every leaf and exit 0\n"
    "  --sleep S             leaves alternate: S s active, then sleep S s with\n"
    "                        DISCONNECT(Duration=S), wake with PINGREQ(ClientId), drain\n"
    "                        the buffered messages, CONNECT again\n"
    "  --retry-ms MS         T_retry for the leaf's own requests (default 2000)\n"
    "  --retries N           N_retry: retransmissions before giving up (default 3)\n"
    "  --congestion-ms MS    wait after CONNACK/PUBACK \"congestion\" (default 1000)\n"
    "  --start-together MS   hold every leaf's publishing until all have their CONNACK,\n"
    "                        then MS ms more (the gateway's upstreams come up); --duration\n"
    "                        and the latency figures count from then, as mqttload's do\n"
    "  --stats               print a JSON summary on stdout at exit\n"
    "  -v, --verbose         log state changes on stderr\n"
    "\n"
    "MQTT-SN over DTLS 1.2 (each leaf handshakes first; a failed handshake or a lost\n"
    "association is reported and a new handshake follows after --retry-ms):\n"
    "  --dtls                talk to --gw, the gateway's DTLS port; --stats adds a\n"
    "                        \"dtls\" object (handshakes, handshake time in ms); exit 1\n"
    "                        if no handshake completed\n"
    "  --psk-file FILE       PSK per leaf: lines client_id,hexkey; identity = ClientId\n"
    "  --psk-hex HEX         one PSK for every leaf; identity = ClientId\n"
    "  --cert-dir DIR        X.509: DIR/<client id>.crt and DIR/<client id>.key\n"
    "  --cert FILE --key FILE  X.509: one certificate and key for every leaf\n"
    "  --ca FILE             X.509: CA certificates that verify the gateway\n"
    "  --mtu N               DTLS record MTU, 256..16384 (default 1200)\n"
    "  --ciphers LIST        OpenSSL cipher list (default PSK-AES128-CCM8:\n"
    "                        PSK-AES128-GCM-SHA256, or ECDHE-ECDSA-AES128-CCM8:\n"
    "                        ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256)\n"
    "  --handshake-timeout-ms MS  give a handshake up after MS (default 10000)\n"
    "  -h, --help            this text\n";

static int parse_uint(const char *s, unsigned long max, unsigned long *out)
{
  char *end;
  errno = 0;
  if (*s == '-' || *s == '\0')
    return -1;
  unsigned long v = strtoul(s, &end, 10);
  if (errno || *end != '\0' || v > max)
    return -1;
  *out = v;
  return 0;
}

static int parse_double(const char *s, double *out)
{
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || *end != '\0' || end == s || !(v >= 0) || isinf(v))
    return -1;
  *out = v;
  return 0;
}

int leafsim_resolve_gw(const char *spec, struct sockaddr_storage *out)
{
  char host[256];
  const char *colon = strrchr(spec, ':');
  struct addrinfo hints, *res = NULL;
  size_t hl;
  if (!colon || colon == spec)
    return -1;
  hl = (size_t)(colon - spec);
  if (spec[0] == '[' && hl >= 2 && spec[hl - 1] == ']') { /* [v6]:port */
    spec++;
    hl -= 2;
  }
  if (hl >= sizeof host)
    return -1;
  memcpy(host, spec, hl);
  host[hl] = '\0';
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_INET; /* the leaves' sockets are bound to 127.0.0.1 */
  hints.ai_socktype = SOCK_DGRAM;
  if (getaddrinfo(host, colon + 1, &hints, &res) != 0 || !res)
    return -1;
  memcpy(out, res->ai_addr, res->ai_addrlen);
  freeaddrinfo(res);
  return 0;
}

enum {
  OPT_GW = 256,
  OPT_PREFIX,
  OPT_FIRST,
  OPT_KEEPALIVE,
  OPT_CRATE,
  OPT_RATE,
  OPT_QOS,
  OPT_TOPIC,
  OPT_PREDEF,
  OPT_PAYLOAD,
  OPT_SUB,
  OPT_DURATION,
  OPT_SLEEP,
  OPT_RETRY_MS,
  OPT_RETRIES,
  OPT_CONG_MS,
  OPT_START_TOGETHER,
  OPT_STATS,
  OPT_DTLS,
  OPT_PSK_FILE,
  OPT_PSK_HEX,
  OPT_CERT_DIR,
  OPT_CERT,
  OPT_KEY,
  OPT_CA,
  OPT_MTU,
  OPT_CIPHERS,
  OPT_HS_MS,
};

/* The DTLS options go together: exactly one kind of credential. */
static int check_dtls(const struct opts *o)
{
  unsigned kinds = (o->psk_file != NULL) + (o->psk_hex != NULL) + (o->cert_dir != NULL) +
                   (o->cert_file != NULL || o->key_file != NULL);
  const char *why = NULL;
  if (!o->dtls) {
    if (kinds || o->ca_file || o->ciphers)
      why = "the DTLS options need --dtls";
  } else if (kinds != 1) {
    why = "--dtls needs one of --psk-file, --psk-hex, --cert-dir or --cert/--key";
  } else if ((o->cert_file != NULL) != (o->key_file != NULL)) {
    why = "--cert and --key go together";
  } else if ((o->cert_dir || o->cert_file) && !o->ca_file) {
    why = "certificates need --ca FILE to verify the gateway";
  } else if ((o->psk_file || o->psk_hex) && o->ca_file) {
    why = "--ca goes with certificates (with a PSK the gateway has none)";
  }
  if (why) {
    fprintf(stderr, "fleetgw-leafsim: %s\n", why);
    return -1;
  }
  return 0;
}

int leafsim_parse_args(int argc, char **argv, struct opts *o)
{
  static const struct option lopts[] = {
      {"gw", required_argument, NULL, OPT_GW},
      {"leaves", required_argument, NULL, 'n'},
      {"prefix", required_argument, NULL, OPT_PREFIX},
      {"first-index", required_argument, NULL, OPT_FIRST},
      {"keepalive", required_argument, NULL, OPT_KEEPALIVE},
      {"connect-rate", required_argument, NULL, OPT_CRATE},
      {"rate", required_argument, NULL, OPT_RATE},
      {"qos", required_argument, NULL, OPT_QOS},
      {"topic", required_argument, NULL, OPT_TOPIC},
      {"predefined", required_argument, NULL, OPT_PREDEF},
      {"payload-size", required_argument, NULL, OPT_PAYLOAD},
      {"subscribe", required_argument, NULL, OPT_SUB},
      {"duration", required_argument, NULL, OPT_DURATION},
      {"sleep", required_argument, NULL, OPT_SLEEP},
      {"retry-ms", required_argument, NULL, OPT_RETRY_MS},
      {"retries", required_argument, NULL, OPT_RETRIES},
      {"congestion-ms", required_argument, NULL, OPT_CONG_MS},
      {"start-together", required_argument, NULL, OPT_START_TOGETHER},
      {"stats", no_argument, NULL, OPT_STATS},
      {"dtls", no_argument, NULL, OPT_DTLS},
      {"psk-file", required_argument, NULL, OPT_PSK_FILE},
      {"psk-hex", required_argument, NULL, OPT_PSK_HEX},
      {"cert-dir", required_argument, NULL, OPT_CERT_DIR},
      {"cert", required_argument, NULL, OPT_CERT},
      {"key", required_argument, NULL, OPT_KEY},
      {"ca", required_argument, NULL, OPT_CA},
      {"mtu", required_argument, NULL, OPT_MTU},
      {"ciphers", required_argument, NULL, OPT_CIPHERS},
      {"handshake-timeout-ms", required_argument, NULL, OPT_HS_MS},
      {"verbose", no_argument, NULL, 'v'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  unsigned long u = 0;
  int c;

  *o = (struct opts){.gw = "127.0.0.1:1884",
                     .leaves = 20,
                     .prefix = "leaf-",
                     .keepalive = 60,
                     .topic_fmt = "fleet/%s/telemetry",
                     .payload_size = 32,
                     .retry_ms = 2000,
                     .retries = 3,
                     .congestion_ms = 1000,
                     .start_together_ms = -1,
                     .mtu = 1200,
                     .handshake_ms = 10000};
  while ((c = getopt_long(argc, argv, "n:vh", lopts, NULL)) != -1) {
    const char *bad = NULL;
    switch (c) {
    case OPT_GW:
      o->gw = optarg;
      break;
    case 'n':
      if (parse_uint(optarg, 1000000, &u) != 0 || u == 0)
        bad = "--leaves: expected 1..1000000";
      o->leaves = (unsigned)u;
      break;
    case OPT_PREFIX:
      o->prefix = optarg;
      break;
    case OPT_FIRST:
      if (parse_uint(optarg, 100000000, &u) != 0)
        bad = "--first-index: expected 0..100000000";
      o->first_index = (unsigned)u;
      break;
    case OPT_KEEPALIVE:
      if (parse_uint(optarg, 65535, &u) != 0)
        bad = "--keepalive: expected 0..65535 seconds";
      o->keepalive = (unsigned)u;
      break;
    case OPT_CRATE:
      if (parse_double(optarg, &o->connect_rate) != 0)
        bad = "--connect-rate: expected a number >= 0";
      break;
    case OPT_RATE:
      if (parse_double(optarg, &o->rate) != 0)
        bad = "--rate: expected a number >= 0";
      break;
    case OPT_QOS:
      if (strcmp(optarg, "-1") == 0)
        o->qos = -1;
      else if (parse_uint(optarg, 2, &u) == 0)
        o->qos = (int)u;
      else
        bad = "--qos: expected -1, 0, 1 or 2";
      break;
    case OPT_TOPIC:
      o->topic_fmt = optarg;
      break;
    case OPT_PREDEF:
      if (parse_uint(optarg, 65534, &u) != 0 || u == 0)
        bad = "--predefined: expected a topic id 1..65534";
      o->predefined = (unsigned)u;
      break;
    case OPT_PAYLOAD:
      if (parse_uint(optarg, 60000, &u) != 0)
        bad = "--payload-size: expected 0..60000 bytes";
      o->payload_size = u;
      break;
    case OPT_SUB:
      o->sub_fmt = optarg;
      break;
    case OPT_DURATION:
      if (parse_double(optarg, &o->duration) != 0)
        bad = "--duration: expected seconds >= 0";
      break;
    case OPT_SLEEP:
      if (parse_double(optarg, &o->sleep_s) != 0 || o->sleep_s > 65535)
        bad = "--sleep: expected 0..65535 seconds";
      break;
    case OPT_RETRY_MS:
      if (parse_uint(optarg, 3600000, &u) != 0 || u == 0)
        bad = "--retry-ms: expected 1..3600000";
      o->retry_ms = (unsigned)u;
      break;
    case OPT_RETRIES:
      if (parse_uint(optarg, 100, &u) != 0)
        bad = "--retries: expected 0..100";
      o->retries = (unsigned)u;
      break;
    case OPT_CONG_MS:
      if (parse_uint(optarg, 3600000, &u) != 0)
        bad = "--congestion-ms: expected 0..3600000";
      o->congestion_ms = (unsigned)u;
      break;
    case OPT_START_TOGETHER:
      if (parse_uint(optarg, 600000, &u) != 0)
        bad = "--start-together: expected 0..600000";
      o->start_together_ms = (int)u;
      break;
    case OPT_STATS:
      o->stats = true;
      break;
    case OPT_DTLS:
      o->dtls = true;
      break;
    case OPT_PSK_FILE:
      o->psk_file = optarg;
      break;
    case OPT_PSK_HEX:
      o->psk_hex = optarg;
      break;
    case OPT_CERT_DIR:
      o->cert_dir = optarg;
      break;
    case OPT_CERT:
      o->cert_file = optarg;
      break;
    case OPT_KEY:
      o->key_file = optarg;
      break;
    case OPT_CA:
      o->ca_file = optarg;
      break;
    case OPT_MTU:
      if (parse_uint(optarg, 16384, &u) != 0 || u < 256)
        bad = "--mtu: expected 256..16384";
      o->mtu = (unsigned)u;
      break;
    case OPT_CIPHERS:
      o->ciphers = optarg;
      break;
    case OPT_HS_MS:
      if (parse_uint(optarg, 3600000, &u) != 0 || u == 0)
        bad = "--handshake-timeout-ms: expected 1..3600000";
      o->handshake_ms = (unsigned)u;
      break;
    case 'v':
      o->verbose = true;
      break;
    case 'h':
      fputs(usage, stdout);
      exit(0);
    default:
      fputs(usage, stderr);
      return -1;
    }
    if (bad) {
      fprintf(stderr, "fleetgw-leafsim: %s, got \"%s\"\n", bad, optarg);
      return -1;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "fleetgw-leafsim: unexpected argument \"%s\"\n", argv[optind]);
    return -1;
  }
  if (o->qos == -1 && !o->predefined) {
    fprintf(stderr, "fleetgw-leafsim: --qos -1 needs --predefined ID (QoS -1 cannot REGISTER)\n");
    return -1;
  }
  if (o->sleep_s > 0 && o->sleep_s < 1) {
    fprintf(stderr, "fleetgw-leafsim: --sleep: at least 1 second (Duration is whole seconds)\n");
    return -1;
  }
  if (check_dtls(o) != 0)
    return -1;
  if (o->qos == -1 && (o->sub_fmt || o->sleep_s > 0 || o->start_together_ms >= 0)) {
    fprintf(stderr, "fleetgw-leafsim: --qos -1 leaves never connect: no --subscribe, --sleep "
                    "or --start-together\n");
    return -1;
  }
  return 0;
}
