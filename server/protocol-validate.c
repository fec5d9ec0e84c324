/* nbdsrv: request decoding, validation (V-1..V-16) and the errno to NBD
 * error mapping (§4.4).  Pure functions: no I/O, no global state.
 */
#include "config.h"

#include <endian.h>
#include <errno.h>

#include "protocol.h"

void
request_decode (const struct nbd_request *wire, struct request *req)
{
  req->flags = be16toh (wire->flags);
  req->type = be16toh (wire->type);
  req->cookie = wire->cookie;   /* opaque: echoed back as received */
  req->offset = be64toh (wire->offset);
  req->count = be32toh (wire->count);
  req->payload = req->type == NBD_CMD_WRITE ? req->count : 0;
}

/* with PAYLOAD_LEN the length is the payload's, which for WRITE is
 * also its effect; without it there is no payload and the length is
 * the effect's, all 64 bits.  Any other command's payload has no
 * effect length we use (X-10 refuses it), so its count is 0.
 */
void
request_decode_ext (const struct nbd_request_ext *wire,
                    struct request *req)
{
  uint64_t len = be64toh (wire->count);

  req->flags = be16toh (wire->flags);
  req->type = be16toh (wire->type);
  req->cookie = wire->cookie;
  req->offset = be64toh (wire->offset);
  if (req->flags & NBD_CMD_FLAG_PAYLOAD_LEN) {
    req->payload = len;
    req->count = req->type == NBD_CMD_WRITE ? len : 0;
  }
  else {
    req->payload = 0;
    req->count = len;
  }
}

const char *
nbd_cmd_name (uint16_t type)
{
  static const char *const names[] = {
    "READ", "WRITE", "DISC", "FLUSH", "TRIM", "CACHE", "WRITE_ZEROES",
    "BLOCK_STATUS",
  };

  return type < sizeof names / sizeof names[0] ? names[type] : "unknown";
}

/* "In range" without overflow, and never zero-length (§4.1). */
static bool
in_range (const struct validate_state *st, uint64_t offset, uint64_t count)
{
  return count > 0 && count <= st->size && offset <= st->size - count;
}

#define FAIL(e, msg) do { *why = (msg); return (e); } while (0)

/* Returns 0 or the host errno of the first failing check, in nbdkit's
 * order, so both servers give the same answer (§4.1).  *why says why.
 */
int
request_validate (const struct validate_state *st, const struct request *r,
                  const char **why)
{
  const uint16_t t = r->type, f = r->flags;
  const bool writes = t == NBD_CMD_WRITE || t == NBD_CMD_TRIM ||
    t == NBD_CMD_WRITE_ZEROES;

  /* Framing first: which length means what depends on these. */
  if (st->extended && t == NBD_CMD_WRITE &&
      !(f & NBD_CMD_FLAG_PAYLOAD_LEN))                            /* */
    FAIL (EINVAL, "WRITE without PAYLOAD_LEN under extended headers");
  if (st->extended && t != NBD_CMD_WRITE &&
      (f & NBD_CMD_FLAG_PAYLOAD_LEN))                             /* */
    FAIL (EINVAL, "a payload is only valid on WRITE");
  if (writes && (st->eflags & NBD_FLAG_READ_ONLY))                /* V-1 */
    FAIL (EROFS, "the export is read-only");
  switch (t) {                                                    /* V-2 */
  case NBD_CMD_READ: case NBD_CMD_CACHE: case NBD_CMD_WRITE:
  case NBD_CMD_TRIM: case NBD_CMD_WRITE_ZEROES: case NBD_CMD_BLOCK_STATUS:
    if (!in_range (st, r->offset, r->count)) {
      if (t == NBD_CMD_WRITE || t == NBD_CMD_WRITE_ZEROES)
        FAIL (ENOSPC, r->count == 0 ? "the request has zero length"
              : "the request goes past the end of the export");
      FAIL (EINVAL, r->count == 0 ? "the request has zero length"
            : "the request goes past the end of the export");
    }
    break;
  case NBD_CMD_FLUSH:                                             /* V-3 */
    if (r->offset != 0 || r->count != 0)
      FAIL (EINVAL, "FLUSH must have zero offset and length");
    break;
  default:                                                        /* V-4 */
    FAIL (EINVAL, "unknown command");
  }
  if (f & ~(NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_DF |
            NBD_CMD_FLAG_REQ_ONE | NBD_CMD_FLAG_FAST_ZERO |
            (st->extended ? NBD_CMD_FLAG_PAYLOAD_LEN : 0)))       /* V-5 */
    FAIL (EINVAL, "unknown command flags");
  if ((f & NBD_CMD_FLAG_NO_HOLE) && t != NBD_CMD_WRITE_ZEROES)    /* V-6 */
    FAIL (EINVAL, "NO_HOLE is only valid on WRITE_ZEROES");
  if ((f & NBD_CMD_FLAG_FAST_ZERO) && t != NBD_CMD_WRITE_ZEROES)  /* V-7 */
    FAIL (EINVAL, "FAST_ZERO is only valid on WRITE_ZEROES");
  if ((f & NBD_CMD_FLAG_DF) && t != NBD_CMD_READ)                 /* V-8 */
    FAIL (EINVAL, "DF is only valid on READ");
  if ((f & NBD_CMD_FLAG_DF) && !st->structured)                   /* V-9 */
    FAIL (EINVAL, "DF needs structured replies");
  if ((f & NBD_CMD_FLAG_REQ_ONE) && t != NBD_CMD_BLOCK_STATUS)    /* V-10 */
    FAIL (EINVAL, "REQ_ONE is only valid on BLOCK_STATUS");
  if ((f & NBD_CMD_FLAG_FUA) && !(st->eflags & NBD_FLAG_SEND_FUA)) /* V-11 */
    FAIL (EINVAL, "FUA was not advertised");
  if ((t == NBD_CMD_READ || t == NBD_CMD_WRITE) &&
      r->count > NBD_MAX_REQUEST_SIZE)                            /* V-12 */
    FAIL (ENOMEM, "the request is larger than 64 MiB");
  if ((t == NBD_CMD_FLUSH && !(st->eflags & NBD_FLAG_SEND_FLUSH)) ||
      (t == NBD_CMD_TRIM && !(st->eflags & NBD_FLAG_SEND_TRIM)) ||
      (t == NBD_CMD_WRITE_ZEROES &&
       !(st->eflags & NBD_FLAG_SEND_WRITE_ZEROES)) ||
      (t == NBD_CMD_CACHE && !(st->eflags & NBD_FLAG_SEND_CACHE))) /* V-13 */
    FAIL (EINVAL, "the export does not support this command");
  if (t == NBD_CMD_BLOCK_STATUS && !st->structured)               /* V-14 */
    FAIL (EINVAL, "BLOCK_STATUS needs structured replies");
  if (t == NBD_CMD_BLOCK_STATUS && !st->meta_selected)
    FAIL (EINVAL, "BLOCK_STATUS needs a meta context selected");
  if (t == NBD_CMD_WRITE_ZEROES && (f & NBD_CMD_FLAG_FAST_ZERO) &&
      !(st->eflags & NBD_FLAG_SEND_FAST_ZERO))                    /* V-15 */
    FAIL (EINVAL, "FAST_ZERO was not advertised");
  if (st->align > 1 && t != NBD_CMD_FLUSH &&
      ((r->offset | r->count) & (st->align - 1)))                 /* V-16 */
    FAIL (EINVAL, "the request is not aligned to the minimum block size");
  return 0;
}

/* §4.4: never put a raw host errno on the wire.  FLAGS are the request
 * flags as received.
 */
uint32_t
errno_to_nbd (int err, uint16_t flags)
{
  switch (err) {
  case 0:
    return NBD_SUCCESS;
  case EROFS:
  case EPERM:
    return NBD_EPERM;
  case EIO:
    return NBD_EIO;
  case ENOMEM:
    return NBD_ENOMEM;
#ifdef EDQUOT
  case EDQUOT:
#endif
  case EFBIG:
  case ENOSPC:
    return NBD_ENOSPC;
#ifdef ESHUTDOWN
  case ESHUTDOWN:
    return NBD_ESHUTDOWN;
#endif
#if EOPNOTSUPP != ENOTSUP
  case EOPNOTSUPP:
#endif
  case ENOTSUP:
    return flags & NBD_CMD_FLAG_FAST_ZERO ? NBD_ENOTSUP : NBD_EINVAL;
  case EOVERFLOW:
    return flags & NBD_CMD_FLAG_DF ? NBD_EOVERFLOW : NBD_EINVAL;
  default:
    return NBD_EINVAL;
  }
}
