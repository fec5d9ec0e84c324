/* nbdsrv unit test: the nbdkit_parse_* functions (server/parse.c).
 *
 * Expected results were checked against Debian's nbdkit 1.32 where it
 * has the function (size, bool, integers), and against the nbdkit
 * manual pages for probability and delay, which 1.32 lacks.
 */
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#define NBDKIT_API_VERSION 2
#include "nbdkit-plugin.h"

#include "stubs.h"

#define OK(v) true, (v), NULL
#define FAIL(msg) false, 0, (msg)
#define ARRAY_SIZE(a) (sizeof (a) / sizeof ((a)[0]))

/* Sizes: ERR is a substring of the expected message. */
static const struct {
  const char *in;
  bool ok;
  int64_t want;
  const char *err;
} size_cases[] = {
  { "0", OK (0) },
  { "1", OK (1) },
  { "-0", OK (0) },
  { "+1", OK (1) },
  { " 1", OK (1) },
  { "010", OK (10) },           /* decimal, not octal */
  { "08", OK (8) },
  { "1b", OK (1) },
  { "1B", OK (1) },
  { "1s", OK (512) },           /* 512-byte sectors, as nbdkit */
  { "3S", OK (1536) },
  { "0s", OK (0) },
  { "18014398509481983s", OK (INT64_C (18014398509481983) * 512) },
  { "18014398509481984s", FAIL ("overflow computing size") },
  { "1ss", FAIL ("unknown suffix 'ss'") },
  { "1k", OK (1024) },
  { "1K", OK (1024) },
  { "2m", OK (2 * 1048576) },
  { "1M", OK (1048576) },
  { "1g", OK (1073741824) },
  { "1G", OK (1073741824) },
  { "1t", OK (INT64_C (1) << 40) },
  { "1T", OK (INT64_C (1) << 40) },
  { "1p", OK (INT64_C (1) << 50) },
  { "1P", OK (INT64_C (1) << 50) },
  { "1e", OK (INT64_C (1) << 60) },
  { "7E", OK (INT64_C (7) << 60) },
  { "8191P", OK (INT64_C (8191) << 50) },
  { "0E", OK (0) },
  { "9223372036854775807", OK (INT64_MAX) },
  { "8E", FAIL ("overflow computing size (8E)") },
  { "8192P", FAIL ("overflow computing size (8192P)") },
  { "9223372036854775808", FAIL ("size (9223372036854775808) exceeds") },
  { "99999999999999999999k", FAIL ("exceeds maximum value") },
  { "-1", FAIL ("size cannot be negative (-1)") },
  { " -1", FAIL ("size cannot be negative ( -1)") },
  { "-1k", FAIL ("size cannot be negative") },
  { "-99999999999999999999", FAIL ("size cannot be negative") },
  { "", FAIL ("could not parse size string ()") },
  { "abc", FAIL ("could not parse size string (abc)") },
  { "-", FAIL ("could not parse size string (-)") },
  { "k", FAIL ("could not parse size string (k)") },
  { "1 ", FAIL ("unknown suffix ' '") },
  { "1x", FAIL ("unknown suffix 'x'") },
  { "0x10", FAIL ("unknown suffix 'x10'") },
  { "1.5M", FAIL ("unknown suffix '.5M'") },
  { "1kb", FAIL ("unknown suffix 'kb'") },
  { "1KiB", FAIL ("unknown suffix 'KiB'") },
  { "1Z", FAIL ("unknown suffix 'Z'") },
};

static void
test_size (void)
{
  size_t i;
  int64_t r;

  for (i = 0; i < ARRAY_SIZE (size_cases); ++i) {
    stub_reset ();
    r = nbdkit_parse_size (size_cases[i].in);
    if (size_cases[i].ok)
      check (r == size_cases[i].want && stub_error_count == 0,
             "parse_size \"%s\": got %" PRIi64 ", want %" PRIi64,
             size_cases[i].in, r, size_cases[i].want);
    else
      check (r == -1 && error_contains (size_cases[i].err),
             "parse_size \"%s\": got %" PRIi64 ", want error \"%s\"",
             size_cases[i].in, r, size_cases[i].err);
  }
}

static const struct {
  const char *in;
  int want;
} bool_cases[] = {
  { "1", 1 }, { "true", 1 }, { "TRUE", 1 }, { "True", 1 }, { "t", 1 },
  { "T", 1 }, { "yes", 1 }, { "Yes", 1 }, { "y", 1 }, { "Y", 1 },
  { "on", 1 }, { "ON", 1 }, { "oN", 1 },
  { "0", 0 }, { "false", 0 }, { "FALSE", 0 }, { "f", 0 }, { "F", 0 },
  { "no", 0 }, { "No", 0 }, { "n", 0 }, { "N", 0 }, { "off", 0 },
  { "OFF", 0 },
  { "", -1 }, { " 1", -1 }, { "1 ", -1 }, { "2", -1 }, { "ye", -1 },
  { "tr", -1 }, { "of", -1 }, { "yes ", -1 }, { "enabled", -1 },
  { "01", -1 },
};

static void
test_bool (void)
{
  size_t i;
  int r;

  for (i = 0; i < ARRAY_SIZE (bool_cases); ++i) {
    stub_reset ();
    r = nbdkit_parse_bool (bool_cases[i].in);
    check (r == bool_cases[i].want,
           "parse_bool \"%s\": got %d, want %d",
           bool_cases[i].in, r, bool_cases[i].want);
    if (bool_cases[i].want == -1) {
      char want[64];

      snprintf (want, sizeof want, "could not decipher boolean (%s)",
                bool_cases[i].in);
      check (error_contains (want), "parse_bool \"%s\": message",
             bool_cases[i].in);
    }
  }
}

/* Integers: one table for every width.  For failures the output must
 * be left unchanged, which the runner checks with a sentinel.
 */
enum int_type {
  T_INT, T_UNSIGNED, T_I8, T_U8, T_I16, T_U16, T_I32, T_U32, T_I64, T_U64
};

static const char *const type_names[] = {
  "int", "unsigned", "int8_t", "uint8_t", "int16_t", "uint16_t",
  "int32_t", "uint32_t", "int64_t", "uint64_t",
};

static const struct {
  enum int_type type;
  const char *in;
  bool ok;
  intmax_t want;                /* for unsigned types, cast to uintmax */
  const char *err;
} int_cases[] = {
  { T_INT, "0", OK (0) },
  { T_INT, "1", OK (1) },
  { T_INT, "-1", OK (-1) },
  { T_INT, "-0", OK (0) },
  { T_INT, "+1", OK (1) },
  { T_INT, " 1", OK (1) },
  { T_INT, "\t\n 7", OK (7) },
  { T_INT, "0x10", OK (16) },
  { T_INT, "0X10", OK (16) },
  { T_INT, "-0x10", OK (-16) },
  { T_INT, "010", OK (8) },     /* octal, unlike sizes */
  { T_INT, "2147483647", OK (INT_MAX) },
  { T_INT, "-2147483648", OK (INT_MIN) },
  { T_INT, "0x7fffffff", OK (INT_MAX) },
  { T_INT, "2147483648", FAIL ("\"2147483648\": Numerical result out") },
  { T_INT, "-2147483649", FAIL ("Numerical result out of range") },
  { T_INT, "99999999999999999999x", FAIL ("out of range") },
  { T_INT, "", FAIL ("w: empty string where we expected a number") },
  { T_INT, " ", FAIL ("empty string where we expected a number") },
  { T_INT, "1 ", FAIL ("w: could not parse number: \"1 \": trailing") },
  { T_INT, "1x", FAIL ("\"1x\": trailing garbage") },
  { T_INT, "0x", FAIL ("\"0x\": trailing garbage") },
  { T_INT, "08", FAIL ("\"08\": trailing garbage") },
  { T_INT, "1.0", FAIL ("trailing garbage") },
  { T_INT, "abc", FAIL ("w: could not parse number: \"abc\"") },
  { T_INT, "+-1", FAIL ("could not parse number: \"+-1\"") },
  { T_INT, "- 1", FAIL ("could not parse number") },
  { T_UNSIGNED, "0", OK (0) },
  { T_UNSIGNED, "+1", OK (1) },
  { T_UNSIGNED, " +1", OK (1) },
  { T_UNSIGNED, "4294967295", OK (UINT_MAX) },
  { T_UNSIGNED, "0xffffffff", OK (UINT_MAX) },
  { T_UNSIGNED, "4294967296", FAIL ("Numerical result out of range") },
  { T_UNSIGNED, "-1", FAIL ("w: negative numbers are not allowed") },
  { T_UNSIGNED, " -1", FAIL ("negative numbers are not allowed") },
  { T_UNSIGNED, "-0", FAIL ("negative numbers are not allowed") },
  { T_UNSIGNED, "-99999999999999999999", FAIL ("negative numbers") },
  { T_UNSIGNED, "", FAIL ("empty string") },
  { T_I8, "127", OK (127) },
  { T_I8, "-128", OK (-128) },
  { T_I8, "0x7f", OK (127) },
  { T_I8, "128", FAIL ("\"128\": Numerical result out of range") },
  { T_I8, "-129", FAIL ("Numerical result out of range") },
  { T_I8, "128x", FAIL ("trailing garbage") },
  { T_U8, "255", OK (255) },
  { T_U8, "0xff", OK (255) },
  { T_U8, "256", FAIL ("Numerical result out of range") },
  { T_U8, "-1", FAIL ("negative numbers are not allowed") },
  { T_I16, "32767", OK (INT16_MAX) },
  { T_I16, "-32768", OK (INT16_MIN) },
  { T_I16, "32768", FAIL ("out of range") },
  { T_I16, "-32769", FAIL ("out of range") },
  { T_U16, "65535", OK (UINT16_MAX) },
  { T_U16, "65536", FAIL ("out of range") },
  { T_I32, "2147483647", OK (INT32_MAX) },
  { T_I32, "-2147483648", OK (INT32_MIN) },
  { T_I32, "2147483648", FAIL ("out of range") },
  { T_U32, "4294967295", OK (UINT32_MAX) },
  { T_U32, "4294967296", FAIL ("out of range") },
  { T_I64, "9223372036854775807", OK (INT64_MAX) },
  { T_I64, "-9223372036854775808", OK (INT64_MIN) },
  { T_I64, "0x7fffffffffffffff", OK (INT64_MAX) },
  { T_I64, "9223372036854775808", FAIL ("out of range") },
  { T_I64, "-9223372036854775809", FAIL ("out of range") },
  { T_U64, "18446744073709551615", OK ((intmax_t) UINT64_MAX) },
  { T_U64, "0xffffffffffffffff", OK ((intmax_t) UINT64_MAX) },
  { T_U64, "01777777777777777777777", OK ((intmax_t) UINT64_MAX) },
  { T_U64, "18446744073709551616", FAIL ("out of range") },
  { T_U64, "-1", FAIL ("negative numbers are not allowed") },
};

/* Calls the parser for TYPE; *GOT holds the output, pre-filled with a
 * sentinel (42) so that an untouched output on failure can be seen.
 */
static int
parse_typed (enum int_type type, const char *in, uintmax_t *got)
{
#define CALL(fn, t) \
  do { t v = 42; r = fn ("w", in, &v); *got = (uintmax_t) v; } while (0)
  int r = -1;

  *got = 0;
  switch (type) {
  case T_INT: CALL (nbdkit_parse_int, int); break;
  case T_UNSIGNED: CALL (nbdkit_parse_unsigned, unsigned); break;
  case T_I8: CALL (nbdkit_parse_int8_t, int8_t); break;
  case T_U8: CALL (nbdkit_parse_uint8_t, uint8_t); break;
  case T_I16: CALL (nbdkit_parse_int16_t, int16_t); break;
  case T_U16: CALL (nbdkit_parse_uint16_t, uint16_t); break;
  case T_I32: CALL (nbdkit_parse_int32_t, int32_t); break;
  case T_U32: CALL (nbdkit_parse_uint32_t, uint32_t); break;
  case T_I64: CALL (nbdkit_parse_int64_t, int64_t); break;
  case T_U64: CALL (nbdkit_parse_uint64_t, uint64_t); break;
  }
  return r;
#undef CALL
}

static void
test_ints (void)
{
  size_t i;
  uintmax_t got;
  int r;

  for (i = 0; i < ARRAY_SIZE (int_cases); ++i) {
    const char *tn = type_names[int_cases[i].type];

    stub_reset ();
    r = parse_typed (int_cases[i].type, int_cases[i].in, &got);
    if (int_cases[i].ok)
      check (r == 0 && got == (uintmax_t) int_cases[i].want &&
             stub_error_count == 0,
             "parse_%s \"%s\": r=%d got %" PRIuMAX ", want %" PRIdMAX,
             tn, int_cases[i].in, r, got, int_cases[i].want);
    else
      check (r == -1 && got == 42 && error_contains (int_cases[i].err),
             "parse_%s \"%s\": r=%d got %" PRIuMAX ", want error \"%s\"",
             tn, int_cases[i].in, r, got, int_cases[i].err);
  }

  /* A NULL result pointer only validates. */
  check (nbdkit_parse_int ("w", "5", NULL) == 0, "parse_int NULL out");
  check (nbdkit_parse_uint64_t ("w", "x", NULL) == -1,
         "parse_uint64_t NULL out, bad input");
}

static const struct {
  const char *in;
  bool ok;
  double want;
} prob_cases[] = {
  { "0", true, 0 },
  { "1", true, 1 },
  { "0.1", true, 0.1 },
  { "1e-1", true, 0.1 },
  { "10%", true, 0.1 },
  { "0%", true, 0 },
  { "200%", true, 2 },
  { "1:10", true, 0.1 },
  { "1/10", true, 0.1 },
  { "3/4", true, 0.75 },
  { "0:1", true, 0 },
  { "2.5:10", true, 0.25 },
  { "", false, 0 },
  { "-0.1", false, 0 },
  { "-1%", false, 0 },
  { "-1:-10", false, 0 },
  { "1:-10", false, 0 },
  { "1:0", false, 0 },
  { "1/0", false, 0 },
  { "1:", false, 0 },
  { "1: 10", false, 0 },
  { "1 ", false, 0 },
  { "10 %", false, 0 },
  { "10%%", false, 0 },
  { "inf", false, 0 },
  { "nan", false, 0 },
  { "1e999", false, 0 },
  { "abc", false, 0 },
  { "0.1x", false, 0 },
};

static void
test_probability (void)
{
  size_t i;
  double d;
  int r;

  for (i = 0; i < ARRAY_SIZE (prob_cases); ++i) {
    stub_reset ();
    d = 42;
    r = nbdkit_parse_probability ("p", prob_cases[i].in, &d);
    if (prob_cases[i].ok)
      check (r == 0 && fabs (d - prob_cases[i].want) < 1e-12,
             "parse_probability \"%s\": r=%d got %g, want %g",
             prob_cases[i].in, r, d, prob_cases[i].want);
    else
      check (r == -1 && d == 42 && error_contains ("p: ") &&
             strstr (stub_last_error, prob_cases[i].in) != NULL,
             "parse_probability \"%s\": r=%d got %g, want error",
             prob_cases[i].in, r, d);
  }
}

static const struct {
  const char *in;
  bool ok;
  unsigned sec, nsec;
} delay_cases[] = {
  { "0", true, 0, 0 },
  { "1", true, 1, 0 },
  { "1.5", true, 1, 500000000 },
  { "0.3", true, 0, 300000000 },
  { ".5", true, 0, 500000000 },
  { "2.", true, 2, 0 },
  { "2s", true, 2, 0 },
  { "1.2s", true, 1, 200000000 },
  { "10ms", true, 0, 10000000 },
  { "1.2ms", true, 0, 1200000 },
  { "1500ms", true, 1, 500000000 },
  { "10us", true, 0, 10000 },
  { "1.2us", true, 0, 1200 },
  { "120\u00b5s", true, 0, 120000 },
  { "120\u03bcs", true, 0, 120000 },
  { "10ns", true, 0, 10 },
  { "1.9ns", true, 0, 1 },      /* below a nanosecond is dropped */
  { "0.0000000019", true, 0, 1 },
  { "3000000000ns", true, 3, 0 },
  { "4294967295", true, UINT_MAX, 0 },
  { "4294967295.999999999", true, UINT_MAX, 999999999 },
  { " 1", true, 1, 0 },
  { "4294967296", false, 0, 0 },
  { "99999999999999999999999", false, 0, 0 },
  { "-1", false, 0, 0 },
  { " -1ms", false, 0, 0 },
  { "", false, 0, 0 },
  { ".", false, 0, 0 },
  { "s", false, 0, 0 },
  { "1 ", false, 0, 0 },
  { "1 ms", false, 0, 0 },
  { "1m", false, 0, 0 },
  { "1sec", false, 0, 0 },
  { "1e3", false, 0, 0 },
  { "+1", false, 0, 0 },
  { "1.2.3", false, 0, 0 },
};

static void
test_delay (void)
{
  size_t i;
  unsigned sec, nsec;
  int r;

  for (i = 0; i < ARRAY_SIZE (delay_cases); ++i) {
    stub_reset ();
    sec = nsec = 42;
    r = nbdkit_parse_delay ("d", delay_cases[i].in, &sec, &nsec);
    if (delay_cases[i].ok)
      check (r == 0 && sec == delay_cases[i].sec &&
             nsec == delay_cases[i].nsec,
             "parse_delay \"%s\": r=%d got %u.%09u, want %u.%09u",
             delay_cases[i].in, r, sec, nsec,
             delay_cases[i].sec, delay_cases[i].nsec);
    else
      check (r == -1 && sec == 42 && nsec == 42 &&
             error_contains ("d: "),
             "parse_delay \"%s\": r=%d got %u.%09u, want error",
             delay_cases[i].in, r, sec, nsec);
  }
  check (nbdkit_parse_delay ("d", "1ms", NULL, NULL) == 0,
         "parse_delay NULL outputs");
}

int
main (void)
{
  test_size ();
  test_bool ();
  test_ints ();
  test_probability ();
  test_delay ();
  return test_summary ();
}
