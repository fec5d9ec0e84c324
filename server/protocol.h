/* nbdsrv: pure request/reply logic, kept free of sockets and threads so
 * unit tests and fuzzers can drive it directly.
 */
#ifndef NBDSRV_PROTOCOL_H
#define NBDSRV_PROTOCOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "nbd-protocol.h"
#include "meta-ext.h"

struct nbdkit_extents;

/* What validation needs to know about the connection (§4.1). */
struct validate_state {
  uint64_t size;                /* export size */
  uint16_t eflags;              /* transmission flags as advertised */
  bool structured;              /* structured replies negotiated */
  bool meta_selected;           /* a meta context is selected */
  uint32_t align;               /* V-16: >1 to enforce, else 0 */
  bool extended;                /* extended headers negotiated (§6) */
};

/* One decoded request. */
struct request {
  uint16_t flags;
  uint16_t type;
  uint64_t cookie;
  uint64_t offset;
  uint64_t count;               /* the request's effect length */
  uint64_t payload;             /* bytes of data after the header */
};

/* protocol-validate.c */
void request_decode (const struct nbd_request *wire, struct request *req);
void request_decode_ext (const struct nbd_request_ext *wire,
                         struct request *req);
int request_validate (const struct validate_state *st,
                      const struct request *req, const char **why);
uint32_t errno_to_nbd (int err, uint16_t flags);
const char *nbd_cmd_name (uint16_t type);

/* option-tls.c: the STARTTLS rules (§1.5, H-11). */
enum tls_option_mode { TLS_MODE_OFF, TLS_MODE_ON, TLS_MODE_REQUIRE };
struct tls_option_state {
  enum tls_option_mode mode;
  bool active;                  /* the TLS handshake has succeeded */
  size_t pending;               /* bytes received after the option */
};
enum tls_verdict {
  TLS_VERDICT_PASS,             /* not a TLS matter: handle the option */
  TLS_VERDICT_REPLY,            /* drop the payload, reply *REPLY, *WHY */
  TLS_VERDICT_DISCONNECT,       /* hard disconnect, logging *WHY */
  TLS_VERDICT_START,            /* ACK, then the TLS handshake */
};
enum tls_verdict option_tls_check (const struct tls_option_state *st,
                                   uint32_t option, uint32_t len,
                                   uint32_t *reply, const char **why);

/* The meta contexts' ids (metacontext.c offers them): fixed, so a
 * client's selection is a bit mask of them.
 */
#define META_BASE_ALLOCATION  1
#define META_ALLOCATION_DEPTH 2
#define META_DIRTY_FIRST      3   /* then one id per dirty bitmap */
#define META_MAX              31

/* The status flags context ID reports for an extent of TYPE. */
static inline uint32_t
meta_status (uint32_t id, uint32_t type)
{
  switch (id) {
  case META_BASE_ALLOCATION:
    return type & (NBD_STATE_HOLE | NBD_STATE_ZERO);
  case META_ALLOCATION_DEPTH:
    return NBDSRV_DEPTH_OF (type);
  default:                      /* a dirty bitmap: 1 dirty, 0 clean */
    return type & 1;
  }
}

/* blockstatus.c: encode context META's descriptors (R-20..R-23) into
 * OUT, 32-bit (struct nbd_block_descriptor) or with EXT 64-bit
 * (struct nbd_block_descriptor_ext, X-14).
 */
size_t blockstatus_encode (const struct nbdkit_extents *e,
                           uint64_t offset, uint64_t count, bool req_one,
                           bool ext, uint32_t meta, void *out, size_t max);

/* readplan.c: how to answer a structured READ: runs of data to
 * send, and runs of zero bytes, sent as OFFSET_HOLE chunks.
 */
struct read_piece {
  uint64_t offset;
  uint32_t length;
  bool hole;
};
size_t read_plan (const char *buf, uint64_t offset, uint32_t count,
                  uint32_t min_hole, struct read_piece *out, size_t max);

#endif /* NBDSRV_PROTOCOL_H */
