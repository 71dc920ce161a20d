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
#include "store.h"
#include "web.h"

#define STOP_GRACE_MS 10000

static const char usage[] =
    "Usage: fleetgw --config FILE [--check-config]\n"
    "       fleetgw --config FILE backup DEST\n"
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
    "  backup DEST         copy the registry to DEST and its key file to DEST.key\n"
    "                      (both 0600, never over a file), safe while fleetgw runs\n"
    "\n"
    "Signals: SIGINT/SIGTERM stop gracefully (leaves and upstream sessions get\n"
    "DISCONNECT); SIGUSR1 logs the metrics as one JSON line; SIGHUP reloads the\n"
    "configuration (log level, admission, web tokens, some limits; README.md).\n";

struct app {
  uv_loop_t *loop;
  struct gw *gw;
  struct web *web;
  struct gw_config *cfg;      /* what the gateway runs with (SIGHUP changes it in place) */
  const char *path;           /* --config */
  int stops_pending;          /* gateway and web */
  uv_signal_t sigint, sigterm, sigusr1, sighup;
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
  uv_close((uv_handle_t *)&app->sighup, NULL);
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

static void reload(struct app *app);

static void signal_cb(uv_signal_t *h, int signum)
{
  struct app *app = h->data;
  if (signum == SIGUSR1) {
    gw_log_metrics(app->gw);
    return;
  }
  if (signum == SIGHUP) {
    if (app->stopping)
      LOGI("main", "SIGHUP received while stopping: ignored");
    else
      reload(app);
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

/* Wipes and frees a token. */
static void free_token(char *t)
{
  if (t) {
    memset(t, 0, strlen(t));
    free(t);
  }
}

/* The web tokens from their sources: *admin (required) and *readonly (may
 * be NULL).  Returns 0, or -1 with the reason logged. */
static int web_tokens(const struct gw_config *cfg, char **admin, char **readonly)
{
  *readonly = NULL;
  *admin = admin_token(cfg);
  if (!*admin) {
    LOGE("main", "web: no admin token (web.admin_token_env or web.admin_token_file)");
    return -1;
  }
  if (cfg->web.read_token)
    *readonly = strdup(cfg->web.read_token);
  else if (cfg->web.read_token_file)
    *readonly = read_token(cfg->web.read_token_file);
  return 0;
}

/* Where the dashboard and the OpenAPI file are served from, said loudly:
 * a missing dashboard would otherwise be a silent 404 (cfg_web_path()).
 * out[0] gets the dashboard's directory, out[1] the OpenAPI file. */
static void web_files(const struct gw_config *cfg, char out[2][1100])
{
  static const char *const what[2] = {"dashboard (index.html)", "OpenAPI document"};
  static const char *const url[2] = {"GET /", "GET /api/v1/openapi.json"};
  static const char *const key[2] = {"web.static_dir", "web.openapi_file"};
  const char *value[2] = {cfg->web.static_dir, cfg->web.openapi_file};
  char tried[2048];

  for (int i = 0; i < 2; i++) {
    if (cfg_web_path(cfg, (enum cfg_web_file)i, out[i], sizeof out[i], tried, sizeof tried) ==
        0) {
      LOGI("main", "web: %s served from %s", what[i], out[i]);
      continue;
    }
    LOGW("main", "web: NO %s: tried %s; %s answers 404 (set %s)", what[i], tried, url[i],
         key[i]);
    snprintf(out[i], sizeof out[i], "%s", value[i]);
  }
}

static int start_web(struct app *app, const struct gw_config *cfg)
{
  struct web_opts o;
  char *admin, *readonly = NULL;
  char files[2][1100];
  int rc;

  if (web_tokens(cfg, &admin, &readonly) != 0)
    return -1;
  web_files(cfg, files);
  memset(&o, 0, sizeof o);
  o.bind = cfg->web.bind;
  o.port = cfg->web.port;
  o.admin_token = admin;
  o.read_token = readonly;
  o.open_health = cfg->web.open_health;
  o.open_metrics = cfg->web.open_metrics;
  o.tls_cert_file = cfg->web.tls_cert_file;
  o.tls_key_file = cfg->web.tls_key_file;
  o.static_dir = files[0];
  o.openapi_file = files[1];
  o.max_body = cfg->web.max_body_bytes;
  rc = web_start(app->loop, &o, app->gw, &app->web);
  /* web_start copies what it keeps; wipe ours. */
  free_token(admin);
  free_token(readonly);
  return rc;
}

/* Logs every error of errs, each prefixed with head. */
static void log_config_errors(const struct cfg_errors *errs, const char *head)
{
  for (size_t i = 0; i < errs->n; i++)
    LOGE("config", "%s%s", head, errs->line[i]);
  if (errs->dropped)
    LOGE("config", "%s%zu more errors not shown", head, errs->dropped);
}

/* The web tokens again from their sources, after a reload.  Returns "" when
 * there is no web API, else what the log line says about them. */
static const char *reload_tokens(struct app *app)
{
  char *admin, *readonly;
  bool changed = false;
  int rc;

  if (!app->web)
    return "";
  if (web_tokens(app->cfg, &admin, &readonly) != 0)
    return "; web tokens NOT reloaded (the old ones stay)";
  rc = web_set_tokens(app->web, admin, readonly, &changed);
  free_token(admin);
  free_token(readonly);
  if (rc != 0)
    return "; web tokens NOT reloaded (the old ones stay)";
  return changed ? "; web tokens reloaded (changed)" : "; web tokens reloaded (unchanged)";
}

/* SIGHUP: the whole file is read and checked again; when it is valid, the
 * keys that can change in a running gateway take their new values
 * (cfg_reload()) and the others are named as needing a restart; when it is
 * not, the gateway goes on with what it had. */
static void reload(struct app *app)
{
  struct cfg_errors *errs = malloc(sizeof *errs);
  struct gw_config *fresh = NULL;
  char applied[2048], restart[2048], warn[8][CFG_WARNING_LEN];
  const char *tokens;
  size_t n, n_warn;

  if (!errs) {
    LOGE("main", "SIGHUP: out of memory: the configuration is not reloaded");
    return;
  }
  if (cfg_load_all(app->path, &fresh, errs) != 0) {
    LOGE("main", "SIGHUP: %s is invalid (%zu errors): still running with the configuration "
         "loaded before", app->path, errs->n + errs->dropped);
    log_config_errors(errs, "SIGHUP: ");
    free(errs);
    return;
  }
  free(errs);
  n = cfg_reload(app->cfg, fresh, applied, sizeof applied, restart, sizeof restart);
  cfg_free(fresh); /* now holds the old values */
  log_set_level((enum log_level)app->cfg->log_level);
  if (gw_reload(app->gw) != 0)
    LOGW("main", "SIGHUP: admission.allowlist not fully applied");
  tokens = reload_tokens(app);
  LOGI("main", "SIGHUP: configuration reloaded from %s: %zu keys applied%s%s%s%s", app->path,
       n, n ? " (" : "", n ? applied : "", n ? ")" : "", tokens);
  if (restart[0])
    LOGW("main", "SIGHUP: changed but needing a restart (still the old values): %s", restart);
  else
    LOGI("main", "SIGHUP: no changed key needs a restart");
  n_warn = cfg_warnings(app->cfg, warn, 8);
  for (size_t i = 0; i < n_warn; i++)
    LOGW("config", "%s", warn[i]);
}

/* fleetgw backup DEST (store_backup): the registry the configuration names,
 * while the gateway may be running. */
static int run_backup(struct gw_config *cfg, const char *dest)
{
  struct store_backup_info info;
  char err[1024];
  int rc = store_backup(cfg->registry.path, cfg->registry.key_file, dest, &info, err, sizeof err);
  if (rc == STORE_OK)
    printf("%s: %lld pages of %s copied (%lld waits for a writer); key file copied to %s.key\n",
           dest, (long long)info.pages, cfg->registry.path, (long long)info.waits, dest);
  else
    fprintf(stderr, "fleetgw: backup failed: %s\n", err);
  cfg_free(cfg);
  return rc == STORE_OK ? 0 : 1;
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
  const char *path = NULL, *backup = NULL;
  int check = 0, c, rc;
  struct gw_config *cfg = NULL;
  struct cfg_errors *errs;
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
  if (optind < argc && strcmp(argv[optind], "backup") == 0) {
    if (optind + 2 != argc) {
      fprintf(stderr, "fleetgw: backup takes one argument, the destination file\n%s", usage);
      return 2;
    }
    backup = argv[optind + 1];
    optind = argc;
  }
  if (optind < argc) {
    fprintf(stderr, "fleetgw: unexpected argument '%s'\n%s", argv[optind], usage);
    return 2;
  }
  if (!path) {
    fprintf(stderr, "fleetgw: --config FILE is required\n%s", usage);
    return 2;
  }
  errs = malloc(sizeof *errs);
  if (!errs) {
    fprintf(stderr, "fleetgw: out of memory\n");
    return 1;
  }
  if (cfg_load_all(path, &cfg, errs) != 0) {
    for (size_t i = 0; i < errs->n; i++)
      fprintf(stderr, "fleetgw: invalid configuration: %s\n", errs->line[i]);
    if (errs->dropped)
      fprintf(stderr, "fleetgw: invalid configuration: %zu more errors not shown\n",
              errs->dropped);
    free(errs);
    return 1;
  }
  free(errs);
  char warn[8][CFG_WARNING_LEN];
  size_t n_warn = cfg_warnings(cfg, warn, 8);
  for (size_t i = 0; check && i < n_warn; i++)
    fprintf(stderr, "fleetgw: warning: %s: %s\n", path, warn[i]);
  if (check && cfg->web.enabled) {
    char found[1100], tried[2048];
    if (cfg_web_path(cfg, CFG_WEB_STATIC, found, sizeof found, tried, sizeof tried) != 0)
      fprintf(stderr,
              "fleetgw: warning: %s: web.static_dir: no dashboard (no index.html in %s): GET / "
              "will answer 404\n",
              path, tried);
  }
  if (check) {
    printf("%s: configuration is valid\n", path);
    cfg_free(cfg);
    return 0;
  }
  if (backup)
    return run_backup(cfg, backup);
  log_init_from_env();
  log_set_level((enum log_level)cfg->log_level);
  for (size_t i = 0; i < n_warn; i++)
    LOGW("config", "%s", warn[i]);
  signal(SIGPIPE, SIG_IGN);

  memset(&app, 0, sizeof app);
  app.loop = uv_default_loop();
  app.cfg = cfg;
  app.path = path;
  if (gw_new(app.loop, cfg, &app.gw) != 0) {
    cfg_free(cfg);
    return 1;
  }
  uv_signal_init(app.loop, &app.sigint);
  uv_signal_init(app.loop, &app.sigterm);
  uv_signal_init(app.loop, &app.sigusr1);
  uv_signal_init(app.loop, &app.sighup);
  uv_timer_init(app.loop, &app.stop_timer);
  app.sigint.data = app.sigterm.data = app.sigusr1.data = app.sighup.data = &app;
  app.stop_timer.data = &app;
  uv_signal_start(&app.sigint, signal_cb, SIGINT);
  uv_signal_start(&app.sigterm, signal_cb, SIGTERM);
  uv_signal_start(&app.sigusr1, signal_cb, SIGUSR1);
  uv_signal_start(&app.sighup, signal_cb, SIGHUP);

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
