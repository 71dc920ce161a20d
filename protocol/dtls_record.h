/*
 * dtls_record.h - what the gateway reads of a DTLS datagram before OpenSSL
 * sees it (docs/dtls.md §2; it lives in protocol/ because it is a decoder: the
 * ground floor, no OpenSSL): the 13-byte record headers (RFC 6347 §4.1),
 * and whether the datagram starts a handshake (a ClientHello in epoch 0,
 * RFC 6347 §4.2.1); and, for the record layer the gateway runs itself once
 * a handshake is done (docs/dtls.md §6), the header and AEAD additional data
 * it writes and the anti-replay window (RFC 6347 §4.1.2.6).  Pure functions
 * over bytes; the parser and classifier are fuzzed
 * (tests/fuzz/fuzz_dtls_record.c).
 */
#ifndef FLEETGW_DTLS_RECORD_H
#define FLEETGW_DTLS_RECORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DTLS_RECORD_HEADER 13
#define DTLS_CT_CHANGE_CIPHER_SPEC 20
#define DTLS_CT_ALERT 21
#define DTLS_CT_HANDSHAKE 22
#define DTLS_CT_APPLICATION_DATA 23
#define DTLS_HS_CLIENT_HELLO 1
#define DTLS_VERSION_1_2 0xFEFD
#define DTLS_SEQ_MAX ((1ull << 48) - 1)
#define DTLS_AEAD_AAD_LEN 13

enum dtls_kind {
  DTLS_NOT_DTLS = 0,       /* no well-formed DTLS record at the start: not for us */
  DTLS_CLIENT_HELLO = 1,   /* epoch 0, a whole ClientHello in its first record */
  DTLS_RECORDS = 2,        /* other well-formed records */
};

struct dtls_record {
  uint8_t type;            /* content type */
  uint16_t version;        /* 0xFEFD for DTLS 1.2, 0xFEFF for 1.0 */
  uint16_t epoch;
  uint64_t seq;            /* 48 bits */
  uint16_t length;         /* of the fragment after the header */
};

/* The record at p[0..n): fills *r and returns its total length (header and
 * fragment), or 0 when p does not start with a well-formed record that fits
 * in n bytes. */
size_t dtls_record_parse(const uint8_t *p, size_t n, struct dtls_record *r);
/* Classifies one received datagram: every record in it must be well formed
 * and together they must fill it exactly. */
enum dtls_kind dtls_classify(const uint8_t *p, size_t n);

/* Writes a 13-byte record header (seq: its low 48 bits). */
void dtls_record_header(uint8_t out[DTLS_RECORD_HEADER], uint8_t type, uint16_t version,
                        uint16_t epoch, uint64_t seq, uint16_t length);
/* The additional data of an AEAD record (RFC 5246 §6.2.3.3, with DTLS's
 * epoch and sequence number as seq_num, RFC 6347 §4.1.2.1): epoch,
 * sequence number, type, version, length.  length is what OpenSSL's TLS
 * AEAD mode expects there: the record's fragment length (explicit nonce,
 * ciphertext, tag) when opening, the explicit nonce and plaintext when
 * sealing. */
void dtls_aead_aad(uint8_t out[DTLS_AEAD_AAD_LEN], const struct dtls_record *r);

/* The 64-record sliding window of RFC 6347 §4.1.2.6 over one epoch. */
struct dtls_replay {
  uint64_t top;            /* the highest sequence number accepted */
  uint64_t seen;           /* bit i: top - i was accepted */
};
/* Whether seq may still be accepted: not seen, not left behind the window.
 * Check before the record is authenticated ... */
bool dtls_replay_fresh(const struct dtls_replay *w, uint64_t seq);
/* ... and mark it only once it is. */
void dtls_replay_mark(struct dtls_replay *w, uint64_t seq);

#endif
