/* nbdsrv fuzz target: the pure request logic of server/protocol.h.
 *
 * From arbitrary bytes: a connection state and a wire request go
 * through request_decode and request_validate (V-1..V-16), an errno
 * and flags through errno_to_nbd (§4.4), and an extent list built with
 * nbdkit_add_extent through blockstatus_encode (R-20..R-23).  Each
 * result is checked against what the rules promise, and any broken
 * promise aborts, so libFuzzer reports it like a crash.
 *
 * Input layout (missing bytes read as zero):
 *   0..7   export size          8..9   eflags
 *   10     bit 0 structured, bit 1 base:allocation, bits 2-7 align
 *          exponent (align = 1 << e when e in 1..16, else 0)
 *   11..38 struct nbd_request as on the wire
 *   39..42 errno for errno_to_nbd
 *   43..50 extent list start    51..58 extent list end
 *   59..66 block status count   67 bit 0 REQ_ONE, bits 1-7 max - 1
 *   68..   extents: 8 bytes length, 1 byte type, repeated
 */
#include "config.h"

#include <endian.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "protocol.h"

struct reader {
  const uint8_t *p;
  size_t left;
};

static uint64_t
take (struct reader *r, size_t n)
{
  uint64_t v = 0;

  for (size_t i = 0; i < n; i++) {
    v = v << 8 | (r->left ? *r->p : 0);
    if (r->left) {
      r->p++;
      r->left--;
    }
  }
  return v;
}

#define REQUIRE(cond) do { if (!(cond)) {                               \
      fprintf (stderr, "fuzz-validate: broken promise: %s (line %d)\n",  \
               #cond, __LINE__);                                         \
      abort ();                                                          \
    } } while (0)

static void
check_validate (struct reader *in)
{
  /* Zeroed: fields added since (extended headers) stay off. */
  struct validate_state st = { 0 };
  struct nbd_request wire;
  struct request req;
  const char *why = NULL;
  unsigned a;
  int err;

  st.size = take (in, 8);
  st.eflags = take (in, 2);
  a = take (in, 1);
  st.structured = a & 1;
  st.meta_selected = a & 2;
  a >>= 2;
  st.align = a >= 1 && a <= 16 ? UINT32_C (1) << a : 0;
  for (size_t i = 0; i < sizeof wire; i++)
    ((uint8_t *) &wire)[i] = take (in, 1);
  request_decode (&wire, &req);
  REQUIRE (req.cookie == wire.cookie);
  REQUIRE (req.count <= UINT32_MAX);
  REQUIRE (nbd_cmd_name (req.type) != NULL);

  err = request_validate (&st, &req, &why);
  if (err) {
    REQUIRE (why != NULL);
    REQUIRE (err == EROFS || err == ENOSPC || err == EINVAL ||
             err == ENOMEM);
    return;
  }
  REQUIRE (req.type <= NBD_CMD_BLOCK_STATUS && req.type != NBD_CMD_DISC);
  if (req.type == NBD_CMD_FLUSH) {                                /* V-3 */
    REQUIRE (req.offset == 0 && req.count == 0);
    REQUIRE (st.eflags & NBD_FLAG_SEND_FLUSH);
    return;
  }
  REQUIRE (req.count > 0 && req.count <= st.size);                /* V-2 */
  REQUIRE (req.offset <= st.size - req.count);
  if (req.type == NBD_CMD_READ || req.type == NBD_CMD_WRITE)      /* V-12 */
    REQUIRE (req.count <= NBD_MAX_REQUEST_SIZE);
  if (req.type == NBD_CMD_WRITE || req.type == NBD_CMD_TRIM ||
      req.type == NBD_CMD_WRITE_ZEROES)                           /* V-1 */
    REQUIRE (!(st.eflags & NBD_FLAG_READ_ONLY));
  if (req.type == NBD_CMD_BLOCK_STATUS)                           /* V-14 */
    REQUIRE (st.structured && st.meta_selected);
  if (req.flags & NBD_CMD_FLAG_FUA)                               /* V-11 */
    REQUIRE (st.eflags & NBD_FLAG_SEND_FUA);
  if (req.flags & NBD_CMD_FLAG_DF)                                /* V-8 */
    REQUIRE (req.type == NBD_CMD_READ && st.structured);
  if (st.align > 1)                                               /* V-16 */
    REQUIRE (req.offset % st.align == 0 && req.count % st.align == 0);
}

static void
check_errno (struct reader *in, uint16_t flags)
{
  int err = (int) (uint32_t) take (in, 4);
  uint32_t e = errno_to_nbd (err, flags);

  REQUIRE ((e == NBD_SUCCESS) == (err == 0));
  REQUIRE (e == NBD_SUCCESS || e == NBD_EPERM || e == NBD_EIO ||
           e == NBD_ENOMEM || e == NBD_EINVAL || e == NBD_ENOSPC ||
           e == NBD_EOVERFLOW || e == NBD_ENOTSUP || e == NBD_ESHUTDOWN);
  if (e == NBD_ENOTSUP)
    REQUIRE (flags & NBD_CMD_FLAG_FAST_ZERO);
  if (e == NBD_EOVERFLOW)
    REQUIRE (flags & NBD_CMD_FLAG_DF);
}

/* The list stays inside [start, end), in order, gap-free, merged. */
static void
check_extent_list (const struct nbdkit_extents *e)
{
  for (size_t i = 0; i < e->len; i++) {
    const struct extent *x = &e->ptr[i];

    REQUIRE (x->length > 0);
    REQUIRE (x->offset >= e->start && x->offset < e->end);
    REQUIRE (x->length <= e->end - x->offset);
    if (i > 0) {
      REQUIRE (x->offset == e->ptr[i - 1].offset + e->ptr[i - 1].length);
      REQUIRE (x->type != e->ptr[i - 1].type);
    }
  }
}

static void
check_blockstatus (struct reader *in)
{
  struct nbd_block_descriptor out[128];
  struct nbdkit_extents *e;
  uint64_t start = take (in, 8) >> 2, end = take (in, 8) >> 2;
  uint64_t count = take (in, 8);
  unsigned b = take (in, 1);
  bool req_one = b & 1;
  size_t max = (b >> 1) + 1, n;
  uint64_t offset, total = 0;

  e = nbdkit_extents_new (start, end);
  if (e == NULL)
    return;
  offset = start;
  for (int i = 0; i < 1000 && in->left > 0; i++) {
    uint64_t len = take (in, 8);
    uint32_t type = take (in, 1);

    if (nbdkit_add_extent (e, offset, len, type) == -1)
      break;
    if (len > UINT64_MAX - offset)
      break;
    offset += len;
  }
  check_extent_list (e);
  /* The request lies inside the list's range, as in backend_extents. */
  if (count > end - start)
    count = end - start;
  n = blockstatus_encode (e, start, count, req_one, false,
                          META_BASE_ALLOCATION, out, max);
  REQUIRE (n <= max);
  if (req_one)
    REQUIRE (n <= 1);
  if (e->len > 0 && count > 0)                                    /* */
    REQUIRE (n >= 1);
  for (size_t i = 0; i < n; i++) {
    uint32_t len = be32toh (out[i].length);
    uint32_t flags = be32toh (out[i].status_flags);

    REQUIRE (len > 0);
    REQUIRE ((flags & ~(NBD_STATE_HOLE | NBD_STATE_ZERO)) == 0);
    if (req_one)                                                  /* */
      REQUIRE (len <= count);
    if (i + 1 < n)                   /* only the last may reach the end */
      REQUIRE (total + len < count);
    total += len;
  }
  nbdkit_extents_free (e);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  struct reader in = { data, size };
  uint16_t flags;

  check_validate (&in);
  flags = size > 16 ? (uint16_t) (data[15] << 8 | data[16]) : 0;
  check_errno (&in, flags);
  check_blockstatus (&in);
  return 0;
}
