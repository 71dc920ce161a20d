/*
 * gw_api_fakes.h - link stubs for every gateway/api/gw_api.h function that
 * web_http.c, web_api.c and its handler files (web_psk.c, web_outbox.c)
 * call, and web.c and web_ws.c with them.  The web unit tests that reach
 * into them (the route table, the row adapters) pull
 * web_http.o and web_api.o (each needs the other, and web_http.o needs
 * web.o for the connection deadlines) out of fleetgw_web, and fleetgw_web
 * does not link the gateway; these stand in for it.  The tests never run a
 * handler, so the stubs only fail (or, for the request counter, do
 * nothing).  Include it in exactly one file of a test executable.
 */
#ifndef FLEETGW_GW_API_FAKES_H
#define FLEETGW_GW_API_FAKES_H

#include <stdlib.h>

#include "gw_api.h"

void api_count_http(struct gw *gw, int status) {}

int api_status(struct gw *gw, struct api_status *out) { return API_ERROR; }

void api_msg_totals(struct gw *gw, uint64_t *msgs_in, uint64_t *msgs_out)
{
  *msgs_in = 0;
  *msgs_out = 0;
}

int api_devices_list(struct gw *gw, const char *state, const char *q, const char *lan_security,
                     const char *sort, int64_t expires_within_days, int64_t offset,
                     int64_t limit, api_device_cb cb, void *ud, int64_t *total)
{
  return API_ERROR;
}

int api_device_get(struct gw *gw, const char *client_id, struct api_device *out)
{
  return API_NOTFOUND;
}

int api_device_subscriptions(struct gw *gw, const char *client_id, api_sub_cb cb, void *ud)
{
  return API_NOTFOUND;
}

int api_device_certificate(struct gw *gw, const char *client_id, char **pem)
{
  *pem = NULL;
  return API_NOTFOUND;
}

/* The six device commands share one signature; each is its own symbol. */
#define FAKE_DEVICE_CMD(name)                                                                  \
  int name(struct gw *gw, const char *client_id, const char *actor, char *reason, size_t cap) \
  {                                                                                            \
    return API_NOTFOUND;                                                                       \
  }
FAKE_DEVICE_CMD(api_device_approve)
FAKE_DEVICE_CMD(api_device_block)
FAKE_DEVICE_CMD(api_device_unblock)
FAKE_DEVICE_CMD(api_device_reprovision)
FAKE_DEVICE_CMD(api_device_rotate)
FAKE_DEVICE_CMD(api_device_release)
FAKE_DEVICE_CMD(api_device_decommission)
#undef FAKE_DEVICE_CMD

int api_device_outbox_discard(struct gw *gw, const char *client_id, const char *actor,
                              uint64_t *n, char *reason, size_t cap)
{
  *n = 0;
  return API_NOTFOUND;
}

int api_psk_create(struct gw *gw, const char *client_id, const uint8_t *key, size_t key_len,
                   const char *actor, struct api_psk *out, char *reason, size_t cap)
{
  return API_ERROR;
}

int api_psk_rotate(struct gw *gw, const char *client_id, const uint8_t *key, size_t key_len,
                   const char *actor, struct api_psk *out, char *reason, size_t cap)
{
  return API_NOTFOUND;
}

int api_psk_revoke(struct gw *gw, const char *client_id, const char *actor, char *reason,
                   size_t cap)
{
  return API_NOTFOUND;
}

int api_psk_bulk(struct gw *gw, const char *const *ids, size_t n, const char *actor,
                 uint8_t *keys, int64_t *created_at, char *reason, size_t cap)
{
  return API_ERROR;
}

int api_allow_list(struct gw *gw, api_allow_cb cb, void *ud) { return API_ERROR; }

int api_allow_add(struct gw *gw, const char *entry, const char *actor) { return API_ERROR; }

int api_allow_remove(struct gw *gw, const char *entry, const char *actor) { return API_NOTFOUND; }

int api_certs_list(struct gw *gw, const char *status, int64_t offset, int64_t limit,
                   api_cert_cb cb, void *ud, int64_t *total)
{
  return API_ERROR;
}

int api_audit_list(struct gw *gw, const char *client_id, int64_t offset, int64_t limit,
                   api_audit_cb cb, void *ud, int64_t *total)
{
  return API_ERROR;
}

int api_metrics_prometheus(struct gw *gw, char **text)
{
  *text = NULL;
  return API_ERROR;
}

/* web_http.c's connection deadlines are in web.c, which pulls web_ws.c. */
struct api_sub *api_subscribe(struct gw *gw, api_event_cb cb, void *ud) { return NULL; }

void api_unsubscribe(struct gw *gw, struct api_sub *sub) {}

#endif
