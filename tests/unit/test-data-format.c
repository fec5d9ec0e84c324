/* Unit test: the data plugin's data= language (plugins/data/format.c).
 *
 * Each case is evaluated into a flat buffer and compared with what
 * Debian's nbdkit 1.32 serves for the same string (observed with
 * nbdinfo/libnbd); tests/integration/test_plugins_data.py checks the
 * same through a running server.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../plugins/data/format.h"
#include "stubs.h"

static const char *
lookup (const char *name, void *opaque)
{
  if (strcmp (name, "p") == 0)
    return "1 2";
  if (strcmp (name, "off") == 0)
    return "@2 1";
  if (strcmp (name, "bad") == 0)
    return "(1";
  if (strcmp (name, "self") == 0)
    return "$self";
  if (strcmp (name, "ref") == 0)
    return "\\a";
  return NULL;
}

/* Evaluate STR and render the disk as hex ("" for an empty disk), or
 * "ERR" on error.  Disks over 64 bytes are not rendered.
 */
static const char *
render (const char *str)
{
  static char out[200];
  unsigned char disk[64];
  struct data_format f;
  size_t i;

  if (data_format_parse (str, lookup, NULL, &f) == -1) {
    data_format_free (&f);
    return "ERR";
  }
  if (f.size > sizeof disk) {
    data_format_free (&f);
    return "BIG";
  }
  memset (disk, 0, sizeof disk);
  for (i = 0; i < f.nr_writes; ++i)
    if (f.writes[i].kind == DATA_WRITE_BYTES)
      memcpy (disk + f.writes[i].offset, f.writes[i].bytes, f.writes[i].len);
    else
      memset (disk + f.writes[i].offset, 0, f.writes[i].len);
  out[0] = '\0';
  for (i = 0; i < f.size; ++i)
    sprintf (out + 2 * i, "%02x", disk[i]);
  data_format_free (&f);
  return out;
}

static const struct {
  const char *expr;
  const char *expect;
} cases[] = {
  { "1 2 3", "010203" },
  { "0x10 010 10", "10080a" },
  { "08", "0008" },                     /* octal 0, then 8 */
  { "0x", "00" },
  { "0x 1", "0001" },
  { "4294967297", "01" },               /* cut to 32 bits first */
  { "256", "ERR" },
  { "99999999999999999999", "ERR" },
  { "+5", "ERR" },
  { "1e", "ERR" },
  { "1,2", "ERR" },
  { "", "" },
  { "@4", "00000000" },
  { "@4 @2", "00000000" },
  { "@4 1", "0000000001" },
  { "1 @+3 2", "0100000002" },
  { "@+ 4", "00000000" },
  { "@ 4", "ERR" },
  { "@+-1", "ERR" },
  { "1 2 3 4 5 @-2 9", "0102030905" },
  { "@-1 1", "ERR" },
  { "1 @^8 2", "010000000000000002" },
  { "1 @^3 2", "ERR" },
  { "1 @^0 2", "ERR" },
  { "@08", "08" },
  { "1 2 @1 9", "0109" },
  { "(1 2)*3", "010201020102" },
  { "1*4", "01010101" },
  { "1 * 4", "01010101" },
  { "1*0", "" },
  { "1*2*3", "010101010101" },
  { "1*-1", "ERR" },
  { "*2", "ERR" },
  { "1*", "ERR" },
  { "@4*2", "ERR" },
  { "(1 2 3 @1)*2", "010203010203" },
  { "(@3)*2", "000000000000" },
  { "(@10 1)[5:]", "000000000001" },
  { "(1 2 3)[:]", "010203" },
  { "(1 2 3 4)[1:3]", "0203" },
  { "(1 2 3)[1:1]", "" },
  { "(1 2 3)[5:5]", "" },
  { "(1 2 3)[2:1]", "ERR" },
  { "(1 2 3)[0:5]", "ERR" },
  { "(1 2 3)[:-2]", "010203" },
  { "(1 2 3)[-1:]", "" },
  { "(1 2 3)[-1:3]", "ERR" },
  { "(1 2 3)[2]", "ERR" },
  { "(1 2)[ :1]", "ERR" },
  { "(1 2)[: 1]", "01" },
  { "(1 2)[1:2]x", "ERR" },
  { "(1 2)*2[1:3]", "0201" },
  { "\"ab\\n\\x41\"", "61620a41" },
  { "\"\\t\\e\\q\\\\\\\"\"", "0965715c22" },
  { "\"\\x4\"", "ERR" },
  { "\"\\0\"", "ERR" },
  { "\"\\u0041\"", "ERR" },
  { "\"abc", "ERR" },
  { "(\")\")", "29" },
  { "\"ab\"*3", "616261626162" },
  { "le16:0x1234 be16:0x1234", "34121234" },
  { "le32:1 be32:1", "0100000000000001" },
  { "be64:0x0102030405060708", "0102030405060708" },
  { "le16:65536", "ERR" },
  { "le16:-1", "ERR" },
  { "le16:", "ERR" },
  { "le16:1)", "ERR" },
  { "le8:1", "ERR" },
  { "(1 2)->\\a \\a \\a", "01020102" },
  { "1 2 -> \\a \\a", "0102" },
  { "1 -> \\a", "" },
  { "\\a", "ERR" },
  { "\\a -> \\b", "" },                 /* never used, never evaluated */
  { "((1) -> \\a) \\a", "ERR" },
  { "(1)->\\a (\\a \\a)->\\b (2)->\\a \\b", "0101" },
  { "(\\c)->\\b (5)->\\c \\b", "ERR" },
  { "1 -> \\x -> \\y \\y", "" },
  { "@4 -> \\x", "ERR" },
  { "(1)->\\a \\a->\\b \\b", "ERR" },     /* names may contain '-' */
  { "(1 2)(3)", "010203" },
  { "()", "" },
  { "(1", "ERR" },
  { "1)", "ERR" },
  { "# comment\n1 # another\n2", "0102" },
  { "$p*2", "01020102" },
  { "1 $off", "01000001" },
  { "$p[1:]", "02" },
  { "$nope", "ERR" },
  { "$bad", "ERR" },
  { "$self", "ERR" },
  { "(1)->\\a $ref", "01" },
  { "<(printf 'ab')*2", "61626162" },
  { "<(yes)[:3]", "790a79" },
  { "<(exit 1)", "ERR" },
  { "<(exit 1) -> \\y", "" },
  { "< x", "ERR" },
  { "</nonexistent/file", "ERR" },
  { "<(printf ')')", "ERR" },           /* parentheses are counted raw */
  { "(1)*9223372036854775807", "ERR" },
  { "@9223372036854775807 1", "ERR" },
};

static void
test_table (void)
{
  const char *got;
  size_t i;

  for (i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
    got = render (cases[i].expr);
    check (strcmp (got, cases[i].expect) == 0,
           "data '%s': expected %s, got %s", cases[i].expr,
           cases[i].expect, got);
  }
}

/* Errors say where: the offset of the culprit and its source. */
static void
test_error_position (void)
{
  struct data_format f;
  int r;

  /* Parse first: check's arguments are evaluated in no set order. */
  r = data_format_parse ("1 2 ,", NULL, NULL, &f);
  check (r == -1 &&
         f.error_pos == 4 && strcmp (f.error_source, "data") == 0 &&
         f.nr_writes == 0 && f.error[0] != '\0',
         "',' reported at offset 4 of data, got %zu of %s",
         f.error_pos, f.error_source);
  data_format_free (&f);

  r = data_format_parse ("1 $bad", lookup, NULL, &f);
  check (r == -1 &&
         f.error_pos == 0 && strcmp (f.error_source, "$bad") == 0,
         "error inside $bad reported in $bad, got %zu of %s",
         f.error_pos, f.error_source);
  data_format_free (&f);
}

/* A far offset costs one write, not a terabyte of buffer. */
static void
test_sparse (void)
{
  struct data_format f;

  check (data_format_parse ("@1099511627776 1", NULL, NULL, &f) == 0 &&
         f.size == UINT64_C (1099511627777) && f.nr_writes == 1 &&
         f.writes[0].offset == UINT64_C (1099511627776),
         "@1T 1 is one write at 1T");
  data_format_free (&f);

  check (data_format_parse ("0*1000000000000", NULL, NULL, &f) == 0 &&
         f.nr_writes == 1 && f.writes[0].kind == DATA_WRITE_ZERO &&
         f.writes[0].len == UINT64_C (1000000000000),
         "0*1e12 is one zero write");
  data_format_free (&f);

  /* A single zero byte is written (nbdkit allocates it), a run is not. */
  check (data_format_parse ("0", NULL, NULL, &f) == 0 && f.nr_writes == 1 &&
         f.writes[0].kind == DATA_WRITE_ZERO && f.writes[0].len == 1,
         "0 is a zero write of length 1");
  data_format_free (&f);

  check (data_format_parse ("(1 2)*100000", NULL, NULL, &f) == 0 &&
         f.nr_writes == 1 && f.writes[0].len == 200000,
         "repeats of adjacent bytes merge into one write");
  data_format_free (&f);

  check (data_format_parse ("(@4096 1)*100000000", NULL, NULL, &f) == -1,
         "too fragmented an expression is refused");
  data_format_free (&f);
}

static void
test_base64 (void)
{
  static const struct {
    const char *in, *out;               /* out NULL: must fail */
  } b64[] = {
    { "YWJj", "abc" }, { "YWI=", "ab" }, { "YQ==", "a" }, { "", "" },
    { "YW Jj\n", "abc" }, { "YWJjZA==", "abcd" },
    { "YWI", NULL }, { "Y", NULL }, { "!!!!", NULL }, { "YWJjZA=", NULL },
    { "YW=j", NULL }, { "YWJjZA==YWJj", NULL }, { "Y===", NULL },
  };
  unsigned char *buf;
  size_t i, len;
  int r;

  for (i = 0; i < sizeof b64 / sizeof b64[0]; ++i) {
    r = data_base64_decode (b64[i].in, &buf, &len);
    if (b64[i].out == NULL)
      check (r == -1, "base64 '%s' must be refused", b64[i].in);
    else
      check (r == 0 && len == strlen (b64[i].out) &&
             memcmp (buf, b64[i].out, len) == 0,
             "base64 '%s' decodes to '%s'", b64[i].in, b64[i].out);
    if (r == 0)
      free (buf);
  }
}

int
main (void)
{
  test_table ();
  test_error_position ();
  test_sparse ();
  test_base64 ();
  return test_summary ();
}
