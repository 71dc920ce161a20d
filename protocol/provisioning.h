/*
 * provisioning.h - AWS IoT Fleet Provisioning MQTT API payloads (JSON), built
 * and parsed with cJSON.  See docs/protocol-notes.md §5 (topics §5.1, payloads
 * §5.2).  This is the one file of protocol/ that allocates: builders return a
 * malloc'd NUL-terminated string (free()), parsers fill caller structs with
 * malloc'd strings (free with the matching *_clear function).
 */
#ifndef FLEETGW_PROVISIONING_H
#define FLEETGW_PROVISIONING_H

#include <stddef.h>

#include "proto_err.h"

/* Topics.  Each writes a NUL-terminated topic into out[cap] and returns its
 * length, or PROTO_BUF_TOO_SMALL / PROTO_INVALID_ARG (template name not
 * 1..36 of [0-9A-Za-z_-]).  suffix: NULL for the request topic, "accepted"
 * or "rejected" for the reply topics. */
int prov_topic_create_from_csr(const char *suffix, char *out, size_t cap);
int prov_topic_create_keys(const char *suffix, char *out, size_t cap);
int prov_topic_register(const char *template_name, const char *suffix, char *out, size_t cap);
/* True when name is a valid provisioning template name. */
int prov_template_name_ok(const char *name);

/* Requests. */
char *prov_build_csr_request(const char *csr_pem);             /* {"certificateSigningRequest": ...} */
char *prov_build_create_keys_request(void);                    /* "{}" */
struct prov_param { const char *key; const char *value; };
char *prov_build_register_request(const char *ownership_token, const struct prov_param *params,
                                  size_t n);

/* Replies.  Parsers return PROTO_OK, PROTO_MALFORMED (not JSON, a required
 * field missing or of the wrong type) or PROTO_INVALID_ARG. */
struct prov_cert_reply {
  char *certificate_id;
  char *certificate_pem;
  char *private_key;        /* CreateKeysAndCertificate only; NULL otherwise */
  char *ownership_token;
};
int prov_parse_cert_reply(const char *json, size_t len, int expect_private_key,
                          struct prov_cert_reply *out);
void prov_cert_reply_clear(struct prov_cert_reply *r);

struct prov_register_reply {
  char *thing_name;
  char *device_configuration; /* the deviceConfiguration object as compact JSON, or NULL */
};
int prov_parse_register_reply(const char *json, size_t len, struct prov_register_reply *out);
void prov_register_reply_clear(struct prov_register_reply *r);

struct prov_error {
  int status_code;          /* e.g. 400, 403, 404, 429, 500; 0 when absent */
  char *error_code;         /* e.g. "InvalidCertificateOwnershipToken"; "" when absent */
  char *error_message;      /* "" when absent */
};
/* A rejected reply.  Lenient: missing fields are left empty, since the point
 * is to record whatever the cloud said. */
int prov_parse_error(const char *json, size_t len, struct prov_error *out);
void prov_error_clear(struct prov_error *e);
/* Whether a rejection is worth retrying (throttling, server errors) or
 * permanent (bad parameters, forbidden, template not found). */
int prov_error_is_retryable(const struct prov_error *e);

/* Thing names (API_CreateThing): 1..128 of [a-zA-Z0-9:_-]. */
int prov_thing_name_ok(const char *name);

#endif
