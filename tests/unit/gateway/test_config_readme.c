/*
 * test_config_readme.c - README.md's configuration key tables against the
 * config's own key tables (cfg_key_count / cfg_key_at).
 *
 * The defaults live once, in gateway/config_keys.c; the README is a
 * hand-written copy for people, so this test is what keeps it from
 * drifting.  It reads the "### Keys" section of README.md
 * ($FLEETGW_TEST_DATA/../README.md), takes every table row
 * "| `key.path` | type | default | meaning | constraints |" and checks that
 * the config knows every documented key, that every key is documented, and
 * that type and default agree.  A default cell may add a
 * parenthesised remark after the value, e.g. "`132096` (128 KiB + 1 KiB)".
 */
#include "config.h"
#include "test.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define README_MAX_ROWS 256
/* A table line's cells while it is split (the meaning column is prose)... */
#define CELL_CAP 1024
/* ...and the three a row keeps. */
#define FIELD_CAP 160

/* The header every key table must have, so that the columns are known. */
static const char *const k_header[] = {"JSON path", "type", "default", "meaning",
                                       "constraints"};
#define N_COLUMNS (sizeof k_header / sizeof k_header[0])

struct readme_row {
  char path[FIELD_CAP];
  char type[FIELD_CAP];
  char def[FIELD_CAP];
  int line;
  bool matched;
};

static struct readme_row g_rows[README_MAX_ROWS];
static size_t g_n_rows;

static char *read_readme(void)
{
  const char *dir = getenv("FLEETGW_TEST_DATA");
  char path[1024];
  char *buf = NULL;
  long len;
  FILE *f;

  if (!dir) {
    fprintf(stderr, "FLEETGW_TEST_DATA is not set (ctest sets it to tests/)\n");
    return NULL;
  }
  snprintf(path, sizeof path, "%s/../README.md", dir);
  f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "cannot open %s\n", path);
    return NULL;
  }
  if (fseek(f, 0, SEEK_END) == 0 && (len = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
    buf = malloc((size_t)len + 1);
    if (buf && fread(buf, 1, (size_t)len, f) == (size_t)len) {
      buf[len] = '\0';
    } else {
      free(buf);
      buf = NULL;
    }
  }
  fclose(f);
  return buf;
}

/* Splits a table line "| a | b |" into trimmed cells; "\|" inside a cell is
 * an escaped pipe.  Returns the number of cells, or -1 when one is too long
 * for CELL_CAP (the test then reports the line instead of comparing a cut
 * value). */
static int split_cells(const char *line, char cells[][CELL_CAP], int max)
{
  const char *p = line;
  int n = 0;

  if (*p++ != '|')
    return 0;
  while (*p && n < max) {
    size_t k = 0;
    while (*p == ' ')
      p++;
    while (*p && *p != '|') {
      if (p[0] == '\\' && p[1] == '|')
        p++;
      if (k + 1 >= CELL_CAP)
        return -1;
      cells[n][k++] = *p++;
    }
    if (*p != '|')
      break; /* text after the last pipe is not a cell */
    p++;
    while (k > 0 && cells[n][k - 1] == ' ')
      k--;
    cells[n][k] = '\0';
    n++;
  }
  return n;
}

/* Copies a cell into a row field; false (and a message) when it does not fit,
 * rather than comparing a cut value. */
static bool copy_field(char *dst, const char *cell, int lineno)
{
  size_t n = strlen(cell);
  if (n >= FIELD_CAP) {
    fprintf(stderr, "README.md:%d: cell longer than %d bytes: %.40s...\n", lineno,
            FIELD_CAP - 1, cell);
    dst[0] = '\0';
    return false;
  }
  memcpy(dst, cell, n + 1);
  return true;
}

/* Collects the rows of every table in the "### Keys" section (up to the next
 * heading of that level or above). */
static void parse_key_tables(char *text)
{
  bool in_keys = false;
  int lineno = 0;
  size_t n_tables = 0;

  for (char *line = text, *next; line; line = next) {
    char cells[N_COLUMNS + 1][CELL_CAP];
    int n;

    /* Line by line, empty ones included, so that line numbers are right. */
    next = strchr(line, '\n');
    if (next)
      *next++ = '\0';
    lineno++;
    if (strcmp(line, "### Keys") == 0) {
      in_keys = true;
      continue;
    }
    if (in_keys && (strncmp(line, "### ", 4) == 0 || strncmp(line, "## ", 3) == 0))
      break;
    if (!in_keys || line[0] != '|')
      continue;
    n = split_cells(line, cells, (int)N_COLUMNS + 1);
    if (n < 0) {
      fprintf(stderr, "README.md:%d: a cell is longer than %d bytes\n", lineno, CELL_CAP - 1);
      ASSERT_TRUE(n >= 0);
      continue;
    }
    if (n > 0 && strcmp(cells[0], k_header[0]) == 0) {
      /* A header: it must name the columns this test reads. */
      bool same = n == (int)N_COLUMNS;
      for (int i = 0; same && i < n; i++)
        same = strcmp(cells[i], k_header[i]) == 0;
      if (!same)
        fprintf(stderr, "README.md:%d: key table header is not the usual one\n", lineno);
      ASSERT_TRUE(same);
      n_tables++;
      continue;
    }
    if (n > 0 && strncmp(cells[0], "---", 3) == 0)
      continue;
    /* A key row: "| `key.path` | type | default | ... |". */
    if (n != (int)N_COLUMNS || cells[0][0] != '`' || strlen(cells[0]) < 3 ||
        cells[0][strlen(cells[0]) - 1] != '`') {
      fprintf(stderr, "README.md:%d: not a key row of %zu cells: %s\n", lineno, N_COLUMNS, line);
      ASSERT_TRUE(false);
      continue;
    }
    ASSERT_TRUE(g_n_rows < README_MAX_ROWS);
    if (g_n_rows >= README_MAX_ROWS)
      return;
    struct readme_row *r = &g_rows[g_n_rows++];
    /* Without the backticks around the path. */
    cells[0][strlen(cells[0]) - 1] = '\0';
    ASSERT_TRUE(copy_field(r->path, cells[0] + 1, lineno));
    ASSERT_TRUE(copy_field(r->type, cells[1], lineno));
    ASSERT_TRUE(copy_field(r->def, cells[2], lineno));
    r->line = lineno;
  }
  /* Guards against a parser that silently finds nothing (a renamed heading). */
  ASSERT_TRUE(n_tables >= 6);
  ASSERT_TRUE(g_n_rows > 50);
}

/* True when the README's default cell is the config's default, alone or
 * followed by a parenthesised remark. */
static bool default_matches(const char *cell, const char *want)
{
  size_t n = strlen(want);
  size_t len = strlen(cell);

  if (strncmp(cell, want, n) != 0)
    return false;
  if (cell[n] == '\0')
    return true;
  return strncmp(cell + n, " (", 2) == 0 && cell[len - 1] == ')';
}

static struct readme_row *find_row(const char *path)
{
  for (size_t i = 0; i < g_n_rows; i++)
    if (strcmp(g_rows[i].path, path) == 0)
      return &g_rows[i];
  return NULL;
}

static void test_every_key_documented(void)
{
  size_t n = cfg_key_count();

  for (size_t i = 0; i < n; i++) {
    struct cfg_key_info k;
    struct readme_row *r;

    ASSERT_EQ(cfg_key_at(i, &k), 0);
    r = find_row(k.path);
    if (!r) {
      fprintf(stderr, "README.md: key `%s` is not documented (type %s, default %s)\n", k.path,
              k.type, k.def[0] ? k.def : "none");
      ASSERT_TRUE(r != NULL);
      continue;
    }
    r->matched = true;
    if (strcmp(r->type, k.type) != 0) {
      fprintf(stderr, "README.md:%d: `%s`: type is \"%s\", the config's is \"%s\"\n", r->line,
              k.path, r->type, k.type);
      ASSERT_TRUE(false);
    }
    if (!default_matches(r->def, k.def)) {
      fprintf(stderr, "README.md:%d: `%s`: default is \"%s\", the config's is \"%s\"\n", r->line,
              k.path, r->def, k.def);
      ASSERT_TRUE(false);
    }
  }
}

static void test_every_documented_key_exists(void)
{
  for (size_t i = 0; i < g_n_rows; i++) {
    /* A key listed twice would hide which row the other checks compared. */
    if (find_row(g_rows[i].path) != &g_rows[i]) {
      fprintf(stderr, "README.md:%d: `%s` is documented twice\n", g_rows[i].line,
              g_rows[i].path);
      ASSERT_TRUE(false);
    }
    if (!g_rows[i].matched) {
      fprintf(stderr, "README.md:%d: `%s` is documented but the config has no such key\n",
              g_rows[i].line, g_rows[i].path);
      ASSERT_TRUE(g_rows[i].matched);
    }
  }
}

/* The iteration API itself: numbering, paths and renderings. */
static void test_key_api(void)
{
  struct cfg_key_info k;
  size_t n = cfg_key_count();
  bool saw_port = false, saw_ttl = false;

  ASSERT_TRUE(n > 50);
  ASSERT_EQ(cfg_key_at(n, &k), -1);
  ASSERT_EQ(cfg_key_at(0, NULL), -1);
  ASSERT_EQ(cfg_key_at(0, &k), 0);
  ASSERT_STR_EQ(k.path, "log_level");
  ASSERT_STR_EQ(k.type, "string");
  ASSERT_STR_EQ(k.def, "`\"info\"`");
  for (size_t i = 0; i < n; i++) {
    ASSERT_EQ(cfg_key_at(i, &k), 0);
    if (strcmp(k.path, "upstream.port") == 0) {
      saw_port = true;
      ASSERT_STR_EQ(k.def, "`8883` with TLS, `1883` without");
    } else if (strcmp(k.path, "provisioning.aws.token_ttl_s") == 0) {
      saw_ttl = true;
      ASSERT_STR_EQ(k.type, "integer");
      ASSERT_STR_EQ(k.def, "`3600`");
    } else if (strcmp(k.path, "provisioning.aws") == 0) {
      ASSERT_STR_EQ(k.type, "object");
      ASSERT_STR_EQ(k.def, "");
    } else if (strcmp(k.path, "upstream.host") == 0) {
      ASSERT_STR_EQ(k.def, "**required**");
    } else if (strcmp(k.path, "upstream.username") == 0) {
      ASSERT_STR_EQ(k.type, "string or null");
      ASSERT_STR_EQ(k.def, "not set");
    }
  }
  ASSERT_TRUE(saw_port);
  ASSERT_TRUE(saw_ttl);
}

int main(void)
{
  char *text = read_readme();

  ASSERT_TRUE(text != NULL);
  RUN(test_key_api);
  if (text) {
    parse_key_tables(text);
    RUN(test_every_key_documented);
    RUN(test_every_documented_key_exists);
    free(text);
  }
  return TEST_END();
}
