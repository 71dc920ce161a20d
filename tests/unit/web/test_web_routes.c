/*
 * test_web_routes.c - web_http.c's route table: which handler and which
 * token every request path and method get, what is not found, what is the
 * wrong method (and the Allow header it gets), and the rules the table
 * itself must keep (see the comment above web_routes).
 */
#include "web_int.h"

#include <stdio.h>
#include <string.h>

#include "gw_api_fakes.h"
#include "test.h"

enum { GET_HEAD = WEB_GET | WEB_HEAD, WRITES = WEB_POST | WEB_PUT | WEB_PATCH | WEB_DELETE };

static const struct web_route *route_of(unsigned method, const char *path)
{
  struct web_route_hit hit;
  web_route_find(path, method, &hit);
  return hit.route;
}

static bool has_param(const struct web_route *rt)
{
  return strchr(rt->pattern, '{') != NULL;
}

static void test_table_rules(void)
{
  struct web open = {0}, closed = {0};

  open.open_health = open.open_metrics = true;
  for (size_t i = 0; i < web_routes_count; i++) {
    const struct web_route *rt = &web_routes[i];

    ASSERT_TRUE(rt->pattern && rt->pattern[0]);
    ASSERT_TRUE(rt->handler != NULL);
    ASSERT_TRUE(rt->methods != 0 && (rt->methods & ~(GET_HEAD | WRITES)) == 0);
    /* A route with a parameter says what a too-long one would have named. */
    ASSERT_EQ(rt->missing != NULL, has_param(rt));
    /* Whatever changes something needs the admin token, and the admin
     * token is asked for nothing else. */
    ASSERT_EQ(rt->auth == WEB_AUTH_ADMIN, (rt->methods & WRITES) != 0);
    ASSERT_TRUE((rt->methods & WRITES) == 0 || (rt->methods & GET_HEAD) == 0);
    for (size_t j = i + 1; j < web_routes_count; j++) {
      const struct web_route *other = &web_routes[j];
      if (strcmp(rt->pattern, other->pattern) != 0)
        continue;
      /* One entry per method, and one answer to "is a token needed". */
      ASSERT_EQ(rt->methods & other->methods, 0);
      ASSERT_EQ(web_route_auth(&open, rt) == WEB_AUTH_NONE,
                web_route_auth(&open, other) == WEB_AUTH_NONE);
      ASSERT_EQ(web_route_auth(&closed, rt) == WEB_AUTH_NONE,
                web_route_auth(&closed, other) == WEB_AUTH_NONE);
    }
  }
  /* Key material passes only through the admin commands that make keys
   * (revoking one shows none). */
  {
    char secret[256] = "";
    for (size_t i = 0; i < web_routes_count; i++)
      if (web_routes[i].secret && web_routes[i].auth == WEB_AUTH_ADMIN &&
          web_routes[i].methods == WEB_POST && strlen(secret) < 128)
        strcat(strcat(secret, web_routes[i].pattern), " ");
      else
        ASSERT_TRUE(!web_routes[i].secret);
    ASSERT_STR_EQ(secret, "/api/v1/devices/{clientId}/psk/rotate /api/v1/devices/{clientId}/psk "
                          "/api/v1/psks ");
  }
  /* The dashboard's catch-all comes last, or it would hide what follows. */
  ASSERT_STR_EQ(web_routes[web_routes_count - 1].pattern, "*");
}

/* Every route: a request, the handler it must reach, the token it needs
 * (with open_health and open_metrics off) and the parameter it carries. */
static const struct {
  unsigned method;
  const char *path;
  web_handler *handler;
  enum web_auth auth;
  const char *arg; /* NULL: none */
} route_cases[] = {
  {WEB_GET, "/metrics", web_h_metrics, WEB_AUTH_READ, NULL},
  {WEB_HEAD, "/metrics", web_h_metrics, WEB_AUTH_READ, NULL},
  {WEB_GET, "/api/v1/health", web_h_health, WEB_AUTH_READ, NULL},
  {WEB_HEAD, "/api/v1/health", web_h_health, WEB_AUTH_READ, NULL},
  {WEB_GET, "/api/v1/status", web_h_status, WEB_AUTH_READ, NULL},
  {WEB_HEAD, "/api/v1/status", web_h_status, WEB_AUTH_READ, NULL},
  {WEB_GET, "/api/v1/status/history", web_h_status_history, WEB_AUTH_READ, NULL},
  {WEB_HEAD, "/api/v1/status/history", web_h_status_history, WEB_AUTH_READ, NULL},
  {WEB_GET, "/api/v1/devices", web_h_devices, WEB_AUTH_READ, NULL},
  {WEB_GET, "/api/v1/devices/dev-1", web_h_device, WEB_AUTH_READ, "dev-1"},
  {WEB_HEAD, "/api/v1/devices/dev-1", web_h_device, WEB_AUTH_READ, "dev-1"},
  {WEB_DELETE, "/api/v1/devices/dev-1", web_h_decommission, WEB_AUTH_ADMIN, "dev-1"},
  {WEB_GET, "/api/v1/devices/dev-1/certificate", web_h_device_cert, WEB_AUTH_READ, "dev-1"},
  {WEB_POST, "/api/v1/devices/dev-1/approve", web_h_approve, WEB_AUTH_ADMIN, "dev-1"},
  {WEB_POST, "/api/v1/devices/dev-1/block", web_h_block, WEB_AUTH_ADMIN, "dev-1"},
  {WEB_POST, "/api/v1/devices/dev-1/unblock", web_h_unblock, WEB_AUTH_ADMIN, "dev-1"},
  {WEB_POST, "/api/v1/devices/dev-1/reprovision", web_h_reprovision, WEB_AUTH_ADMIN, "dev-1"},
  {WEB_POST, "/api/v1/devices/dev-1/rotate", web_h_rotate, WEB_AUTH_ADMIN, "dev-1"},
  {WEB_POST, "/api/v1/devices/a/b/rotate", web_h_rotate, WEB_AUTH_ADMIN, "a/b"},
  {WEB_POST, "/api/v1/devices/dev-1/release", web_h_release, WEB_AUTH_ADMIN, "dev-1"},
  {WEB_POST, "/api/v1/devices/dev-1/psk", web_h_psk_create, WEB_AUTH_ADMIN, "dev-1"},
  {WEB_DELETE, "/api/v1/devices/dev-1/psk", web_h_psk_revoke, WEB_AUTH_ADMIN, "dev-1"},
  {WEB_POST, "/api/v1/devices/dev-1/psk/rotate", web_h_psk_rotate, WEB_AUTH_ADMIN, "dev-1"},
  {WEB_POST, "/api/v1/psks", web_h_psks_bulk, WEB_AUTH_ADMIN, NULL},
  {WEB_DELETE, "/api/v1/devices/dev-1/outbox", web_h_outbox_discard, WEB_AUTH_ADMIN, "dev-1"},
  {WEB_DELETE, "/api/v1/devices/line/7/outbox", web_h_outbox_discard, WEB_AUTH_ADMIN, "line/7"},
  /* The key of a device is no device of its own, nor is its rotation. */
  {WEB_GET, "/api/v1/devices/psk", web_h_device, WEB_AUTH_READ, "psk"},
  {WEB_GET, "/api/v1/devices/x/psk/rotate/more", web_h_device, WEB_AUTH_READ,
   "x/psk/rotate/more"},
  /* A ClientId with a '/' (sent as %2F, decoded by lws). */
  {WEB_POST, "/api/v1/devices/line/7/approve", web_h_approve, WEB_AUTH_ADMIN, "line/7"},
  {WEB_GET, "/api/v1/devices/line/7", web_h_device, WEB_AUTH_READ, "line/7"},
  /* The action alone is a ClientId; an unknown action is part of one (the
   * registry then answers 404). */
  {WEB_GET, "/api/v1/devices/approve", web_h_device, WEB_AUTH_READ, "approve"},
  {WEB_GET, "/api/v1/devices//approve", web_h_device, WEB_AUTH_READ, "/approve"},
  {WEB_GET, "/api/v1/devices/x/frobnicate", web_h_device, WEB_AUTH_READ, "x/frobnicate"},
  {WEB_GET, "/api/v1/allowlist", web_h_allowlist_get, WEB_AUTH_READ, NULL},
  {WEB_POST, "/api/v1/allowlist", web_h_allowlist_post, WEB_AUTH_ADMIN, NULL},
  {WEB_DELETE, "/api/v1/allowlist/line1-*", web_h_allowlist_delete, WEB_AUTH_ADMIN, "line1-*"},
  {WEB_GET, "/api/v1/certificates", web_h_certs, WEB_AUTH_READ, NULL},
  {WEB_GET, "/api/v1/audit", web_h_audit, WEB_AUTH_READ, NULL},
  {WEB_GET, "/api/v1/openapi.json", web_h_openapi, WEB_AUTH_NONE, NULL},
  {WEB_GET, "/api/v1/events", web_h_events, WEB_AUTH_READ, NULL},
  {WEB_GET, "/", web_h_static, WEB_AUTH_NONE, NULL},
  {WEB_HEAD, "/app.js", web_h_static, WEB_AUTH_NONE, NULL},
  {WEB_GET, "/apix", web_h_static, WEB_AUTH_NONE, NULL},
  {WEB_GET, "/metrics/x", web_h_static, WEB_AUTH_NONE, NULL},
};

static void test_every_route(void)
{
  struct web closed = {0};
  bool reached[64] = {false};

  ASSERT_TRUE(web_routes_count <= sizeof reached / sizeof reached[0]);
  for (size_t i = 0; i < sizeof route_cases / sizeof route_cases[0]; i++) {
    struct web_route_hit hit;
    int before = test_failures;

    web_route_find(route_cases[i].path, route_cases[i].method, &hit);
    ASSERT_TRUE(hit.resource != NULL);
    ASSERT_TRUE(hit.route != NULL);
    if (hit.route) {
      ASSERT_TRUE(hit.route->handler == route_cases[i].handler);
      ASSERT_EQ(web_route_auth(&closed, hit.route), route_cases[i].auth);
      reached[hit.route - web_routes] = true;
    }
    if (route_cases[i].arg) {
      ASSERT_EQ(hit.arg_len, strlen(route_cases[i].arg));
      ASSERT_TRUE(hit.arg && hit.arg_len == strlen(route_cases[i].arg) &&
                  memcmp(hit.arg, route_cases[i].arg, hit.arg_len) == 0);
    } else {
      ASSERT_TRUE(hit.arg == NULL);
    }
    if (test_failures != before)
      fprintf(stderr, "  (case %zu: %s)\n", i, route_cases[i].path);
  }
  /* No entry of the table goes untested. */
  for (size_t i = 0; i < web_routes_count; i++) {
    ASSERT_TRUE(reached[i]);
    if (!reached[i])
      fprintf(stderr, "  (no case reaches %s)\n", web_routes[i].pattern);
  }
}

static void test_open_health_and_metrics(void)
{
  struct web w = {0};
  const struct web_route *health = route_of(WEB_GET, "/api/v1/health");
  const struct web_route *metrics = route_of(WEB_GET, "/metrics");

  ASSERT_TRUE(health && metrics);
  if (!health || !metrics)
    return;
  ASSERT_EQ(web_route_auth(&w, health), WEB_AUTH_READ);
  ASSERT_EQ(web_route_auth(&w, metrics), WEB_AUTH_READ);
  w.open_health = true;
  ASSERT_EQ(web_route_auth(&w, health), WEB_AUTH_NONE);
  ASSERT_EQ(web_route_auth(&w, metrics), WEB_AUTH_READ);
  w.open_health = false;
  w.open_metrics = true;
  ASSERT_EQ(web_route_auth(&w, health), WEB_AUTH_READ);
  ASSERT_EQ(web_route_auth(&w, metrics), WEB_AUTH_NONE);
}

static void test_not_found(void)
{
  static const char *const paths[] = {
    "/api/v1/nope", "/api/v2/status", "/api", "/api/", "/api/v1", "/api/v1/",
    "/api/v1/statusx", "/api/v1/status/", "/api/v1/devices/", "/api/v1/allowlist/",
    "/api/v1/allowlists", "/api/v0/status", "/api/v1/device/x", "/api/v1/config",
  };

  for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
    /* Whatever the method: no resource, no method list, no parameter. */
    static const unsigned methods[] = {WEB_GET, WEB_POST, WEB_DELETE, WEB_OPTIONS};
    for (size_t m = 0; m < sizeof methods / sizeof methods[0]; m++) {
      struct web_route_hit hit;
      web_route_find(paths[i], methods[m], &hit);
      ASSERT_TRUE(hit.resource == NULL && hit.route == NULL);
      ASSERT_EQ(hit.allowed, 0);
      ASSERT_TRUE(hit.arg == NULL);
      if (hit.resource)
        fprintf(stderr, "  (%s found %s)\n", paths[i], hit.resource->pattern);
    }
  }
}

static void test_wrong_method(void)
{
  static const struct {
    unsigned method;
    const char *path;
    unsigned allowed;
    const char *allow; /* the Allow header */
  } cases[] = {
    {WEB_POST, "/api/v1/status/history", GET_HEAD, "GET, HEAD"},
    {WEB_PUT, "/api/v1/status", GET_HEAD, "GET, HEAD"},
    {WEB_POST, "/api/v1/status", GET_HEAD, "GET, HEAD"},
    {WEB_POST, "/api/v1/health", GET_HEAD, "GET, HEAD"},
    {WEB_DELETE, "/api/v1/audit", GET_HEAD, "GET, HEAD"},
    {WEB_POST, "/api/v1/devices", GET_HEAD, "GET, HEAD"},
    /* An action is no device: GET on it is not GET on the device. */
    {WEB_GET, "/api/v1/devices/x/approve", WEB_POST, "POST"},
    {WEB_DELETE, "/api/v1/devices/x/block", WEB_POST, "POST"},
    {WEB_POST, "/api/v1/devices/x/certificate", GET_HEAD, "GET, HEAD"},
    {WEB_PATCH, "/api/v1/devices/x", GET_HEAD | WEB_DELETE, "GET, HEAD, DELETE"},
    {WEB_POST, "/api/v1/devices/x", GET_HEAD | WEB_DELETE, "GET, HEAD, DELETE"},
    {WEB_GET, "/api/v1/allowlist/x", WEB_DELETE, "DELETE"},
    {WEB_GET, "/api/v1/devices/x/psk", WEB_POST | WEB_DELETE, "POST, DELETE"},
    {WEB_PUT, "/api/v1/devices/x/psk", WEB_POST | WEB_DELETE, "POST, DELETE"},
    {WEB_DELETE, "/api/v1/devices/x/psk/rotate", WEB_POST, "POST"},
    {WEB_GET, "/api/v1/psks", WEB_POST, "POST"},
    {WEB_GET, "/api/v1/devices/x/outbox", WEB_DELETE, "DELETE"},
    {WEB_PUT, "/api/v1/allowlist", GET_HEAD | WEB_POST, "GET, HEAD, POST"},
    {WEB_DELETE, "/api/v1/allowlist", GET_HEAD | WEB_POST, "GET, HEAD, POST"},
    {WEB_HEAD, "/api/v1/events", WEB_GET, "GET"},
    {WEB_POST, "/api/v1/openapi.json", GET_HEAD, "GET, HEAD"},
    {WEB_POST, "/metrics", GET_HEAD, "GET, HEAD"},
    {WEB_POST, "/app.js", GET_HEAD, "GET, HEAD"},
    {WEB_OPTIONS, "/api/v1/status", GET_HEAD, "GET, HEAD"},
    {WEB_OTHER, "/", GET_HEAD, "GET, HEAD"},
  };

  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    struct web_route_hit hit;
    char allow[64];
    int before = test_failures;

    web_route_find(cases[i].path, cases[i].method, &hit);
    ASSERT_TRUE(hit.resource != NULL);
    ASSERT_TRUE(hit.route == NULL);
    ASSERT_EQ(hit.allowed, cases[i].allowed);
    ASSERT_TRUE(web_allow_header(hit.allowed, allow, sizeof allow) >= 0);
    ASSERT_STR_EQ(allow, cases[i].allow);
    if (test_failures != before)
      fprintf(stderr, "  (case %zu: %s)\n", i, cases[i].path);
  }
}

int main(void)
{
  RUN(test_table_rules);
  RUN(test_every_route);
  RUN(test_open_health_and_metrics);
  RUN(test_not_found);
  RUN(test_wrong_method);
  return TEST_END();
}
