/*
 * test_web_rows.c - the JSON that web/ makes of the gateway's rows
 * (web_api.c: web_device_json and the row callbacks for devices,
 * certificates, audit entries, allowlist entries and subscriptions; the
 * outbox object of web_outbox.c).  Each
 * case prints the object unformatted and compares the whole text, so field
 * names, their order, null against absent, number formatting and string
 * escaping are all pinned: the dashboard and the OpenAPI document rely on
 * them.
 */
#include "web_int.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gw_api_fakes.h"
#include "test.h"

/* Compares o's unformatted text with want, then frees o. */
static void expect_json(cJSON *o, const char *want)
{
  char *text = o ? cJSON_PrintUnformatted(o) : NULL;

  ASSERT_STR_EQ(text, want);
  cJSON_free(text);
  cJSON_Delete(o);
}

static struct web_rows rows_new(void)
{
  struct web_rows rows = {cJSON_CreateArray(), true};
  ASSERT_TRUE(rows.items != NULL);
  return rows;
}

/* A device as the registry and the live session report it. */
static void device_fill(struct api_device *d)
{
  memset(d, 0, sizeof *d);
  strcpy(d->client_id, "leaf-1");
  strcpy(d->thing_name, "fleet-leaf-1");
  strcpy(d->state, "active");
  strcpy(d->session, "asleep");
  strcpy(d->bound_addr, "10.0.0.7");
  strcpy(d->address, "10.0.0.7:50000");
  d->first_seen = 1764451200; /* 2025-11-29T21:20:00Z: timestamps are Unix seconds */
  d->last_seen = 1764454800;
  d->attempts = 2;
  d->msgs_in = 12;
  d->msgs_out = 3;
  d->msgs_refused = 2;
  d->queued = 1;
  d->subscriptions = 4;
  /* Its session's rates (rounded to 1/100), last publish, keep-alive. */
  d->rate_in = 0.256;
  d->rate_out = 1.0 / 3;
  d->last_message_at = 1764454790;
  d->has_keepalive = true;
  d->keepalive_s = 60;
  d->reconnects = 5;
  /* Its outbox: three messages waiting for the cloud, one of them sent. */
  d->outbox.enabled = true;
  d->outbox.messages = 3;
  d->outbox.bytes = 120;
  d->outbox.in_flight = 1;
  d->outbox.oldest_age_s = 75;
  d->outbox.stored = 40;
  d->outbox.delivered = 37;
  d->outbox.refused_full = 1;
  d->outbox.expired = 2;
}

/* The session fields of device_fill, and of a zeroed struct. */
#define SESSION_FILLED                                                                             \
  "\"rate_in\":0.26,\"rate_out\":0.33,\"last_message_at\":1764454790,\"keepalive_s\":60,"       \
  "\"reconnects\":5,"
#define SESSION_NONE                                                                               \
  "\"rate_in\":0,\"rate_out\":0,\"last_message_at\":null,\"keepalive_s\":null,\"reconnects\":0,"

/* The outbox of device_fill, and of a zeroed struct. */
#define OUTBOX_FILLED                                                                              \
  "\"outbox\":{\"enabled\":true,\"messages\":3,\"bytes\":120,\"in_flight\":1,"                     \
  "\"oldest_age_s\":75,\"stored\":40,\"delivered\":37,\"refused_full\":1,\"dropped\":0,"           \
  "\"expired\":2,\"cloud_refused\":0,\"discarded\":0}"
#define OUTBOX_ZERO(age)                                                                           \
  "\"outbox\":{\"enabled\":false,\"messages\":0,\"bytes\":0,\"in_flight\":0,"                      \
  "\"oldest_age_s\":" age ",\"stored\":0,\"delivered\":0,\"refused_full\":0,\"dropped\":0,"        \
  "\"expired\":0,\"cloud_refused\":0,\"discarded\":0}"

static void test_device_without_certificate(void)
{
  struct api_device d;

  device_fill(&d);
  strcpy(d.lan_security, "dtls-psk");
  d.psk = true;
  /* No active certificate: "certificate" is there, and null.  "psk" says
   * that a key exists, nothing more. */
  expect_json(web_device_json(&d),
              "{\"client_id\":\"leaf-1\",\"thing_name\":\"fleet-leaf-1\",\"state\":\"active\","
              "\"session\":\"asleep\",\"bound_addr\":\"10.0.0.7\","
              "\"address\":\"10.0.0.7:50000\",\"first_seen\":1764451200,"
              "\"last_seen\":1764454800,\"last_error\":\"\",\"attempts\":2,"
              "\"certificate\":null,\"expires_in_days\":null,\"lan_security\":\"dtls-psk\",\"psk\":true,\"msgs_in\":12,"
              "\"msgs_out\":3,\"msgs_refused\":2,\"queued\":1,\"subscriptions\":4," SESSION_FILLED
              OUTBOX_FILLED "}");
}

static void test_device_with_certificate(void)
{
  struct api_device d;

  device_fill(&d);
  strcpy(d.cert_id, "3f2a9c");
  strcpy(d.cert_fingerprint, "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
  d.cert_not_after = 4102444800; /* 2100-01-01: past 2^31, still an integer */
  strcpy(d.cert_status, "active");
  d.cert_expiry_known = true;
  d.cert_expires_in_days = -3; /* expired: negative */
  strcpy(d.last_error, "claim rejected");
  strcpy(d.lan_security, "plain");
  expect_json(web_device_json(&d),
              "{\"client_id\":\"leaf-1\",\"thing_name\":\"fleet-leaf-1\",\"state\":\"active\","
              "\"session\":\"asleep\",\"bound_addr\":\"10.0.0.7\","
              "\"address\":\"10.0.0.7:50000\",\"first_seen\":1764451200,"
              "\"last_seen\":1764454800,\"last_error\":\"claim rejected\",\"attempts\":2,"
              "\"certificate\":{\"cert_id\":\"3f2a9c\",\"fingerprint\":"
              "\"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\","
              "\"not_after\":4102444800,\"status\":\"active\"},\"expires_in_days\":-3,"
              "\"lan_security\":\"plain\",\"psk\":false,\"msgs_in\":12,\"msgs_out\":3,\"msgs_refused\":2,\"queued\":1,\"subscriptions\":4," SESSION_FILLED
              OUTBOX_FILLED "}");
}

static void test_device_empty(void)
{
  struct api_device d;

  /* A registry row with nothing known yet: every string is "" (never
   * absent, never null), every number 0, and the certificate and the LAN
   * security (never connected) null. */
  memset(&d, 0, sizeof d);
  strcpy(d.client_id, "new");
  strcpy(d.state, "pending");
  strcpy(d.session, "none");
  d.outbox.oldest_age_s = -1; /* the outbox off, or nothing waits: null */
  expect_json(web_device_json(&d),
              "{\"client_id\":\"new\",\"thing_name\":\"\",\"state\":\"pending\","
              "\"session\":\"none\",\"bound_addr\":\"\",\"address\":\"\",\"first_seen\":0,"
              "\"last_seen\":0,\"last_error\":\"\",\"attempts\":0,\"certificate\":null,"
              "\"expires_in_days\":null,"
              "\"lan_security\":null,\"psk\":false,\"msgs_in\":0,\"msgs_out\":0,\"msgs_refused\":0,\"queued\":0,\"subscriptions\":0," SESSION_NONE
              OUTBOX_ZERO("null") "}");
}

static void test_device_odd_client_id(void)
{
  struct api_device d;
  cJSON *o, *back;

  /* ClientIds are whatever the leaves sent: quotes, backslashes, control
   * characters and '/' must survive the trip into JSON and back.  '/' and
   * UTF-8 are left as they are; the rest is escaped. */
  memset(&d, 0, sizeof d);
  strcpy(d.client_id, "a\"b\\c/d\n\r\t\b\f\x01\x1f\x7f\xc3\xa9");
  strcpy(d.last_error, "bad \"claim\"\n");
  o = web_device_json(&d);
  ASSERT_TRUE(o != NULL);
  back = cJSON_GetObjectItemCaseSensitive(o, "client_id");
  ASSERT_TRUE(cJSON_IsString(back));
  ASSERT_STR_EQ(back->valuestring, d.client_id);
  expect_json(o, "{\"client_id\":\"a\\\"b\\\\c/d\\n\\r\\t\\b\\f\\u0001\\u001f\x7f\xc3\xa9\","
                 "\"thing_name\":\"\",\"state\":\"\",\"session\":\"\",\"bound_addr\":\"\","
                 "\"address\":\"\",\"first_seen\":0,\"last_seen\":0,"
                 "\"last_error\":\"bad \\\"claim\\\"\\n\",\"attempts\":0,\"certificate\":null,"
              "\"expires_in_days\":null,"
                 "\"lan_security\":null,\"psk\":false,\"msgs_in\":0,\"msgs_out\":0,\"msgs_refused\":0,\"queued\":0,\"subscriptions\":0," SESSION_NONE
                 OUTBOX_ZERO("0") "}");
}

static void test_device_numbers(void)
{
  struct api_device d;
  char *text;

  /* Numbers are JSON numbers, printed by cJSON from a double with 15
   * significant digits: integers are exact up to 15 digits, a negative
   * timestamp (a clock before 1970) stays negative, and beyond 15 digits
   * the text turns to an exponent and loses the last digits (a counter
   * would need 10^15 messages to get there). */
  memset(&d, 0, sizeof d);
  d.first_seen = -1;
  d.last_seen = INT64_C(999999999999999);
  d.attempts = UINT32_MAX;
  d.msgs_in = UINT64_C(1) << 53;
  d.queued = UINT32_MAX;
  cJSON *o = web_device_json(&d);
  text = o ? cJSON_PrintUnformatted(o) : NULL;
  ASSERT_TRUE(text && strstr(text, "\"first_seen\":-1,"));
  ASSERT_TRUE(text && strstr(text, "\"last_seen\":999999999999999,"));
  ASSERT_TRUE(text && strstr(text, "\"attempts\":4294967295,"));
  ASSERT_TRUE(text && strstr(text, "\"msgs_in\":9.00719925474099e+15,"));
  ASSERT_TRUE(text && strstr(text, "\"queued\":4294967295,"));
  cJSON_free(text);
  cJSON_Delete(o);
}

static void test_outbox_totals(void)
{
  struct api_outbox ob = {.enabled = true, .messages = 5, .bytes = 50, .oldest_age_s = 0,
                          .stored = 9, .delivered = 4, .dropped = 1, .cloud_refused = 3,
                          .discarded = 2, .leaves = 2};
  bool ok = true;
  cJSON *o = cJSON_CreateObject();

  /* The status's totals add "leaves"; an age of 0 s is 0, not null. */
  ASSERT_TRUE(o != NULL);
  web_outbox_json(o, &ob, true, &ok);
  ASSERT_TRUE(ok);
  expect_json(o, "{\"outbox\":{\"enabled\":true,\"messages\":5,\"bytes\":50,\"in_flight\":0,"
                 "\"oldest_age_s\":0,\"stored\":9,\"delivered\":4,\"refused_full\":0,"
                 "\"dropped\":1,\"expired\":0,\"cloud_refused\":3,\"discarded\":2,"
                 "\"leaves\":2}}");
}

static void test_device_rows(void)
{
  struct web_rows rows = rows_new();
  struct api_device d;

  /* Rows are appended in the order the gateway streams them. */
  device_fill(&d);
  ASSERT_EQ(web_device_row(&rows, &d), 0);
  strcpy(d.client_id, "leaf-2");
  ASSERT_EQ(web_device_row(&rows, &d), 0);
  ASSERT_TRUE(rows.ok);
  ASSERT_EQ(cJSON_GetArraySize(rows.items), 2);
  ASSERT_STR_EQ(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(rows.items, 0), "client_id")
                    ->valuestring,
                "leaf-1");
  ASSERT_STR_EQ(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(rows.items, 1), "client_id")
                    ->valuestring,
                "leaf-2");
  cJSON_Delete(rows.items);
}

static void test_cert_row(void)
{
  struct web_rows rows = rows_new();
  struct api_cert cr;

  memset(&cr, 0, sizeof cr);
  strcpy(cr.cert_id, "3f2a9c");
  strcpy(cr.client_id, "line/7");
  strcpy(cr.status, "superseded");
  cr.not_after = 4102444800;
  strcpy(cr.fingerprint, "abcdef");
  strcpy(cr.reason, "reprovisioned by \"api:admin\"");
  cr.created_at = 1764451200;
  ASSERT_EQ(web_cert_row(&rows, &cr), 0);
  /* An orphan from a crash: no reason, no fingerprint yet. */
  memset(&cr, 0, sizeof cr);
  strcpy(cr.cert_id, "77");
  strcpy(cr.status, "orphaned");
  ASSERT_EQ(web_cert_row(&rows, &cr), 0);
  ASSERT_TRUE(rows.ok);
  expect_json(rows.items,
              "[{\"cert_id\":\"3f2a9c\",\"client_id\":\"line/7\",\"status\":\"superseded\","
              "\"not_after\":4102444800,\"fingerprint\":\"abcdef\","
              "\"reason\":\"reprovisioned by \\\"api:admin\\\"\",\"created_at\":1764451200},"
              "{\"cert_id\":\"77\",\"client_id\":\"\",\"status\":\"orphaned\",\"not_after\":0,"
              "\"fingerprint\":\"\",\"reason\":\"\",\"created_at\":0}]");
}

static void test_audit_row(void)
{
  struct web_rows rows = rows_new();
  struct api_audit a;

  memset(&a, 0, sizeof a);
  a.id = 7;
  a.at = 1764451200;
  strcpy(a.actor, "api:admin");
  strcpy(a.action, "approve");
  strcpy(a.client_id, "leaf\t1");
  strcpy(a.detail, "{\"from\":\"pending\"}\n");
  ASSERT_EQ(web_audit_row(&rows, &a), 0);
  ASSERT_TRUE(rows.ok);
  expect_json(rows.items,
              "[{\"id\":7,\"at\":1764451200,\"actor\":\"api:admin\",\"action\":\"approve\","
              "\"client_id\":\"leaf\\t1\",\"detail\":\"{\\\"from\\\":\\\"pending\\\"}\\n\"}]");
}

static void test_allow_row(void)
{
  struct web_rows rows = rows_new();

  ASSERT_EQ(web_allow_row(&rows, "line1-*", 1764451200), 0);
  ASSERT_EQ(web_allow_row(&rows, "q\"uote", 0), 0);
  /* A NULL string is written as "", never as null. */
  ASSERT_EQ(web_allow_row(&rows, NULL, 5), 0);
  ASSERT_TRUE(rows.ok);
  expect_json(rows.items, "[{\"entry\":\"line1-*\",\"added_at\":1764451200},"
                          "{\"entry\":\"q\\\"uote\",\"added_at\":0},"
                          "{\"entry\":\"\",\"added_at\":5}]");
}

static void test_sub_row(void)
{
  struct web_rows rows = rows_new();

  ASSERT_EQ(web_sub_row(&rows, "fleet/leaf-1/cmd/#", 1), 0);
  ASSERT_EQ(web_sub_row(&rows, "fleet/+/all", 0), 0);
  ASSERT_EQ(web_sub_row(&rows, NULL, 2), 0);
  ASSERT_TRUE(rows.ok);
  expect_json(rows.items, "[{\"filter\":\"fleet/leaf-1/cmd/#\",\"qos\":1},"
                          "{\"filter\":\"fleet/+/all\",\"qos\":0},{\"filter\":\"\",\"qos\":2}]");
}

/* A row callback's answer when its row could not be added: -1, so that the
 * listing stops, and ok false.  ok is set again for the next case. */
static void expect_refused(struct web_rows *rows, int rc)
{
  ASSERT_EQ(rc, -1);
  ASSERT_TRUE(!rows->ok);
  rows->ok = true;
}

static void test_row_failure(void)
{
  struct web_rows rows = {NULL, true};
  struct api_device d;
  struct api_cert cr;
  struct api_audit a;

  /* No array to add the row to stands for cJSON running out of memory; the
   * row built is freed all the same (the sanitizer build would report it
   * otherwise). */
  device_fill(&d);
  memset(&cr, 0, sizeof cr);
  memset(&a, 0, sizeof a);
  expect_refused(&rows, web_device_row(&rows, &d));
  expect_refused(&rows, web_cert_row(&rows, &cr));
  expect_refused(&rows, web_audit_row(&rows, &a));
  expect_refused(&rows, web_allow_row(&rows, "x", 1));
  expect_refused(&rows, web_sub_row(&rows, "x", 1));
}

int main(void)
{
  RUN(test_device_without_certificate);
  RUN(test_device_with_certificate);
  RUN(test_device_empty);
  RUN(test_device_odd_client_id);
  RUN(test_device_numbers);
  RUN(test_outbox_totals);
  RUN(test_device_rows);
  RUN(test_cert_row);
  RUN(test_audit_row);
  RUN(test_allow_row);
  RUN(test_sub_row);
  RUN(test_row_failure);
  return TEST_END();
}
