/*
 * main.c - the composition root: arguments, configuration, signals, the loop.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#include <openssl/rand.h>

#include "config.h"
#include "gw.h"
#include "log.h"
#include "web.h"

#define STOP_GRACE_MS 10000

static const char usage[] =
    "Usage: fleetgw --config FILE [--check-config]\n"
    "       fleetgw --help | --version\n"
    "\n"
    "fleetgw relays MQTT-SN v1.2 leaves (UDP) to an MQTT broker, one upstream\n"
    "MQTT session per leaf over TLS.\n"
    "\n"
    "Options:\n"
    "  -c, --config FILE   the JSON configuration file (see README.md)\n"
    "      --check-config  validate the configuration and exit (0 = valid)\n"
    "  -h, --help          show this help and exit\n"
    "  -V, --version       show the version and exit\n"
    "\n"
    "Signals: SIGINT/SIGTERM stop gracefully (leaves and upstream sessions get\n"
    "DISCONNECT); SIGUSR1 logs the metrics as one JSON line.\n";

struct app {
  uv_loop_t *loop;
  struct gw *gw;
  struct web *web;
  int stops_pending;          /* gateway and web */
  uv_signal_t sigint, sigterm, sigusr1;
  uv_timer_t stop_timer;
  int stopping;
  int forced;
};

/* systemd's readiness protocol (sd_notify(3)) without linking libsystemd:
 * one datagram of "KEY=value" lines to the AF_UNIX socket that NOTIFY_SOCKET
 * names, in the abstract namespace when the name starts with '@'.  Without
 * the variable (not started by a Type=notify unit) there is nothing to do.
 * A failure is logged and otherwise ignored: systemd then times the start
 * out, which says more than anything we could do here. */
static void notify_systemd(const char *msg)
{
  const char *name = getenv("NOTIFY_SOCKET");
  struct sockaddr_un sa;
  socklen_t salen;
  size_t n;
  int fd;

  if (!name || (name[0] != '/' && name[0] != '@'))
    return;
  n = strlen(name);
  if (n >= sizeof sa.sun_path) {
    LOGW("main", "NOTIFY_SOCKET is too long; systemd is not notified");
    return;
  }
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  memcpy(sa.sun_path, name, n);
  if (name[0] == '@')
    sa.sun_path[0] = '\0';
  /* An abstract name is exactly n bytes long: no terminating NUL counted. */
  salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
  fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || sendto(fd, msg, strlen(msg), 0, (struct sockaddr *)&sa, salen) < 0)
    LOGW("main", "cannot notify systemd (%s): %s", name, strerror(errno));
  if (fd >= 0)
    close(fd);
}

static void close_walk_cb(uv_handle_t *h, void *arg)
{
  (void)arg;
  if (!uv_is_closing(h))
    uv_close(h, NULL);
}

static void stopped(void *ud)
{
  struct app *app = ud;
  if (--app->stops_pending > 0)
    return;
  /* Everything of the gateway is closed: close our own handles; the loop
   * then ends by itself. */
  uv_close((uv_handle_t *)&app->sigint, NULL);
  uv_close((uv_handle_t *)&app->sigterm, NULL);
  uv_close((uv_handle_t *)&app->sigusr1, NULL);
  uv_close((uv_handle_t *)&app->stop_timer, NULL);
}

static void stop_timeout_cb(uv_timer_t *t)
{
  struct app *app = t->data;
  LOGW("main", "graceful stop did not finish within %d ms; closing what is left",
       STOP_GRACE_MS);
  app->forced = 1;
  uv_stop(app->loop);
}

static void signal_cb(uv_signal_t *h, int signum)
{
  struct app *app = h->data;
  if (signum == SIGUSR1) {
    gw_log_metrics(app->gw);
    return;
  }
  if (app->stopping) {
    LOGW("main", "second %s: stopping now", signum == SIGINT ? "SIGINT" : "SIGTERM");
    app->forced = 1;
    uv_stop(app->loop);
    return;
  }
  app->stopping = 1;
  LOGI("main", "%s received: stopping", signum == SIGINT ? "SIGINT" : "SIGTERM");
  notify_systemd("STOPPING=1\nSTATUS=stopping: disconnecting leaves and upstream sessions");
  gw_log_metrics(app->gw);
  uv_timer_start(&app->stop_timer, stop_timeout_cb, STOP_GRACE_MS, 0);
  uv_unref((uv_handle_t *)&app->stop_timer);
  app->stops_pending = app->web ? 2 : 1;
  if (app->web)
    web_stop(app->web, stopped, app);
  gw_stop(app->gw, stopped, app);
}

/* Reads a token file: the first line, trimmed; at least 16 characters.
 * Returns a malloc'd string or NULL (reason logged, never the token). */
static char *read_token(const char *path)
{
  char buf[512];
  size_t n;
  FILE *f = fopen(path, "r");
  if (!f)
    return NULL;
  n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  buf[strcspn(buf, "\r\n")] = '\0';
  if (strlen(buf) < 16) {
    LOGE("main", "%s: the token must be at least 16 characters", path);
    return NULL;
  }
  return strdup(buf);
}

/* The admin token: from the variable, or the file; a new random token is
 * written to the file (mode 0600) when it does not exist yet. */
static char *admin_token(const struct gw_config *cfg)
{
  unsigned char rnd[24];
  char hex[64];
  int fd;
  char *t;

  if (cfg->web.admin_token)
    return strdup(cfg->web.admin_token);
  t = read_token(cfg->web.admin_token_file);
  if (t)
    return t;
  if (errno != ENOENT)
    return NULL;
  if (RAND_bytes(rnd, sizeof rnd) != 1)
    return NULL;
  for (size_t i = 0; i < sizeof rnd; i++)
    snprintf(hex + 2 * i, 3, "%02x", rnd[i]);
  fd = open(cfg->web.admin_token_file, O_WRONLY | O_CREAT | O_EXCL, 0600);
  if (fd < 0 || write(fd, hex, strlen(hex)) != (ssize_t)strlen(hex) || write(fd, "\n", 1) != 1) {
    LOGE("main", "cannot create the admin token file %s: %s", cfg->web.admin_token_file,
         strerror(errno));
    if (fd >= 0)
      close(fd);
    return NULL;
  }
  close(fd);
  LOGI("main", "created a new admin token in %s", cfg->web.admin_token_file);
  return strdup(hex);
}

static int start_web(struct app *app, const struct gw_config *cfg)
{
  struct web_opts o;
  char *admin, *readonly = NULL;
  int rc;

  admin = admin_token(cfg);
  if (!admin) {
    LOGE("main", "web: no admin token (web.admin_token_env or web.admin_token_file)");
    return -1;
  }
  if (cfg->web.read_token)
    readonly = strdup(cfg->web.read_token);
  else if (cfg->web.read_token_file)
    readonly = read_token(cfg->web.read_token_file);
  memset(&o, 0, sizeof o);
  o.bind = cfg->web.bind;
  o.port = cfg->web.port;
  o.admin_token = admin;
  o.read_token = readonly;
  o.open_health = cfg->web.open_health;
  o.open_metrics = cfg->web.open_metrics;
  o.tls_cert_file = cfg->web.tls_cert_file;
  o.tls_key_file = cfg->web.tls_key_file;
  o.static_dir = cfg->web.static_dir;
  o.openapi_file = cfg->web.openapi_file;
  o.max_body = cfg->web.max_body_bytes;
  rc = web_start(app->loop, &o, app->gw, &app->web);
  /* web_start copies what it keeps; wipe ours. */
  memset(admin, 0, strlen(admin));
  free(admin);
  if (readonly) {
    memset(readonly, 0, strlen(readonly));
    free(readonly);
  }
  return rc;
}

int main(int argc, char **argv)
{
  static const struct option opts[] = {
      {"config", required_argument, NULL, 'c'},
      {"check-config", no_argument, NULL, 'k'},
      {"help", no_argument, NULL, 'h'},
      {"version", no_argument, NULL, 'V'},
      {NULL, 0, NULL, 0},
  };
  const char *path = NULL;
  int check = 0, c, rc;
  struct gw_config *cfg = NULL;
  char err[1024];
  struct app app;

  while ((c = getopt_long(argc, argv, "c:hV", opts, NULL)) != -1) {
    switch (c) {
    case 'c':
      path = optarg;
      break;
    case 'k':
      check = 1;
      break;
    case 'h':
      fputs(usage, stdout);
      return 0;
    case 'V':
      printf("fleetgw %s\n", FLEETGW_VERSION);
      return 0;
    default:
      fputs(usage, stderr);
      return 2;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "fleetgw: unexpected argument '%s'\n%s", argv[optind], usage);
    return 2;
  }
  if (!path) {
    fprintf(stderr, "fleetgw: --config FILE is required\n%s", usage);
    return 2;
  }
  if (cfg_load(path, &cfg, err, sizeof err) != 0) {
    fprintf(stderr, "fleetgw: invalid configuration: %s\n", err);
    return 1;
  }
  char warn[8][CFG_WARNING_LEN];
  size_t n_warn = cfg_warnings(cfg, warn, 8);
  for (size_t i = 0; check && i < n_warn; i++)
    fprintf(stderr, "fleetgw: warning: %s: %s\n", path, warn[i]);
  if (check) {
    printf("%s: configuration is valid\n", path);
    cfg_free(cfg);
    return 0;
  }
  log_init_from_env();
  log_set_level((enum log_level)cfg->log_level);
  for (size_t i = 0; i < n_warn; i++)
    LOGW("config", "%s", warn[i]);
  signal(SIGPIPE, SIG_IGN);

  memset(&app, 0, sizeof app);
  app.loop = uv_default_loop();
  if (gw_new(app.loop, cfg, &app.gw) != 0) {
    cfg_free(cfg);
    return 1;
  }
  uv_signal_init(app.loop, &app.sigint);
  uv_signal_init(app.loop, &app.sigterm);
  uv_signal_init(app.loop, &app.sigusr1);
  uv_timer_init(app.loop, &app.stop_timer);
  app.sigint.data = app.sigterm.data = app.sigusr1.data = app.stop_timer.data = &app;
  uv_signal_start(&app.sigint, signal_cb, SIGINT);
  uv_signal_start(&app.sigterm, signal_cb, SIGTERM);
  uv_signal_start(&app.sigusr1, signal_cb, SIGUSR1);

  LOGI("main", "fleetgw %s starting (config %s)", FLEETGW_VERSION, path);
  rc = gw_start(app.gw);
  if (rc == 0 && cfg->web.enabled && start_web(&app, cfg) != 0)
    rc = -1;
  if (rc == 0) {
    /* The LAN socket and the web listener are bound: the unit is ready. */
    char ready[256];
    snprintf(ready, sizeof ready, "READY=1\nSTATUS=MQTT-SN on %s:%u, web %s",
             cfg->lan.bind, (unsigned)cfg->lan.port, cfg->web.enabled ? "on" : "off");
    notify_systemd(ready);
  } else {
    app.stopping = 1;
    app.stops_pending = app.web ? 2 : 1;
    if (app.web)
      web_stop(app.web, stopped, &app);
    gw_stop(app.gw, stopped, &app);
  }
  uv_run(app.loop, UV_RUN_DEFAULT);
  if (app.forced) {
    /* Handles are still open: leave the clean-up to the operating system. */
    LOGW("main", "stopped without finishing the graceful shutdown");
    return 1;
  }
  if (uv_loop_close(app.loop) != 0) {
    uv_walk(app.loop, close_walk_cb, NULL);
    uv_run(app.loop, UV_RUN_DEFAULT);
    uv_loop_close(app.loop);
  }
  gw_free(app.gw);
  cfg_free(cfg);
  LOGI("main", "stopped");
  return rc != 0 ? 1 : 0;
}
