/* nbdsrv: live metrics (--metrics), served in the Prometheus text
 * format by metrics.c.
 *
 * The request path only adds to counters of its own thread: no lock
 * and no cache line shared with another thread.  A scrape sums every
 * thread's counters; a thread that exits first folds its counts into
 * a retired total.  Connection-level counts change once per connection
 * and are plain atomics.
 */
#ifndef NBDSRV_METRICS_H
#define NBDSRV_METRICS_H

#include <stdbool.h>
#include <stdint.h>

extern bool metrics_on;                 /* --metrics was given */

/* The commands counted apart; anything else is "other". */
enum metrics_cmd {
  MC_READ, MC_WRITE, MC_FLUSH, MC_TRIM, MC_CACHE, MC_ZERO,
  MC_BLOCK_STATUS, MC_OTHER, MC_COUNT
};

/* Exports counted apart; the rest share the last slot ("other"). */
#define METRICS_EXPORTS 16

/* Why a connection ended before transmission (handshake failures). */
enum metrics_hs {
  MH_EOF, MH_TIMEOUT, MH_BAD_FLAGS, MH_BAD_OPTION, MH_TOO_MANY_OPTIONS,
  MH_TLS, MH_EXPORT, MH_ABORT, MH_PRECONNECT, MH_OTHER, MH_COUNT
};

int metrics_open (const char *where);  /* ADDR:PORT or unix:PATH */
int metrics_start (void);
void metrics_stop (void);

/* One request answered: its command (NBD_CMD_*), the bytes it covered,
 * the NBD error the client got (0 for success), its time from being
 * read to being answered, and the time spent in the stack.
 */
void metrics_request_start (void);
void metrics_request (unsigned export_slot, uint16_t type, uint64_t bytes,
                      uint32_t nbd_error, uint64_t total_ns,
                      uint64_t call_ns);

unsigned metrics_export_slot (const char *name);
void metrics_connection_open (void);
void metrics_connection_close (void);
void metrics_connection_refused (void);
void metrics_handshake_failed (enum metrics_hs why);

#endif /* NBDSRV_METRICS_H */
