/*
 * dtls_record.h - what the gateway reads of a DTLS datagram before OpenSSL
 * sees it (docs/dtls.md §2; it lives in protocol/ because it is a decoder: the
 * ground floor, no OpenSSL): the 13-byte record headers (RFC 6347 §4.1),
 * and whether the datagram starts a handshake (a ClientHello in epoch 0,
 * RFC 6347 §4.2.1).  Pure functions over bytes; fuzzed
 * (tests/fuzz/fuzz_dtls_record.c).
 */
#ifndef FLEETGW_DTLS_RECORD_H
#define FLEETGW_DTLS_RECORD_H

#include <stddef.h>
#include <stdint.h>

#define DTLS_RECORD_HEADER 13
#define DTLS_CT_CHANGE_CIPHER_SPEC 20
#define DTLS_CT_ALERT 21
#define DTLS_CT_HANDSHAKE 22
#define DTLS_CT_APPLICATION_DATA 23
#define DTLS_HS_CLIENT_HELLO 1

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

#endif
