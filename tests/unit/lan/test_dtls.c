/*
 * test_dtls.c - gateway/lan/dtls.c, the DTLS 1.2 server, on a real loop
 * and real UDP sockets on 127.0.0.0/8, against OpenSSL's own DTLS client
 * (memory BIOs, shuttled over a UDP socket by the test, so that records can
 * be captured and replayed) and against `openssl s_client` as an
 * independent peer.
 */
#define _DEFAULT_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "dtls.h"
#include "test.h"

static uv_loop_t g_loop;
static char g_dir[128];

/* ---- the server side's owner ---------------------------------------------- */

struct owner {
  int datagrams;
  char last[512];
  size_t last_len;
  char last_id[257];
  enum dtls_auth last_auth;
  struct sockaddr_storage last_from;
  int closed;
  bool echo;            /* answer each datagram with "re:" + it */
  struct dtls *d;
};

static const uint8_t KEY1[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};

static size_t psk_lookup(void *ud, const char *identity, uint8_t *psk, size_t cap)
{
  (void)ud;
  if (strncmp(identity, "leaf-", 5) != 0 || cap < sizeof KEY1)
    return 0;
  memcpy(psk, KEY1, sizeof KEY1);
  psk[0] = (uint8_t)identity[strlen(identity) - 1]; /* a key per identity */
  return sizeof KEY1;
}

static void on_datagram(void *ud, const struct sockaddr *from, const struct dtls_peer *peer,
                        const uint8_t *data, size_t len)
{
  struct owner *o = ud;
  o->datagrams++;
  o->last_len = len < sizeof o->last ? len : sizeof o->last - 1;
  memcpy(o->last, data, o->last_len);
  o->last[o->last_len] = '\0';
  snprintf(o->last_id, sizeof o->last_id, "%s", peer->identity);
  o->last_auth = peer->auth;
  memcpy(&o->last_from, from, sizeof(struct sockaddr_in));
  if (o->echo) {
    uint8_t r[600];
    memcpy(r, "re:", 3);
    memcpy(r + 3, data, len);
    ASSERT_EQ(dtls_send(o->d, from, r, len + 3), 0);
  }
}

static void on_closed(void *ud, const struct sockaddr *from, const struct dtls_peer *peer)
{
  struct owner *o = ud;
  (void)from;
  (void)peer;
  o->closed++;
}

static struct dtls_opts default_opts(void)
{
  struct dtls_opts o = {.bind = "127.0.0.1", .port = 0, .mtu = 1200, .max_sessions = 64,
                        .max_handshakes = 16, .max_handshakes_per_ip = 4,
                        .handshake_timeout_ms = 1500, .idle_timeout_ms = 60000};
  return o;
}

static struct dtls *server(struct owner *ow, const struct dtls_opts *o)
{
  struct dtls_env env = {.loop = &g_loop, .o = o, .psk_lookup = psk_lookup,
                         .on_datagram = on_datagram, .on_closed = on_closed, .ud = ow};
  struct dtls *d = NULL;
  char err[256] = "";
  int rc = dtls_new(&env, &d, err, sizeof err);
  if (rc != 0)
    fprintf(stderr, "dtls_new: %s\n", err);
  ASSERT_EQ(rc, 0);
  if (!d)
    return NULL;
  ASSERT_EQ(dtls_start(d), 0);
  ow->d = d;
  return d;
}

static int g_stopped;
static void stopped(void *ud)
{
  (void)ud;
  g_stopped++;
}

static void server_stop(struct dtls *d)
{
  g_stopped = 0;
  dtls_stop(d, stopped, NULL);
  for (int i = 0; i < 100 && !g_stopped; i++)
    uv_run(&g_loop, UV_RUN_NOWAIT);
  ASSERT_EQ(g_stopped, 1);
  dtls_free(d);
}

/* ---- a DTLS client on memory BIOs over its own UDP socket ----------------- */

struct client {
  int fd;
  SSL_CTX *ctx;
  SSL *ssl;
  BIO *rbio, *wbio;
  const char *identity;
  uint8_t key[16];
  uint8_t sent[4096];   /* the last datagram sent, for replays */
  size_t sent_len;
  int alert;            /* the last alert received, -1 none */
};

static unsigned psk_client_cb(SSL *ssl, const char *hint, char *identity, unsigned max_id,
                              unsigned char *psk, unsigned max_psk)
{
  struct client *c = SSL_get_app_data(ssl);
  (void)hint;
  if (strlen(c->identity) + 1 > max_id || max_psk < sizeof c->key)
    return 0;
  strcpy(identity, c->identity);
  memcpy(psk, c->key, sizeof c->key);
  return sizeof c->key;
}

static void info_cb(const SSL *ssl, int where, int ret)
{
  struct client *c = SSL_get_app_data(ssl);
  if ((where & SSL_CB_READ_ALERT) && c)
    c->alert = ret & 0xFF;
}

static int udp_socket(const char *ip, uint16_t port)
{
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  int fd = socket(AF_INET, SOCK_DGRAM, 0), one = 1;
  inet_pton(AF_INET, ip, &a.sin_addr);
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    perror("bind");
    close(fd);
    return -1;
  }
  fcntl(fd, F_SETFL, O_NONBLOCK);
  return fd;
}

static void connect_to(int fd, int port)
{
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  ASSERT_EQ(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
}

static uint16_t local_port(int fd)
{
  struct sockaddr_in a;
  socklen_t l = sizeof a;
  getsockname(fd, (struct sockaddr *)&a, &l);
  return ntohs(a.sin_port);
}

/* ciphers NULL: PSK; otherwise cert mode with cert/key files. */
static void client_init(struct client *c, const char *ip, uint16_t bind_port, int server_port,
                        const char *identity, const uint8_t *key, const char *ciphers,
                        const char *cert, const char *keyfile)
{
  memset(c, 0, sizeof *c);
  c->alert = -1;
  c->identity = identity;
  if (key)
    memcpy(c->key, key, sizeof c->key);
  c->fd = udp_socket(ip, bind_port);
  connect_to(c->fd, server_port);
  c->ctx = SSL_CTX_new(DTLS_client_method());
  SSL_CTX_set_min_proto_version(c->ctx, DTLS1_2_VERSION);
  SSL_CTX_set_options(c->ctx, SSL_OP_NO_QUERY_MTU | SSL_OP_NO_TICKET);
  SSL_CTX_set_cipher_list(c->ctx, ciphers ? ciphers : "PSK-AES128-CCM8");
  SSL_CTX_set_psk_client_callback(c->ctx, psk_client_cb);
  SSL_CTX_set_info_callback(c->ctx, info_cb);
  if (cert) {
    ASSERT_EQ(SSL_CTX_use_certificate_file(c->ctx, cert, SSL_FILETYPE_PEM), 1);
    ASSERT_EQ(SSL_CTX_use_PrivateKey_file(c->ctx, keyfile, SSL_FILETYPE_PEM), 1);
  }
  c->ssl = SSL_new(c->ctx);
  c->rbio = BIO_new(BIO_s_mem());
  c->wbio = BIO_new(BIO_s_mem());
  BIO_set_mem_eof_return(c->rbio, -1);
  BIO_set_mem_eof_return(c->wbio, -1);
  SSL_set_bio(c->ssl, c->rbio, c->wbio);
  SSL_set_mtu(c->ssl, 1200);
  SSL_set_app_data(c->ssl, c);
  SSL_set_connect_state(c->ssl);
}

static void client_free(struct client *c)
{
  SSL_free(c->ssl);
  SSL_CTX_free(c->ctx);
  if (c->fd >= 0)
    close(c->fd);
}

/* What the client's SSL wrote goes out as one datagram (remembered). */
static void client_flush(struct client *c)
{
  int n = BIO_read(c->wbio, c->sent, (int)sizeof c->sent);
  if (n > 0) {
    c->sent_len = (size_t)n;
    send(c->fd, c->sent, (size_t)n, 0);
  }
}

static void client_input(struct client *c)
{
  uint8_t buf[4096];
  ssize_t n;
  while ((n = recv(c->fd, buf, sizeof buf, 0)) > 0)
    BIO_write(c->rbio, buf, (int)n);
}

/* One step of the handshake: 1 done, 0 going on, -1 failed. */
static int client_step(struct client *c)
{
  int rc;
  client_input(c);
  rc = SSL_do_handshake(c->ssl);
  if (rc != 1 && SSL_get_error(c->ssl, rc) != SSL_ERROR_WANT_READ) {
    ERR_clear_error();
    client_flush(c);
    return -1;
  }
  if (rc != 1 && DTLSv1_handle_timeout(c->ssl) < 0)
    return -1;
  client_flush(c);
  return rc == 1 ? 1 : 0;
}

static void spin(int ms)
{
  struct timespec t0, t;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  do {
    uv_run(&g_loop, UV_RUN_NOWAIT);
    usleep(500);
    clock_gettime(CLOCK_MONOTONIC, &t);
  } while ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 < ms);
}

/* Drives the client and the server until the handshake ends: 1 or -1
 * (0 when nothing happened within ms). */
static int handshake(struct client *c, int ms)
{
  for (int i = 0; i < ms; i++) {
    int r = client_step(c);
    if (r != 0) {
      spin(5);
      return r;
    }
    spin(1);
  }
  return 0;
}

static void client_write(struct client *c, const char *s)
{
  ASSERT_EQ(SSL_write(c->ssl, s, (int)strlen(s)), (int)strlen(s));
  client_flush(c);
}

/* Reads one application datagram into out (NUL-terminated); its length or -1. */
static int client_read(struct client *c, char *out, size_t cap, int ms)
{
  for (int i = 0; i < ms; i++) {
    int n;
    spin(1);
    client_input(c);
    n = SSL_read(c->ssl, out, (int)cap - 1);
    if (n > 0) {
      out[n] = '\0';
      return n;
    }
    ERR_clear_error();
  }
  return -1;
}

static struct dtls_stats stats(struct dtls *d)
{
  struct dtls_stats s;
  dtls_get_stats(d, &s);
  return s;
}

static void key_for(const char *id, uint8_t key[16])
{
  memcpy(key, KEY1, 16);
  key[0] = (uint8_t)id[strlen(id) - 1];
}

/* ---- tests ---------------------------------------------------------------- */

static void test_psk_both_ways(void)
{
  struct owner ow = {.echo = true};
  struct dtls_opts o = default_opts();
  struct dtls *d = server(&ow, &o);
  struct client c;
  uint8_t key[16];
  char buf[256];
  if (!d)
    return;
  key_for("leaf-1", key);
  client_init(&c, "127.0.0.1", 0, dtls_port(d), "leaf-1", key, NULL, NULL, NULL);
  ASSERT_EQ(handshake(&c, 3000), 1);
  ASSERT_STR_EQ(SSL_get_cipher_name(c.ssl), "PSK-AES128-CCM8");
  client_write(&c, "\x05\x04hello");
  spin(20);
  ASSERT_EQ(ow.datagrams, 1);
  ASSERT_STR_EQ(ow.last_id, "leaf-1");
  ASSERT_EQ(ow.last_auth, DTLS_AUTH_PSK);
  ASSERT_EQ(ow.last_len, 7);
  ASSERT_EQ(client_read(&c, buf, sizeof buf, 500), 10);
  ASSERT_TRUE(memcmp(buf, "re:\x05\x04hello", 10) == 0);
  ASSERT_EQ(stats(d).sessions, 1);
  ASSERT_EQ(stats(d).handshakes_done, 1);
  ASSERT_EQ(stats(d).hello_verify_sent, 1);
  /* Larger than a record may carry: refused, not sent as an oversize record. */
  {
    static uint8_t big[1300];
    ASSERT_EQ(dtls_send(d, (struct sockaddr *)&ow.last_from, big, sizeof big), UV_EMSGSIZE);
    ASSERT_TRUE(dtls_max_payload(d, (struct sockaddr *)&ow.last_from) > 1100);
  }
  /* close_notify from the client ends the session. */
  SSL_shutdown(c.ssl);
  client_flush(&c);
  spin(20);
  ASSERT_EQ(ow.closed, 1);
  ASSERT_EQ(stats(d).sessions, 0);
  client_free(&c);
  server_stop(d);
}

static void test_wrong_key_and_unknown_identity(void)
{
  struct owner ow = {0};
  struct dtls_opts o = default_opts();
  struct dtls *d = server(&ow, &o);
  struct client c1, c2;
  uint8_t wrong[16] = {0};
  if (!d)
    return;
  client_init(&c1, "127.0.0.1", 0, dtls_port(d), "leaf-2", wrong, NULL, NULL, NULL);
  client_init(&c2, "127.0.0.1", 0, dtls_port(d), "stranger", wrong, NULL, NULL, NULL);
  ASSERT_TRUE(handshake(&c1, 2500) != 1);
  ASSERT_TRUE(handshake(&c2, 2500) != 1);
  spin(1700); /* past the handshake time-out */
  ASSERT_EQ(stats(d).handshakes_done, 0);
  ASSERT_EQ(stats(d).sessions, 0);
  ASSERT_EQ(stats(d).handshaking, 0);
  ASSERT_EQ(stats(d).handshakes_failed + stats(d).handshakes_timed_out, 2);
  /* RFC 7925 §6: no unknown_psk_identity alert (115) for the stranger. */
  ASSERT_TRUE(c2.alert != 115);
  ASSERT_EQ(ow.datagrams, 0);
  client_free(&c1);
  client_free(&c2);
  server_stop(d);
}

/* A cookieless ClientHello, as a client's first flight. */
static size_t first_flight(uint8_t *out, size_t cap)
{
  struct client c;
  size_t n;
  client_init(&c, "127.0.0.1", 0, 9, "leaf-9", KEY1, NULL, NULL, NULL);
  SSL_do_handshake(c.ssl);
  n = (size_t)BIO_read(c.wbio, out, (int)cap);
  client_free(&c);
  return n;
}

static void test_hello_flood_costs_nothing(void)
{
  struct owner ow = {0};
  struct dtls_opts o = default_opts();
  struct dtls *d = server(&ow, &o);
  uint8_t ch[2048], reply[2048];
  size_t chlen = first_flight(ch, sizeof ch);
  int answered = 0, larger = 0;
  if (!d)
    return;
  ASSERT_TRUE(chlen > 60);
  for (int i = 0; i < 200; i++) {
    char ip[32];
    int fd;
    snprintf(ip, sizeof ip, "127.0.%d.%d", 1 + i / 100, 1 + i % 100);
    fd = udp_socket(ip, 0);
    connect_to(fd, dtls_port(d));
    send(fd, ch, chlen, 0);
    spin(1);
    for (int k = 0; k < 50; k++) {
      ssize_t n = recv(fd, reply, sizeof reply, 0);
      if (n > 0) {
        answered++;
        /* A HelloVerifyRequest: handshake record, type 3, not larger. */
        ASSERT_EQ(reply[0], 22);
        ASSERT_EQ(reply[13], 3);
        if ((size_t)n > chlen)
          larger++;
        break;
      }
      spin(1);
    }
    close(fd);
  }
  ASSERT_EQ(answered, 200);
  ASSERT_EQ(larger, 0);
  ASSERT_EQ(stats(d).hello_verify_sent, 200);
  ASSERT_EQ(stats(d).sessions + stats(d).handshaking, 0);
  /* Still serving genuine leaves. */
  {
    struct client c;
    uint8_t key[16];
    key_for("leaf-3", key);
    client_init(&c, "127.0.0.1", 0, dtls_port(d), "leaf-3", key, NULL, NULL, NULL);
    ASSERT_EQ(handshake(&c, 3000), 1);
    client_free(&c);
  }
  server_stop(d);
}

static void test_handshakes_per_ip(void)
{
  struct owner ow = {0};
  struct dtls_opts o = default_opts();
  struct dtls *d;
  struct client c[3];
  uint8_t key[16];
  o.max_handshakes_per_ip = 2;
  d = server(&ow, &o);
  if (!d)
    return;
  key_for("leaf-4", key);
  for (int i = 0; i < 3; i++) {
    client_init(&c[i], "127.0.0.5", 0, dtls_port(d), "leaf-4", key, NULL, NULL, NULL);
    client_step(&c[i]); /* ClientHello */
    spin(5);
    client_step(&c[i]); /* the HelloVerifyRequest read, ClientHello with the cookie */
    spin(5);
  }
  ASSERT_EQ(stats(d).handshaking, 2);
  ASSERT_EQ(stats(d).refused_per_ip, 1);
  for (int i = 0; i < 3; i++)
    client_free(&c[i]);
  server_stop(d);
}

static void test_plain_and_replayed(void)
{
  struct owner ow = {0};
  struct dtls_opts o = default_opts();
  struct dtls *d = server(&ow, &o);
  struct client c;
  uint8_t key[16];
  static const uint8_t plain[] = {0x0c, 0x04, 0x04, 0x01, 0x00, 0x3c, 'p', 'l', 'c', '-', '1', 0};
  if (!d)
    return;
  key_for("leaf-5", key);
  client_init(&c, "127.0.0.1", 0, dtls_port(d), "leaf-5", key, NULL, NULL, NULL);
  /* Plain MQTT-SN on the DTLS port, before and after the handshake. */
  send(c.fd, plain, sizeof plain - 1, 0);
  spin(10);
  ASSERT_EQ(stats(d).plain_dropped, 1);
  ASSERT_EQ(handshake(&c, 3000), 1);
  send(c.fd, plain, sizeof plain - 1, 0);
  client_write(&c, "one");
  spin(20);
  ASSERT_EQ(stats(d).plain_dropped, 2);
  ASSERT_EQ(ow.datagrams, 1);
  /* The same record again: the replay window drops it. */
  send(c.fd, c.sent, c.sent_len, 0);
  spin(20);
  ASSERT_EQ(ow.datagrams, 1);
  client_write(&c, "two");
  spin(20);
  ASSERT_EQ(ow.datagrams, 2);
  ASSERT_STR_EQ(ow.last, "two");
  ASSERT_EQ(stats(d).sessions, 1);
  client_free(&c);
  server_stop(d);
}

static void test_reboot_same_address(void)
{
  struct owner ow = {0};
  struct dtls_opts o = default_opts();
  struct dtls *d = server(&ow, &o);
  struct client old, fresh;
  uint8_t key[16], ch[2048];
  size_t chlen = first_flight(ch, sizeof ch);
  uint16_t port;
  if (!d)
    return;
  key_for("leaf-6", key);
  client_init(&old, "127.0.0.1", 0, dtls_port(d), "leaf-6", key, NULL, NULL, NULL);
  ASSERT_EQ(handshake(&old, 3000), 1);
  port = local_port(old.fd);
  /* A forged cookieless ClientHello from the session's address changes
   * nothing: the old session goes on. */
  send(old.fd, ch, chlen, 0);
  spin(20);
  client_input(&old); /* the HelloVerifyRequest goes to the real peer */
  (void)BIO_reset(old.rbio);
  client_write(&old, "still here");
  spin(20);
  ASSERT_EQ(ow.datagrams, 1);
  ASSERT_STR_EQ(ow.last, "still here");
  ASSERT_EQ(stats(d).sessions_replaced, 0);
  /* The leaf reboots: a new client from the same address and port. */
  close(old.fd);
  old.fd = -1;
  client_init(&fresh, "127.0.0.1", port, dtls_port(d), "leaf-6", key, NULL, NULL, NULL);
  ASSERT_EQ(handshake(&fresh, 3000), 1);
  spin(10);
  ASSERT_EQ(stats(d).sessions_replaced, 1);
  ASSERT_EQ(ow.closed, 1);
  ASSERT_EQ(stats(d).sessions, 1);
  client_write(&fresh, "after reboot");
  spin(20);
  ASSERT_EQ(ow.datagrams, 2);
  ASSERT_STR_EQ(ow.last, "after reboot");
  client_free(&old);
  client_free(&fresh);
  server_stop(d);
}

/* One session per identity: the same key from another port replaces the
 * first session (the owner is not told), and revoking the key ends the
 * second one (the owner is told). */
static void test_one_session_per_identity(void)
{
  struct owner ow = {0};
  struct dtls_opts o = default_opts();
  struct dtls *d = server(&ow, &o);
  struct client first, second, other;
  uint8_t key[16];
  if (!d)
    return;
  key_for("leaf-9", key);
  client_init(&first, "127.0.0.1", 0, dtls_port(d), "leaf-9", key, NULL, NULL, NULL);
  ASSERT_EQ(handshake(&first, 3000), 1);
  key_for("leaf-10", key);
  client_init(&other, "127.0.0.1", 0, dtls_port(d), "leaf-10", key, NULL, NULL, NULL);
  ASSERT_EQ(handshake(&other, 3000), 1);
  key_for("leaf-9", key);
  client_init(&second, "127.0.0.1", 0, dtls_port(d), "leaf-9", key, NULL, NULL, NULL);
  ASSERT_EQ(handshake(&second, 3000), 1);
  spin(10);
  ASSERT_EQ(stats(d).identity_replaced, 1);
  ASSERT_EQ(stats(d).sessions, 2);
  ASSERT_EQ(ow.closed, 0);
  /* The first one's records go nowhere now; the second one's arrive. */
  client_write(&first, "old port");
  client_write(&second, "new port");
  spin(20);
  ASSERT_EQ(ow.datagrams, 1);
  ASSERT_STR_EQ(ow.last, "new port");
  /* Its key revoked: the owner hears of it; the other identity stays. */
  ASSERT_EQ(dtls_close_identity(d, "leaf-9", DTLS_AUTH_PSK), 1);
  ASSERT_EQ(dtls_close_identity(d, "leaf-9", DTLS_AUTH_CERT), 0);
  ASSERT_EQ(ow.closed, 1);
  ASSERT_EQ(stats(d).sessions, 1);
  client_write(&other, "unaffected");
  spin(20);
  ASSERT_STR_EQ(ow.last, "unaffected");
  client_free(&first);
  client_free(&second);
  client_free(&other);
  server_stop(d);
}

static void test_idle_timeout(void)
{
  struct owner ow = {0};
  struct dtls_opts o = default_opts();
  struct dtls *d;
  struct client c;
  uint8_t key[16];
  o.idle_timeout_ms = 300;
  d = server(&ow, &o);
  if (!d)
    return;
  key_for("leaf-7", key);
  client_init(&c, "127.0.0.1", 0, dtls_port(d), "leaf-7", key, NULL, NULL, NULL);
  ASSERT_EQ(handshake(&c, 3000), 1);
  spin(500);
  ASSERT_EQ(ow.closed, 1);
  ASSERT_EQ(stats(d).idle_closed, 1);
  ASSERT_EQ(stats(d).sessions, 0);
  client_free(&c);
  server_stop(d);
}

/* ---- certificates ----------------------------------------------------------- */

static EVP_PKEY *ec_key(void)
{
  return EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
}

static X509 *make_cert(const char *cn, EVP_PKEY *key, X509 *issuer, EVP_PKEY *issuer_key,
                       bool ca)
{
  X509 *x = X509_new();
  X509_NAME *name = X509_NAME_new();
  X509V3_CTX v3;
  X509_EXTENSION *ext;
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), (long)(random() & 0x7fffffff));
  X509_gmtime_adj(X509_getm_notBefore(x), -60);
  X509_gmtime_adj(X509_getm_notAfter(x), 86400);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
  X509_set_subject_name(x, name);
  X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name);
  X509_set_pubkey(x, key);
  X509V3_set_ctx(&v3, issuer ? issuer : x, x, NULL, NULL, 0);
  ext = X509V3_EXT_conf_nid(NULL, &v3, NID_basic_constraints, ca ? "critical,CA:TRUE" : "CA:FALSE");
  X509_add_ext(x, ext, -1);
  X509_EXTENSION_free(ext);
  X509_sign(x, issuer_key ? issuer_key : key, EVP_sha256());
  X509_NAME_free(name);
  return x;
}

static void write_pem(const char *name, X509 *x, EVP_PKEY *k, char *path, char *keypath)
{
  FILE *f;
  snprintf(path, 200, "%s/%s.crt", g_dir, name);
  f = fopen(path, "w");
  PEM_write_X509(f, x);
  fclose(f);
  if (k) {
    snprintf(keypath, 200, "%s/%s.key", g_dir, name);
    f = fopen(keypath, "w");
    PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL);
    fclose(f);
  }
}

static void test_client_certificates(void)
{
  EVP_PKEY *cak = ec_key(), *sk = ec_key(), *lk = ec_key(), *ok = ec_key(), *rk = ec_key();
  X509 *ca = make_cert("factory CA", cak, NULL, NULL, true);
  X509 *rogue = make_cert("rogue CA", rk, NULL, NULL, true);
  X509 *srv = make_cert("fleetgw", sk, ca, cak, false);
  X509 *leaf = make_cert("plc-cert-1", lk, ca, cak, false);
  X509 *other = make_cert("plc-cert-2", ok, rogue, rk, false);
  char ca_p[200], srv_p[200], srv_k[200], leaf_p[200], leaf_k[200], oth_p[200], oth_k[200];
  struct owner ow = {0};
  struct dtls_opts o = default_opts();
  struct dtls *d;
  struct client c, bad;
  const char *suites = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-CCM8";

  write_pem("ca", ca, NULL, ca_p, NULL);
  write_pem("srv", srv, sk, srv_p, srv_k);
  write_pem("leaf", leaf, lk, leaf_p, leaf_k);
  write_pem("other", other, ok, oth_p, oth_k);
  o.cert_file = srv_p;
  o.key_file = srv_k;
  o.ca_file = ca_p;
  d = server(&ow, &o);
  if (d) {
    client_init(&c, "127.0.0.1", 0, dtls_port(d), NULL, NULL, suites, leaf_p, leaf_k);
    ASSERT_EQ(handshake(&c, 3000), 1);
    client_write(&c, "cert");
    spin(20);
    ASSERT_EQ(ow.datagrams, 1);
    ASSERT_STR_EQ(ow.last_id, "plc-cert-1");
    ASSERT_EQ(ow.last_auth, DTLS_AUTH_CERT);
    client_init(&bad, "127.0.0.1", 0, dtls_port(d), NULL, NULL, suites, oth_p, oth_k);
    ASSERT_EQ(handshake(&bad, 3000), -1);
    spin(20);
    ASSERT_EQ(stats(d).handshakes_failed, 1);
    ASSERT_EQ(stats(d).sessions, 1);
    client_free(&c);
    client_free(&bad);
    server_stop(d);
  }
  X509_free(ca);
  X509_free(rogue);
  X509_free(srv);
  X509_free(leaf);
  X509_free(other);
  EVP_PKEY_free(cak);
  EVP_PKEY_free(sk);
  EVP_PKEY_free(lk);
  EVP_PKEY_free(ok);
  EVP_PKEY_free(rk);
}

/* ---- an independent peer: openssl s_client ---------------------------------- */

static void test_openssl_s_client(void)
{
  struct owner ow = {0};
  struct dtls_opts o = default_opts();
  struct dtls *d;
  char port[16], hex[40];
  int in[2];
  pid_t pid;
  uint8_t key[16];
  static const uint8_t msg[] = {0x0a, 0x0c, 0x00, 0x00, 0x01, 0x00, 0x00, 'h', 'e', 'y'};

  if (access("/usr/bin/openssl", X_OK) != 0) {
    fprintf(stderr, "skip: no /usr/bin/openssl\n");
    return;
  }
  d = server(&ow, &o);
  if (!d)
    return;
  key_for("leaf-8", key);
  for (int i = 0; i < 16; i++)
    sprintf(hex + 2 * i, "%02x", key[i]);
  snprintf(port, sizeof port, "127.0.0.1:%d", dtls_port(d));
  ASSERT_EQ(pipe(in), 0);
  pid = fork();
  if (pid == 0) {
    int devnull = open("/dev/null", O_WRONLY);
    dup2(in[0], 0);
    dup2(devnull, 1);
    dup2(devnull, 2);
    close(in[1]);
    execl("/usr/bin/openssl", "openssl", "s_client", "-dtls1_2", "-connect", port, "-psk", hex,
          "-psk_identity", "leaf-8", "-cipher", "PSK-AES128-CCM8", "-quiet", "-mtu", "1200",
          (char *)NULL);
    _exit(127);
  }
  close(in[0]);
  for (int i = 0; i < 3000 && stats(d).sessions == 0; i++)
    spin(1);
  ASSERT_EQ(stats(d).sessions, 1);
  ASSERT_EQ(write(in[1], msg, sizeof msg), (ssize_t)sizeof msg);
  for (int i = 0; i < 3000 && ow.datagrams == 0; i++)
    spin(1);
  ASSERT_EQ(ow.datagrams, 1);
  ASSERT_EQ(ow.last_len, sizeof msg);
  ASSERT_TRUE(memcmp(ow.last, msg, sizeof msg) == 0);
  ASSERT_STR_EQ(ow.last_id, "leaf-8");
  close(in[1]);
  kill(pid, SIGTERM);
  waitpid(pid, NULL, 0);
  server_stop(d);
}

int main(void)
{
  char cmd[200];
  signal(SIGPIPE, SIG_IGN);
  snprintf(g_dir, sizeof g_dir, "/tmp/test_dtls_XXXXXX");
  if (!mkdtemp(g_dir))
    return 1;
  uv_loop_init(&g_loop);
  RUN(test_psk_both_ways);
  RUN(test_wrong_key_and_unknown_identity);
  RUN(test_hello_flood_costs_nothing);
  RUN(test_handshakes_per_ip);
  RUN(test_plain_and_replayed);
  RUN(test_reboot_same_address);
  RUN(test_one_session_per_identity);
  RUN(test_idle_timeout);
  RUN(test_client_certificates);
  RUN(test_openssl_s_client);
  spin(10);
  ASSERT_EQ(uv_loop_close(&g_loop), 0);
  snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
  if (system(cmd) != 0)
    fprintf(stderr, "cannot remove %s\n", g_dir);
  return TEST_END();
}
