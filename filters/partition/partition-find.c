/* nbdsrv partition filter: finding one partition in an MBR (primary
 * and logical partitions) or GPT partition table.  See
 * partition-find.h.
 */
#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#include "partition-find.h"

#define MBR_TABLE       446     /* the four primary entries */
#define MBR_ENTRY       16
#define MBR_TYPE_GPT    0xee    /* protective MBR */

/* A logical partition chain longer than this is a loop. */
#define MAX_LOGICAL     1024

/* GPT header fields (UEFI spec, 5.3.2), offsets in the header. */
#define GPT_ENTRIES_LBA 72
#define GPT_NR_ENTRIES  80
#define GPT_ENTRY_SIZE  84
#define GPT_MIN_ENTRY   128

static uint32_t
le32 (const uint8_t *p)
{
  return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t) p[3] << 24;
}

static uint64_t
le64 (const uint8_t *p)
{
  return le32 (p) | (uint64_t) le32 (p + 4) << 32;
}

struct mbr_entry {
  uint8_t type;
  uint64_t start;               /* sectors, from the table's base */
  uint64_t count;               /* sectors */
};

static struct mbr_entry
mbr_entry (const uint8_t *sector, int i)
{
  const uint8_t *e = sector + MBR_TABLE + i * MBR_ENTRY;

  return (struct mbr_entry) { e[4], le32 (e + 8), le32 (e + 12) };
}

static bool
mbr_is_extended (uint8_t type)
{
  return type == 0x05 || type == 0x0f || type == 0x85;
}

static bool
has_signature (const uint8_t *sector)
{
  return sector[510] == 0x55 && sector[511] == 0xaa;
}

/* Logical partition NUMBER (5, 6, ...) in the chain of extended boot
 * records that starts at sector EXT_START.
 */
static int
mbr_find_logical (partition_read_fn *read, void *opaque,
                  uint64_t ext_start, unsigned number, uint64_t *start,
                  uint64_t *count, const char **err)
{
  uint8_t ebr[PARTITION_SECTOR];
  uint64_t here = ext_start;
  struct mbr_entry part, link;
  unsigned n;

  for (n = 5; n < 5 + MAX_LOGICAL; n++) {
    if (read (opaque, ebr, sizeof ebr, here * PARTITION_SECTOR) == -1)
      return -1;
    if (!has_signature (ebr)) {
      *err = "an extended boot record has no signature";
      return -1;
    }
    part = mbr_entry (ebr, 0);
    link = mbr_entry (ebr, 1);
    if (n == number) {
      if (part.type == 0 || part.count == 0)
        break;
      *start = here + part.start;
      *count = part.count;
      return 0;
    }
    if (link.type == 0 || link.start == 0)
      break;
    here = ext_start + link.start;
  }
  *err = "the MBR has no such logical partition";
  return -1;
}

static int
mbr_find (partition_read_fn *read, void *opaque, const uint8_t *mbr,
          unsigned number, uint64_t *offset, uint64_t *length,
          const char **err)
{
  struct mbr_entry e;
  uint64_t start, count;
  int i;

  if (number <= 4) {
    e = mbr_entry (mbr, number - 1);
    if (e.type == 0 || e.count == 0) {
      *err = "the MBR has no such primary partition";
      return -1;
    }
    if (mbr_is_extended (e.type)) {
      *err = "it is the extended partition, which holds the logical "
        "partitions 5 and up";
      return -1;
    }
    start = e.start;
    count = e.count;
  }
  else {
    for (i = 0; i < 4; i++) {
      e = mbr_entry (mbr, i);
      if (mbr_is_extended (e.type) && e.count > 0)
        break;
    }
    if (i == 4) {
      *err = "the MBR has no extended partition, so no logical ones";
      return -1;
    }
    if (mbr_find_logical (read, opaque, e.start, number, &start, &count,
                          err) == -1)
      return -1;
  }
  *offset = start * PARTITION_SECTOR;
  *length = count * PARTITION_SECTOR;
  return 0;
}

static int
gpt_find (partition_read_fn *read, void *opaque, unsigned number,
          uint64_t *offset, uint64_t *length, const char **err)
{
  static const uint8_t zero_guid[16];
  uint8_t header[PARTITION_SECTOR], entry[GPT_MIN_ENTRY];
  uint64_t entries_lba, first, last;
  uint32_t nr_entries, entry_size;

  if (read (opaque, header, sizeof header, PARTITION_SECTOR) == -1)
    return -1;
  if (memcmp (header, "EFI PART", 8) != 0) {
    *err = "the protective MBR announces a GPT, but there is no GPT "
      "header";
    return -1;
  }
  entries_lba = le64 (header + GPT_ENTRIES_LBA);
  nr_entries = le32 (header + GPT_NR_ENTRIES);
  entry_size = le32 (header + GPT_ENTRY_SIZE);
  if (entry_size < GPT_MIN_ENTRY || entry_size % 8 != 0) {
    *err = "the GPT header gives a bad partition entry size";
    return -1;
  }
  if (number > nr_entries) {
    *err = "the GPT has no such partition";
    return -1;
  }
  if (entries_lba > UINT64_MAX / PARTITION_SECTOR / 2) {
    *err = "the GPT header gives a bad partition entry start";
    return -1;
  }
  if (read (opaque, entry, sizeof entry,
            entries_lba * PARTITION_SECTOR
            + (uint64_t) (number - 1) * entry_size) == -1)
    return -1;
  first = le64 (entry + 32);
  last = le64 (entry + 40);
  if (memcmp (entry, zero_guid, 16) == 0) {
    *err = "the GPT has no such partition";
    return -1;
  }
  if (last < first || last >= UINT64_MAX / PARTITION_SECTOR) {
    *err = "the GPT partition ends before it starts";
    return -1;
  }
  *offset = first * PARTITION_SECTOR;
  *length = (last - first + 1) * PARTITION_SECTOR;
  return 0;
}

int
partition_find (partition_read_fn *read, void *opaque, uint64_t size,
                unsigned number, uint64_t *offset, uint64_t *length,
                const char **err)
{
  uint8_t mbr[PARTITION_SECTOR];
  int r;

  *err = NULL;
  if (size < 2 * PARTITION_SECTOR) {
    *err = "the disk is too small to hold a partition table";
    return -1;
  }
  if (read (opaque, mbr, sizeof mbr, 0) == -1)
    return -1;
  if (!has_signature (mbr)) {
    *err = "the disk has no MBR or GPT partition table";
    return -1;
  }
  if (mbr_entry (mbr, 0).type == MBR_TYPE_GPT)
    r = gpt_find (read, opaque, number, offset, length, err);
  else
    r = mbr_find (read, opaque, mbr, number, offset, length, err);
  if (r == -1)
    return -1;
  if (*offset > size || *length > size - *offset) {
    *err = "the partition lies beyond the end of the disk";
    return -1;
  }
  return 0;
}
