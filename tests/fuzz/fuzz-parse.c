/* nbdsrv fuzz target: the nbdkit_parse_* helpers (server/parse.c).
 *
 * Byte 0 picks the helper, the rest is the string (copied into a
 * buffer of exactly its length plus the NUL, so ASan sees any read past
 * the end).  Beyond not crashing, each helper must leave its output
 * untouched on failure, stay within its type, and agree with the C
 * library where the C library defines the answer.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static unsigned errors;

/* Format every message for real, so a bad format argument shows. */
void
nbdkit_verror (const char *fmt, va_list args)
{
  char buf[512];

  vsnprintf (buf, sizeof buf, fmt, args);
  errors++;
}

void
nbdkit_error (const char *fmt, ...)
{
  va_list args;

  va_start (args, fmt);
  nbdkit_verror (fmt, args);
  va_end (args);
}

#define REQUIRE(cond) do { if (!(cond)) {                               \
      fprintf (stderr, "fuzz-parse: broken promise: %s (line %d) "       \
               "on \"%s\"\n", #cond, __LINE__, str);                     \
      abort ();                                                          \
    } } while (0)

/* A failure is reported exactly once, a success not at all. */
#define CHECK_REPORTED(r) \
  REQUIRE ((r) == -1 ? errors == 1 : errors == 0)

#define SENTINEL 0x5a

static void
fuzz_size (const char *str)
{
  int64_t r = nbdkit_parse_size (str);

  CHECK_REPORTED (r < 0 ? -1 : 0);
  REQUIRE (r >= -1);
  /* Plain decimal digits mean bytes. */
  if (r >= 0 && *str && strspn (str, "0123456789") == strlen (str))
    REQUIRE ((uint64_t) r == strtoull (str, NULL, 10));
}

static void
fuzz_bool (const char *str)
{
  int r = nbdkit_parse_bool (str);

  CHECK_REPORTED (r);
  REQUIRE (r == -1 || r == 0 || r == 1);
}

/* int64_t: compare with strtoimax over the whole string. */
static void
fuzz_int64 (const char *str)
{
  int64_t v = SENTINEL;
  int r = nbdkit_parse_int64_t ("x", str, &v);
  char *end;
  intmax_t ref;
  bool ok;

  CHECK_REPORTED (r);
  errno = 0;
  ref = strtoimax (str, &end, 0);
  ok = end != str && *end == '\0' && errno == 0;
  REQUIRE ((r == 0) == ok);
  REQUIRE (r == 0 ? v == ref : v == SENTINEL);
}

/* uint64_t: as strtoumax, except that negative numbers are refused. */
static void
fuzz_uint64 (const char *str)
{
  uint64_t v = SENTINEL;
  int r = nbdkit_parse_uint64_t ("x", str, &v);
  const char *p = str;
  char *end;
  uintmax_t ref;
  bool ok;

  CHECK_REPORTED (r);
  while (isspace ((unsigned char) *p))
    p++;
  errno = 0;
  ref = strtoumax (str, &end, 0);
  ok = end != str && *end == '\0' && errno == 0 && *p != '-';
  REQUIRE ((r == 0) == ok);
  REQUIRE (r == 0 ? v == ref : v == SENTINEL);
}

/* The narrow types: the same answer as int64_t, clipped to range.  A
 * value is out of range when it does not survive the round trip
 * through TYPE (gcc converts modulo 2^N), which needs no comparison
 * with a zero minimum that -Wtype-limits would flag. */
#define FUZZ_NARROW(fn, type, parse_wide, wide)                 \
  static void                                                   \
  fuzz_##fn (const char *str)                                   \
  {                                                             \
    type v = SENTINEL;                                          \
    wide w;                                                     \
    int r = nbdkit_parse_##fn ("x", str, &v);                   \
    int rw;                                                     \
                                                                \
    CHECK_REPORTED (r);                                         \
    errors = 0;                                                 \
    rw = parse_wide ("x", str, &w);                             \
    if (r == 0)                                                 \
      REQUIRE (rw == 0 && w == (wide) v);                       \
    else                                                        \
      REQUIRE (v == SENTINEL &&                                 \
               (rw == -1 || (wide) (type) w != w));     \
  }

FUZZ_NARROW (int, int, nbdkit_parse_int64_t, int64_t)
FUZZ_NARROW (int8_t, int8_t, nbdkit_parse_int64_t, int64_t)
FUZZ_NARROW (int16_t, int16_t, nbdkit_parse_int64_t, int64_t)
FUZZ_NARROW (int32_t, int32_t, nbdkit_parse_int64_t, int64_t)
FUZZ_NARROW (unsigned, unsigned, nbdkit_parse_uint64_t, uint64_t)
FUZZ_NARROW (uint8_t, uint8_t, nbdkit_parse_uint64_t, uint64_t)
FUZZ_NARROW (uint16_t, uint16_t, nbdkit_parse_uint64_t, uint64_t)
FUZZ_NARROW (uint32_t, uint32_t, nbdkit_parse_uint64_t, uint64_t)

static void
fuzz_probability (const char *str)
{
  double d = -2;
  int r = nbdkit_parse_probability ("x", str, &d);

  CHECK_REPORTED (r);
  if (r == 0)
    REQUIRE (isfinite (d) && d >= 0);
  else
    REQUIRE (d == -2);
}

static void
fuzz_delay (const char *str)
{
  unsigned sec = SENTINEL, nsec = SENTINEL;
  int r = nbdkit_parse_delay ("x", str, &sec, &nsec);

  CHECK_REPORTED (r);
  if (r == -1) {
    REQUIRE (sec == SENTINEL && nsec == SENTINEL);
    return;
  }
  REQUIRE (nsec < 1000000000);
  /* Whole seconds without a unit or fraction are exact. */
  if (*str && strlen (str) < 10 &&
      strspn (str, "0123456789") == strlen (str))
    REQUIRE (sec == strtoul (str, NULL, 10) && nsec == 0);
}

typedef void (*fuzz_fn) (const char *);

static const fuzz_fn fns[] = {
  fuzz_size, fuzz_bool, fuzz_int64, fuzz_uint64, fuzz_int, fuzz_int8_t,
  fuzz_int16_t, fuzz_int32_t, fuzz_unsigned, fuzz_uint8_t, fuzz_uint16_t,
  fuzz_uint32_t, fuzz_probability, fuzz_delay,
};

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  char *str;

  if (size < 1)
    return -1;
  str = malloc (size);
  if (str == NULL)
    return -1;
  memcpy (str, data + 1, size - 1);
  str[size - 1] = '\0';
  errors = 0;
  fns[data[0] % (sizeof fns / sizeof fns[0])] (str);
  free (str);
  return 0;
}
