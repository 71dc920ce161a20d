/*
 * config_keys.c - the configuration's keys: one table per object level of
 * the file, the only list of the keys, their ranges, checks and defaults
 * (loading, the defaults, cfg_free() and README.md's check all walk these
 * tables, so a new key is one line here), and cfg_key_count()/cfg_key_at(),
 * which render them for README.md's key tables.
 */
#include "config_int.h"

#include "log.h"

#include <stdio.h>

/* In enum log_level order, so that the index is the level; log_level_parse()
 * accepts exactly these names. */
static const char *const log_level_names[] = {"error", "warn", "info", "debug", "trace", NULL};
static const char *const policy_names[] = {"open", "allowlist", "approve", NULL};
static const char *const backend_names[] = {"none", "local-ca", "aws", NULL};
static const char *const sync_names[] = {"off", "normal", "full", NULL};
static const char *const tls_version_names[] = {"1.2", "1.3", NULL};
static const char *const method_names[] = {"csr", "create-keys", NULL};
static const char *const plain_udp_names[] = {"allow", "listed", "off", NULL};
static const char *const when_full_names[] = {"reject", "drop-oldest", NULL};

/* ---- key tables --------------------------------------------------------- */

/* Each macro takes the key's default last.  A K_STR default of NULL means
 * "not set"; a non-nullable K_STR without a default is a required key. */
#define FIELD(f) .off = offsetof(struct gw_config, f), .size = sizeof(((struct gw_config *)0)->f)
#define UINT_KEY(n, f, lo, hi, d) \
  {.name = n, .kind = K_UINT, FIELD(f), .min = lo, .max = hi, .def = d}
#define BOOL_KEY(n, f, d) {.name = n, .kind = K_BOOL, FIELD(f), .def = d}
#define STR_KEY(n, f, fn, what, null_ok, d)                                                   \
  {.name = n, .kind = K_STR, FIELD(f), .check = fn, .expect = what, .nullable = null_ok,     \
   .def_str = d}
#define ENUM_KEY(n, f, list, d) {.name = n, .kind = K_ENUM, FIELD(f), .choices = list, .def = d}
#define LIST_KEY(n, k, f, count) \
  {.name = n, .kind = k, FIELD(f), .count_off = offsetof(struct gw_config, count)}
/* An array of strings; fn checks each entry (NULL: non-empty, at most 255). */
#define STRLIST_KEY(n, f, count, fn, what)                                                 \
  {.name = n, .kind = K_STRLIST, FIELD(f), .count_off = offsetof(struct gw_config, count), \
   .check = fn, .expect = what}
#define OBJ_KEY(n, table) \
  {.name = n, .kind = K_OBJECT, .sub = table, .n_sub = sizeof table / sizeof table[0]}

/* The largest integer a JSON number (a double) holds exactly: 2^53 - 1. */
#define JSON_INT_MAX 9007199254740991ull

#define WHAT_IP "an IPv4 or IPv6 address literal"
#define WHAT_TEMPLATE \
  "a template containing {client_id} and no placeholder other than {client_id} and {gateway_id}"

static const struct key_spec advertise_keys[] = {
    STR_KEY("address", lan.advertise_address, cfgi_check_ip, WHAT_IP, true, NULL),
    UINT_KEY("port", lan.advertise_port, 1, 65535, 1884),
    /* ADVERTISE carries the interval in a 2-byte Duration field (§5.4.2); the
     * spec recommends more than 15 minutes (T_ADV). */
    UINT_KEY("interval_s", lan.advertise_interval_s, 1, 65535, 900),
};

static const struct key_spec dtls_keys[] = {
    BOOL_KEY("enabled", lan.dtls.enabled, false),
    STR_KEY("bind", lan.dtls.bind, cfgi_check_ip, WHAT_IP, false, "0.0.0.0"),
    UINT_KEY("port", lan.dtls.port, 1, 65535, 8884),
    /* 1200 fits any LAN path (IPv6's minimum link MTU is 1280) with room for
     * the IP and UDP headers; 256 is OpenSSL's smallest, and a record holds
     * at most 2^14 bytes of data (RFC 6347 §4.1; docs/dtls.md §6). */
    UINT_KEY("mtu", lan.dtls.mtu, 256, 16384, 1200),
    UINT_KEY("max_handshakes", lan.dtls.max_handshakes, 1, 100000, 64),
    UINT_KEY("max_handshakes_per_ip", lan.dtls.max_handshakes_per_ip, 1, 100000, 8),
    /* RFC 7925 §11 suggests a 9 s first retransmission: one lost flight must
     * not end the handshake. */
    UINT_KEY("handshake_timeout_ms", lan.dtls.handshake_timeout_ms, 1000, 600000, 30000),
    /* Longer than the longest sleep (Duration is 16 bits of seconds). */
    UINT_KEY("idle_timeout_s", lan.dtls.idle_timeout_s, 10, 31536000, 86400),
    STR_KEY("ciphers", lan.dtls.ciphers, cfgi_check_nonempty, "an OpenSSL cipher list", true,
            NULL),
    STR_KEY("cert_file", lan.dtls.cert_file, cfgi_check_readable_file, WHAT_FILE, true, NULL),
    STR_KEY("key_file", lan.dtls.key_file, cfgi_check_readable_file, WHAT_FILE, true, NULL),
    STR_KEY("ca_file", lan.dtls.ca_file, cfgi_check_readable_file, WHAT_FILE, true, NULL),
};

static const struct key_spec lan_keys[] = {
    STR_KEY("bind", lan.bind, cfgi_check_ip, WHAT_IP, false, "0.0.0.0"),
    UINT_KEY("port", lan.port, 1, 65535, 1884),
    UINT_KEY("recv_buffer_bytes", lan.recv_buffer_bytes, 4096, 1073741824, 4194304),
    /* MQTT-SN §5.3.1 allows 1..23 characters. */
    UINT_KEY("max_client_id_len", lan.max_client_id_len, 1, 255, 23),
    UINT_KEY("max_leaves", lan.max_leaves, 1, 1000000, 10000),
    /* The spec suggests T_retry 10-15 s and N_retry 3-5. */
    UINT_KEY("t_retry_ms", lan.t_retry_ms, 100, 600000, 10000),
    UINT_KEY("n_retry", lan.n_retry, 0, 20, 3),
    UINT_KEY("connack_timeout_ms", lan.connack_timeout_ms, 100, 600000, 10000),
    UINT_KEY("queue_max", lan.queue_max, 1, 1000000, 100),
    /* Duration 0 is "no keep-alive" (§5.4.4), which would let a silent
     * peer hold its record and its upstream for ever. */
    UINT_KEY("max_keepalive_s", lan.max_keepalive_s, 1, 65535, 3600),
    UINT_KEY("max_subscriptions", lan.max_subscriptions, 1, 100000, 64),
    UINT_KEY("max_subscription_bytes", lan.max_subscription_bytes, 64, 16777216, 16384),
    OBJ_KEY("advertise", advertise_keys),
    LIST_KEY("predefined_topics", K_PREDEFINED, lan.predefined, lan.n_predefined),
    OBJ_KEY("dtls", dtls_keys),
};

static const struct key_spec upstream_keys[] = {
    STR_KEY("host", upstream.host, cfgi_check_host, WHAT_HOST, false, NULL),
    /* 0 is "not given" (the file cannot say 0): cfgi_derive_defaults() picks the
     * port from upstream.tls. */
    {.name = "port", .kind = K_UINT, FIELD(upstream.port), .min = 1, .max = 65535, .def = 0,
     .doc_default = "`8883` with TLS, `1883` without"},
    BOOL_KEY("tls", upstream.tls, true),
    ENUM_KEY("tls_max_version", upstream.tls_max_version, tls_version_names, 1 /* "1.3" */),
    STR_KEY("ca_file", upstream.ca_file, cfgi_check_readable_file, WHAT_FILE, true, NULL),
    STR_KEY("cert_file", upstream.cert_file, cfgi_check_readable_file, WHAT_FILE, true, NULL),
    STR_KEY("key_file", upstream.key_file, cfgi_check_readable_file, WHAT_FILE, true, NULL),
    STR_KEY("cert_dir", upstream.cert_dir, cfgi_check_dir, "a readable directory", true, NULL),
    STR_KEY("alpn", upstream.alpn, cfgi_check_alpn, "an ALPN protocol id of 1..255 printable bytes",
            true, NULL),
    STR_KEY("client_id_template", upstream.client_id_template, cfgi_check_template, WHAT_TEMPLATE,
            false, PH_CLIENT_ID),
    STR_KEY("username", upstream.username, cfgi_check_nonempty, "a non-empty string", true, NULL),
    STR_KEY("password_env", upstream.password_env, cfgi_check_env_name,
            "an environment variable name ([A-Za-z_][A-Za-z0-9_]*)", true, NULL),
    UINT_KEY("keepalive_s", upstream.keepalive_s, 30, 1200, 60),
    BOOL_KEY("clean_session", upstream.clean_session, true),
    UINT_KEY("connect_timeout_ms", upstream.connect_timeout_ms, 100, 600000, 10000),
    UINT_KEY("backoff_base_ms", upstream.backoff_base_ms, 1, 3600000, 1000),
    UINT_KEY("backoff_cap_ms", upstream.backoff_cap_ms, 1, 86400000, 60000),
    UINT_KEY("give_up_after_s", upstream.give_up_after_s, 0, 86400, 120),
    UINT_KEY("max_queue", upstream.max_queue, 1, 1000000, 1000),
    /* 268435455 is the largest MQTT Remaining Length, plus 5 header bytes.
     * The default is AWS IoT's 128 KiB payload limit plus 1 KiB for the
     * header and topic. */
    UINT_KEY("max_packet", upstream.max_packet, 1024, 268435460, 131072 + 1024),
    UINT_KEY("max_connecting", upstream.max_connecting, 0, 100000, 64),
    /* AWS IoT: 500 CONNECTs/s per account (docs/protocol-notes.md §4.6). */
    UINT_KEY("connect_rate_per_s", upstream.connect_rate_per_s, 0, 100000, 500),
    UINT_KEY("max_refusals", upstream.max_refusals, 1, 100, 3),
    STR_KEY("qos_minus1_client_id", upstream.qos_m1_client_id, cfgi_check_nonempty,
            "a non-empty string", true, NULL),
};

static const struct key_spec web_keys[] = {
    BOOL_KEY("enabled", web.enabled, true),
    STR_KEY("bind", web.bind, cfgi_check_ip, WHAT_IP, false, "127.0.0.1"),
    UINT_KEY("port", web.port, 0, 65535, 8080),
    STR_KEY("admin_token_file", web.admin_token_file, cfgi_check_nonempty, "a file path", true,
            "fleetgw-admin.token"),
    STR_KEY("admin_token_env", web.admin_token_env, cfgi_check_env_name,
            "an environment variable name", true, NULL),
    STR_KEY("read_token_file", web.read_token_file, cfgi_check_nonempty, "a file path", true, NULL),
    STR_KEY("read_token_env", web.read_token_env, cfgi_check_env_name,
            "an environment variable name", true, NULL),
    BOOL_KEY("open_health", web.open_health, true),
    BOOL_KEY("open_metrics", web.open_metrics, false),
    STR_KEY("tls_cert_file", web.tls_cert_file, cfgi_check_readable_file, WHAT_FILE, true, NULL),
    STR_KEY("tls_key_file", web.tls_key_file, cfgi_check_readable_file, WHAT_FILE, true, NULL),
    STR_KEY("static_dir", web.static_dir, cfgi_check_nonempty, "a directory path", false,
            CFG_DEFAULT_STATIC_DIR),
    STR_KEY("openapi_file", web.openapi_file, cfgi_check_nonempty, "a file path", false,
            CFG_DEFAULT_OPENAPI_FILE),
    UINT_KEY("max_body_bytes", web.max_body_bytes, 1024, 16777216, 65536),
};

static const struct key_spec registry_keys[] = {
    STR_KEY("path", registry.path, cfgi_check_nonempty, "a file path", false,
            "fleetgw-registry.db"),
    /* NULL is "not given": cfgi_derive_defaults() names it after registry.path. */
    {.name = "key_file", .kind = K_STR, FIELD(registry.key_file), .check = cfgi_check_nonempty,
     .expect = "a file path", .nullable = true, .doc_default = "`\"<path>.key\"`"},
    ENUM_KEY("synchronous", registry.synchronous, sync_names, 1 /* normal */),
    UINT_KEY("busy_timeout_ms", registry.busy_timeout_ms, 0, 10000, 50),
    UINT_KEY("audit_max_rows", registry.audit_max_rows, 0, 100000000, 100000),
    UINT_KEY("audit_max_days", registry.audit_max_days, 0, 36500, 90),
    UINT_KEY("max_bytes", registry.max_bytes, 0, JSON_INT_MAX, 0),
    UINT_KEY("min_free_bytes", registry.min_free_bytes, 0, JSON_INT_MAX, 64u << 20),
};

/* Store and forward (docs/outbox.md).  AWS IoT takes 100
 * publishes/s per connection and 100 unacknowledged QoS 1 messages in
 * flight (docs/protocol-notes.md §4.6). */
static const struct key_spec outbox_keys[] = {
    BOOL_KEY("enabled", outbox.enabled, true),
    UINT_KEY("commit_ms", outbox.commit_ms, 0, 1000, 0),
    UINT_KEY("commit_max", outbox.commit_max, 1, 100000, 512),
    UINT_KEY("max_messages_per_leaf", outbox.max_messages_per_leaf, 1, 100000000, 10000),
    UINT_KEY("max_bytes_per_leaf", outbox.max_bytes_per_leaf, 1024, JSON_INT_MAX, 16u << 20),
    UINT_KEY("max_messages", outbox.max_messages, 1, 1000000000, 1000000),
    UINT_KEY("max_bytes", outbox.max_bytes, 1024, JSON_INT_MAX, 1024u << 20),
    UINT_KEY("ttl_s", outbox.ttl_s, 0, 31536000, 604800),
    ENUM_KEY("when_full", outbox.when_full, when_full_names, WHEN_FULL_REJECT),
    UINT_KEY("max_inflight", outbox.max_inflight, 1, 100, 10),
    UINT_KEY("rate_per_leaf", outbox.rate_per_leaf, 0, 1000000, 100),
    UINT_KEY("rate_total", outbox.rate_total, 0, 10000000, 0),
    UINT_KEY("memory_window", outbox.memory_window, 1, 10000, 32),
};

static const struct key_spec admission_keys[] = {
    ENUM_KEY("policy", admission.policy, policy_names, POLICY_APPROVE),
    STR_KEY("pattern", admission.pattern, cfgi_check_nonempty, "a glob pattern", false, "*"),
    STRLIST_KEY("allowlist", admission.allowlist, admission.n_allowlist, NULL,
                "an array of non-empty strings (ClientIds or patterns)"),
    BOOL_KEY("bind_address", admission.bind_address, true),
    UINT_KEY("new_ids_per_port", admission.new_ids_per_port, 0, 1000000, 1),
    UINT_KEY("new_ids_per_port_window_s", admission.new_ids_per_port_window_s, 1, 86400, 600),
    UINT_KEY("new_ids_per_ip", admission.new_ids_per_ip, 0, 1000000, 5),
    UINT_KEY("new_ids_per_ip_window_s", admission.new_ids_per_ip_window_s, 1, 86400, 60),
    /* A converter fronts many leaves from one IP (docs/architecture.md §7). */
    STRLIST_KEY("converters", admission.converters, admission.n_converters, cfgi_check_ip,
                "an array of IPv4 or IPv6 address literals"),
    UINT_KEY("new_ids_per_converter", admission.new_ids_per_converter, 0, 1000000, 100),
    UINT_KEY("new_ids_per_converter_window_s", admission.new_ids_per_converter_window_s, 1,
             86400, 60),
    UINT_KEY("new_ids", admission.new_ids, 0, 1000000, 30),
    UINT_KEY("new_ids_window_s", admission.new_ids_window_s, 1, 86400, 60),
    UINT_KEY("sources_tracked", admission.sources_tracked, 16, 1000000, 4096),
    UINT_KEY("pending_ttl_s", admission.pending_ttl_s, 0, 31536000, 86400),
    UINT_KEY("max_pending", admission.max_pending, 1, 1000000, 1000),
    ENUM_KEY("plain_udp", admission.plain_udp, plain_udp_names, PLAIN_UDP_ALLOW),
    STRLIST_KEY("plain_udp_clients", admission.plain_udp_clients, admission.n_plain_udp_clients,
                NULL, "an array of non-empty strings (ClientIds or patterns)"),
};

static const struct key_spec local_ca_keys[] = {
    STR_KEY("cert_file", provisioning.local_ca.cert_file, cfgi_check_nonempty, "a file path", false,
            "fleetgw-ca.crt"),
    STR_KEY("key_file", provisioning.local_ca.key_file, cfgi_check_nonempty, "a file path", false,
            "fleetgw-ca.key"),
    BOOL_KEY("create", provisioning.local_ca.create, true),
    UINT_KEY("days", provisioning.local_ca.days, 1, 36500, 3650),
};

static const struct key_spec aws_keys[] = {
    STR_KEY("claim_cert_file", provisioning.aws.claim_cert_file, cfgi_check_readable_file,
            WHAT_FILE, true, NULL),
    STR_KEY("claim_key_file", provisioning.aws.claim_key_file, cfgi_check_readable_file,
            WHAT_FILE, true, NULL),
    STR_KEY("template_name", provisioning.aws.template_name, cfgi_check_template_name,
            "a provisioning template name: 1..36 of [0-9A-Za-z_-]", true, NULL),
    ENUM_KEY("method", provisioning.aws.create_keys, method_names, 0 /* csr */),
    UINT_KEY("pool_size", provisioning.aws.pool_size, 1, 64, 2),
    STR_KEY("client_id_prefix", provisioning.aws.client_id_prefix, cfgi_check_claim_prefix,
            "printable characters with no placeholder but {gateway_id}", false,
            "fleetgw-{gateway_id}-claim-"),
    STR_KEY("serial_parameter", provisioning.aws.serial_parameter, cfgi_check_nonempty,
            "a template parameter name", false, "SerialNumber"),
    LIST_KEY("parameters", K_PARAMS, provisioning.aws.params, provisioning.aws.n_params),
    /* The certificate ownership token's life (docs/protocol-notes.md §5.5). */
    UINT_KEY("token_ttl_s", provisioning.aws.token_ttl_s, 1, 86400, 3600),
    /* Rotation over the device's own connection (docs/rotation.md §3). */
    STR_KEY("rotation_template", provisioning.aws.rotation_template, cfgi_check_template_name,
            "a provisioning template name: 1..36 of [0-9A-Za-z_-]", true, NULL),
};

static const struct key_spec provisioning_keys[] = {
    ENUM_KEY("backend", provisioning.backend, backend_names, BACKEND_NONE),
    STR_KEY("thing_name_template", provisioning.thing_name_template, cfgi_check_template,
            WHAT_TEMPLATE, false, PH_CLIENT_ID),
    /* AWS: RegisterThing 10 TPS (docs/protocol-notes.md §5.10). */
    UINT_KEY("rate_per_s", provisioning.rate_per_s, 1, 10000, 10),
    UINT_KEY("retry_base_ms", provisioning.retry_base_ms, 10, 3600000, 2000),
    UINT_KEY("retry_cap_ms", provisioning.retry_cap_ms, 10, 86400000, 300000),
    UINT_KEY("request_timeout_ms", provisioning.request_timeout_ms, 100, 600000, 30000),
    UINT_KEY("expiry_warn_days", provisioning.expiry_warn_days, 1, 3650, 30),
    UINT_KEY("rotate_before_days", provisioning.rotate_before_days, 0, 3650, 45),
    UINT_KEY("rotate_max_running", provisioning.rotate_max_running, 1, 1024, 16),
    OBJ_KEY("local_ca", local_ca_keys),
    OBJ_KEY("aws", aws_keys),
};

const struct key_spec cfgi_top_keys[] = {
    ENUM_KEY("log_level", log_level, log_level_names, LOG_INFO),
    UINT_KEY("gateway_id", gateway_id, 1, 255, 1),
    OBJ_KEY("lan", lan_keys),
    OBJ_KEY("upstream", upstream_keys),
    OBJ_KEY("web", web_keys),
    OBJ_KEY("registry", registry_keys),
    OBJ_KEY("outbox", outbox_keys),
    OBJ_KEY("admission", admission_keys),
    OBJ_KEY("provisioning", provisioning_keys),
};
const size_t cfgi_n_top_keys = sizeof cfgi_top_keys / sizeof cfgi_top_keys[0];

/* Strings the loader fills in from elsewhere than a key of the file: the
 * file's own path and the secrets read from the environment.  They are not
 * keys (never loaded from the file, not documented); cfg_free() walks them
 * together with the key tables. */
#define OWNED_FIELD(f, is_secret) {.name = #f, .kind = K_STR, FIELD(f), .secret = is_secret}

const struct key_spec cfgi_owned_fields[] = {
    OWNED_FIELD(path, false),
    OWNED_FIELD(upstream.password, true),
    OWNED_FIELD(web.admin_token, true),
    OWNED_FIELD(web.read_token, true),
};
const size_t cfgi_n_owned_fields = sizeof cfgi_owned_fields / sizeof cfgi_owned_fields[0];

/* ---- key iteration (documentation and tests) --------------------------- */

static size_t count_keys(const struct key_spec *specs, size_t n)
{
  size_t total = n;
  for (size_t i = 0; i < n; i++)
    if (specs[i].kind == K_OBJECT)
      total += count_keys(specs[i].sub, specs[i].n_sub);
  return total;
}

/* Finds key number *i below specs, depth-first with each object before its
 * keys, counting *i down as it goes; writes its dotted path into path[cap]. */
static const struct key_spec *nth_key(const struct key_spec *specs, size_t n, const char *prefix,
                                      size_t *i, char *path, size_t cap)
{
  for (size_t k = 0; k < n; k++) {
    char here[KEY_PATH_CAP];
    const struct key_spec *found;

    cfgi_join_path(here, sizeof here, prefix, specs[k].name);
    if ((*i)-- == 0) {
      cfgi_join_path(path, cap, "", here);
      return &specs[k];
    }
    if (specs[k].kind == K_OBJECT) {
      found = nth_key(specs[k].sub, specs[k].n_sub, here, i, path, cap);
      if (found)
        return found;
    }
  }
  return NULL;
}

/* The type column of README.md's key tables. */
static const char *kind_name(const struct key_spec *ks)
{
  switch (ks->kind) {
  case K_UINT:
    return "integer";
  case K_BOOL:
    return "boolean";
  case K_STR:
    return ks->nullable ? "string or null" : "string";
  case K_ENUM:
    return "string";
  case K_STRLIST:
    return "array of strings";
  case K_OBJECT:
  case K_PREDEFINED:
  case K_PARAMS:
    break;
  }
  return "object";
}

/* The default column of README.md's key tables (Markdown). */
static void render_default(const struct key_spec *ks, char *out, size_t cap)
{
  const char *text = "";

  if (ks->doc_default) {
    snprintf(out, cap, "%s", ks->doc_default);
    return;
  }
  switch (ks->kind) {
  case K_UINT:
    snprintf(out, cap, "`%llu`", (unsigned long long)ks->def);
    return;
  case K_ENUM:
    snprintf(out, cap, "`\"%s\"`", ks->choices[ks->def]);
    return;
  case K_STR:
    if (ks->def_str) {
      snprintf(out, cap, "`\"%s\"`", ks->def_str);
      return;
    }
    /* Without a default and with null refused, the file must give it. */
    text = ks->nullable ? "not set" : "**required**";
    break;
  case K_BOOL:
    text = ks->def ? "`true`" : "`false`";
    break;
  case K_STRLIST:
    text = "`[]`";
    break;
  case K_PREDEFINED:
  case K_PARAMS:
    text = "`{}`";
    break;
  case K_OBJECT:
    break; /* an object has no default of its own: its keys have */
  }
  snprintf(out, cap, "%s", text);
}

size_t cfg_key_count(void)
{
  return count_keys(cfgi_top_keys, cfgi_n_top_keys);
}

int cfg_key_at(size_t i, struct cfg_key_info *info)
{
  const struct key_spec *ks;

  if (!info)
    return -1;
  ks = nth_key(cfgi_top_keys, cfgi_n_top_keys, "", &i, info->path, sizeof info->path);
  if (!ks)
    return -1;
  info->type = kind_name(ks);
  render_default(ks, info->def, sizeof info->def);
  return 0;
}

