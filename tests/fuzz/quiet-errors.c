/* nbdsrv fuzz support: nbdkit_error and nbdkit_verror for the targets
 * that link only the pure request code (extents.c reports through
 * them), formatting and dropping the message so that the format is
 * still exercised.
 */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>

#include "internal.h"

void
nbdkit_verror (const char *fmt, va_list args)
{
  char buf[256];

  vsnprintf (buf, sizeof buf, fmt, args);
}

void
nbdkit_error (const char *fmt, ...)
{
  va_list args;

  va_start (args, fmt);
  nbdkit_verror (fmt, args);
  va_end (args);
}
