/*
 * web_auth.c - bearer tokens: admin (read + commands) and read-only.
 * Tokens are secrets: they are compared in constant time and never logged.
 */
#include "web_int.h"

#include <stdlib.h>
#include <string.h>

#include "secret.h"

#include <openssl/crypto.h>

enum { TOKEN_MAX = 512 };

enum web_role web_auth_token(const struct web *w, const char *token, size_t len)
{
  /* Both comparisons always run, so the time taken does not say which
   * token (if any) matched. */
  bool admin = w->admin_token &&
               web_ct_equal(w->admin_token, strlen(w->admin_token), token, len);
  bool read = w->read_token &&
              web_ct_equal(w->read_token, strlen(w->read_token), token, len);

  if (admin)
    return WEB_ROLE_ADMIN;
  if (read)
    return WEB_ROLE_READ;
  return WEB_ROLE_NONE;
}

enum web_role web_auth_request(const struct web *w, struct lws *wsi)
{
  char header[TOKEN_MAX + 32];
  char token[TOKEN_MAX + 1];
  enum web_role role = WEB_ROLE_NONE;
  int n = lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_AUTHORIZATION);

  if (n <= 0 || n >= (int)sizeof header)
    return WEB_ROLE_NONE;
  if (lws_hdr_copy(wsi, header, (int)sizeof header, WSI_TOKEN_HTTP_AUTHORIZATION) < 0)
    return WEB_ROLE_NONE;
  if (web_bearer_token(header, token, sizeof token) == 0)
    role = web_auth_token(w, token, strlen(token));
  /* Do not leave the secret on the stack longer than needed (a plain
   * memset here may be optimised away). */
  OPENSSL_cleanse(header, sizeof header);
  OPENSSL_cleanse(token, sizeof token);
  return role;
}

/* True when the two optional secrets differ (a NULL and a string differ). */
static bool token_differs(const char *a, const char *b)
{
  if (!a || !b)
    return a != b;
  return !web_ct_equal(a, strlen(a), b, strlen(b));
}

int web_set_tokens(struct web *w, const char *admin, const char *read, bool *changed)
{
  char *a, *r = NULL;

  if (changed)
    *changed = false;
  if (!w || !admin || strlen(admin) < 8)
    return -1;
  a = strdup(admin);
  if (!a)
    return -1;
  if (read && *read) {
    r = strdup(read);
    if (!r) {
      secret_free(a);
      return -1;
    }
  }
  if (changed)
    *changed = token_differs(w->admin_token, a) || token_differs(w->read_token, r);
  secret_free(w->admin_token);
  secret_free(w->read_token);
  w->admin_token = a;
  w->read_token = r;
  return 0;
}
