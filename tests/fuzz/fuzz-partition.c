/* nbdsrv fuzz target: the partitioning plugin's layout builder
 * (plugins/partitioning/ptable.c: ptable_build, ptable_find,
 * ptable_parse_guid).
 *
 * Input: byte 0 bit 0 GPT (else MBR), bits 1-7 the partition count - 1
 * (1..128); then per partition 8 bytes of size (taken modulo 2^41, so
 * both small disks and ones past MBR's limit occur, plus 1), 1 byte of
 * alignment exponent (2^0..2^23: valid and invalid), 1 byte MBR type,
 * 32 bytes of GUIDs and a name of up to 40 bytes ended by NUL; then a
 * GUID string.  Missing bytes read as zero.  A layout that is built
 * must be consistent: regions sorted, gap-free, covering the disk, each
 * partition's data exactly its size, tables inside their buffers.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ptable.h"

#define REQUIRE(cond) do { if (!(cond)) {                               \
      fprintf (stderr, "fuzz-partition: broken promise: %s (line %d)\n", \
               #cond, __LINE__);                                         \
      abort ();                                                          \
    } } while (0)

#define MAX_PARTS 128

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

static bool
inside (const uint8_t *p, uint64_t len, const uint8_t *buf, size_t buf_len)
{
  return buf && p >= buf && len <= buf_len &&
    (size_t) (p - buf) <= buf_len - len;
}

static void
check_layout (const struct ptable *pt, const struct ptable_part *parts,
              size_t n)
{
  uint64_t pos = 0, data[MAX_PARTS] = { 0 };

  REQUIRE (pt->disk_size % PTABLE_SECTOR == 0);
  REQUIRE (pt->nr_regions > 0);
  REQUIRE (pt->primary_len >= PTABLE_SECTOR);
  REQUIRE (pt->primary[510] == 0x55 && pt->primary[511] == 0xaa);
  for (size_t i = 0; i < pt->nr_regions; i++) {
    const struct ptable_region *r = &pt->regions[i];

    REQUIRE (r->start == pos && r->len > 0);
    REQUIRE (r->len <= pt->disk_size - pos);
    pos += r->len;
    switch (r->kind) {
    case PTABLE_DATA:
      REQUIRE (r->part < n);
      data[r->part] += r->len;
      break;
    case PTABLE_TABLE:
      REQUIRE (inside (r->bytes, r->len, pt->primary, pt->primary_len) ||
               inside (r->bytes, r->len, pt->secondary,
                       pt->secondary_len) ||
               inside (r->bytes, r->len, pt->ebrs,
                       pt->nr_ebrs * PTABLE_SECTOR));
      break;
    case PTABLE_ZERO:
      break;
    default:
      REQUIRE (!"unknown region kind");
    }
  }
  REQUIRE (pos == pt->disk_size);
  for (size_t i = 0; i < n; i++)
    REQUIRE (data[i] == parts[i].size);
  /* ptable_find agrees with the walk, at each region's ends. */
  for (size_t i = 0; i < pt->nr_regions && i < 64; i++) {
    const struct ptable_region *r = &pt->regions[i];

    REQUIRE (ptable_find (pt, r->start) == i);
    REQUIRE (ptable_find (pt, r->start + r->len - 1) == i);
  }
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  struct reader in = { data, size };
  struct ptable_part parts[MAX_PARTS];
  char names[MAX_PARTS][41];
  char guid_str[64];
  uint8_t guid[16];
  struct ptable pt;
  const char *err = NULL;
  unsigned b = take (&in, 1);
  enum ptable_type type = b & 1 ? PTABLE_GPT : PTABLE_MBR;
  size_t n = (b >> 1) + 1;

  memset (parts, 0, sizeof parts);
  for (size_t i = 0; i < n; i++) {
    struct ptable_part *p = &parts[i];
    size_t len = 0;
    uint64_t c;

    p->size = take (&in, 8) % (UINT64_C (1) << 41) + 1;
    p->alignment = UINT64_C (1) << (take (&in, 1) % 24);
    p->mbr_id = take (&in, 1);
    for (int j = 0; j < 16; j++)
      p->type_guid[j] = take (&in, 1);
    for (int j = 0; j < 16; j++)
      p->guid[j] = take (&in, 1);
    while (len < 40 && in.left && (c = take (&in, 1)) != 0)
      names[i][len++] = c;
    names[i][len] = '\0';
    p->name = len ? names[i] : NULL;
  }

  memset (&pt, 0, sizeof pt);
  if (ptable_build (type, parts, n, &pt, &err) == 0) {
    check_layout (&pt, parts, n);
    ptable_free (&pt);
  }
  else
    REQUIRE (err != NULL && *err != '\0');

  /* Whatever is left, as a GUID string. */
  memset (guid_str, 0, sizeof guid_str);
  for (size_t i = 0; i < sizeof guid_str - 1 && in.left; i++)
    guid_str[i] = take (&in, 1);
  if (ptable_parse_guid (guid_str, guid) == 0)
    REQUIRE (strlen (guid_str) >= 36);
  return 0;
}
