/* nbdsrv partition filter: finding one partition in an MBR or GPT
 * partition table.
 *
 * partition_find reads the table through a callback and does no other
 * I/O, so it can be tested and fuzzed on its own.
 */
#ifndef NBDSRV_PARTITION_FIND_H
#define NBDSRV_PARTITION_FIND_H

#include <stdint.h>

#define PARTITION_SECTOR 512

/* Read COUNT bytes at OFFSET into BUF; 0 or -1. */
typedef int partition_read_fn (void *opaque, void *buf, uint32_t count,
                               uint64_t offset);

/* Find partition NUMBER (from 1) of the disk of SIZE bytes.  Returns 0
 * with its byte range in *OFFSET and *LENGTH, or -1 with *ERR set to a
 * message (a static string) saying what is wrong; a failed read gives
 * -1 with *ERR NULL (the callback reported it).
 */
extern int partition_find (partition_read_fn *read, void *opaque,
                           uint64_t size, unsigned number,
                           uint64_t *offset, uint64_t *length,
                           const char **err);

#endif /* NBDSRV_PARTITION_FIND_H */
