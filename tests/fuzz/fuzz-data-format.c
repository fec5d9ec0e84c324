/* nbdsrv fuzz target: the data plugin's data= language
 * (plugins/data/format.c: data_format_parse, data_base64_decode).
 *
 * Byte 0 bit 0 picks base64 decoding, else the parser; the rest is the
 * string.  Inputs with '<' are skipped: <FILE reads files and
 * <(SCRIPT) runs a shell command, which a fuzzer must never do.  $A,
 * $B and $LOOP are defined (the last refers to itself).  So are
 * inputs whose repeat counts multiply to more than 2^24: nested repeats
 * of non-zero bytes expand to that many bytes in memory, by design (a
 * 25-character data= can ask for gigabytes), which libFuzzer would
 * report as out-of-memory rather than find anything.  Beyond not
 * crashing, a result must be consistent: every write inside the disk
 * size, and an error leaves no writes and a message.
 */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdbool.h>
#include <string.h>

#include "format.h"

#define REQUIRE(cond) do { if (!(cond)) {                               \
      fprintf (stderr, "fuzz-data-format: broken promise: %s (line %d)\n", \
               #cond, __LINE__);                                         \
      abort ();                                                          \
    } } while (0)

static const char *
lookup (const char *name, void *opaque)
{
  if (strcmp (name, "A") == 0)
    return "1 2 3 @8 \"abc\"";
  if (strcmp (name, "B") == 0)
    return "( $A )*3 @^16";
  if (strcmp (name, "LOOP") == 0)
    return "1 $LOOP";
  return NULL;
}

/* The product of every number after a '*', saturated. */
static bool
repeats_too_large (const char *str)
{
  const uint64_t limit = UINT64_C (1) << 24;
  uint64_t product = 1;

  for (const char *p = strchr (str, '*'); p; p = strchr (p + 1, '*')) {
    char *end;
    unsigned long long n;
    const char *q = p + 1;

    while (isspace ((unsigned char) *q) || *q == '+' || *q == '-')
      q++;
    n = strtoull (q, &end, 0);
    if (end == q)
      continue;
    if (n > limit)
      return true;
    product *= n ? n : 1;
    if (product > limit)
      return true;
  }
  return false;
}

static void
fuzz_parse (const char *str)
{
  struct data_format f;
  int r;

  memset (&f, 0, sizeof f);
  r = data_format_parse (str, lookup, NULL, &f);
  if (r == 0) {
    for (size_t i = 0; i < f.nr_writes; i++) {
      const struct data_write *w = &f.writes[i];

      REQUIRE (w->offset <= f.size && w->len <= f.size - w->offset);
      REQUIRE (w->kind == DATA_WRITE_ZERO || w->bytes != NULL ||
               w->len == 0);
    }
  }
  else {
    REQUIRE (r == -1);
    REQUIRE (f.nr_writes == 0);
    REQUIRE (f.error[0] != '\0');
    if (strcmp (f.error_source, "data") == 0)
      REQUIRE (f.error_pos <= strlen (str));
  }
  data_format_free (&f);
}

static void
fuzz_base64 (const char *str)
{
  unsigned char *out = NULL;
  size_t len = 0;

  if (data_base64_decode (str, &out, &len) == 0)
    REQUIRE (len <= strlen (str) / 4 * 3);
  free (out);
}

int
LLVMFuzzerTestOneInput (const unsigned char *data, size_t size)
{
  char *str;

  if (size < 1 || memchr (data, '<', size) != NULL)
    return -1;
  str = malloc (size);
  if (str == NULL)
    return -1;
  memcpy (str, data + 1, size - 1);
  str[size - 1] = '\0';
  if (data[0] & 1)
    fuzz_base64 (str);
  else if (!repeats_too_large (str))
    fuzz_parse (str);
  free (str);
  return 0;
}
