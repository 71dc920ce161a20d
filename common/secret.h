/*
 * secret.h - the one way fleetgw forgets a secret (private keys, PSKs, tokens,
 * passwords): the bytes are overwritten with a wipe the compiler may not
 * optimise away (OPENSSL_cleanse), then freed.
 */
#ifndef FLEETGW_SECRET_H
#define FLEETGW_SECRET_H

#include <stddef.h>

/* Overwrites len bytes at p (p may be NULL when len is 0). */
void secret_wipe(void *p, size_t len);
/* Wipes the NUL-terminated string s up to its terminator and frees it.
 * NULL is allowed and does nothing. */
void secret_free(char *s);
/* Wipes len bytes at p and frees p.  NULL is allowed. */
void secret_free_n(void *p, size_t len);

#endif
