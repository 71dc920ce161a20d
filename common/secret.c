#include "secret.h"

#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

void secret_wipe(void *p, size_t len)
{
  if (p && len)
    OPENSSL_cleanse(p, len);
}

void secret_free(char *s)
{
  if (!s)
    return;
  secret_wipe(s, strlen(s));
  free(s);
}

void secret_free_n(void *p, size_t len)
{
  if (!p)
    return;
  secret_wipe(p, len);
  free(p);
}
