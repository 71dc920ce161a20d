/*
 * test_config.c - cfg_load / cfg_free / cfg_upstream_client_id.
 *
 * Each case writes a temporary config file (mkstemp in /tmp), loads it and
 * checks either the resulting values or the one-line error message, which
 * must start with the file name and name the offending key as a JSON path.
 */
#include "config.h"
#include "log.h"
#include "test.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* An existing, readable file and directory for the *_file / cert_dir keys. */
static char g_ca[64];
static char g_cert[64];
static char g_key[64];
static char g_dir[64];

static void make_file(char *path, size_t cap, const char *content)
{
  int fd;
  snprintf(path, cap, "/tmp/fleetgw-test-XXXXXX");
  fd = mkstemp(path);
  ASSERT_TRUE(fd >= 0);
  if (fd < 0)
    return;
  if (content)
    ASSERT_EQ(write(fd, content, strlen(content)), (long long)strlen(content));
  close(fd);
}

/* Writes json (a printf format) to a temp file and loads it.  The file name
 * is returned in path so messages can be checked against it. */
static int load_fmt(struct gw_config **cfg, char *err, size_t errlen, char *path, size_t pcap,
                    const char *fmt, ...) __attribute__((format(printf, 6, 7)));

static int load_fmt(struct gw_config **cfg, char *err, size_t errlen, char *path, size_t pcap,
                    const char *fmt, ...)
{
  char json[8192];
  va_list ap;
  int rc;

  va_start(ap, fmt);
  vsnprintf(json, sizeof json, fmt, ap);
  va_end(ap);
  make_file(path, pcap, json);
  rc = cfg_load(path, cfg, err, errlen);
  unlink(path);
  return rc;
}

/* Loads json and checks that it fails with "<file>: <expect>" exactly, or,
 * when exact is false, with a message that starts "<file>: " and contains
 * expect.  The message must be a single line. */
static void expect_error(bool exact, const char *expect, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void expect_error(bool exact, const char *expect, const char *fmt, ...)
{
  char json[8192], path[64], err[512], want[600];
  struct gw_config *cfg = (struct gw_config *)1;
  va_list ap;
  int rc;

  va_start(ap, fmt);
  vsnprintf(json, sizeof json, fmt, ap);
  va_end(ap);
  make_file(path, sizeof path, json);
  memset(err, 'x', sizeof err);
  rc = cfg_load(path, &cfg, err, sizeof err);
  unlink(path);

  ASSERT_EQ(rc, -1);
  ASSERT_TRUE(cfg == NULL);
  ASSERT_TRUE(strchr(err, '\n') == NULL);
  snprintf(want, sizeof want, "%s: %s", path, expect);
  if (exact) {
    ASSERT_STR_EQ(err, want);
  } else {
    ASSERT_TRUE(strncmp(err, path, strlen(path)) == 0 && err[strlen(path)] == ':');
    ASSERT_TRUE(strstr(err, expect) != NULL);
    if (!strstr(err, expect))
      fprintf(stderr, "  message was: %s\n  wanted: %s\n", err, expect);
  }
}

static void test_minimal_defaults(void)
{
  struct gw_config *cfg = NULL;
  char err[512] = "", path[64];
  int rc = load_fmt(&cfg, err, sizeof err, path, sizeof path,
                    "{\"upstream\": {\"host\": \"broker.example\", \"ca_file\": \"%s\"}}", g_ca);
  ASSERT_EQ(rc, 0);
  ASSERT_STR_EQ(err, "");
  if (!cfg)
    return;
  ASSERT_STR_EQ(cfg->path, path);
  ASSERT_EQ(cfg->log_level, LOG_INFO);
  ASSERT_EQ(cfg->gateway_id, 1);
  ASSERT_STR_EQ(cfg->lan.bind, "0.0.0.0");
  ASSERT_EQ(cfg->lan.port, 1884);
  ASSERT_EQ(cfg->lan.recv_buffer_bytes, 4194304);
  ASSERT_EQ(cfg->lan.max_client_id_len, 23);
  ASSERT_EQ(cfg->lan.max_leaves, 10000);
  ASSERT_EQ(cfg->lan.t_retry_ms, 10000);
  ASSERT_EQ(cfg->lan.n_retry, 3);
  ASSERT_EQ(cfg->lan.connack_timeout_ms, 10000);
  ASSERT_EQ(cfg->lan.queue_max, 100);
  ASSERT_TRUE(cfg->lan.advertise_address == NULL);
  ASSERT_EQ(cfg->lan.advertise_port, 1884);
  ASSERT_EQ(cfg->lan.advertise_interval_s, 900);
  ASSERT_TRUE(cfg->lan.predefined == NULL);
  ASSERT_EQ(cfg->lan.n_predefined, 0);
  ASSERT_STR_EQ(cfg->upstream.host, "broker.example");
  ASSERT_EQ(cfg->upstream.port, 8883);
  ASSERT_TRUE(cfg->upstream.tls);
  ASSERT_STR_EQ(cfg->upstream.ca_file, g_ca);
  ASSERT_TRUE(cfg->upstream.cert_file == NULL);
  ASSERT_TRUE(cfg->upstream.key_file == NULL);
  ASSERT_TRUE(cfg->upstream.cert_dir == NULL);
  ASSERT_TRUE(cfg->upstream.alpn == NULL);
  ASSERT_STR_EQ(cfg->upstream.client_id_template, "{client_id}");
  ASSERT_TRUE(cfg->upstream.username == NULL);
  ASSERT_TRUE(cfg->upstream.password == NULL);
  ASSERT_TRUE(cfg->upstream.password_env == NULL);
  ASSERT_EQ(cfg->upstream.keepalive_s, 60);
  ASSERT_TRUE(cfg->upstream.clean_session);
  ASSERT_EQ(cfg->upstream.connect_timeout_ms, 10000);
  ASSERT_EQ(cfg->upstream.backoff_base_ms, 1000);
  ASSERT_EQ(cfg->upstream.backoff_cap_ms, 60000);
  ASSERT_EQ(cfg->upstream.give_up_after_s, 120);
  ASSERT_EQ(cfg->upstream.max_queue, 1000);
  ASSERT_EQ(cfg->upstream.max_packet, 132096);
  ASSERT_TRUE(cfg->upstream.qos_m1_client_id == NULL);
  cfg_free(cfg);
}

static void test_plain_port_default(void)
{
  struct gw_config *cfg = NULL;
  char err[512] = "", path[64];
  int rc = load_fmt(&cfg, err, sizeof err, path, sizeof path,
                    "{\"upstream\": {\"host\": \"127.0.0.1\", \"tls\": false}}");
  ASSERT_EQ(rc, 0);
  if (!cfg)
    return;
  ASSERT_EQ(cfg->upstream.port, 1883);
  ASSERT_TRUE(!cfg->upstream.tls);
  ASSERT_TRUE(cfg->upstream.ca_file == NULL);
  cfg_free(cfg);
}

static void test_full_file(void)
{
  struct gw_config *cfg = NULL;
  char err[512] = "", path[64];
  int rc;

  setenv("FLEETGW_TEST_PW", "s3cret", 1);
  rc = load_fmt(&cfg, err, sizeof err, path, sizeof path,
                "{\n"
                "  \"log_level\": \"debug\",\n"
                "  \"gateway_id\": 42,\n"
                "  \"lan\": {\n"
                "    \"bind\": \"::1\",\n"
                "    \"port\": 10000,\n"
                "    \"recv_buffer_bytes\": 65536,\n"
                "    \"max_client_id_len\": 64,\n"
                "    \"max_leaves\": 50,\n"
                "    \"t_retry_ms\": 15000,\n"
                "    \"n_retry\": 5,\n"
                "    \"connack_timeout_ms\": 2000,\n"
                "    \"queue_max\": 7,\n"
                "    \"advertise\": {\"address\": \"127.0.0.1\", \"port\": 1885, "
                "\"interval_s\": 1000},\n"
                "    \"predefined_topics\": {\"300\": \"c\", \"1\": \"a/b\", \"65534\": "
                "\"$SYS/x\"}\n"
                "  },\n"
                "  \"upstream\": {\n"
                "    \"host\": \"abc.iot.eu-west-1.amazonaws.com\",\n"
                "    \"port\": 443,\n"
                "    \"tls\": true,\n"
                "    \"ca_file\": \"%s\",\n"
                "    \"cert_file\": \"%s\",\n"
                "    \"key_file\": \"%s\",\n"
                "    \"cert_dir\": null,\n"
                "    \"alpn\": \"x-amzn-mqtt-ca\",\n"
                "    \"client_id_template\": \"gw{gateway_id}-{client_id}\",\n"
                "    \"username\": \"user\",\n"
                "    \"password_env\": \"FLEETGW_TEST_PW\",\n"
                "    \"keepalive_s\": 1200,\n"
                "    \"clean_session\": false,\n"
                "    \"connect_timeout_ms\": 5000,\n"
                "    \"backoff_base_ms\": 500,\n"
                "    \"backoff_cap_ms\": 30000,\n"
                "    \"give_up_after_s\": 0,\n"
                "    \"max_queue\": 10,\n"
                "    \"max_packet\": 1024,\n"
                "    \"qos_minus1_client_id\": \"gw-qosm1\"\n"
                "  }\n"
                "}\n",
                g_ca, g_cert, g_key);
  ASSERT_EQ(rc, 0);
  if (rc != 0)
    fprintf(stderr, "  message was: %s\n", err);
  if (!cfg)
    return;
  ASSERT_EQ(cfg->log_level, LOG_DEBUG);
  ASSERT_EQ(cfg->gateway_id, 42);
  ASSERT_STR_EQ(cfg->lan.bind, "::1");
  ASSERT_EQ(cfg->lan.port, 10000);
  ASSERT_EQ(cfg->lan.recv_buffer_bytes, 65536);
  ASSERT_EQ(cfg->lan.max_client_id_len, 64);
  ASSERT_EQ(cfg->lan.max_leaves, 50);
  ASSERT_EQ(cfg->lan.t_retry_ms, 15000);
  ASSERT_EQ(cfg->lan.n_retry, 5);
  ASSERT_EQ(cfg->lan.connack_timeout_ms, 2000);
  ASSERT_EQ(cfg->lan.queue_max, 7);
  ASSERT_STR_EQ(cfg->lan.advertise_address, "127.0.0.1");
  ASSERT_EQ(cfg->lan.advertise_port, 1885);
  ASSERT_EQ(cfg->lan.advertise_interval_s, 1000);
  ASSERT_EQ(cfg->lan.n_predefined, 3);
  if (cfg->lan.n_predefined == 3) {
    /* Sorted by id. */
    ASSERT_EQ(cfg->lan.predefined[0].id, 1);
    ASSERT_STR_EQ(cfg->lan.predefined[0].topic, "a/b");
    ASSERT_EQ(cfg->lan.predefined[1].id, 300);
    ASSERT_STR_EQ(cfg->lan.predefined[1].topic, "c");
    ASSERT_EQ(cfg->lan.predefined[2].id, 65534);
    ASSERT_STR_EQ(cfg->lan.predefined[2].topic, "$SYS/x");
  }
  ASSERT_STR_EQ(cfg->upstream.host, "abc.iot.eu-west-1.amazonaws.com");
  ASSERT_EQ(cfg->upstream.port, 443);
  ASSERT_TRUE(cfg->upstream.tls);
  ASSERT_STR_EQ(cfg->upstream.ca_file, g_ca);
  ASSERT_STR_EQ(cfg->upstream.cert_file, g_cert);
  ASSERT_STR_EQ(cfg->upstream.key_file, g_key);
  ASSERT_TRUE(cfg->upstream.cert_dir == NULL);
  ASSERT_STR_EQ(cfg->upstream.alpn, "x-amzn-mqtt-ca");
  ASSERT_STR_EQ(cfg->upstream.client_id_template, "gw{gateway_id}-{client_id}");
  ASSERT_STR_EQ(cfg->upstream.username, "user");
  ASSERT_STR_EQ(cfg->upstream.password_env, "FLEETGW_TEST_PW");
  ASSERT_STR_EQ(cfg->upstream.password, "s3cret");
  ASSERT_EQ(cfg->upstream.keepalive_s, 1200);
  ASSERT_TRUE(!cfg->upstream.clean_session);
  ASSERT_EQ(cfg->upstream.connect_timeout_ms, 5000);
  ASSERT_EQ(cfg->upstream.backoff_base_ms, 500);
  ASSERT_EQ(cfg->upstream.backoff_cap_ms, 30000);
  ASSERT_EQ(cfg->upstream.give_up_after_s, 0);
  ASSERT_EQ(cfg->upstream.max_queue, 10);
  ASSERT_EQ(cfg->upstream.max_packet, 1024);
  ASSERT_STR_EQ(cfg->upstream.qos_m1_client_id, "gw-qosm1");
  cfg_free(cfg);
  unsetenv("FLEETGW_TEST_PW");
}

static void test_cert_dir(void)
{
  struct gw_config *cfg = NULL;
  char err[512] = "", path[64];
  int rc = load_fmt(&cfg, err, sizeof err, path, sizeof path,
                    "{\"upstream\": {\"host\": \"h\", \"ca_file\": \"%s\", \"cert_dir\": \"%s\"}}",
                    g_ca, g_dir);
  ASSERT_EQ(rc, 0);
  if (!cfg)
    return;
  ASSERT_STR_EQ(cfg->upstream.cert_dir, g_dir);
  cfg_free(cfg);
}

/* A valid upstream object with TLS off, to embed in error cases. */
#define UP "\"upstream\": {\"host\": \"h\", \"tls\": false}"

static void test_wrong_types(void)
{
  expect_error(true, "upstream.port: expected an integer 1..65535, got \"abc\"",
               "{\"upstream\": {\"host\": \"h\", \"tls\": false, \"port\": \"abc\"}}");
  expect_error(true, "upstream.tls: expected true or false, got \"yes\"",
               "{\"upstream\": {\"host\": \"h\", \"tls\": \"yes\"}}");
  expect_error(true, "upstream.host: expected a host name or IP address, got 12",
               "{\"upstream\": {\"host\": 12, \"tls\": false}}");
  expect_error(true, "lan: expected an object, got an array", "{\"lan\": [], " UP "}");
  expect_error(true, "lan.port: expected an integer 1..65535, got 1.5",
               "{\"lan\": {\"port\": 1.5}, " UP "}");
  expect_error(true, "lan.bind: expected an IPv4 or IPv6 address literal, got null",
               "{\"lan\": {\"bind\": null}, " UP "}");
  expect_error(false, "log_level: expected one of \"error\"", "{\"log_level\": \"verbose\", " UP "}");
  expect_error(false, "log_level: expected one of", "{\"log_level\": 3, " UP "}");
  expect_error(true, "expected a JSON object at the top level, got an array", "[1, 2]");
}

static void test_out_of_range(void)
{
  expect_error(true, "upstream.keepalive_s: expected an integer 30..1200, got 20",
               "{\"upstream\": {\"host\": \"h\", \"tls\": false, \"keepalive_s\": 20}}");
  expect_error(true, "upstream.keepalive_s: expected an integer 30..1200, got 1201",
               "{\"upstream\": {\"host\": \"h\", \"tls\": false, \"keepalive_s\": 1201}}");
  expect_error(true, "lan.max_client_id_len: expected an integer 1..255, got 0",
               "{\"lan\": {\"max_client_id_len\": 0}, " UP "}");
  expect_error(true, "lan.max_client_id_len: expected an integer 1..255, got 256",
               "{\"lan\": {\"max_client_id_len\": 256}, " UP "}");
  expect_error(true, "lan.n_retry: expected an integer 0..20, got 21",
               "{\"lan\": {\"n_retry\": 21}, " UP "}");
  expect_error(true, "lan.n_retry: expected an integer 0..20, got -1",
               "{\"lan\": {\"n_retry\": -1}, " UP "}");
  expect_error(true, "gateway_id: expected an integer 1..255, got 0", "{\"gateway_id\": 0, " UP "}");
  expect_error(true, "gateway_id: expected an integer 1..255, got 256",
               "{\"gateway_id\": 256, " UP "}");
  expect_error(false, "upstream.port: expected an integer 1..65535, got 1e+20",
               "{\"upstream\": {\"host\": \"h\", \"tls\": false, \"port\": 1e20}}");
  expect_error(true, "lan.advertise.interval_s: expected an integer 1..65535, got 65536",
               "{\"lan\": {\"advertise\": {\"interval_s\": 65536}}, " UP "}");
  expect_error(true, "upstream.backoff_cap_ms: expected an integer >= upstream.backoff_base_ms "
                     "(5000), got 4000",
               "{\"upstream\": {\"host\": \"h\", \"tls\": false, \"backoff_base_ms\": 5000, "
               "\"backoff_cap_ms\": 4000}}");
}

static void test_unknown_keys(void)
{
  expect_error(false, "frobnicate: unknown key (expected one of: log_level, gateway_id, lan, upstream, web, registry, outbox, admission, provisioning)",
               "{\"frobnicate\": 1, " UP "}");
  expect_error(true, "upstreem: unknown key (did you mean \"upstream\"?)",
               "{\"upstreem\": {}, " UP "}");
  expect_error(true, "upstream.prot: unknown key (did you mean \"port\"?)",
               "{\"upstream\": {\"host\": \"h\", \"tls\": false, \"prot\": 1}}");
  expect_error(true, "lan.advertise.adress: unknown key (did you mean \"address\"?)",
               "{\"lan\": {\"advertise\": {\"adress\": \"127.0.0.1\"}}, " UP "}");
  /* Keys are case-sensitive. */
  expect_error(false, "lan.Port: unknown key", "{\"lan\": {\"Port\": 1}, " UP "}");
  expect_error(true, "upstream.host: duplicate key",
               "{\"upstream\": {\"host\": \"h\", \"tls\": false, \"host\": \"i\"}}");
}

static void test_missing_required(void)
{
  expect_error(true, "upstream.host: required key missing (expected a host name or IP address)",
               "{}");
  expect_error(true, "upstream.host: required key missing (expected a host name or IP address)",
               "{\"upstream\": {\"tls\": false}}");
  expect_error(true,
               "upstream.ca_file: required key missing when upstream.tls is true (expected a "
               "readable file)",
               "{\"upstream\": {\"host\": \"h\"}}");
  expect_error(false, "upstream.ca_file: expected a readable file, got "
                      "\"/nonexistent/fleetgw/ca.pem\" (No such file or directory)",
               "{\"upstream\": {\"host\": \"h\", \"ca_file\": \"/nonexistent/fleetgw/ca.pem\"}}");
  expect_error(false, "upstream.ca_file: expected a readable file, got \"/tmp\" (is a directory)",
               "{\"upstream\": {\"host\": \"h\", \"ca_file\": \"/tmp\"}}");
  expect_error(false, "upstream.key_file: required key missing when upstream.cert_file is set",
               "{\"upstream\": {\"host\": \"h\", \"ca_file\": \"%s\", \"cert_file\": \"%s\"}}",
               g_ca, g_cert);
  expect_error(false, "upstream.cert_file: required key missing when upstream.key_file is set",
               "{\"upstream\": {\"host\": \"h\", \"ca_file\": \"%s\", \"key_file\": \"%s\"}}",
               g_ca, g_key);
  expect_error(false, "upstream.cert_dir: expected either upstream.cert_dir or upstream.cert_file",
               "{\"upstream\": {\"host\": \"h\", \"ca_file\": \"%s\", \"cert_file\": \"%s\", "
               "\"key_file\": \"%s\", \"cert_dir\": \"%s\"}}",
               g_ca, g_cert, g_key, g_dir);
  expect_error(false, "upstream.cert_dir: expected a readable directory, got",
               "{\"upstream\": {\"host\": \"h\", \"ca_file\": \"%s\", \"cert_dir\": \"%s\"}}",
               g_ca, g_ca);
}

static void test_bad_addresses(void)
{
  expect_error(true, "lan.bind: expected an IPv4 or IPv6 address literal, got \"1.2.3\"",
               "{\"lan\": {\"bind\": \"1.2.3\"}, " UP "}");
  expect_error(true, "lan.bind: expected an IPv4 or IPv6 address literal, got \"localhost\"",
               "{\"lan\": {\"bind\": \"localhost\"}, " UP "}");
  expect_error(true,
               "lan.advertise.address: expected an IPv4 or IPv6 address literal, got \"::g\"",
               "{\"lan\": {\"advertise\": {\"address\": \"::g\"}}, " UP "}");
  expect_error(false, "upstream.host: expected a host name or IP address, got \"a b\"",
               "{\"upstream\": {\"host\": \"a b\", \"tls\": false}}");
  expect_error(false, "upstream.host: expected a host name or IP address, got \"\"",
               "{\"upstream\": {\"host\": \"\", \"tls\": false}}");
}

/* admission.converters: IP literals only; the new limits' ranges. */
static void test_admission_limits(void)
{
  struct gw_config *cfg = NULL;
  char err[512] = "", path[64];
  int rc = load_fmt(&cfg, err, sizeof err, path, sizeof path,
                    "{\"admission\": {\"converters\": [\"127.0.0.4\", \"::1\"],"
                    " \"new_ids\": 0}, " UP "}");
  ASSERT_EQ(rc, 0);
  if (cfg) {
    ASSERT_EQ(cfg->admission.n_converters, 2);
    ASSERT_STR_EQ(cfg->admission.converters[1], "::1");
    ASSERT_EQ(cfg->admission.new_ids, 0);
    cfg_free(cfg);
  }
  expect_error(true, "admission.converters: expected an array of IPv4 or IPv6 address literals, "
                     "got \"plc-gw\"",
               "{\"admission\": {\"converters\": [\"127.0.0.1\", \"plc-gw\"]}, " UP "}");
  expect_error(true, "admission.converters: expected an array of IPv4 or IPv6 address literals, "
                     "got \"10.0.0.0/8\"",
               "{\"admission\": {\"converters\": [\"10.0.0.0/8\"]}, " UP "}");
  expect_error(true, "admission.converters: expected an array of IPv4 or IPv6 address literals, "
                     "got \"127.0.0.1\"",
               "{\"admission\": {\"converters\": \"127.0.0.1\"}, " UP "}");
  expect_error(true, "admission.allowlist: expected an array of non-empty strings (ClientIds or "
                     "patterns), got \"\"",
               "{\"admission\": {\"allowlist\": [\"\"]}, " UP "}");
  expect_error(false, "admission.sources_tracked: expected an integer 16..1000000",
               "{\"admission\": {\"sources_tracked\": 8}, " UP "}");
  expect_error(false, "admission.max_pending: expected an integer 1..1000000",
               "{\"admission\": {\"max_pending\": 0}, " UP "}");
  expect_error(false, "lan.max_keepalive_s: expected an integer 1..65535",
               "{\"lan\": {\"max_keepalive_s\": 0}, " UP "}");
  expect_error(false, "upstream.max_refusals: expected an integer 1..100",
               "{\"upstream\": {\"max_refusals\": 0, \"host\": \"h\", \"tls\": false}}");
  expect_error(false, "upstream.max_refusals: expected an integer 1..100",
               "{\"upstream\": {\"max_refusals\": 101, \"host\": \"h\", \"tls\": false}}");
  expect_error(false, "lan.max_keepalive_s: expected an integer 1..65535",
               "{\"lan\": {\"max_keepalive_s\": 65536}, " UP "}");
  expect_error(false, "lan.max_subscriptions: expected an integer 1..100000",
               "{\"lan\": {\"max_subscriptions\": 0}, " UP "}");
  expect_error(false, "lan.max_subscription_bytes: expected an integer 64..16777216",
               "{\"lan\": {\"max_subscription_bytes\": 16777217}, " UP "}");
  expect_error(false, "admission.sources_tracked: expected an integer 16..1000000",
               "{\"admission\": {\"sources_tracked\": 1000001}, " UP "}");
  expect_error(false, "admission.new_ids_window_s: expected an integer 1..86400",
               "{\"admission\": {\"new_ids_window_s\": 0}, " UP "}");
  expect_error(false, "registry.busy_timeout_ms: expected an integer 0..10000",
               "{\"registry\": {\"busy_timeout_ms\": 10001}, " UP "}");
  expect_error(false, "registry.min_free_bytes: expected an integer 0..9007199254740991",
               "{\"registry\": {\"min_free_bytes\": -1}, " UP "}");
  expect_error(false, "registry.max_bytes: expected an integer 0..9007199254740991",
               "{\"registry\": {\"max_bytes\": 1.5}, " UP "}");
}

/* The size guard's byte counts are 64-bit: a limit beyond 4 GiB is kept. */
static void test_registry_size_guard(void)
{
  struct gw_config *cfg = NULL;
  char err[512] = "", path[64];
  int rc = load_fmt(&cfg, err, sizeof err, path, sizeof path,
                    "{\"registry\": {\"max_bytes\": 10737418240, \"min_free_bytes\": 0,"
                    " \"audit_max_rows\": 0, \"audit_max_days\": 0, \"busy_timeout_ms\": 0}, "
                    UP "}");
  ASSERT_EQ(rc, 0);
  if (!cfg)
    return;
  ASSERT_EQ(cfg->registry.max_bytes, 10737418240ull);
  ASSERT_EQ(cfg->registry.min_free_bytes, 0);
  ASSERT_EQ(cfg->registry.audit_max_rows, 0);
  ASSERT_EQ(cfg->registry.audit_max_days, 0);
  ASSERT_EQ(cfg->registry.busy_timeout_ms, 0);
  cfg_free(cfg);
}

/* The members of "admission" that turn every new-identity limit off. */
#define NO_NEW_ID_LIMIT                                                                            \
  "\"new_ids\": 0, \"new_ids_per_port\": 0, \"new_ids_per_ip\": 0, \"new_ids_per_converter\": "    \
  "0"

/* Loads json (which must be valid) and returns cfg_warnings() into w. */
static size_t warnings_of(char w[][CFG_WARNING_LEN], size_t max, const char *json)
{
  struct gw_config *cfg = NULL;
  char err[512] = "", path[64];
  size_t n = 0;

  ASSERT_EQ(load_fmt(&cfg, err, sizeof err, path, sizeof path, "%s", json), 0);
  if (err[0])
    fprintf(stderr, "  load failed: %s\n", err);
  if (cfg) {
    n = cfg_warnings(cfg, w, max);
    cfg_free(cfg);
  }
  return n;
}

static void test_warnings(void)
{
  char w[4][CFG_WARNING_LEN], json[512];
  static const char *const loopback[] = {"127.0.0.1", "127.9.8.7", "::1", "::ffff:127.0.0.2"};

  ASSERT_EQ(warnings_of(w, 4, "{" UP "}"), 0);
  ASSERT_EQ(warnings_of(w, 4, "{\"web\": {\"bind\": \"0.0.0.0\"}, " UP "}"), 1);
  ASSERT_STR_EQ(w[0], "web.bind 0.0.0.0 without web.tls_cert_file: API tokens cross the network in "
                      "clear");
  ASSERT_EQ(warnings_of(w, 4, "{\"web\": {\"bind\": \"fd00::7\"}, " UP "}"), 1);
  ASSERT_STR_EQ(w[0], "web.bind fd00::7 without web.tls_cert_file: API tokens cross the network in "
                      "clear");
  for (size_t i = 0; i < sizeof loopback / sizeof loopback[0]; i++) {
    snprintf(json, sizeof json, "{\"web\": {\"bind\": \"%s\"}, " UP "}", loopback[i]);
    ASSERT_EQ(warnings_of(w, 4, json), 0);
  }
  /* With TLS, or with the web server off, there is nothing to warn about. */
  snprintf(json, sizeof json,
           "{\"web\": {\"bind\": \"0.0.0.0\", \"tls_cert_file\": \"%s\", \"tls_key_file\": "
           "\"%s\"}, " UP "}", g_cert, g_key);
  ASSERT_EQ(warnings_of(w, 4, json), 0);
  ASSERT_EQ(warnings_of(w, 4, "{\"web\": {\"bind\": \"0.0.0.0\", \"enabled\": false}, " UP "}"),
            0);
  /* "open" with every new-identity limit off, with or without a backend. */
  ASSERT_EQ(
      warnings_of(w, 4, "{\"admission\": {\"policy\": \"open\", " NO_NEW_ID_LIMIT "}, " UP "}"), 1);
  ASSERT_STR_EQ(w[0], "admission.policy \"open\" with no new-identity limit: any box on the "
                      "LAN can mint identities");
  ASSERT_EQ(warnings_of(w, 4,
                        "{\"admission\": {\"policy\": \"open\", " NO_NEW_ID_LIMIT "}, "
                        "\"provisioning\": {\"backend\": \"local-ca\"}, " UP "}"),
            1);
  ASSERT_TRUE(strstr(w[0], "with no new-identity limit") != NULL);
  /* One limit left, or another policy: no warning. */
  ASSERT_EQ(warnings_of(w, 4,
                        "{\"admission\": {\"policy\": \"open\", \"new_ids\": 0, "
                        "\"new_ids_per_port\": 0, \"new_ids_per_converter\": 0}, " UP "}"),
            0);
  ASSERT_EQ(
      warnings_of(w, 4, "{\"admission\": {\"policy\": \"approve\", " NO_NEW_ID_LIMIT "}, " UP "}"),
      0);
  /* "open" with a backend and no gateway-wide limit mints without bound. */
  ASSERT_EQ(warnings_of(w, 4, "{\"admission\": {\"policy\": \"open\", \"new_ids\": 0}, "
                              "\"provisioning\": {\"backend\": \"local-ca\"}, " UP "}"), 1);
  ASSERT_TRUE(strncmp(w[0], "admission.policy \"open\" with admission.new_ids 0", 48) == 0);
  ASSERT_EQ(warnings_of(w, 4, "{\"admission\": {\"policy\": \"open\"}, "
                              "\"provisioning\": {\"backend\": \"local-ca\"}, " UP "}"), 0);
  /* Never more than max lines. */
  ASSERT_EQ(warnings_of(w, 1, "{\"web\": {\"bind\": \"::\"}, \"admission\": {\"policy\": "
                              "\"open\", \"new_ids\": 0}, \"provisioning\": {\"backend\": "
                              "\"local-ca\"}, " UP "}"), 1);
  ASSERT_EQ(warnings_of(w, 0, "{\"web\": {\"bind\": \"::\"}, " UP "}"), 0);
}

/* A token file group or others may read is refused, naming key, path and fix. */
static void test_token_file_modes(void)
{
  char tok[64], want[400], json[512], err[512] = "", path[64];
  struct gw_config *cfg = NULL;

  make_file(tok, sizeof tok, "0123456789abcdef0123\n");
  ASSERT_EQ(chmod(tok, 0644), 0);
  snprintf(want, sizeof want,
           "web.read_token_file: expected a file only its owner may access, got \"%s\" with "
           "mode 0644 (group or others may read the token: chmod 600 %s)", tok, tok);
  expect_error(true, want, "{\"web\": {\"read_token_file\": \"%s\"}, " UP "}", tok);
  ASSERT_EQ(chmod(tok, 0640), 0);
  snprintf(want, sizeof want, "web.admin_token_file: expected a file only its owner may "
                              "access, got \"%s\" with mode 0640", tok);
  expect_error(false, want, "{\"web\": {\"admin_token_file\": \"%s\"}, " UP "}", tok);

  /* The file the gateway does not read is not checked: a variable replaces
   * it, or the web server is off. */
  setenv("FLEETGW_TEST_TOKEN", "0123456789abcdef0123", 1);
  snprintf(json, sizeof json, "{\"web\": {\"admin_token_file\": \"%s\", \"admin_token_env\": "
                              "\"FLEETGW_TEST_TOKEN\"}, " UP "}", tok);
  ASSERT_EQ(load_fmt(&cfg, err, sizeof err, path, sizeof path, "%s", json), 0);
  cfg_free(cfg);
  unsetenv("FLEETGW_TEST_TOKEN");
  cfg = NULL;
  snprintf(json, sizeof json, "{\"web\": {\"enabled\": false, \"read_token_file\": \"%s\"}, " UP
                              "}", tok);
  ASSERT_EQ(load_fmt(&cfg, err, sizeof err, path, sizeof path, "%s", json), 0);
  cfg_free(cfg);

  /* 0600 is fine, and so is an admin token file that does not exist yet. */
  ASSERT_EQ(chmod(tok, 0600), 0);
  cfg = NULL;
  snprintf(json, sizeof json, "{\"web\": {\"read_token_file\": \"%s\", \"admin_token_file\": "
                              "\"%s.missing\"}, " UP "}", tok, tok);
  ASSERT_EQ(load_fmt(&cfg, err, sizeof err, path, sizeof path, "%s", json), 0);
  ASSERT_STR_EQ(err, "");
  cfg_free(cfg);
  unlink(tok);
}

static void test_bad_template(void)
{
  expect_error(false, "upstream.client_id_template: expected a template containing {client_id}",
               "{\"upstream\": {\"host\": \"h\", \"tls\": false, \"client_id_template\": "
               "\"gw-{gateway_id}\"}}");
  expect_error(false, "(unknown placeholder or stray brace)",
               "{\"upstream\": {\"host\": \"h\", \"tls\": false, \"client_id_template\": "
               "\"{client_id}-{thing}\"}}");
  expect_error(false, "upstream.client_id_template: expected",
               "{\"upstream\": {\"host\": \"h\", \"tls\": false, \"client_id_template\": "
               "\"{client_id}}\"}}");
}

static void test_bad_predefined(void)
{
  expect_error(true, "lan.predefined_topics.0: expected a topic id \"1\"..\"65534\" as the key, "
                     "got \"0\"",
               "{\"lan\": {\"predefined_topics\": {\"0\": \"a\"}}, " UP "}");
  expect_error(false, "lan.predefined_topics.65535: expected a topic id",
               "{\"lan\": {\"predefined_topics\": {\"65535\": \"a\"}}, " UP "}");
  expect_error(false, "lan.predefined_topics.abc: expected a topic id",
               "{\"lan\": {\"predefined_topics\": {\"abc\": \"a\"}}, " UP "}");
  expect_error(false, "lan.predefined_topics.07: expected a topic id",
               "{\"lan\": {\"predefined_topics\": {\"07\": \"a\"}}, " UP "}");
  expect_error(false, "lan.predefined_topics.-1: expected a topic id",
               "{\"lan\": {\"predefined_topics\": {\"-1\": \"a\"}}, " UP "}");
  expect_error(true,
               "lan.predefined_topics.5: expected a valid MQTT topic name without wildcards, "
               "got \"a/+/b\"",
               "{\"lan\": {\"predefined_topics\": {\"5\": \"a/+/b\"}}, " UP "}");
  expect_error(false, "lan.predefined_topics.5: expected a valid MQTT topic name",
               "{\"lan\": {\"predefined_topics\": {\"5\": \"\"}}, " UP "}");
  expect_error(false, "lan.predefined_topics.5: expected a valid MQTT topic name",
               "{\"lan\": {\"predefined_topics\": {\"5\": 5}}, " UP "}");
  expect_error(true, "lan.predefined_topics.5: duplicate topic id",
               "{\"lan\": {\"predefined_topics\": {\"5\": \"a\", \"6\": \"b\", \"5\": \"c\"}}, " UP
               "}");
  expect_error(false, "lan.predefined_topics: expected an object",
               "{\"lan\": {\"predefined_topics\": [\"a\"]}, " UP "}");
}

static void test_password_env(void)
{
  unsetenv("FLEETGW_TEST_UNSET_PW");
  expect_error(true,
               "upstream.password_env: expected the name of a set environment variable, got "
               "\"FLEETGW_TEST_UNSET_PW\" (not set)",
               "{\"upstream\": {\"host\": \"h\", \"tls\": false, \"username\": \"u\", "
               "\"password_env\": \"FLEETGW_TEST_UNSET_PW\"}}");
  expect_error(false, "upstream.password_env: expected an environment variable name",
               "{\"upstream\": {\"host\": \"h\", \"tls\": false, \"username\": \"u\", "
               "\"password_env\": \"1BAD\"}}");
  setenv("FLEETGW_TEST_PW2", "pw", 1);
  expect_error(false, "upstream.username: required key missing when upstream.password_env is set",
               "{\"upstream\": {\"host\": \"h\", \"tls\": false, \"password_env\": "
               "\"FLEETGW_TEST_PW2\"}}");
  unsetenv("FLEETGW_TEST_PW2");
}

static void test_syntax_and_file_errors(void)
{
  char path[64], err[512];
  struct gw_config *cfg = NULL;
  FILE *f;

  expect_error(false, "line 3, column 17: JSON syntax error near",
               "{\n  \"upstream\": {\n    \"host\": \"h\",,\n    \"tls\": false\n  }\n}\n");
  expect_error(false, "line 1, column 1: JSON syntax error", "%s", "");
  expect_error(false, "JSON syntax error", "{\"upstream\": {\"host\": \"h\", \"tls\": false}} x");
  expect_error(false, "line 1, column ", "{\"upstream\": {");
  expect_error(false, "unexpected end of input", "{\"upstream\": {\"host\": \"h\",\n\n");

  ASSERT_EQ(cfg_load("/nonexistent/fleetgw.json", &cfg, err, sizeof err), -1);
  ASSERT_STR_EQ(err, "/nonexistent/fleetgw.json: cannot open: No such file or directory");
  ASSERT_TRUE(cfg == NULL);

  ASSERT_EQ(cfg_load("/tmp", &cfg, err, sizeof err), -1);
  ASSERT_STR_EQ(err, "/tmp: expected a JSON file, got a directory");

  /* More than 1 MiB: refused before parsing. */
  make_file(path, sizeof path, NULL);
  f = fopen(path, "w");
  ASSERT_TRUE(f != NULL);
  if (f) {
    fputs("{\"upstream\": {\"host\": \"h\", \"tls\": false}}", f);
    for (int i = 0; i < 1024 * 1024; i++)
      fputc(' ', f);
    fclose(f);
    ASSERT_EQ(cfg_load(path, &cfg, err, sizeof err), -1);
    ASSERT_TRUE(strstr(err, "at most 1 MiB") != NULL);
  }
  unlink(path);

  /* A tiny error buffer is truncated, never overrun, and NULL is allowed. */
  {
    char small[8];
    ASSERT_EQ(cfg_load("/nonexistent/fleetgw.json", &cfg, small, sizeof small), -1);
    ASSERT_EQ(strlen(small), 7);
    ASSERT_EQ(cfg_load("/nonexistent/fleetgw.json", &cfg, NULL, 0), -1);
  }
}

static void test_client_id_expansion(void)
{
  struct gw_config *cfg = NULL;
  char err[512] = "", path[64], out[64];
  int rc = load_fmt(&cfg, err, sizeof err, path, sizeof path,
                    "{\"gateway_id\": 7, \"upstream\": {\"host\": \"h\", \"tls\": false, "
                    "\"client_id_template\": \"gw{gateway_id}/{client_id}/{gateway_id}\"}}");
  ASSERT_EQ(rc, 0);
  if (!cfg)
    return;
  ASSERT_EQ(cfg_upstream_client_id(cfg, "leaf-1", out, sizeof out), 0);
  ASSERT_STR_EQ(out, "gw7/leaf-1/7");
  /* "gw7/leaf-1/7" is 12 bytes: 13 fits exactly, 12 does not. */
  ASSERT_EQ(cfg_upstream_client_id(cfg, "leaf-1", out, 13), 0);
  ASSERT_STR_EQ(out, "gw7/leaf-1/7");
  ASSERT_EQ(cfg_upstream_client_id(cfg, "leaf-1", out, 12), -1);
  ASSERT_STR_EQ(out, "");
  ASSERT_EQ(cfg_upstream_client_id(cfg, "leaf-1", out, 1), -1);
  ASSERT_EQ(cfg_upstream_client_id(cfg, "leaf-1", out, 0), -1);
  ASSERT_EQ(cfg_upstream_client_id(cfg, "", out, sizeof out), 0);
  ASSERT_STR_EQ(out, "gw7//7");
  ASSERT_EQ(cfg_upstream_client_id(cfg, NULL, out, sizeof out), -1);

  free(cfg->upstream.client_id_template);
  cfg->upstream.client_id_template = strdup("{client_id}");
  ASSERT_TRUE(cfg->upstream.client_id_template != NULL);
  ASSERT_EQ(cfg_upstream_client_id(cfg, "thing-42", out, sizeof out), 0);
  ASSERT_STR_EQ(out, "thing-42");
  ASSERT_EQ(cfg_upstream_client_id(cfg, "thing-42", out, 8), -1);
  cfg_free(cfg);
}

/* registry, admission and provisioning: defaults, a full aws section, the
 * cross-key rules and the name expansions. */
static void test_provisioning_sections(void)
{
  struct gw_config *cfg = NULL;
  char err[512] = "", path[64], out[128];
  int rc = load_fmt(&cfg, err, sizeof err, path, sizeof path,
                    "{\"upstream\": {\"host\": \"h\", \"ca_file\": \"%s\"},"
                    " \"registry\": {\"path\": \"/tmp/x.db\"}}", g_ca);
  ASSERT_EQ(rc, 0);
  if (cfg) {
    ASSERT_STR_EQ(cfg->registry.key_file, "/tmp/x.db.key");
    ASSERT_EQ(cfg->registry.synchronous, 1);
    /* The safe defaults: nothing gets an identity without an operator, and
     * never-seen ClientIds are rate-limited by source. */
    ASSERT_EQ(cfg->admission.policy, POLICY_APPROVE);
    ASSERT_STR_EQ(cfg->admission.pattern, "*");
    ASSERT_TRUE(cfg->admission.bind_address);
    ASSERT_EQ(cfg->admission.new_ids_per_port, 1);
    ASSERT_EQ(cfg->admission.new_ids_per_port_window_s, 600);
    ASSERT_EQ(cfg->admission.new_ids_per_ip, 5);
    ASSERT_EQ(cfg->admission.new_ids_per_ip_window_s, 60);
    ASSERT_EQ(cfg->admission.n_converters, 0);
    ASSERT_EQ(cfg->admission.new_ids_per_converter, 100);
    ASSERT_EQ(cfg->admission.new_ids, 30);
    ASSERT_EQ(cfg->admission.new_ids_window_s, 60);
    ASSERT_EQ(cfg->admission.sources_tracked, 4096);
    ASSERT_EQ(cfg->admission.pending_ttl_s, 86400);
    ASSERT_EQ(cfg->admission.max_pending, 1000);
    ASSERT_EQ(cfg->registry.busy_timeout_ms, 50);
    ASSERT_EQ(cfg->registry.audit_max_rows, 100000);
    ASSERT_EQ(cfg->registry.audit_max_days, 90);
    ASSERT_EQ(cfg->registry.max_bytes, 0);
    ASSERT_EQ(cfg->registry.min_free_bytes, 64u * 1024 * 1024);
    ASSERT_EQ(cfg->lan.max_keepalive_s, 3600);
    ASSERT_EQ(cfg->lan.max_subscriptions, 64);
    ASSERT_EQ(cfg->lan.max_subscription_bytes, 16384);
    ASSERT_EQ(cfg->upstream.max_refusals, 3);
    ASSERT_EQ(cfg->provisioning.backend, BACKEND_NONE);
    ASSERT_EQ(cfg->provisioning.rate_per_s, 10);
    ASSERT_EQ(cfg->provisioning.aws.token_ttl_s, 3600);
    ASSERT_TRUE(!cfg->provisioning.aws.create_keys);
    ASSERT_EQ(cfg->upstream.max_connecting, 64);
    ASSERT_EQ(cfg->upstream.connect_rate_per_s, 500);
    ASSERT_EQ(cfg_claim_client_id(cfg, 3, out, sizeof out), 0);
    ASSERT_STR_EQ(out, "fleetgw-1-claim-3");
    ASSERT_EQ(cfg_thing_name(cfg, "leaf-9", out, sizeof out), 0);
    ASSERT_STR_EQ(out, "leaf-9");
    cfg_free(cfg);
    cfg = NULL;
  }

  rc = load_fmt(&cfg, err, sizeof err, path, sizeof path,
                "{\"gateway_id\": 4, \"upstream\": {\"host\": \"h\", \"ca_file\": \"%s\"},"
                " \"admission\": {\"policy\": \"approve\", \"allowlist\": [\"a\", \"b*\"],"
                " \"bind_address\": false},"
                " \"provisioning\": {\"backend\": \"aws\", \"thing_name_template\": \"gw{gateway_id}-{client_id}\","
                " \"aws\": {\"claim_cert_file\": \"%s\", \"claim_key_file\": \"%s\","
                " \"template_name\": \"FleetTemplate_1\", \"method\": \"create-keys\","
                " \"parameters\": {\"GatewayId\": \"gw-4\"}, \"token_ttl_s\": 5}}}",
                g_ca, g_ca, g_ca);
  ASSERT_EQ(rc, 0);
  if (cfg) {
    ASSERT_EQ(cfg->admission.policy, POLICY_APPROVE);
    ASSERT_EQ(cfg->admission.n_allowlist, 2);
    ASSERT_STR_EQ(cfg->admission.allowlist[1], "b*");
    ASSERT_TRUE(!cfg->admission.bind_address);
    ASSERT_EQ(cfg->provisioning.backend, BACKEND_AWS);
    ASSERT_TRUE(cfg->provisioning.aws.create_keys);
    ASSERT_EQ(cfg->provisioning.aws.n_params, 1);
    ASSERT_STR_EQ(cfg->provisioning.aws.params[0].key, "GatewayId");
    ASSERT_STR_EQ(cfg->provisioning.aws.params[0].value, "gw-4");
    ASSERT_EQ(cfg->provisioning.aws.token_ttl_s, 5);
    ASSERT_EQ(cfg_thing_name(cfg, "leaf-9", out, sizeof out), 0);
    ASSERT_STR_EQ(out, "gw4-leaf-9");
    cfg_free(cfg);
  }

  expect_error(false, "provisioning.backend: expected one of \"none\", \"local-ca\", \"aws\"",
               "{\"upstream\": {\"host\": \"h\", \"ca_file\": \"%s\"},"
               " \"provisioning\": {\"backend\": \"cloud\"}}", g_ca);
  expect_error(false, "provisioning.aws.claim_cert_file: required key missing",
               "{\"upstream\": {\"host\": \"h\", \"ca_file\": \"%s\"},"
               " \"provisioning\": {\"backend\": \"aws\"}}", g_ca);
  expect_error(false, "provisioning.aws.template_name: expected a provisioning template name",
               "{\"upstream\": {\"host\": \"h\", \"ca_file\": \"%s\"},"
               " \"provisioning\": {\"aws\": {\"template_name\": \"bad name!\"}}}", g_ca);
  expect_error(false, "upstream.tls: expected true",
               "{\"upstream\": {\"host\": \"h\", \"tls\": false},"
               " \"provisioning\": {\"backend\": \"aws\"}}");
  expect_error(false, "upstream.cert_file: expected no upstream certificate",
               "{\"upstream\": {\"host\": \"h\", \"ca_file\": \"%s\", \"cert_file\": \"%s\","
               " \"key_file\": \"%s\"}, \"provisioning\": {\"backend\": \"local-ca\"}}",
               g_ca, g_ca, g_ca);
  expect_error(false, "admission.allowlist: expected an array",
               "{\"upstream\": {\"host\": \"h\", \"ca_file\": \"%s\"},"
               " \"admission\": {\"allowlist\": \"a\"}}", g_ca);
  expect_error(false, "provisioning.aws.parameters.X: expected a string value",
               "{\"upstream\": {\"host\": \"h\", \"ca_file\": \"%s\"},"
               " \"provisioning\": {\"aws\": {\"parameters\": {\"X\": 1}}}}", g_ca);
  expect_error(false, "provisioning.aws.client_id_prefix: expected printable",
               "{\"upstream\": {\"host\": \"h\", \"ca_file\": \"%s\"},"
               " \"provisioning\": {\"aws\": {\"client_id_prefix\": \"a{client_id}\"}}}", g_ca);
}

/* deploy/fleetgw.example.json must be valid, use only known keys, mention
 * every key, and hold the defaults (but the listen addresses, kept on
 * loopback in the shipped file).  Its ca_file does not exist here, so a
 * copy with ca_file pointing to a temp file is loaded. */
static void test_example_file(void)
{
  static const char *const keys[] = {
      "log_level", "gateway_id", "lan", "upstream", "web", "registry", "outbox", "admission",
      "provisioning", NULL,
  };
  static const char *const lan_keys[] = {
      "bind", "port", "recv_buffer_bytes", "max_client_id_len", "max_leaves", "t_retry_ms",
      "n_retry", "connack_timeout_ms", "queue_max", "advertise", "predefined_topics", NULL,
  };
  static const char *const adv_keys[] = {"address", "port", "interval_s", NULL};
  static const char *const up_keys[] = {
      "host", "port", "tls", "ca_file", "cert_file", "key_file", "cert_dir", "alpn",
      "client_id_template", "username", "password_env", "keepalive_s", "clean_session",
      "connect_timeout_ms", "backoff_base_ms", "backoff_cap_ms", "give_up_after_s",
      "max_queue", "max_packet", "qos_minus1_client_id", NULL,
  };
  const char *data = getenv("FLEETGW_TEST_DATA");
  char src[1024], path[64], err[512] = "";
  struct gw_config *cfg = NULL;
  cJSON *root, *up, *lan;
  char *text = NULL;
  long len;
  FILE *f;

  ASSERT_TRUE(data != NULL);
  if (!data)
    return;
  snprintf(src, sizeof src, "%s/../deploy/fleetgw.example.json", data);
  f = fopen(src, "rb");
  ASSERT_TRUE(f != NULL);
  if (!f)
    return;
  fseek(f, 0, SEEK_END);
  len = ftell(f);
  rewind(f);
  text = calloc(1, (size_t)len + 1);
  ASSERT_TRUE(text != NULL);
  if (text)
    ASSERT_EQ(fread(text, 1, (size_t)len, f), len);
  fclose(f);
  if (!text)
    return;

  root = cJSON_Parse(text);
  free(text);
  ASSERT_TRUE(root != NULL);
  if (!root)
    return;
  up = cJSON_GetObjectItemCaseSensitive(root, "upstream");
  lan = cJSON_GetObjectItemCaseSensitive(root, "lan");
  ASSERT_TRUE(up != NULL && lan != NULL);
  for (int i = 0; keys[i]; i++)
    ASSERT_TRUE(cJSON_HasObjectItem(root, keys[i]));
  for (int i = 0; lan_keys[i]; i++)
    ASSERT_TRUE(cJSON_HasObjectItem(lan, lan_keys[i]));
  for (int i = 0; adv_keys[i]; i++)
    ASSERT_TRUE(cJSON_HasObjectItem(cJSON_GetObjectItemCaseSensitive(lan, "advertise"),
                                    adv_keys[i]));
  for (int i = 0; up_keys[i]; i++)
    ASSERT_TRUE(cJSON_HasObjectItem(up, up_keys[i]));
  ASSERT_STR_EQ(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(up, "ca_file")),
                "/etc/fleetgw/ca.pem");

  /* Point ca_file at an existing file, the registry (whose directory, the
   * state directory systemd creates, does not exist here) into /tmp, and
   * load the rewritten copy. */
  ASSERT_TRUE(cJSON_ReplaceItemInObjectCaseSensitive(up, "ca_file", cJSON_CreateString(g_ca)));
  ASSERT_STR_EQ(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(
                    cJSON_GetObjectItemCaseSensitive(root, "registry"), "path")),
                "/var/lib/fleetgw/registry.db");
  ASSERT_TRUE(cJSON_ReplaceItemInObjectCaseSensitive(
      cJSON_GetObjectItemCaseSensitive(root, "registry"), "path",
      cJSON_CreateString("/tmp/fleetgw-example-registry.db")));
  text = cJSON_Print(root);
  cJSON_Delete(root);
  ASSERT_TRUE(text != NULL);
  if (!text)
    return;
  make_file(path, sizeof path, text);
  free(text);
  ASSERT_EQ(cfg_load(path, &cfg, err, sizeof err), 0);
  if (!cfg)
    fprintf(stderr, "  message was: %s\n", err);
  unlink(path);
  if (!cfg)
    return;
  ASSERT_STR_EQ(cfg->upstream.host, "localhost");
  ASSERT_STR_EQ(cfg->upstream.ca_file, g_ca);
  ASSERT_TRUE(cfg->upstream.tls);
  ASSERT_EQ(cfg->upstream.port, 8883);
  ASSERT_EQ(cfg->log_level, LOG_INFO);
  ASSERT_EQ(cfg->lan.port, 1884);
  ASSERT_EQ(cfg->lan.max_client_id_len, 23);
  ASSERT_TRUE(cfg->lan.advertise_address == NULL);
  ASSERT_EQ(cfg->upstream.max_packet, 132096);
  ASSERT_EQ(cfg->upstream.keepalive_s, 60);
  cfg_free(cfg);
}

/* lan.dtls and admission.plain_udp: defaults, values, and the rules that
 * tie them together. */
static void test_dtls_keys(void)
{
  struct gw_config *cfg = NULL;
  char err[512] = "", path[64], w[4][CFG_WARNING_LEN], json[1024];

  ASSERT_EQ(load_fmt(&cfg, err, sizeof err, path, sizeof path, "{" UP "}"), 0);
  if (cfg) {
    ASSERT_TRUE(!cfg->lan.dtls.enabled);
    ASSERT_STR_EQ(cfg->lan.dtls.bind, "0.0.0.0");
    ASSERT_EQ(cfg->lan.dtls.port, 8884);
    ASSERT_EQ(cfg->lan.dtls.mtu, 1200);
    ASSERT_EQ(cfg->lan.dtls.max_handshakes, 64);
    ASSERT_EQ(cfg->lan.dtls.max_handshakes_per_ip, 8);
    ASSERT_EQ(cfg->lan.dtls.handshake_timeout_ms, 30000);
    ASSERT_EQ(cfg->lan.dtls.idle_timeout_s, 86400);
    ASSERT_TRUE(cfg->lan.dtls.ciphers == NULL && cfg->lan.dtls.cert_file == NULL &&
                cfg->lan.dtls.key_file == NULL && cfg->lan.dtls.ca_file == NULL);
    ASSERT_EQ(cfg->admission.plain_udp, PLAIN_UDP_ALLOW);
    ASSERT_EQ(cfg->admission.n_plain_udp_clients, 0);
    cfg_free(cfg);
  }
  cfg = NULL;
  ASSERT_EQ(load_fmt(&cfg, err, sizeof err, path, sizeof path,
                     "{\"lan\": {\"dtls\": {\"enabled\": true, \"bind\": \"::1\", \"port\": 5684, "
                     "\"mtu\": 500, \"ciphers\": \"PSK-AES128-CCM8\", \"cert_file\": \"%s\", "
                     "\"key_file\": \"%s\", \"ca_file\": \"%s\"}}, \"admission\": {\"plain_udp\": "
                     "\"listed\", \"plain_udp_clients\": [\"old-*\", \"legacy-1\"]}, " UP "}",
                     g_cert, g_key, g_ca),
            0);
  if (cfg) {
    ASSERT_TRUE(cfg->lan.dtls.enabled);
    ASSERT_STR_EQ(cfg->lan.dtls.bind, "::1");
    ASSERT_EQ(cfg->lan.dtls.port, 5684);
    ASSERT_EQ(cfg->lan.dtls.mtu, 500);
    ASSERT_STR_EQ(cfg->lan.dtls.ciphers, "PSK-AES128-CCM8");
    ASSERT_STR_EQ(cfg->lan.dtls.ca_file, g_ca);
    ASSERT_EQ(cfg->admission.plain_udp, PLAIN_UDP_LISTED);
    ASSERT_EQ(cfg->admission.n_plain_udp_clients, 2);
    if (cfg->admission.n_plain_udp_clients == 2)
      ASSERT_STR_EQ(cfg->admission.plain_udp_clients[1], "legacy-1");
    cfg_free(cfg);
  }

  expect_error(true, "lan.dtls.mtu: expected an integer 256..16384, got 100",
               "{\"lan\": {\"dtls\": {\"mtu\": 100}}, " UP "}");
  expect_error(false, "admission.plain_udp: expected one of \"allow\"",
               "{\"admission\": {\"plain_udp\": \"never\"}, " UP "}");
  expect_error(true,
               "admission.plain_udp: expected \"allow\" or \"listed\" when lan.dtls.enabled is "
               "false (no leaf could connect)",
               "{\"admission\": {\"plain_udp\": \"off\"}, " UP "}");
  expect_error(true, "lan.dtls.port: expected a port other than lan.port (1884)",
               "{\"lan\": {\"dtls\": {\"enabled\": true, \"port\": 1884}}, " UP "}");
  snprintf(json, sizeof json, "{\"lan\": {\"dtls\": {\"cert_file\": \"%s\"}}, " UP "}", g_cert);
  expect_error(false, "lan.dtls.key_file: required key missing when another of", "%s", json);
  snprintf(json, sizeof json,
           "{\"lan\": {\"dtls\": {\"cert_file\": \"%s\", \"key_file\": \"%s\"}}, " UP "}", g_cert,
           g_key);
  expect_error(false, "lan.dtls.ca_file: required key missing", "%s", json);

  /* DTLS only is valid; DTLS beside open plain UDP, or "listed" with an
   * empty list, is warned about. */
  ASSERT_EQ(warnings_of(w, 4,
                        "{\"lan\": {\"dtls\": {\"enabled\": true}}, \"admission\": "
                        "{\"plain_udp\": \"off\"}, " UP "}"),
            0);
  ASSERT_EQ(warnings_of(w, 4, "{\"lan\": {\"dtls\": {\"enabled\": true}}, " UP "}"), 1);
  ASSERT_TRUE(strstr(w[0], "plain_udp \"allow\"") != NULL);
  ASSERT_EQ(warnings_of(w, 4, "{\"admission\": {\"plain_udp\": \"listed\"}, " UP "}"), 1);
  ASSERT_TRUE(strstr(w[0], "refused to every leaf") != NULL);
}

int main(void)
{
  make_file(g_ca, sizeof g_ca, "-----BEGIN CERTIFICATE-----\n");
  make_file(g_cert, sizeof g_cert, "-----BEGIN CERTIFICATE-----\n");
  make_file(g_key, sizeof g_key, "-----BEGIN PRIVATE KEY-----\n");
  snprintf(g_dir, sizeof g_dir, "/tmp/fleetgw-test-dir-XXXXXX");
  ASSERT_TRUE(mkdtemp(g_dir) != NULL);

  RUN(test_minimal_defaults);
  RUN(test_plain_port_default);
  RUN(test_full_file);
  RUN(test_cert_dir);
  RUN(test_wrong_types);
  RUN(test_out_of_range);
  RUN(test_unknown_keys);
  RUN(test_missing_required);
  RUN(test_bad_addresses);
  RUN(test_admission_limits);
  RUN(test_registry_size_guard);
  RUN(test_warnings);
  RUN(test_token_file_modes);
  RUN(test_bad_template);
  RUN(test_bad_predefined);
  RUN(test_password_env);
  RUN(test_syntax_and_file_errors);
  RUN(test_client_id_expansion);
  RUN(test_example_file);
  RUN(test_provisioning_sections);
  RUN(test_dtls_keys);

  unlink(g_ca);
  unlink(g_cert);
  unlink(g_key);
  rmdir(g_dir);
  return TEST_END();
}
