/*
 * local_ca.h - certificates and keys with OpenSSL, for provisioning:
 *   - key pairs (ECC P-256) and CSRs for the `aws` backend (the private key
 *     never leaves the gateway),
 *   - the gateway's own CA for the `local-ca` backend: created on first start
 *     (P-256, self-signed, 10 years) or loaded from configured files, signing
 *     each leaf's CSR,
 *   - reading a certificate's notAfter, SHA-256 fingerprint and public key.
 * Pure OpenSSL: no libuv, no sockets.  The expensive calls (key generation,
 * signing) are safe to run on a libuv worker thread (uv_queue_work): they
 * touch no shared state except a struct ca_ctx, which is read-only after
 * ca_open.  Functions return 0 or a negative error, with a reason (never key
 * material) in err[errlen].
 */
#ifndef FLEETGW_LOCAL_CA_H
#define FLEETGW_LOCAL_CA_H

#include <stddef.h>
#include <stdint.h>

struct ca_ctx;

/* New P-256 private key as PKCS#8 PEM (malloc'd; the caller frees it with
 * secret_free(), common/secret.h). */
int ca_keygen(char **key_pem, char *err, size_t errlen);
/* CSR (PEM, malloc'd) for key_pem with subject CN=common_name. */
int ca_make_csr(const char *key_pem, const char *common_name, char **csr_pem, char *err,
                size_t errlen);

/* Opens the CA: when cert_file/key_file exist they are loaded (the key must
 * match the certificate), else, when create is non-zero, a new CA named
 * subject_cn is generated and written there (key file mode 0600). */
int ca_open(const char *cert_file, const char *key_file, int create, const char *subject_cn,
            struct ca_ctx **out, char *err, size_t errlen);
void ca_close(struct ca_ctx *ca);
/* Signs a CSR: verifies its signature, issues a client certificate (subject
 * CN = common_name, serial random 128-bit, notBefore now - 1 h, notAfter now +
 * days, extendedKeyUsage clientAuth, keyUsage digitalSignature) and returns
 * its PEM (malloc'd). */
int ca_sign_csr(struct ca_ctx *ca, const char *csr_pem, const char *common_name, int days,
                char **cert_pem, char *err, size_t errlen);
/* The CA certificate's PEM (static to the ctx; do not free). */
const char *ca_cert_pem(const struct ca_ctx *ca);

/* Facts about a certificate PEM: notAfter (Unix seconds), SHA-256 of the DER
 * as 64 lower-case hex characters (+ NUL), and the common name. */
int ca_cert_info(const char *cert_pem, int64_t *not_after, char fingerprint[65], char *cn,
                 size_t cn_cap, char *err, size_t errlen);
/* Non-zero when cert_pem's public key is the public key of key_pem (or of
 * csr_pem when key_pem is NULL). */
int ca_cert_matches_key(const char *cert_pem, const char *key_pem, const char *csr_pem);

#endif
