/* nbdsrv partitioning plugin: building the virtual disk's layout.
 *
 * ptable_build is a pure function: from the list of partitions (sizes,
 * alignments, types, names and GUIDs, all supplied by the caller) it
 * computes where everything goes and the bytes of every partition
 * table sector.  It does no I/O and draws no random numbers, so it can
 * be unit-tested and fuzzed on its own.
 */
#ifndef NBDSRV_PTABLE_H
#define NBDSRV_PTABLE_H

#include <stddef.h>
#include <stdint.h>

#define PTABLE_SECTOR           512
#define PTABLE_MAX_ALIGNMENT    (UINT64_C (1) << 20)
#define PTABLE_GPT_ENTRY_SIZE   128
#define PTABLE_GPT_NAME_CHARS   36      /* UTF-16 units, with the NUL */

/* The largest total of partition sizes put in an MBR: 32-bit sector
 * numbers, less some room for alignment, as nbdkit uses.
 */
#define PTABLE_MBR_MAX_TOTAL \
  (UINT64_C (0xffffffff) * PTABLE_SECTOR - (UINT64_C (5) << 20))

enum ptable_type { PTABLE_MBR, PTABLE_GPT };

/* One partition as the caller describes it. */
struct ptable_part {
  uint64_t size;                /* bytes, > 0 */
  uint64_t alignment;           /* bytes: power of 2, 512 .. 1 MiB */
  uint8_t mbr_id;               /* MBR partition type byte */
  uint8_t type_guid[16];        /* GPT type, in on-disk byte order */
  uint8_t guid[16];             /* GPT unique GUID, on-disk order */
  const char *name;             /* borrowed: GPT name, may be NULL */
};

enum ptable_kind {
  PTABLE_DATA,                  /* bytes of partition PART's file */
  PTABLE_ZERO,                  /* padding, reads as zero */
  PTABLE_TABLE,                 /* partition table bytes, in BYTES */
};

/* A run of the virtual disk.  Regions are sorted, do not overlap and
 * cover the whole disk.
 */
struct ptable_region {
  uint64_t start;               /* bytes */
  uint64_t len;                 /* bytes, > 0 */
  enum ptable_kind kind;
  size_t part;                  /* PTABLE_DATA: index of the partition */
  const uint8_t *bytes;         /* PTABLE_TABLE: borrowed from the table */
};

struct ptable {
  uint64_t disk_size;           /* bytes, a multiple of the sector */
  struct ptable_region *regions;        /* owned */
  size_t nr_regions;
  uint8_t *primary;             /* owned: MBR sector, + GPT header and
                                 * entries when GPT */
  size_t primary_len;
  uint8_t *secondary;           /* owned, GPT only: entries + header */
  size_t secondary_len;
  uint8_t *ebrs;                /* owned, MBR with > 4 partitions */
  size_t nr_ebrs;
};

/* Lay out N partitions (N >= 1) as TYPE into *PT.  Returns 0, or -1
 * with *ERR set to a message (static string) saying what is wrong.
 * On success free *PT with ptable_free.
 */
extern int ptable_build (enum ptable_type type, const struct ptable_part *parts,
                         size_t n, struct ptable *pt, const char **err);
extern void ptable_free (struct ptable *pt);

/* Index of the region holding byte OFFSET (< disk_size). */
extern size_t ptable_find (const struct ptable *pt, uint64_t offset);

/* Parse "0FC63DAF-8483-4772-8E79-3D69D8477DE4" into on-disk order.
 * Returns 0 or -1 if STR is not a GUID.
 */
extern int ptable_parse_guid (const char *str, uint8_t out[16]);

extern uint32_t ptable_crc32 (const uint8_t *buf, size_t len);

#endif /* NBDSRV_PTABLE_H */
