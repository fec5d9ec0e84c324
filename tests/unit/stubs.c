/* nbdsrv unit tests: see stubs.h. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NBDKIT_API_VERSION 2
#include "nbdkit-plugin.h"

#include "stubs.h"

char stub_last_error[4096];
unsigned stub_error_count;

static unsigned passed, failed;

void
stub_reset (void)
{
  stub_last_error[0] = '\0';
  stub_error_count = 0;
}

void
nbdkit_verror (const char *fmt, va_list args)
{
  vsnprintf (stub_last_error, sizeof stub_last_error, fmt, args);
  stub_error_count++;
  /* Shown with -v style output only when a test fails to read it. */
  if (getenv ("TEST_VERBOSE"))
    fprintf (stderr, "error: %s\n", stub_last_error);
}

void
nbdkit_error (const char *fmt, ...)
{
  va_list args;

  va_start (args, fmt);
  nbdkit_verror (fmt, args);
  va_end (args);
}

void
nbdkit_vdebug (const char *fmt, va_list args)
{
  if (getenv ("TEST_VERBOSE")) {
    fprintf (stderr, "debug: ");
    vfprintf (stderr, fmt, args);
    fprintf (stderr, "\n");
  }
}

void
nbdkit_debug (const char *fmt, ...)
{
  va_list args;

  va_start (args, fmt);
  nbdkit_vdebug (fmt, args);
  va_end (args);
}

void
check (bool ok, const char *fmt, ...)
{
  va_list args;

  if (ok) {
    passed++;
    return;
  }
  failed++;
  fprintf (stderr, "FAIL: ");
  va_start (args, fmt);
  vfprintf (stderr, fmt, args);
  va_end (args);
  fprintf (stderr, " (last error: \"%s\")\n", stub_last_error);
}

bool
error_contains (const char *needle)
{
  return strstr (stub_last_error, needle) != NULL;
}

int
test_summary (void)
{
  printf ("%u passed, %u failed\n", passed, failed);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
