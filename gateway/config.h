/*
 * config.h - the gateway's configuration: one JSON file (--config).
 *
 * cfg_load() reads the file, applies the defaults for absent keys, and
 * validates every key.  An unknown key, a wrong type or an out-of-range value
 * is an error whose message names the file, the key (as a JSON path such as
 * "upstream.port") and what was expected, e.g.
 *   fleetgw.json: upstream.port: expected an integer 1..65535, got "abc"
 * Every key is documented in README.md with its default.  The defaults live
 * in one place, the key tables of config_keys.c; the comments below name
 * each field's key but do not repeat its default, and test_config_readme
 * checks README.md against the tables (cfg_key_at()).
 *
 * Strings in struct gw_config are owned by it (freed by cfg_free).  NULL means
 * "not set" for optional strings.
 */
#ifndef FLEETGW_CONFIG_H
#define FLEETGW_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct cfg_predefined {
  uint16_t id;       /* 1..65534 */
  char *topic;       /* valid MQTT topic name */
};

/* A name/value pair: "provisioning.aws.parameters". */
struct cfg_param {
  char *key;
  char *value;
};

enum cfg_policy { POLICY_OPEN = 0, POLICY_ALLOWLIST = 1, POLICY_APPROVE = 2 };
/* Who may use plain (unauthenticated) UDP: everyone, the listed ClientIds, nobody. */
enum cfg_plain_udp { PLAIN_UDP_ALLOW = 0, PLAIN_UDP_LISTED = 1, PLAIN_UDP_OFF = 2 };
enum cfg_backend { BACKEND_NONE = 0, BACKEND_LOCAL_CA = 1, BACKEND_AWS = 2 };
enum cfg_when_full { WHEN_FULL_REJECT = 0, WHEN_FULL_DROP_OLDEST = 1 };

struct gw_config {
  char *path;                  /* the file it was loaded from */
  int log_level;               /* "log_level": enum log_level */
  uint8_t gateway_id;          /* "gateway_id": 1..255 */

  struct {
    char *bind;                /* "lan.bind" */
    uint16_t port;             /* "lan.port" */
    uint32_t recv_buffer_bytes;/* "lan.recv_buffer_bytes": SO_RCVBUF */
    uint32_t max_client_id_len;/* "lan.max_client_id_len": 1..255 (spec: 23) */
    uint32_t max_leaves;       /* "lan.max_leaves" */
    uint32_t t_retry_ms;       /* "lan.t_retry_ms": spec 10-15 s */
    uint32_t n_retry;          /* "lan.n_retry": spec 3-5 */
    uint32_t connack_timeout_ms; /* "lan.connack_timeout_ms" */
    uint32_t queue_max;        /* "lan.queue_max": messages buffered per leaf (asleep or busy) */
    uint32_t max_keepalive_s;  /* "lan.max_keepalive_s": Duration 0 or above becomes this */
    uint32_t max_subscriptions;     /* "lan.max_subscriptions": per leaf */
    uint32_t max_subscription_bytes; /* "lan.max_subscription_bytes": filter bytes per leaf */
    char *advertise_address;   /* "lan.advertise.address": NULL = ADVERTISE off */
    uint16_t advertise_port;   /* "lan.advertise.port" */
    uint32_t advertise_interval_s; /* "lan.advertise.interval_s": spec T_ADV > 15 min */
    struct cfg_predefined *predefined; /* "lan.predefined_topics": {"1": "a/b", ...} */
    size_t n_predefined;
    struct {                   /* "lan.dtls": MQTT-SN over DTLS 1.2 (docs/dtls.md) */
      bool enabled;
      char *bind;
      uint16_t port;
      uint32_t mtu;            /* record MTU, IP and UDP headers excluded */
      uint32_t max_handshakes; /* in progress at once */
      uint32_t max_handshakes_per_ip;
      uint32_t handshake_timeout_ms;
      uint32_t idle_timeout_s; /* an association silent this long is closed */
      char *ciphers;           /* NULL: the built-in list */
      char *cert_file;         /* certificate mode: the gateway's certificate, */
      char *key_file;          /* its key */
      char *ca_file;           /* and the factory CA of the leaves' certificates */
    } dtls;
  } lan;

  struct {
    char *host;                /* "upstream.host": required */
    uint16_t port;             /* "upstream.port": 8883 with TLS, 1883 without */
    bool tls;                  /* "upstream.tls" */
    int tls_max_version;       /* "upstream.tls_max_version": 0 "1.2", 1 "1.3" */
    char *ca_file;             /* "upstream.ca_file": required when tls */
    char *cert_file;           /* "upstream.cert_file": one client cert for all leaves */
    char *key_file;            /* "upstream.key_file" */
    char *cert_dir;            /* "upstream.cert_dir": <dir>/<ClientId>.crt + .key per leaf */
    char *alpn;                /* "upstream.alpn": NULL, or e.g. "x-amzn-mqtt-ca" */
    char *client_id_template;  /* "upstream.client_id_template": placeholders {client_id},
                                  {gateway_id} */
    char *username;            /* "upstream.username": NULL = none */
    char *password;            /* read from the env var named by "upstream.password_env" (secret) */
    char *password_env;
    uint16_t keepalive_s;      /* "upstream.keepalive_s": 30..1200 */
    bool clean_session;        /* "upstream.clean_session" */
    uint32_t connect_timeout_ms; /* "upstream.connect_timeout_ms" */
    uint32_t backoff_base_ms;  /* "upstream.backoff_base_ms" */
    uint32_t backoff_cap_ms;   /* "upstream.backoff_cap_ms" */
    uint32_t give_up_after_s;  /* "upstream.give_up_after_s": then leaves are told DISCONNECT */
    uint32_t max_queue;        /* "upstream.max_queue": outgoing messages per session */
    uint32_t max_packet;       /* "upstream.max_packet" */
    char *qos_m1_client_id;    /* "upstream.qos_minus1_client_id": NULL = QoS -1 dropped */
    uint32_t max_connecting;   /* "upstream.max_connecting": attempts in progress */
    uint32_t connect_rate_per_s; /* "upstream.connect_rate_per_s": new attempts/s */
    uint32_t max_refusals;     /* "upstream.max_refusals": closes after one message = refused */
  } upstream;

  struct {
    bool enabled;              /* "web.enabled" */
    char *bind;                /* "web.bind" */
    uint16_t port;             /* "web.port" */
    char *admin_token_file;    /* "web.admin_token_file": created when absent */
    char *admin_token_env;     /* "web.admin_token_env": variable holding the admin token */
    char *read_token_file;     /* "web.read_token_file": read-only token, optional */
    char *read_token_env;      /* "web.read_token_env" */
    bool open_health;          /* "web.open_health" */
    bool open_metrics;         /* "web.open_metrics" */
    char *tls_cert_file;       /* "web.tls_cert_file": HTTPS when set with tls_key_file */
    char *tls_key_file;        /* "web.tls_key_file" */
    char *static_dir;          /* "web.static_dir" */
    char *openapi_file;        /* "web.openapi_file" */
    uint32_t max_body_bytes;   /* "web.max_body_bytes" */
    char *admin_token;         /* loaded from the file or variable (secret) */
    char *read_token;          /* (secret) */
  } web;

  struct {
    char *path;                /* "registry.path" */
    char *key_file;            /* "registry.key_file": "<path>.key" when not given */
    int synchronous;           /* "registry.synchronous": 0 "off", 1 "normal", 2 "full" */
    uint32_t busy_timeout_ms;  /* "registry.busy_timeout_ms": lock wait on the loop */
    uint32_t audit_max_rows;   /* "registry.audit_max_rows": 0 = unlimited */
    uint32_t audit_max_days;   /* "registry.audit_max_days": 0 = unlimited */
    uint64_t max_bytes;        /* "registry.max_bytes": size guard, 0 = off */
    uint64_t min_free_bytes;   /* "registry.min_free_bytes": size guard, 0 = off */
  } registry;

  struct {                     /* "outbox": store and forward (docs/outbox.md) */
    bool enabled;              /* "outbox.enabled": QoS 1/2 acknowledged once on disk */
    uint32_t commit_ms;        /* "outbox.commit_ms": least time between commits (0: each loop turn) */
    uint32_t commit_max;       /* "outbox.commit_max": messages per transaction */
    uint32_t max_messages_per_leaf; /* "outbox.max_messages_per_leaf" */
    uint64_t max_bytes_per_leaf;    /* "outbox.max_bytes_per_leaf": topic + payload */
    uint32_t max_messages;     /* "outbox.max_messages": gateway-wide */
    uint64_t max_bytes;        /* "outbox.max_bytes": gateway-wide */
    uint32_t ttl_s;            /* "outbox.ttl_s": older messages are deleted, 0 = kept */
    int when_full;             /* "outbox.when_full": enum cfg_when_full */
    uint32_t max_inflight;     /* "outbox.max_inflight": unacknowledged per connection */
    uint32_t rate_per_leaf;    /* "outbox.rate_per_leaf": publishes/s per connection, 0 = any */
    uint32_t rate_total;       /* "outbox.rate_total": publishes/s gateway-wide, 0 = any */
    uint32_t memory_window;    /* "outbox.memory_window": messages per leaf kept in memory */
  } outbox;

  struct {
    int policy;                /* "admission.policy": enum cfg_policy */
    char *pattern;             /* "admission.pattern": glob for "open" */
    char **allowlist;          /* "admission.allowlist": entries seeded into the registry */
    size_t n_allowlist;
    bool bind_address;         /* "admission.bind_address": ClientId bound to its IP */
    /* New identities (never-seen ClientIds): count per window, 0 = no limit. */
    uint32_t new_ids_per_port; /* "admission.new_ids_per_port": per source address:port */
    uint32_t new_ids_per_port_window_s;
    uint32_t new_ids_per_ip;   /* "admission.new_ids_per_ip": per source IP */
    uint32_t new_ids_per_ip_window_s;
    char **converters;         /* "admission.converters": IPs of protocol converters */
    size_t n_converters;
    uint32_t new_ids_per_converter; /* "admission.new_ids_per_converter": per converter IP */
    uint32_t new_ids_per_converter_window_s;
    uint32_t new_ids;          /* "admission.new_ids": gateway-wide */
    uint32_t new_ids_window_s;
    uint32_t sources_tracked;  /* "admission.sources_tracked": rate-limit table size */
    uint32_t pending_ttl_s;    /* "admission.pending_ttl_s": 0 = pending kept for ever */
    uint32_t max_pending;      /* "admission.max_pending": identities waiting for approval */
    int plain_udp;             /* "admission.plain_udp": enum cfg_plain_udp */
    char **plain_udp_clients;  /* "admission.plain_udp_clients": ClientIds or globs */
    size_t n_plain_udp_clients;
  } admission;

  struct {
    int backend;               /* "provisioning.backend": enum cfg_backend */
    char *thing_name_template; /* "provisioning.thing_name_template": local-ca */
    uint32_t rate_per_s;       /* "provisioning.rate_per_s": requests/s to the cloud */
    uint32_t retry_base_ms;    /* "provisioning.retry_base_ms" */
    uint32_t retry_cap_ms;     /* "provisioning.retry_cap_ms" */
    uint32_t request_timeout_ms; /* "provisioning.request_timeout_ms" */
    uint32_t expiry_warn_days; /* "provisioning.expiry_warn_days": certificates expiring
                                  within this are counted and warned about */
    uint32_t rotate_before_days; /* "provisioning.rotate_before_days": rotate certificates
                                    this close to their not-after; 0 never by itself */
    uint32_t rotate_max_running; /* "provisioning.rotate_max_running": rotations at once */
    struct {
      char *cert_file;         /* "provisioning.local_ca.cert_file" */
      char *key_file;          /* "provisioning.local_ca.key_file" */
      bool create;             /* "provisioning.local_ca.create" */
      uint32_t days;           /* "provisioning.local_ca.days": device cert validity */
    } local_ca;
    struct {
      char *claim_cert_file;   /* "provisioning.aws.claim_cert_file": required for aws */
      char *claim_key_file;    /* "provisioning.aws.claim_key_file": required for aws */
      char *template_name;     /* "provisioning.aws.template_name": required for aws */
      bool create_keys;        /* "provisioning.aws.method": false "csr", true "create-keys" */
      uint32_t pool_size;      /* "provisioning.aws.pool_size": claim connections */
      char *client_id_prefix;  /* "provisioning.aws.client_id_prefix" */
      char *serial_parameter;  /* "provisioning.aws.serial_parameter" */
      struct cfg_param *params;/* "provisioning.aws.parameters": static template parameters */
      size_t n_params;
      uint32_t token_ttl_s;    /* "provisioning.aws.token_ttl_s" */
      char *rotation_template; /* "provisioning.aws.rotation_template": RegisterThing
                                  template of a rotation; NULL: aws cannot rotate */
    } aws;
  } provisioning;
};

/* Load and validate.  On success returns 0 and *out (free with cfg_free).  On
 * failure returns -1 and writes one line into err[errlen] naming the file, the
 * key and the expectation: the first error of the file (cfg_load_all() has
 * them all). */
int cfg_load(const char *path, struct gw_config **out, char *err, size_t errlen);
void cfg_free(struct gw_config *cfg);

/* Every error of a file, not only the first: each key that fails is reported
 * once (a key whose value was refused is not then reported again by a rule
 * that finds it unset), in file order, then the rules that involve several
 * keys.  At most CFG_MAX_ERRORS lines are kept; dropped counts the rest. */
#define CFG_MAX_ERRORS 20
#define CFG_ERROR_LEN 640
struct cfg_errors {
  size_t n;
  size_t dropped;
  char line[CFG_MAX_ERRORS][CFG_ERROR_LEN];
};
/* As cfg_load(), the errors into *errs (which may be large: not for a small
 * stack).  Returns 0, or -1 with errs->n >= 1. */
int cfg_load_all(const char *path, struct gw_config **out, struct cfg_errors *errs);

/* Where the web files are found.  web.static_dir and web.openapi_file name
 * them; when a key holds its default (the packaged layout under
 * /usr/share/fleetgw) and that does not exist, the places next to the binary
 * are tried, in this order:
 *   1. the key's value;
 *   2. <dir of the binary>/../share/fleetgw/web (openapi.json): an install
 *      under another prefix (/usr/local, /opt/fleetgw);
 *   3. <dir of the binary>/../web/static (../web/openapi.json): a build
 *      directory inside the source tree (cmake -B build).
 * A key set to anything else is used as it is (a missing one is an error of
 * cfg_load).  Writes the path found into out[cap] and returns 0, or returns
 * -1 with the places tried, separated by ", ", in tried[tcap]. */
enum cfg_web_file { CFG_WEB_STATIC = 0, CFG_WEB_OPENAPI = 1 };
int cfg_web_path(const struct gw_config *cfg, enum cfg_web_file which, char *out, size_t cap,
                 char *tried, size_t tcap);

/* SIGHUP: the keys whose new value takes effect in a running gateway.  Every
 * other key needs a restart.  README.md ("Running it") lists the same keys;
 * cfg_key_live() says whether path (e.g. "admission.policy") is one. */
bool cfg_key_live(const char *path);
/* Compares fresh (a newly loaded config of the same file) with live, the
 * config the gateway runs with.  Every live key that differs is moved into
 * live (the old value goes into fresh, which the caller then frees) and its
 * path appended to applied[acap] (", "-separated); every other key that
 * differs is appended to restart[rcap] and left as it was.  The secrets read
 * from the environment (web.admin_token, web.read_token) are always moved.
 * Returns the number of keys applied.  Call on the loop: nothing else may
 * read live meanwhile. */
size_t cfg_reload(struct gw_config *live, struct gw_config *fresh, char *applied, size_t acap,
                  char *restart, size_t rcap);

/* A warning is one line of at most CFG_WARNING_LEN - 1 characters. */
#define CFG_WARNING_LEN 160
/* Settings that load but are unsafe, e.g. the web API on a non-loopback
 * address without TLS.  Writes up to max warnings into lines and returns how
 * many it wrote.  --check-config prints them (and still exits 0); the
 * gateway logs them at warn level when it starts. */
size_t cfg_warnings(const struct gw_config *cfg, char lines[][CFG_WARNING_LEN], size_t max);

/* Expand provisioning.thing_name_template for a leaf into out[cap]; returns
 * 0, or -1 when it does not fit. */
int cfg_thing_name(const struct gw_config *cfg, const char *leaf_client_id, char *out,
                   size_t cap);
/* Expand provisioning.aws.client_id_prefix (with {gateway_id}) into out. */
int cfg_claim_client_id(const struct gw_config *cfg, unsigned index, char *out, size_t cap);

/* Expand client_id_template for a leaf into out[cap]; returns 0, or -1 when
 * it does not fit. */
int cfg_upstream_client_id(const struct gw_config *cfg, const char *leaf_client_id, char *out,
                           size_t cap);

/* The keys the file may hold, read-only, for documentation and tests (README.md's
 * key tables are checked against them).  Keys are numbered 0..cfg_key_count()-1,
 * depth-first in table order, each object before its own keys. */
struct cfg_key_info {
  char path[96];               /* dotted JSON path, e.g. "upstream.port" */
  const char *type;            /* README's type column: "integer", "string or null", ... */
  char def[96];                /* README's default column, e.g. "`1884`", "not set";
                                  "" for an object */
};

size_t cfg_key_count(void);
/* Fills *info for key i; returns 0, or -1 when i is out of range. */
int cfg_key_at(size_t i, struct cfg_key_info *info);

#endif
