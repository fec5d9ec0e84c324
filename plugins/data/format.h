/* nbdsrv data plugin: the data= mini-language.
 *
 * data_format_parse turns a data= string into the list of writes that
 * build the disk, or an error with the offset in the string where it
 * was found.  It has no global state and reports nothing itself, so
 * unit tests and fuzzers can call it directly; the only side effects
 * are reading <FILE and running <(SCRIPT), which the language asks for.
 */
#ifndef NBDSRV_DATA_FORMAT_H
#define NBDSRV_DATA_FORMAT_H

#include <stddef.h>
#include <stdint.h>

/* What one write does to the disk.  DATA_ZERO is kept apart from
 * writing zero bytes because nbdkit leaves the range unallocated
 * (a hole in block status) when it comes from a run of zero bytes
 * such as 0*4096, while a string, file or single 0 allocates it.
 */
enum data_write_kind {
  DATA_WRITE_BYTES,             /* copy bytes[0..len) */
  DATA_WRITE_ZERO,              /* make the range read as zero */
};

struct data_write {
  enum data_write_kind kind;
  uint64_t offset;
  uint64_t len;
  unsigned char *bytes;         /* owned, DATA_WRITE_BYTES only */
  size_t cap;                   /* allocated size of bytes */
};

/* Later writes win where writes overlap, so they must be applied in
 * order.  SIZE is the highest offset reached, which is the disk size
 * when no size= is given.
 */
struct data_format {
  struct data_write *writes;    /* owned array of nr_writes */
  size_t nr_writes;
  size_t cap_writes;
  uint64_t size;

  /* Set when data_format_parse fails. */
  char error[256];
  size_t error_pos;             /* offset in the string named below */
  char error_source[64];        /* "data" or "$NAME" */
};

/* Look up $NAME: return the borrowed value or NULL if it is not set. */
typedef const char *(*data_format_lookup_fn) (const char *name,
                                              void *opaque);

/* Parse and evaluate STR.  On success return 0 with OUT filled in; on
 * failure return -1 with OUT->error, OUT->error_pos and
 * OUT->error_source set and no writes.  Either way the caller must
 * call data_format_free (OUT) afterwards.  LOOKUP may be NULL.
 */
extern int data_format_parse (const char *str,
                              data_format_lookup_fn lookup, void *opaque,
                              struct data_format *out);

extern void data_format_free (struct data_format *f);

/* Decode base64 (RFC 4648, padding required, white space ignored) into
 * a new buffer.  Returns 0 or -1 on malformed input.
 */
extern int data_base64_decode (const char *in, unsigned char **out,
                               size_t *out_len);

#endif /* NBDSRV_DATA_FORMAT_H */
