/* nbdsrv partitioning plugin: the layout and the partition tables.
 *
 * Layout, in 512-byte sectors, the same as nbdkit 1.32 produces (the
 * tests compare sfdisk dumps and the bytes of both disks):
 *
 *   MBR:  sector 0 holds the MBR.  Each partition starts at the next
 *         multiple of its alignment after the previous one (after
 *         sector 0 for the first) and takes its size rounded up to
 *         whole sectors.  With more than four partitions the first
 *         three are primary and the rest are logical, inside an
 *         extended partition (type 0x0f) in slot 4: each logical
 *         partition has an EBR in the sector right after the previous
 *         partition, and starts aligned after its EBR.  The disk ends
 *         with the last partition.  The first partition is marked
 *         active, and every CHS field holds the "use LBA" value.
 *   GPT:  a protective MBR, the header in sector 1, the entry array
 *         (a multiple of 128 entries) from sector 2, the partitions
 *         placed as above, then a copy of the array and the backup
 *         header in the last sector.  The first partition has the
 *         legacy BIOS bootable attribute; the disk GUID is zero.
 */

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ptable.h"

#define SS PTABLE_SECTOR

static void
put_le16 (uint8_t *p, uint16_t v)
{
  p[0] = v;
  p[1] = v >> 8;
}

static void
put_le32 (uint8_t *p, uint32_t v)
{
  put_le16 (p, v);
  put_le16 (p + 2, v >> 16);
}

static void
put_le64 (uint8_t *p, uint64_t v)
{
  put_le32 (p, v);
  put_le32 (p + 4, v >> 32);
}

uint32_t
ptable_crc32 (const uint8_t *buf, size_t len)
{
  uint32_t crc = 0xffffffff;
  size_t i;
  int bit;

  /* Bitwise CRC-32 (IEEE, reflected): tables are a few KiB at most. */
  for (i = 0; i < len; ++i) {
    crc ^= buf[i];
    for (bit = 0; bit < 8; ++bit)
      crc = (crc >> 1) ^ (0xedb88320 & -(crc & 1));
  }
  return ~crc;
}

static int
hex_value (char c)
{
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

int
ptable_parse_guid (const char *str, uint8_t out[16])
{
  /* Text order of the 16 bytes: the first three fields are stored
   * little-endian, the last two as written.
   */
  static const int order[16] = { 3, 2, 1, 0, 5, 4, 7, 6,
                                 8, 9, 10, 11, 12, 13, 14, 15 };
  size_t i, k = 0;
  int hi, lo;

  if (strlen (str) != 36)
    return -1;
  for (i = 0; i < 36; ) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (str[i++] != '-')
        return -1;
      continue;
    }
    hi = hex_value (str[i]);
    lo = hex_value (str[i + 1]);
    if (hi < 0 || lo < 0)
      return -1;
    out[order[k++]] = hi << 4 | lo;
    i += 2;
  }
  return 0;
}

/* One 16-byte MBR partition entry. */
static void
mbr_entry (uint8_t *e, bool active, uint8_t type, uint64_t lba,
           uint64_t sectors)
{
  static const uint8_t chs_lba[3] = { 0xfe, 0xff, 0xff };

  e[0] = active ? 0x80 : 0;
  memcpy (&e[1], chs_lba, 3);
  e[4] = type;
  memcpy (&e[5], chs_lba, 3);
  put_le32 (&e[8], lba);
  put_le32 (&e[12], sectors > 0xffffffff ? 0xffffffff : sectors);
}

static void
mbr_signature (uint8_t *sector)
{
  sector[510] = 0x55;
  sector[511] = 0xaa;
}

static uint64_t
align_up (uint64_t x, uint64_t a)
{
  return (x + a - 1) & ~(a - 1);
}

/* Where each partition goes: starts and ends (exclusive) in sectors,
 * and for logical partitions their EBR sector.
 */
struct placement {
  uint64_t start, end, ebr;
};

/* Place the partitions from sector FIRST.  LOGICAL_FROM is the first
 * index that gets an EBR (n when none).  Returns the sector after the
 * last partition, or 0 if the numbers overflow.
 */
static uint64_t
place (const struct ptable_part *parts, size_t n, size_t logical_from,
       uint64_t first, struct placement *pl)
{
  uint64_t pos = first, sectors;
  size_t i;

  for (i = 0; i < n; ++i) {
    if (i >= logical_from)
      pl[i].ebr = pos++;
    sectors = parts[i].size / SS + (parts[i].size % SS != 0);
    pl[i].start = align_up (pos, parts[i].alignment / SS);
    pl[i].end = pl[i].start + sectors;
    if (pl[i].start < pos || pl[i].end < pl[i].start ||
        pl[i].end > UINT64_MAX / SS / 2)
      return 0;
    pos = pl[i].end;
  }
  return pos;
}

static int
add_region (struct ptable *pt, size_t *cap, uint64_t start, uint64_t len,
            enum ptable_kind kind, size_t part, const uint8_t *bytes)
{
  struct ptable_region *r;

  if (len == 0)
    return 0;
  if (pt->nr_regions == *cap) {
    size_t ncap = *cap ? *cap * 2 : 16;

    r = reallocarray (pt->regions, ncap, sizeof *r);
    if (r == NULL)
      return -1;
    pt->regions = r;
    *cap = ncap;
  }
  pt->regions[pt->nr_regions++] = (struct ptable_region) {
    start, len, kind, part, bytes
  };
  return 0;
}

/* Regions for the partitions and the padding around them, from byte
 * *POS; table sectors at EBR positions come from EBRS.
 */
static int
add_partition_regions (struct ptable *pt, size_t *cap,
                       const struct ptable_part *parts, size_t n,
                       const struct placement *pl, size_t logical_from,
                       uint64_t *pos)
{
  uint64_t start, data_end;
  size_t i;

  for (i = 0; i < n; ++i) {
    if (i >= logical_from) {
      if (add_region (pt, cap, *pos, pl[i].ebr * SS - *pos,
                      PTABLE_ZERO, 0, NULL) == -1 ||
          add_region (pt, cap, pl[i].ebr * SS, SS, PTABLE_TABLE, 0,
                      pt->ebrs + (i - logical_from) * SS) == -1)
        return -1;
      *pos = (pl[i].ebr + 1) * SS;
    }
    start = pl[i].start * SS;
    data_end = start + parts[i].size;
    if (add_region (pt, cap, *pos, start - *pos, PTABLE_ZERO, 0,
                    NULL) == -1 ||
        add_region (pt, cap, start, parts[i].size, PTABLE_DATA, i,
                    NULL) == -1 ||
        add_region (pt, cap, data_end, pl[i].end * SS - data_end,
                    PTABLE_ZERO, 0, NULL) == -1)
      return -1;
    *pos = pl[i].end * SS;
  }
  return 0;
}

static int
build_mbr (const struct ptable_part *parts, size_t n, struct ptable *pt,
           struct placement *pl, size_t *cap)
{
  size_t logical_from = n > 4 ? 3 : n;
  size_t nr_primary = n > 4 ? 3 : n;
  uint64_t end, pos = SS;
  size_t i, k;
  uint8_t *ebr;

  end = place (parts, n, logical_from, 1, pl);
  if (end == 0 || end > 0xffffffff)
    return -1;
  pt->disk_size = end * SS;

  pt->primary_len = SS;
  pt->primary = calloc (1, SS);
  pt->nr_ebrs = n - logical_from;
  pt->ebrs = calloc (pt->nr_ebrs ? pt->nr_ebrs : 1, SS);
  if (pt->primary == NULL || pt->ebrs == NULL)
    return -1;

  for (i = 0; i < nr_primary; ++i)
    mbr_entry (&pt->primary[446 + 16 * i], i == 0, parts[i].mbr_id,
               pl[i].start, pl[i].end - pl[i].start);
  if (pt->nr_ebrs > 0)
    mbr_entry (&pt->primary[446 + 16 * 3], false, 0x0f, pl[3].ebr,
               end - pl[3].ebr);
  mbr_signature (pt->primary);

  /* Each EBR: its own partition, relative to the EBR, then a link to
   * the next EBR, relative to the start of the extended partition.
   */
  for (k = 0; k < pt->nr_ebrs; ++k) {
    i = logical_from + k;
    ebr = pt->ebrs + k * SS;
    mbr_entry (&ebr[446], false, parts[i].mbr_id, pl[i].start - pl[i].ebr,
               pl[i].end - pl[i].start);
    if (i + 1 < n)
      mbr_entry (&ebr[446 + 16], false, 0x0f, pl[i + 1].ebr - pl[3].ebr,
                 pl[i + 1].end - pl[i + 1].ebr);
    mbr_signature (ebr);
  }

  if (add_region (pt, cap, 0, SS, PTABLE_TABLE, 0, pt->primary) == -1)
    return -1;
  return add_partition_regions (pt, cap, parts, n, pl, logical_from, &pos);
}

/* GPT partition names are UTF-16; like nbdkit, only names that are
 * plain ASCII and fit (with the terminating NUL) are stored.
 */
static void
gpt_name (uint8_t *field, const char *name)
{
  size_t i, len;

  if (name == NULL)
    return;
  len = strlen (name);
  if (len >= PTABLE_GPT_NAME_CHARS)
    return;
  for (i = 0; i < len; ++i)
    if ((unsigned char) name[i] >= 0x80)
      return;
  for (i = 0; i < len; ++i)
    put_le16 (&field[2 * i], (unsigned char) name[i]);
}

static void
gpt_entries (uint8_t *array, const struct ptable_part *parts, size_t n,
             const struct placement *pl)
{
  uint8_t *e;
  size_t i;

  for (i = 0; i < n; ++i) {
    e = array + i * PTABLE_GPT_ENTRY_SIZE;
    memcpy (&e[0], parts[i].type_guid, 16);
    memcpy (&e[16], parts[i].guid, 16);
    put_le64 (&e[32], pl[i].start);
    put_le64 (&e[40], pl[i].end - 1);
    put_le64 (&e[48], i == 0 ? 4 : 0);  /* legacy BIOS bootable */
    gpt_name (&e[56], parts[i].name);
  }
}

/* nbdkit writes a 96-byte header (92 defined bytes and 4 of zero)
 * and says so in the header size field; we do the same.
 */
#define GPT_HEADER_SIZE 96

static void
gpt_header (uint8_t *h, uint64_t my_lba, uint64_t alt_lba,
            uint64_t first_usable, uint64_t last_usable,
            uint64_t entries_lba, uint32_t nr_entries, uint32_t array_crc)
{
  memcpy (&h[0], "EFI PART", 8);
  put_le32 (&h[8], 0x00010000);
  put_le32 (&h[12], GPT_HEADER_SIZE);
  put_le64 (&h[24], my_lba);
  put_le64 (&h[32], alt_lba);
  put_le64 (&h[40], first_usable);
  put_le64 (&h[48], last_usable);
  /* 56..71: disk GUID, left zero */
  put_le64 (&h[72], entries_lba);
  put_le32 (&h[80], nr_entries);
  put_le32 (&h[84], PTABLE_GPT_ENTRY_SIZE);
  put_le32 (&h[88], array_crc);
  put_le32 (&h[16], ptable_crc32 (h, GPT_HEADER_SIZE));
}

static int
build_gpt (const struct ptable_part *parts, size_t n, struct ptable *pt,
           struct placement *pl, size_t *cap)
{
  uint32_t nr_entries, array_crc;
  uint64_t array_sectors, end, last, pos = 2 * SS;
  uint8_t *array;

  if (n > UINT32_MAX - 127)
    return -1;
  nr_entries = (n + 127) / 128 * 128;
  array_sectors = (uint64_t) nr_entries * PTABLE_GPT_ENTRY_SIZE / SS;

  end = place (parts, n, n, 2 + array_sectors, pl);
  if (end == 0)
    return -1;
  last = end + array_sectors;           /* backup header sector */
  pt->disk_size = (last + 1) * SS;

  pt->primary_len = (2 + array_sectors) * SS;
  pt->primary = calloc (1, pt->primary_len);
  pt->secondary_len = (array_sectors + 1) * SS;
  pt->secondary = calloc (1, pt->secondary_len);
  if (pt->primary == NULL || pt->secondary == NULL)
    return -1;

  /* Protective MBR covering the whole disk (or as much as fits). */
  mbr_entry (&pt->primary[446], false, 0xee, 1, last);
  mbr_signature (pt->primary);

  array = pt->primary + 2 * SS;
  gpt_entries (array, parts, n, pl);
  array_crc = ptable_crc32 (array, array_sectors * SS);
  memcpy (pt->secondary, array, array_sectors * SS);

  gpt_header (pt->primary + SS, 1, last, 2 + array_sectors, end - 1,
              2, nr_entries, array_crc);
  gpt_header (pt->secondary + array_sectors * SS, last, 1,
              2 + array_sectors, end - 1, end, nr_entries, array_crc);

  if (add_region (pt, cap, 0, pt->primary_len, PTABLE_TABLE, 0,
                  pt->primary) == -1)
    return -1;
  pos = pt->primary_len;
  if (add_partition_regions (pt, cap, parts, n, pl, n, &pos) == -1)
    return -1;
  return add_region (pt, cap, end * SS, pt->secondary_len, PTABLE_TABLE, 0,
                     pt->secondary);
}

static const char *
ptable_check (enum ptable_type type, const struct ptable_part *parts,
              size_t n)
{
  size_t i;

  if (n == 0)
    return "no partitions";
  for (i = 0; i < n; ++i) {
    if (parts[i].size == 0)
      return "a partition is empty";
    if (parts[i].alignment < SS ||
        parts[i].alignment > PTABLE_MAX_ALIGNMENT ||
        (parts[i].alignment & (parts[i].alignment - 1)) != 0)
      return "an alignment is not a power of 2 between 512 and 1M";
  }
  return NULL;
}

int
ptable_build (enum ptable_type type, const struct ptable_part *parts,
              size_t n, struct ptable *pt, const char **err)
{
  struct placement *pl;
  size_t cap = 0;
  int r;

  memset (pt, 0, sizeof *pt);
  *err = ptable_check (type, parts, n);
  if (*err)
    return -1;

  pl = calloc (n, sizeof *pl);
  if (pl == NULL) {
    *err = "out of memory";
    return -1;
  }
  errno = 0;
  if (type == PTABLE_MBR)
    r = build_mbr (parts, n, pt, pl, &cap);
  else
    r = build_gpt (parts, n, pt, pl, &cap);
  free (pl);
  if (r == -1) {
    *err = errno == ENOMEM ? "out of memory"
      : type == PTABLE_MBR ? "the disk is too large for an MBR"
      : "the disk is too large";
    ptable_free (pt);
    return -1;
  }
  return 0;
}

void
ptable_free (struct ptable *pt)
{
  free (pt->regions);
  free (pt->primary);
  free (pt->secondary);
  free (pt->ebrs);
  memset (pt, 0, sizeof *pt);
}

size_t
ptable_find (const struct ptable *pt, uint64_t offset)
{
  size_t lo = 0, hi = pt->nr_regions;

  /* Last region starting at or before OFFSET. */
  while (hi - lo > 1) {
    size_t mid = lo + (hi - lo) / 2;

    if (pt->regions[mid].start <= offset)
      lo = mid;
    else
      hi = mid;
  }
  return lo;
}
