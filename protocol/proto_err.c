#include "proto_err.h"

const char *proto_strerror(int err)
{
  switch (err) {
#define PROTO_ERR_CASE(name, val, msg) \
  case (val):                          \
    return (msg);
    PROTO_ERR_MAP(PROTO_ERR_CASE)
#undef PROTO_ERR_CASE
  }
  return "unknown protocol error";
}
