/* nbdsrv unit tests: stand-ins for the server's logging, and a tiny
 * check/summary harness shared by every test-*.c.
 *
 * The stubs keep the text of the last nbdkit_error so a test can
 * assert on what the user would see, not only on the return value.
 */
#ifndef NBDSRV_TEST_STUBS_H
#define NBDSRV_TEST_STUBS_H

#include <stdbool.h>

/* Text of the most recent nbdkit_error/nbdkit_verror, "" if none
 * since stub_reset.
 */
extern char stub_last_error[4096];
extern unsigned stub_error_count;
void stub_reset (void);

/* Records one result; prints the message only on failure. */
void check (bool ok, const char *fmt, ...)
  __attribute__ ((__format__ (__printf__, 2, 3)));

/* True if the last error contains NEEDLE. */
bool error_contains (const char *needle);

/* Prints "N passed, N failed" and returns the exit status. */
int test_summary (void);

#endif /* NBDSRV_TEST_STUBS_H */
