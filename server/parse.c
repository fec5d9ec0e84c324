/* nbdsrv: the nbdkit_parse_* helpers plugins use on their parameters.
 *
 * Plugins call these from .config, so the messages are what a user sees
 * after a typo on the command line.  Where nbdkit's messages are
 * observable we keep their shape (scripts grep for them) and only add
 * the value or the accepted forms at the end.
 *
 * Every function leaves its output untouched on failure, because
 * plugins commonly pass the address of a variable holding the default.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "internal.h"

/* Sizes.  The number is decimal only ("010" is ten, "0x10" is a bad
 * suffix), as in nbdkit, so that sizes copied from other tools are not
 * silently read as octal.
 */
int64_t
nbdkit_parse_size (const char *str)
{
  intmax_t n;
  char *end;
  int shift;

  if (str == NULL)
    str = "";
  errno = 0;
  n = strtoimax (str, &end, 10);
  if (end == str) {
    nbdkit_error ("could not parse size string (%s): "
                  "expected a number with an optional suffix "
                  "b, s, k, M, G, T, P or E", str);
    return -1;
  }
  if (n < 0) {
    nbdkit_error ("size cannot be negative (%s)", str);
    return -1;
  }
  /* intmax_t is int64_t on every target we build for. */
  if (errno == ERANGE) {
    nbdkit_error ("size (%s) exceeds maximum value %" PRIi64,
                  str, INT64_MAX);
    return -1;
  }

  /* Suffixes are powers of 1024, or s for 512-byte sectors, either
   * case, one letter only.
   */
  switch (*end) {
  case '\0': case 'b': case 'B': shift = 0; break;
  case 's': case 'S': shift = 9; break;
  case 'k': case 'K': shift = 10; break;
  case 'm': case 'M': shift = 20; break;
  case 'g': case 'G': shift = 30; break;
  case 't': case 'T': shift = 40; break;
  case 'p': case 'P': shift = 50; break;
  case 'e': case 'E': shift = 60; break;
  default: shift = -1;
  }
  if (shift == -1 || (*end != '\0' && end[1] != '\0')) {
    nbdkit_error ("could not parse size: unknown suffix '%s': "
                  "use b, s (512-byte sectors), k, M, G, T, P or E", end);
    return -1;
  }
  if (n > (INT64_MAX >> shift)) {
    nbdkit_error ("overflow computing size (%s): "
                  "the largest size is %" PRIi64 " bytes", str, INT64_MAX);
    return -1;
  }
  return (int64_t) n << shift;
}

/* Booleans.  The single letters are accepted because nbdkit accepts
 * them, and scripts written for it use them.
 */
int
nbdkit_parse_bool (const char *str)
{
  static const char *const yes[] = { "1", "true", "t", "yes", "y", "on" };
  static const char *const no[] = { "0", "false", "f", "no", "n", "off" };
  size_t i;

  if (str == NULL)
    str = "";
  for (i = 0; i < sizeof yes / sizeof yes[0]; ++i) {
    if (strcasecmp (str, yes[i]) == 0)
      return 1;
    if (strcasecmp (str, no[i]) == 0)
      return 0;
  }
  nbdkit_error ("could not decipher boolean (%s): "
                "use true/false, yes/no, on/off or 1/0", str);
  return -1;
}

/* Integers.  Both helpers accept what strtol base 0 accepts: leading
 * white space, an optional sign, and decimal, 0x hex or 0 octal.
 * Trailing characters of any kind, including white space, are an
 * error, so "1 " is rejected while " 1" is not, as in nbdkit.
 */
static const char *
skip_space (const char *str)
{
  while (isspace ((unsigned char) *str))
    str++;
  return str;
}

/* Reports a failed strto*max: nothing parsed, or junk after the number. */
static int
report_not_number (const char *what, const char *str, const char *end)
{
  if (*skip_space (str) == '\0')
    nbdkit_error ("%s: empty string where we expected a number", what);
  else if (end == str)
    /* nbdkit 1.32 says "empty string" here too; the text it documents,
     * which also names the value, is the one used.
     */
    nbdkit_error ("%s: could not parse number: \"%s\"", what, str);
  else
    nbdkit_error ("%s: could not parse number: \"%s\": trailing garbage",
                  what, str);
  return -1;
}

static int
parse_signed (const char *what, const char *str,
              intmax_t min, intmax_t max, intmax_t *r)
{
  intmax_t n;
  char *end;

  if (str == NULL)
    str = "";
  errno = 0;
  n = strtoimax (str, &end, 0);
  if (errno != ERANGE && (end == str || *end != '\0'))
    return report_not_number (what, str, end);
  if (errno == ERANGE || n < min || n > max) {
    nbdkit_error ("%s: could not parse number: \"%s\": %s: "
                  "the range is %" PRIdMAX " to %" PRIdMAX,
                  what, str, strerror (ERANGE), min, max);
    return -1;
  }
  *r = n;
  return 0;
}

static int
parse_unsigned (const char *what, const char *str, uintmax_t max,
                uintmax_t *r)
{
  uintmax_t n;
  char *end;

  if (str == NULL)
    str = "";
  /* strtoumax would turn "-1" into the maximum value. */
  if (*skip_space (str) == '-') {
    nbdkit_error ("%s: negative numbers are not allowed: \"%s\"",
                  what, str);
    return -1;
  }
  errno = 0;
  n = strtoumax (str, &end, 0);
  if (errno != ERANGE && (end == str || *end != '\0'))
    return report_not_number (what, str, end);
  if (errno == ERANGE || n > max) {
    nbdkit_error ("%s: could not parse number: \"%s\": %s: "
                  "the range is 0 to %" PRIuMAX,
                  what, str, strerror (ERANGE), max);
    return -1;
  }
  *r = n;
  return 0;
}

/* One public function per type; the result pointer may be NULL to
 * only validate.
 */
#define DEFINE_PARSE_SIGNED(fn, type, min, max)                 \
  int                                                           \
  fn (const char *what, const char *str, type *rp)              \
  {                                                             \
    intmax_t n;                                                 \
                                                                \
    if (parse_signed (what, str, (min), (max), &n) == -1)       \
      return -1;                                                \
    if (rp)                                                     \
      *rp = (type) n;                                           \
    return 0;                                                   \
  }

#define DEFINE_PARSE_UNSIGNED(fn, type, max)                    \
  int                                                           \
  fn (const char *what, const char *str, type *rp)              \
  {                                                             \
    uintmax_t n;                                                \
                                                                \
    if (parse_unsigned (what, str, (max), &n) == -1)            \
      return -1;                                                \
    if (rp)                                                     \
      *rp = (type) n;                                           \
    return 0;                                                   \
  }

DEFINE_PARSE_SIGNED (nbdkit_parse_int, int, INT_MIN, INT_MAX)
DEFINE_PARSE_SIGNED (nbdkit_parse_int8_t, int8_t, INT8_MIN, INT8_MAX)
DEFINE_PARSE_SIGNED (nbdkit_parse_int16_t, int16_t, INT16_MIN, INT16_MAX)
DEFINE_PARSE_SIGNED (nbdkit_parse_int32_t, int32_t, INT32_MIN, INT32_MAX)
DEFINE_PARSE_SIGNED (nbdkit_parse_int64_t, int64_t, INT64_MIN, INT64_MAX)
DEFINE_PARSE_UNSIGNED (nbdkit_parse_unsigned, unsigned, UINT_MAX)
DEFINE_PARSE_UNSIGNED (nbdkit_parse_uint8_t, uint8_t, UINT8_MAX)
DEFINE_PARSE_UNSIGNED (nbdkit_parse_uint16_t, uint16_t, UINT16_MAX)
DEFINE_PARSE_UNSIGNED (nbdkit_parse_uint32_t, uint32_t, UINT32_MAX)
DEFINE_PARSE_UNSIGNED (nbdkit_parse_uint64_t, uint64_t, UINT64_MAX)

/* Probabilities: "0.1", "1e-1", "10%", "1:10" and "1/10" all mean one
 * in ten.  Each number is checked on its own so that "-1:-10" is not
 * accepted as a positive ratio.  Values above 1 are allowed; the
 * caller clamps if it must.
 */
static int
parse_nonneg_double (const char *str, const char **endp, double *r)
{
  char *end;
  double d;

  if (*str == '\0' || isspace ((unsigned char) *str))
    return -1;
  errno = 0;
  d = strtod (str, &end);
  if (end == str || !isfinite (d) || d < 0 || signbit (d))
    return -1;
  *endp = end;
  *r = d;
  return 0;
}

int
nbdkit_parse_probability (const char *what, const char *str, double *rp)
{
  const char *end;
  double d, div;

  if (str == NULL)
    str = "";
  if (parse_nonneg_double (str, &end, &d) == -1)
    goto out_bad;
  if (*end == '%') {
    d /= 100;
    end++;
  }
  else if (*end == ':' || *end == '/') {
    if (parse_nonneg_double (end + 1, &end, &div) == -1)
      goto out_bad;
    if (div == 0) {
      nbdkit_error ("%s: probability \"%s\" divides by zero: "
                    "the second number must be positive", what, str);
      return -1;
    }
    d /= div;
  }
  if (*end != '\0' || !isfinite (d))
    goto out_bad;
  if (rp)
    *rp = d;
  return 0;

 out_bad:
  nbdkit_error ("%s: could not parse probability \"%s\": use a "
                "non-negative number such as 0.1, 10%%, 1:10 or 1/10",
                what, str);
  return -1;
}

/* Delays: a decimal number of seconds with an optional unit s, ms, us
 * (or µs) or ns.  The arithmetic is done on the decimal digits, not in
 * floating point, so "0.3" is exactly 300000000 ns.  Digits below one
 * nanosecond are dropped.
 */
struct delay_unit {
  const char *suffix;
  uint64_t ns;                  /* nanoseconds per unit, a power of 10 */
  unsigned digits;              /* log10 of ns */
};

static const struct delay_unit delay_units[] = {
  { "", 1000000000, 9 },
  { "s", 1000000000, 9 },
  { "ms", 1000000, 6 },
  { "us", 1000, 3 },
  { "\u00b5s", 1000, 3 },       /* MICRO SIGN */
  { "\u03bcs", 1000, 3 },       /* GREEK SMALL LETTER MU */
  { "ns", 1, 0 },
};

static const struct delay_unit *
find_delay_unit (const char *suffix)
{
  size_t i;

  for (i = 0; i < sizeof delay_units / sizeof delay_units[0]; ++i)
    if (strcmp (suffix, delay_units[i].suffix) == 0)
      return &delay_units[i];
  return NULL;
}

/* Splits "12.345ms" into whole part 12, fraction "345" and unit. */
static int
split_delay (const char *str, uint64_t *whole,
             const char **frac, size_t *frac_len, const char **suffix)
{
  const char *p = str;
  bool any_digit = false;

  *whole = 0;
  for (; isdigit ((unsigned char) *p); p++) {
    /* Saturate, so the caller reports "too long", not a parse error. */
    if (*whole > (UINT64_MAX - 9) / 10)
      *whole = UINT64_MAX;
    else
      *whole = *whole * 10 + (uint64_t) (*p - '0');
    any_digit = true;
  }
  *frac = p;
  *frac_len = 0;
  if (*p == '.') {
    *frac = ++p;
    for (; isdigit ((unsigned char) *p); p++)
      any_digit = true;
    *frac_len = p - *frac;
  }
  *suffix = p;
  return any_digit ? 0 : -1;
}

int
nbdkit_parse_delay (const char *what, const char *str,
                    unsigned *secp, unsigned *nsecp)
{
  const struct delay_unit *unit;
  const char *frac, *suffix;
  size_t frac_len, i;
  uint64_t whole, part = 0, total;

  if (str == NULL)
    str = "";
  if (*skip_space (str) == '-') {
    nbdkit_error ("%s: delay cannot be negative: \"%s\"", what, str);
    return -1;
  }
  if (split_delay (skip_space (str), &whole, &frac, &frac_len,
                   &suffix) == -1 ||
      (unit = find_delay_unit (suffix)) == NULL) {
    nbdkit_error ("%s: could not parse delay \"%s\": use a number of "
                  "seconds, or add a unit: 1.5, 2s, 10ms, 10us, 10ns",
                  what, str);
    return -1;
  }

  /* The first unit->digits digits of the fraction, zero-padded. */
  for (i = 0; i < unit->digits; ++i)
    part = part * 10 + (uint64_t) (i < frac_len ? frac[i] - '0' : 0);

  if (whole > (UINT64_MAX - part) / unit->ns ||
      (total = whole * unit->ns + part) / 1000000000 > UINT_MAX) {
    nbdkit_error ("%s: delay \"%s\" is too long: the limit is %u seconds",
                  what, str, UINT_MAX);
    return -1;
  }
  if (secp)
    *secp = (unsigned) (total / 1000000000);
  if (nsecp)
    *nsecp = (unsigned) (total % 1000000000);
  return 0;
}
