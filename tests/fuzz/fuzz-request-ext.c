/* nbdsrv fuzz target: the extended request path of §6.
 *
 * From arbitrary bytes: a connection state (always with extended
 * headers on) and a 32-byte extended request go through
 * request_decode_ext and request_validate, and an extent list through
 * blockstatus_encode with 64-bit descriptors.  The promises the
 * rules make are checked; a broken one aborts, which libFuzzer reports
 * like a crash.
 *
 * Input layout (missing bytes read as zero):
 *   0..7   export size          8..9   eflags
 *   10     bit 0 base:allocation, bits 1-7 align exponent
 *          (align = 1 << e when e in 1..16, else 0)
 *   11..42 struct nbd_request_ext as on the wire
 *   43..   extents: 8 bytes length, 1 byte type, repeated
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

#define REQUIRE(cond) do { if (!(cond)) {                                \
      fprintf (stderr, "fuzz-request-ext: broken promise: %s (line %d)\n", \
               #cond, __LINE__);                                          \
      abort ();                                                           \
    } } while (0)

static uint64_t
take (const uint8_t **p, size_t *left, size_t n)
{
  uint64_t v = 0;

  for (size_t i = 0; i < n; i++) {
    v = v << 8 | (*left ? **p : 0);
    if (*left) {
      (*p)++;
      (*left)--;
    }
  }
  return v;
}

/* What decoding must give: the header's fields, the length as payload
 * with PAYLOAD_LEN and as effect otherwise.
 */
static void
check_decode (const struct nbd_request_ext *wire, const struct request *r)
{
  uint64_t len = be64toh (wire->count);

  REQUIRE (r->type == be16toh (wire->type));
  REQUIRE (r->flags == be16toh (wire->flags));
  REQUIRE (r->cookie == wire->cookie);
  REQUIRE (r->offset == be64toh (wire->offset));
  if (r->flags & NBD_CMD_FLAG_PAYLOAD_LEN) {
    REQUIRE (r->payload == len);
    REQUIRE (r->count == (r->type == NBD_CMD_WRITE ? len : 0));
  }
  else
    REQUIRE (r->payload == 0 && r->count == len);
}

static void
check_validate (const struct validate_state *st, const struct request *r)
{
  const char *why = NULL;
  int err = request_validate (st, r, &why);

  REQUIRE ((err == 0) == (why == NULL));
  if (err)
    return;
  /* Accepted: framing as say, in range, bounded data. */
  REQUIRE ((r->type == NBD_CMD_WRITE) ==
           !!(r->flags & NBD_CMD_FLAG_PAYLOAD_LEN));
  if (r->type != NBD_CMD_FLUSH) {
    REQUIRE (r->count > 0 && r->count <= st->size);
    REQUIRE (r->offset <= st->size - r->count);
  }
  if (r->type == NBD_CMD_READ || r->type == NBD_CMD_WRITE)
    REQUIRE (r->count <= NBD_MAX_REQUEST_SIZE);
  REQUIRE (r->type <= NBD_CMD_BLOCK_STATUS && r->type != NBD_CMD_DISC);
}

/* 64-bit descriptors: never split, in order, covering from the
 * request's offset, the last one reaching its end unless the list
 * stops first.
 */
static void
check_encode (const uint8_t *p, size_t left, const struct request *r)
{
  struct nbdkit_extents e = { 0 };
  struct nbd_block_descriptor_ext out[64];
  uint64_t end, pos;
  size_t n;

  extents_reset (&e, r->offset, r->offset + (r->count ? r->count : 1));
  pos = r->offset;
  while (left >= 9) {
    uint64_t len = take (&p, &left, 8) % ((uint64_t) 1 << 40) + 1;
    uint32_t type = take (&p, &left, 1) & 3;

    if (nbdkit_add_extent (&e, pos, len, type) == -1)
      break;
    pos += len;
  }
  if (e.len == 0 || r->count == 0)
    goto out;
  n = blockstatus_encode (&e, r->offset, r->count,
                          r->flags & NBD_CMD_FLAG_REQ_ONE, true,
                          META_BASE_ALLOCATION, out, 64);
  REQUIRE (n >= 1);
  end = r->offset;
  for (size_t i = 0; i < n; i++) {
    REQUIRE (be64toh (out[i].length) > 0);
    REQUIRE ((be64toh (out[i].status_flags) & ~UINT64_C (3)) == 0);
    end += be64toh (out[i].length);
  }
  if (r->flags & NBD_CMD_FLAG_REQ_ONE)
    REQUIRE (n == 1 && end <= r->offset + r->count);
 out:
  extents_release (&e);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  const uint8_t *p = data;
  size_t left = size;
  struct validate_state st = { 0 };
  struct nbd_request_ext wire;
  struct request r;
  unsigned bits, e;

  st.size = take (&p, &left, 8) >> 1;  /* below INT64_MAX, as exports */
  st.eflags = take (&p, &left, 2);
  bits = take (&p, &left, 1);
  st.structured = st.extended = true;
  st.meta_selected = bits & 1;
  e = bits >> 1;
  st.align = e >= 1 && e <= 16 ? 1u << e : 0;
  memset (&wire, 0, sizeof wire);
  for (size_t i = 0; i < sizeof wire && left; i++, left--)
    ((uint8_t *) &wire)[i] = *p++;

  request_decode_ext (&wire, &r);
  check_decode (&wire, &r);
  check_validate (&st, &r);
  check_encode (p, left, &r);
  return 0;
}
