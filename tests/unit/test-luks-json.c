/* Unit test: the luks filter's JSON reader and base64 decoder
 * (filters/luks/luks-json.c) accept what cryptsetup writes and refuse
 * everything RFC 8259 does not allow.
 */
#include <stdint.h>
#include <string.h>

#include "luks-json.h"
#include "stubs.h"

static int
parses (const char *text)
{
  struct luks_json doc;
  char err[128];

  if (luks_json_parse (text, strlen (text), &doc, err, sizeof err) == -1)
    return 0;
  luks_json_free (&doc);
  return 1;
}

/* Metadata as cryptsetup 2.6 writes it (shortened). */
static const char luks2_meta[] =
  "{\"keyslots\":{\"0\":{\"type\":\"luks2\",\"key_size\":64,"
  "\"af\":{\"type\":\"luks1\",\"stripes\":4000,\"hash\":\"sha256\"},"
  "\"area\":{\"type\":\"raw\",\"offset\":\"32768\",\"size\":\"258048\","
  "\"encryption\":\"aes-xts-plain64\",\"key_size\":64},"
  "\"kdf\":{\"type\":\"argon2id\",\"time\":4,\"memory\":32,\"cpus\":2,"
  "\"salt\":\"lR1QQZt9kpI4456fmKg3zIF1kzso8FVcC2fbyxTbbqQ=\"}}},"
  "\"tokens\":{},\"segments\":{\"0\":{\"type\":\"crypt\","
  "\"offset\":\"16777216\",\"size\":\"dynamic\",\"iv_tweak\":\"0\","
  "\"encryption\":\"aes-xts-plain64\",\"sector_size\":4096}},"
  "\"digests\":{\"0\":{\"type\":\"pbkdf2\",\"keyslots\":[\"0\"],"
  "\"segments\":[\"0\"],\"hash\":\"sha256\",\"iterations\":1000}},"
  "\"config\":{\"json_size\":\"12288\",\"keyslots_size\":\"16744448\"}}";

static void
test_luks2_metadata (void)
{
  struct luks_json doc;
  const struct luks_json_node *root, *seg, *n;
  char err[128];
  uint64_t v;
  unsigned count = 0;

  check (luks_json_parse (luks2_meta, strlen (luks2_meta), &doc,
                          err, sizeof err) == 0, "metadata parses: %s", err);
  root = luks_json_root (&doc);
  check (root && root->type == LUKS_JSON_OBJECT, "root is an object");
  seg = luks_json_get (&doc, luks_json_get (&doc, root, "segments"), "0");
  check (seg != NULL, "segments.0 found");
  check (luks_json_u64 (luks_json_get (&doc, seg, "offset"), &v) == 0 &&
         v == 16777216, "offset as a decimal string");
  check (luks_json_u64 (luks_json_get (&doc, seg, "sector_size"), &v) == 0 &&
         v == 4096, "sector_size as a number");
  check (luks_json_u64 (luks_json_get (&doc, seg, "size"), &v) == -1,
         "\"dynamic\" is not a number");
  check (strcmp (luks_json_string (luks_json_get (&doc, seg, "encryption")),
                 "aes-xts-plain64") == 0, "string member");
  check (luks_json_string (luks_json_get (&doc, seg, "sector_size")) == NULL,
         "a number is not a string");
  check (luks_json_get (&doc, seg, "missing") == NULL, "missing member");
  n = luks_json_get (&doc, luks_json_get (&doc, root, "digests"), "0");
  for (n = luks_json_first (&doc, luks_json_get (&doc, n, "keyslots"));
       n; n = luks_json_next (&doc, n))
    count++;
  check (count == 1, "array of one element iterates once");
  check (luks_json_first (&doc, luks_json_get (&doc, root, "tokens")) == NULL,
         "empty object has no members");
  luks_json_free (&doc);
}

static void
test_strings (void)
{
  static const char text[] =
    "[\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\", \"\\u00e9\\u20ac\\ud83d\\ude00\","
    " \"\xc3\xa9\"]";
  struct luks_json doc;
  const struct luks_json_node *n;
  char err[128];

  check (luks_json_parse (text, strlen (text), &doc, err, sizeof err) == 0,
         "escapes parse: %s", err);
  n = luks_json_first (&doc, luks_json_root (&doc));
  check (strcmp (n->text, "a\"b\\c/d\b\f\n\r\t") == 0, "simple escapes");
  n = luks_json_next (&doc, n);
  check (strcmp (n->text, "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80") == 0,
         "\\u escapes and a surrogate pair become UTF-8");
  n = luks_json_next (&doc, n);
  check (strcmp (n->text, "\xc3\xa9") == 0, "raw UTF-8 kept");
  luks_json_free (&doc);
}

static void
test_grammar (void)
{
  static const char *good[] = {
    "0", "-0", "12", "1.5", "-1e10", "2E-3", "1.0e+2", "true", "false",
    "null", "\"\"", "[]", "{}", " [ 1 , 2 ] ", "{\"a\":{\"b\":[null]}}",
  };
  static const char *bad[] = {
    "", " ", "01", "-", "1.", ".5", "1e", "+1", "0x10", "tru", "nul",
    "[1,]", "{\"a\":1,}", "[1 2]", "{\"a\" 1}", "{a:1}", "{\"a\":1",
    "[", "\"abc", "\"a\nb\"", "\"\\x\"", "\"\\u12\"", "\"\\u0000\"",
    "\"\\ud800\"", "\"\\udc00\"", "\"\\ud800\\u0041\"", "\"\xc3\"",
    "\"\xc0\xaf\"", "\"\xed\xa0\x80\"", "\"\xf5\x80\x80\x80\"",
    "{\"a\":1,\"a\":2}", "1 2", "[] x", "// c\n1", "'a'", "NaN",
  };
  char deep[2 * LUKS_JSON_MAX_DEPTH + 8];
  size_t i;

  for (i = 0; i < sizeof good / sizeof good[0]; i++)
    check (parses (good[i]), "accepts %s", good[i]);
  for (i = 0; i < sizeof bad / sizeof bad[0]; i++)
    check (!parses (bad[i]), "refuses %s", bad[i]);

  memset (deep, '[', LUKS_JSON_MAX_DEPTH);
  memset (deep + LUKS_JSON_MAX_DEPTH, ']', LUKS_JSON_MAX_DEPTH);
  deep[2 * LUKS_JSON_MAX_DEPTH] = '\0';
  check (parses (deep), "nesting at the limit");
  memset (deep, '[', LUKS_JSON_MAX_DEPTH + 2);
  memset (deep + LUKS_JSON_MAX_DEPTH + 2, ']', LUKS_JSON_MAX_DEPTH + 2);
  deep[2 * LUKS_JSON_MAX_DEPTH + 4] = '\0';
  check (!parses (deep), "nesting past the limit");
}

static void
test_error_text (void)
{
  struct luks_json doc;
  char err[128];

  check (luks_json_parse ("[1,]", 4, &doc, err, sizeof err) == -1 &&
         strstr (err, "at byte 3") != NULL, "error names the byte: %s", err);
  check (doc.nodes == NULL && doc.strings == NULL, "nothing kept on error");
  /* The length bounds the text: what follows is not read. */
  check (luks_json_parse ("{}garbage", 2, &doc, err, sizeof err) == 0,
         "length bounds the text");
  luks_json_free (&doc);
}

static void
test_u64 (void)
{
  struct luks_json_node n = { LUKS_JSON_STRING, NULL, NULL, 0, 0 };
  uint64_t v;

  n.text = "18446744073709551615";
  check (luks_json_u64 (&n, &v) == 0 && v == UINT64_MAX, "u64 max");
  n.text = "18446744073709551616";
  check (luks_json_u64 (&n, &v) == -1, "u64 overflow");
  n.text = "007";
  check (luks_json_u64 (&n, &v) == -1, "leading zeros");
  n.text = "";
  check (luks_json_u64 (&n, &v) == -1, "empty");
  n.type = LUKS_JSON_NUMBER;
  n.text = "-1";
  check (luks_json_u64 (&n, &v) == -1, "negative");
  n.text = "1.5";
  check (luks_json_u64 (&n, &v) == -1, "fraction");
  n.type = LUKS_JSON_TRUE;
  check (luks_json_u64 (&n, &v) == -1, "not a number");
  check (luks_json_u64 (NULL, &v) == -1, "missing");
}

static void
test_base64 (void)
{
  uint8_t out[16];
  size_t len;

  check (luks_base64_decode ("", out, sizeof out, &len) == 0 && len == 0,
         "empty");
  check (luks_base64_decode ("Zg==", out, sizeof out, &len) == 0 &&
         len == 1 && out[0] == 'f', "two pads");
  check (luks_base64_decode ("Zm8=", out, sizeof out, &len) == 0 &&
         len == 2 && memcmp (out, "fo", 2) == 0, "one pad");
  check (luks_base64_decode ("Zm9vYmFy", out, sizeof out, &len) == 0 &&
         len == 6 && memcmp (out, "foobar", 6) == 0, "no pad");
  check (luks_base64_decode ("+/+/", out, sizeof out, &len) == 0 &&
         len == 3 && out[0] == 0xfb && out[1] == 0xff && out[2] == 0xbf,
         "+ and /");
  check (luks_base64_decode ("Zg=", out, sizeof out, &len) == -1,
         "length not a multiple of 4");
  check (luks_base64_decode ("Z===", out, sizeof out, &len) == -1,
         "three pads");
  check (luks_base64_decode ("Zg==Zg==", out, sizeof out, &len) == -1,
         "pad in the middle");
  check (luks_base64_decode ("Zm9v YmFy", out, sizeof out, &len) == -1,
         "space");
  check (luks_base64_decode ("Z=g=", out, sizeof out, &len) == -1,
         "pad before data");
  check (luks_base64_decode ("Zm9vYmFy", out, 5, &len) == -1,
         "does not fit");
}

int
main (void)
{
  test_luks2_metadata ();
  test_strings ();
  test_grammar ();
  test_error_text ();
  test_u64 ();
  test_base64 ();
  return test_summary ();
}
