/* nbdsrv log filter: building one log entry and writing it out. */
#ifndef NBDSRV_LOG_H
#define NBDSRV_LOG_H

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>

#include <nbdkit-filter.h>

enum log_type { LOG_ENTER, LOG_LEAVE, LOG_PRINT };

/* One line.  The body is "key=value ..." in shell syntax, so that the
 * log script can take it as variable assignments.  Short bodies stay
 * in the inline buffer; long ones (extent and export lists) move to
 * the heap and are freed when the entry is emitted.
 */
struct log_entry {
  enum log_type type;
  const char *act;              /* static string */
  uint64_t connection;          /* 0: not in a connection */
  uint64_t id;                  /* 0: no id */
  int has_result, r, err;
  char *body;                   /* inline or owned heap buffer */
  size_t len, cap;
  char inline_body[256];
};

extern void log_entry_init (struct log_entry *e, enum log_type type,
                            const char *act, uint64_t connection,
                            uint64_t id);
extern void log_entry_add (struct log_entry *e, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));
extern void log_entry_vadd (struct log_entry *e, const char *fmt,
                            va_list args)
  __attribute__ ((format (printf, 2, 0)));
extern void log_entry_add_quoted (struct log_entry *e, const char *s);
extern void log_entry_add_exports (struct log_entry *e,
                                   const struct nbdkit_exports *exports);
extern void log_entry_add_extents (struct log_entry *e,
                                   const struct nbdkit_extents *extents);
extern void log_entry_result (struct log_entry *e, int r, int err);

/* Output; neither frees the entry: log_entry_free does. */
extern void log_entry_write_line (struct log_entry *e, FILE *fp);
extern void log_entry_run_script (struct log_entry *e, const char *script);
extern void log_entry_free (struct log_entry *e);

#endif /* NBDSRV_LOG_H */
