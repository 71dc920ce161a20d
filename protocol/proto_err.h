/*
 * proto_err.h - the one error vocabulary of protocol/.
 *
 * Every encoder and decoder in protocol/ returns 0 (PROTO_OK) or a negative
 * value from this enum.  Encoders that succeed return the number of bytes
 * written, so callers test "rc < 0" for failure.
 */
#ifndef FLEETGW_PROTO_ERR_H
#define FLEETGW_PROTO_ERR_H

#define PROTO_ERR_MAP(X)                                                     \
  X(OK, 0, "ok")                                                             \
  X(INCOMPLETE, -1, "incomplete input")                                      \
  X(MALFORMED, -2, "malformed message")                                      \
  X(TOO_BIG, -3, "message too big")                                          \
  X(UNSUPPORTED, -4, "unsupported message type or value")                    \
  X(BUF_TOO_SMALL, -5, "output buffer too small")                            \
  X(INVALID_ARG, -6, "invalid argument")

enum proto_err {
#define PROTO_ERR_ENUM(name, val, msg) PROTO_##name = (val),
  PROTO_ERR_MAP(PROTO_ERR_ENUM)
#undef PROTO_ERR_ENUM
};

/* Returns a static, human-readable string for an enum proto_err value. */
const char *proto_strerror(int err);

#endif
