/* Unit test: request validation V-1..V-16 in nbdkit's order, and the
 * errno to NBD error mapping (protocol-rules.md §4).
 */
#include "config.h"

#include <endian.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "protocol.h"
#include "stubs.h"

#define SIZE (1024 * 1024)
#define ALL_CAPS (NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | \
                  NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM | \
                  NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_CACHE | \
                  NBD_FLAG_SEND_FAST_ZERO)

enum { RW, RO, BARE, NOSR, NOMC, ALIGN, EXT };

static const struct validate_state states[] = {
  [RW] = { SIZE, ALL_CAPS, true, true, 0 },
  [RO] = { SIZE, NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY |
           NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_CACHE, true, true, 0 },
  [BARE] = { SIZE, NBD_FLAG_HAS_FLAGS, true, true, 0 },
  [NOSR] = { SIZE, ALL_CAPS, false, false, 0 },
  [NOMC] = { SIZE, ALL_CAPS, true, false, 0 },
  [ALIGN] = { SIZE, ALL_CAPS, true, true, 512 },
  [EXT] = { SIZE, ALL_CAPS, true, true, 0, true },
};

struct vcase {
  const char *rule;
  int state;
  uint16_t type, flags;
  uint64_t offset, count;
  int want;                     /* host errno, 0 for valid */
};

#define R NBD_CMD_READ
#define W NBD_CMD_WRITE
#define FL NBD_CMD_FLUSH
#define T NBD_CMD_TRIM
#define C NBD_CMD_CACHE
#define Z NBD_CMD_WRITE_ZEROES
#define BS NBD_CMD_BLOCK_STATUS
#define FUA NBD_CMD_FLAG_FUA
#define NOHOLE NBD_CMD_FLAG_NO_HOLE
#define DF NBD_CMD_FLAG_DF
#define ONE NBD_CMD_FLAG_REQ_ONE
#define FAST NBD_CMD_FLAG_FAST_ZERO
#define PLEN NBD_CMD_FLAG_PAYLOAD_LEN

static const struct vcase cases[] = {
  { "X-8 extended write", EXT, W, PLEN | FUA, 0, 4096, 0 },
  { "X-9 extended write without PAYLOAD_LEN", EXT, W, 0, 0, 4096, EINVAL },
  { "X-10 trim with a payload", EXT, T, PLEN, 0, 512, EINVAL },
  { "X-11 extended trim of the whole disk", EXT, T, 0, 0, SIZE, 0 },
  { "V-5 PAYLOAD_LEN without extended headers", RW, W, PLEN, 0, 512,
    EINVAL },
  { "valid read", RW, R, 0, 0, 512, 0 },
  { "valid read to the end", RW, R, 0, SIZE - 512, 512, 0 },
  { "valid write", RW, W, FUA, 4096, 4096, 0 },
  { "valid flush", RW, FL, 0, 0, 0, 0 },
  { "valid trim", RW, T, FUA, 0, SIZE, 0 },
  { "valid cache", RW, C, 0, 0, 1, 0 },
  { "valid zero", RW, Z, NOHOLE | FAST | FUA, 0, 4096, 0 },
  { "valid block status", RW, BS, ONE, 0, SIZE, 0 },
  { "FUA accepted on READ", RW, R, FUA, 0, 512, 0 },
  { "FUA accepted on FLUSH", RW, FL, FUA, 0, 0, 0 },
  { "DF on READ with SR", RW, R, DF, 0, 512, 0 },
  /* V-1 comes before everything, even range and flags. */
  { "V-1 write read-only", RO, W, 0, 0, 512, EROFS },
  { "V-1 before V-2", RO, W, 0, SIZE, 512, EROFS },
  { "V-1 before V-5", RO, T, 0x80, 0, 512, EROFS },
  { "V-1 zero", RO, Z, 0, 0, 512, EROFS },
  { "V-2 read past end", RW, R, 0, SIZE, 1, EINVAL },
  { "V-2 read straddles end", RW, R, 0, SIZE - 1, 2, EINVAL },
  { "V-2 write past end", RW, W, 0, SIZE, 1, ENOSPC },
  { "V-2 zero past end", RW, Z, 0, SIZE - 1, 2, ENOSPC },
  { "V-2 trim past end", RW, T, 0, SIZE, 1, EINVAL },
  { "V-2 cache past end", RW, C, 0, SIZE, 1, EINVAL },
  { "V-2 block status past end", RW, BS, 0, SIZE, 1, EINVAL },
  { "V-2 zero-length read", RW, R, 0, 0, 0, EINVAL },
  { "V-2 zero-length write", RW, W, 0, 0, 0, ENOSPC },
  { "V-2 zero-length zero", RW, Z, 0, 0, 0, ENOSPC },
  { "V-2 zero-length trim", RW, T, 0, 0, 0, EINVAL },
  { "V-2 huge offset wraps", RW, R, 0, UINT64_MAX - 10, 512, EINVAL },
  { "V-2 before V-12", RW, R, 0, SIZE, 65 << 20, EINVAL },
  { "V-3 flush offset", RW, FL, 0, 1, 0, EINVAL },
  { "V-3 flush length", RW, FL, 0, 0, 1, EINVAL },
  { "V-3 before V-13", BARE, FL, 0, 1, 0, EINVAL },
  { "V-4 type 8", RW, 8, 0, 0, 512, EINVAL },
  { "V-4 type 9", RW, 9, 0, 0, 0, EINVAL },
  { "V-5 flag bit 5", RW, R, 0x20, 0, 512, EINVAL },
  { "V-5 flag bit 15", RW, W, 0x8000, 0, 512, EINVAL },
  { "V-6 NO_HOLE on write", RW, W, NOHOLE, 0, 512, EINVAL },
  { "V-7 FAST_ZERO on trim", RW, T, FAST, 0, 512, EINVAL },
  { "V-8 DF on write", RW, W, DF, 0, 512, EINVAL },
  { "V-9 DF without SR", NOSR, R, DF, 0, 512, EINVAL },
  { "V-10 REQ_ONE on read", RW, R, ONE, 0, 512, EINVAL },
  { "V-11 FUA not advertised", BARE, R, FUA, 0, 512, EINVAL },
  { "V-11 FUA on read-only", RO, R, FUA, 0, 512, EINVAL },
  { "V-12 read 64 MiB + 1", RW, R, 0, 0, (64 << 20) + 1, EINVAL },
  { "V-13 flush not advertised", BARE, FL, 0, 0, 0, EINVAL },
  { "V-13 trim not advertised", BARE, T, 0, 0, 512, EINVAL },
  { "V-13 zero not advertised", BARE, Z, 0, 0, 512, EINVAL },
  { "V-13 cache not advertised", BARE, C, 0, 0, 512, EINVAL },
  { "V-14 block status without SR", NOSR, BS, 0, 0, 512, EINVAL },
  { "V-14 block status without context", NOMC, BS, 0, 0, 512, EINVAL },
  { "V-16 unaligned offset", ALIGN, R, 0, 1, 512, EINVAL },
  { "V-16 unaligned length", ALIGN, W, 0, 0, 511, EINVAL },
  { "V-16 aligned", ALIGN, W, 0, 512, 1024, 0 },
  { "V-16 flush exempt", ALIGN, FL, 0, 0, 0, 0 },
};

/* V-12 and V-15 need exports large enough / without fast zero. */
static void
test_big_and_fast_zero (void)
{
  struct validate_state big = { 128 << 20, ALL_CAPS, true, true, 0, false };
  struct validate_state nofast = {
    SIZE, ALL_CAPS & ~NBD_FLAG_SEND_FAST_ZERO, true, true, 0, false
  };
  struct request r = { 0, R, 0, 0, 65 << 20, 0 };
  const char *why = NULL;

  check (request_validate (&big, &r, &why) == ENOMEM,
         "V-12 in-range 65 MiB READ is ENOMEM");
  r.type = W;
  check (request_validate (&big, &r, &why) == ENOMEM,
         "V-12 in-range 65 MiB WRITE is ENOMEM");
  r.count = 64 << 20;
  check (request_validate (&big, &r, &why) == 0,
         "64 MiB WRITE is allowed");
  r = (struct request) { FAST, Z, 0, 0, 512, 0 };
  check (request_validate (&nofast, &r, &why) == EINVAL &&
         strstr (why, "FAST_ZERO"),
         "V-15 FAST_ZERO not advertised is EINVAL, not a crash");
  r.flags = 0;
  check (request_validate (&nofast, &r, &why) == 0,
         "zero without FAST_ZERO is fine when fast zero is off");
}

static void
test_errno_map (void)
{
  check (errno_to_nbd (0, 0) == 0, "0 -> 0");
  check (errno_to_nbd (EROFS, 0) == NBD_EPERM, "EROFS -> EPERM");
  check (errno_to_nbd (EPERM, 0) == NBD_EPERM, "EPERM -> EPERM");
  check (errno_to_nbd (EIO, 0) == NBD_EIO, "EIO");
  check (errno_to_nbd (ENOMEM, 0) == NBD_ENOMEM, "ENOMEM");
  check (errno_to_nbd (EDQUOT, 0) == NBD_ENOSPC, "EDQUOT -> ENOSPC");
  check (errno_to_nbd (EFBIG, 0) == NBD_ENOSPC, "EFBIG -> ENOSPC");
  check (errno_to_nbd (ENOSPC, 0) == NBD_ENOSPC, "ENOSPC");
  check (errno_to_nbd (ESHUTDOWN, 0) == NBD_ESHUTDOWN, "ESHUTDOWN");
  check (errno_to_nbd (ENOTSUP, 0) == NBD_EINVAL,
         "ENOTSUP without FAST_ZERO -> EINVAL");
  check (errno_to_nbd (ENOTSUP, FAST) == NBD_ENOTSUP,
         "ENOTSUP with FAST_ZERO -> ENOTSUP");
  check (errno_to_nbd (EOPNOTSUPP, FAST) == NBD_ENOTSUP, "EOPNOTSUPP");
  check (errno_to_nbd (EOVERFLOW, 0) == NBD_EINVAL,
         "EOVERFLOW without DF -> EINVAL");
  check (errno_to_nbd (EOVERFLOW, DF) == NBD_EOVERFLOW,
         "EOVERFLOW with DF -> EOVERFLOW");
  check (errno_to_nbd (EBADF, 0) == NBD_EINVAL, "anything else -> EINVAL");
  check (errno_to_nbd (ENOENT, FAST | DF) == NBD_EINVAL, "ENOENT");
}

static void
test_decode (void)
{
  struct nbd_request wire = {
    .magic = htobe32 (NBD_REQUEST_MAGIC),
    .flags = htobe16 (0x0102),
    .type = htobe16 (7),
    .cookie = 0x1122334455667788,
    .offset = htobe64 (0x0102030405060708),
    .count = htobe32 (0xdeadbeef),
  };
  struct request r;

  check (sizeof wire == 28, "compact request header is 28 bytes");
  request_decode (&wire, &r);
  check (r.flags == 0x0102 && r.type == 7 &&
         r.offset == 0x0102030405060708 && r.count == 0xdeadbeef,
         "request fields decode from big-endian");
  check (r.cookie == 0x1122334455667788, "cookie is kept opaque");
  check (r.payload == 0, "only a WRITE has a payload");
}

/* PAYLOAD_LEN says which of payload and effect the length is. */
static void
test_decode_ext (void)
{
  struct nbd_request_ext wire = {
    .magic = htobe32 (NBD_EXTENDED_REQUEST_MAGIC),
    .flags = htobe16 (NBD_CMD_FLAG_PAYLOAD_LEN),
    .type = htobe16 (NBD_CMD_WRITE),
    .cookie = 7,
    .offset = htobe64 (4096),
    .count = htobe64 (UINT64_C (0x100000000)),
  };
  struct request r;

  check (sizeof wire == 32, "extended request header is 32 bytes");
  request_decode_ext (&wire, &r);
  check (r.count == UINT64_C (0x100000000) && r.payload == r.count,
         "WRITE with PAYLOAD_LEN: the length is payload and effect");
  wire.type = htobe16 (NBD_CMD_TRIM);
  request_decode_ext (&wire, &r);
  check (r.count == 0 && r.payload == UINT64_C (0x100000000),
         "TRIM with PAYLOAD_LEN: a payload to skip, no effect length");
  wire.flags = 0;
  request_decode_ext (&wire, &r);
  check (r.count == UINT64_C (0x100000000) && r.payload == 0,
         "TRIM without PAYLOAD_LEN: a 64-bit effect length");
}

int
main (void)
{
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const struct vcase *c = &cases[i];
    struct request r = { c->flags, c->type, 42, c->offset, c->count, 0 };
    const char *why = NULL;
    int got = request_validate (&states[c->state], &r, &why);

    check (got == c->want, "%s: got errno %d, want %d", c->rule, got,
           c->want);
    check ((got == 0) == (why == NULL) || got == 0,
           "%s: a failure explains itself", c->rule);
  }
  test_big_and_fast_zero ();
  test_errno_map ();
  test_decode ();
  test_decode_ext ();
  return test_summary ();
}
