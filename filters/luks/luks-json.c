/* nbdsrv luks filter: a strict JSON reader and base64 decoder.  See
 * luks-json.h.
 *
 * Recursive descent over the text; nodes go into one growing array
 * and are linked by index (the array moves while it grows), strings
 * are decoded into one arena sized for the worst case up front.
 */
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "luks-json.h"

struct parser {
  const char *s;
  size_t len, pos;
  struct luks_json *doc;
  size_t arena_used;
  char *err;
  size_t err_len;
};

static int
fail (struct parser *p, const char *fmt, ...)
{
  va_list ap;
  int n;

  if (p->err[0])                /* keep the innermost reason */
    return -1;
  n = snprintf (p->err, p->err_len, "at byte %zu: ", p->pos);
  if (n < 0 || (size_t) n >= p->err_len)
    return -1;
  va_start (ap, fmt);
  vsnprintf (p->err + n, p->err_len - n, fmt, ap);
  va_end (ap);
  return -1;
}

static void
skip_space (struct parser *p)
{
  while (p->pos < p->len &&
         (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' ||
          p->s[p->pos] == '\n' || p->s[p->pos] == '\r'))
    p->pos++;
}

static int
peek (struct parser *p)
{
  return p->pos < p->len ? (unsigned char) p->s[p->pos] : -1;
}

/* A new node of TYPE; its index, or 0 on failure. */
static uint32_t
new_node (struct parser *p, enum luks_json_type type)
{
  struct luks_json *d = p->doc;
  struct luks_json_node *n;
  size_t cap;

  if (d->nr_nodes >= LUKS_JSON_MAX_NODES) {
    fail (p, "more than %d values", LUKS_JSON_MAX_NODES);
    return 0;
  }
  if (d->nr_nodes == d->cap_nodes) {
    cap = d->cap_nodes ? d->cap_nodes * 2 : 64;
    n = realloc (d->nodes, cap * sizeof *n);
    if (n == NULL) {
      fail (p, "out of memory");
      return 0;
    }
    d->nodes = n;
    d->cap_nodes = cap;
  }
  n = &d->nodes[d->nr_nodes];
  memset (n, 0, sizeof *n);
  n->type = type;
  return d->nr_nodes++;
}

static void
put_byte (struct parser *p, char c)
{
  p->doc->strings[p->arena_used++] = c;
}

/* Append code point CP as UTF-8. */
static void
put_utf8 (struct parser *p, uint32_t cp)
{
  if (cp < 0x80)
    put_byte (p, cp);
  else if (cp < 0x800) {
    put_byte (p, 0xc0 | cp >> 6);
    put_byte (p, 0x80 | (cp & 0x3f));
  }
  else if (cp < 0x10000) {
    put_byte (p, 0xe0 | cp >> 12);
    put_byte (p, 0x80 | ((cp >> 6) & 0x3f));
    put_byte (p, 0x80 | (cp & 0x3f));
  }
  else {
    put_byte (p, 0xf0 | cp >> 18);
    put_byte (p, 0x80 | ((cp >> 12) & 0x3f));
    put_byte (p, 0x80 | ((cp >> 6) & 0x3f));
    put_byte (p, 0x80 | (cp & 0x3f));
  }
}

static int
hex4 (struct parser *p, uint32_t *v)
{
  int i, c;

  *v = 0;
  for (i = 0; i < 4; i++, p->pos++) {
    c = peek (p);
    if (c >= '0' && c <= '9')
      *v = *v << 4 | (c - '0');
    else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f')
      *v = *v << 4 | ((c | 0x20) - 'a' + 10);
    else
      return fail (p, "bad \\u escape");
  }
  return 0;
}

/* After "\u": one code point, a surrogate pair counted as one. */
static int
unicode_escape (struct parser *p)
{
  uint32_t hi, lo;

  if (hex4 (p, &hi) == -1)
    return -1;
  if (hi == 0)
    return fail (p, "\\u0000 is not allowed");
  if (hi >= 0xdc00 && hi <= 0xdfff)
    return fail (p, "lone low surrogate");
  if (hi >= 0xd800 && hi <= 0xdbff) {
    if (p->pos + 2 > p->len || p->s[p->pos] != '\\' ||
        p->s[p->pos + 1] != 'u')
      return fail (p, "high surrogate without its low half");
    p->pos += 2;
    if (hex4 (p, &lo) == -1)
      return -1;
    if (lo < 0xdc00 || lo > 0xdfff)
      return fail (p, "high surrogate without its low half");
    hi = 0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00);
  }
  put_utf8 (p, hi);
  return 0;
}

static int
escape (struct parser *p)
{
  static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
  const char *e;
  int c = peek (p);

  if (c == 'u') {
    p->pos++;
    return unicode_escape (p);
  }
  e = c > 0 ? strchr (from, c) : NULL;
  if (e == NULL)
    return fail (p, "bad escape");
  put_byte (p, to[e - from]);
  p->pos++;
  return 0;
}

/* Copy one raw UTF-8 sequence starting with lead byte C, checked:
 * no overlong forms, no surrogates, nothing above U+10FFFF.
 */
static int
utf8_sequence (struct parser *p, int c)
{
  uint32_t cp, min;
  int n, i, b;

  if (c >= 0xc2 && c <= 0xdf) { n = 1; cp = c & 0x1f; min = 0x80; }
  else if (c >= 0xe0 && c <= 0xef) { n = 2; cp = c & 0x0f; min = 0x800; }
  else if (c >= 0xf0 && c <= 0xf4) { n = 3; cp = c & 0x07; min = 0x10000; }
  else
    return fail (p, "invalid UTF-8");
  for (i = 1; i <= n; i++) {
    b = p->pos + i < p->len ? (unsigned char) p->s[p->pos + i] : -1;
    if ((b & 0xc0) != 0x80)
      return fail (p, "invalid UTF-8");
    cp = cp << 6 | (b & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
    return fail (p, "invalid UTF-8");
  for (i = 0; i <= n; i++)
    put_byte (p, p->s[p->pos + i]);
  p->pos += n + 1;
  return 0;
}

/* A string at p->pos (on its '"'); its decoded text in the arena. */
static const char *
parse_string (struct parser *p)
{
  const char *start = p->doc->strings + p->arena_used;
  int c;

  p->pos++;
  for (;;) {
    c = peek (p);
    if (c == -1) {
      fail (p, "unterminated string");
      return NULL;
    }
    if (c == '"')
      break;
    if (c < 0x20) {
      fail (p, "control character in a string");
      return NULL;
    }
    if (c == '\\') {
      p->pos++;
      if (escape (p) == -1)
        return NULL;
    }
    else if (c >= 0x80) {
      if (utf8_sequence (p, c) == -1)
        return NULL;
    }
    else {
      put_byte (p, c);
      p->pos++;
    }
  }
  p->pos++;
  put_byte (p, '\0');
  return start;
}

static size_t
digits (struct parser *p)
{
  size_t n = 0;

  while (peek (p) >= '0' && peek (p) <= '9') {
    p->pos++;
    n++;
  }
  return n;
}

/* -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? kept as written. */
static const char *
parse_number (struct parser *p)
{
  size_t start = p->pos;
  char *out = p->doc->strings + p->arena_used;

  if (peek (p) == '-')
    p->pos++;
  if (peek (p) == '0')
    p->pos++;
  else if (digits (p) == 0)
    goto bad;
  if (peek (p) == '.') {
    p->pos++;
    if (digits (p) == 0)
      goto bad;
  }
  if (peek (p) == 'e' || peek (p) == 'E') {
    p->pos++;
    if (peek (p) == '+' || peek (p) == '-')
      p->pos++;
    if (digits (p) == 0)
      goto bad;
  }
  memcpy (out, p->s + start, p->pos - start);
  out[p->pos - start] = '\0';
  p->arena_used += p->pos - start + 1;
  return out;
 bad:
  fail (p, "bad number");
  return NULL;
}

static uint32_t parse_value (struct parser *p, unsigned depth);

static bool
duplicate_key (struct parser *p, uint32_t obj, const char *key)
{
  uint32_t i;

  for (i = p->doc->nodes[obj].child; i; i = p->doc->nodes[i].next)
    if (strcmp (p->doc->nodes[i].key, key) == 0)
      return true;
  return false;
}

/* The members of an object or elements of an array, after its opening
 * bracket, up to CLOSE.
 */
static int
parse_children (struct parser *p, uint32_t parent, int close,
                unsigned depth)
{
  uint32_t last = 0, child;
  const char *key = NULL;

  skip_space (p);
  if (peek (p) == close) {
    p->pos++;
    return 0;
  }
  for (;;) {
    if (close == '}') {
      if (peek (p) != '"')
        return fail (p, "expected a member name");
      key = parse_string (p);
      if (key == NULL)
        return -1;
      if (duplicate_key (p, parent, key))
        return fail (p, "duplicate member \"%s\"", key);
      skip_space (p);
      if (peek (p) != ':')
        return fail (p, "expected ':'");
      p->pos++;
    }
    child = parse_value (p, depth + 1);
    if (child == 0)
      return -1;
    p->doc->nodes[child].key = key;
    if (last)
      p->doc->nodes[last].next = child;
    else
      p->doc->nodes[parent].child = child;
    last = child;
    skip_space (p);
    if (peek (p) == close) {
      p->pos++;
      return 0;
    }
    if (peek (p) != ',')
      return fail (p, "expected ',' or '%c'", close);
    p->pos++;
    skip_space (p);
  }
}

static uint32_t
parse_literal (struct parser *p, const char *word, enum luks_json_type type)
{
  size_t n = strlen (word);

  if (p->len - p->pos < n || memcmp (p->s + p->pos, word, n) != 0) {
    fail (p, "unexpected character");
    return 0;
  }
  p->pos += n;
  return new_node (p, type);
}

static uint32_t
parse_value (struct parser *p, unsigned depth)
{
  uint32_t n;
  int c;

  if (depth > LUKS_JSON_MAX_DEPTH) {
    fail (p, "nested more than %d deep", LUKS_JSON_MAX_DEPTH);
    return 0;
  }
  skip_space (p);
  c = peek (p);
  switch (c) {
  case '{':
  case '[':
    n = new_node (p, c == '{' ? LUKS_JSON_OBJECT : LUKS_JSON_ARRAY);
    p->pos++;
    if (n && parse_children (p, n, c == '{' ? '}' : ']', depth) == -1)
      return 0;
    return n;
  case '"':
    n = new_node (p, LUKS_JSON_STRING);
    if (n && (p->doc->nodes[n].text = parse_string (p)) == NULL)
      return 0;
    return n;
  case 't': return parse_literal (p, "true", LUKS_JSON_TRUE);
  case 'f': return parse_literal (p, "false", LUKS_JSON_FALSE);
  case 'n': return parse_literal (p, "null", LUKS_JSON_NULL);
  default:
    if (c != '-' && (c < '0' || c > '9')) {
      fail (p, c == -1 ? "unexpected end" : "unexpected character");
      return 0;
    }
    n = new_node (p, LUKS_JSON_NUMBER);
    if (n && (p->doc->nodes[n].text = parse_number (p)) == NULL)
      return 0;
    return n;
  }
}

int
luks_json_parse (const char *text, size_t len, struct luks_json *doc,
                 char *err, size_t err_len)
{
  struct parser p = { text, len, 0, doc, 0, err, err_len };

  memset (doc, 0, sizeof *doc);
  err[0] = '\0';
  /* A decoded string is never longer than its source plus its NUL. */
  doc->strings = malloc (2 * len + 1);
  if (doc->strings == NULL)
    goto out_fail;
  new_node (&p, LUKS_JSON_NULL);          /* node 0: "none" */
  if (doc->nr_nodes != 1)
    goto out_fail;
  if (parse_value (&p, 0) == 0)
    goto out_fail;
  skip_space (&p);
  if (p.pos != len) {
    fail (&p, "text after the end of the value");
    goto out_fail;
  }
  return 0;
 out_fail:
  if (err[0] == '\0')
    fail (&p, "out of memory");
  luks_json_free (doc);
  return -1;
}

void
luks_json_free (struct luks_json *doc)
{
  free (doc->nodes);
  free (doc->strings);
  memset (doc, 0, sizeof *doc);
}

const struct luks_json_node *
luks_json_root (const struct luks_json *doc)
{
  return doc->nr_nodes > 1 ? &doc->nodes[1] : NULL;
}

const struct luks_json_node *
luks_json_first (const struct luks_json *doc, const struct luks_json_node *n)
{
  return n && n->child ? &doc->nodes[n->child] : NULL;
}

const struct luks_json_node *
luks_json_next (const struct luks_json *doc, const struct luks_json_node *n)
{
  return n && n->next ? &doc->nodes[n->next] : NULL;
}

const struct luks_json_node *
luks_json_get (const struct luks_json *doc, const struct luks_json_node *obj,
               const char *key)
{
  const struct luks_json_node *n;

  if (obj == NULL || obj->type != LUKS_JSON_OBJECT)
    return NULL;
  for (n = luks_json_first (doc, obj); n; n = luks_json_next (doc, n))
    if (strcmp (n->key, key) == 0)
      return n;
  return NULL;
}

const char *
luks_json_string (const struct luks_json_node *n)
{
  return n && n->type == LUKS_JSON_STRING ? n->text : NULL;
}

int
luks_json_u64 (const struct luks_json_node *n, uint64_t *v)
{
  const char *s;
  uint64_t r = 0;

  if (n == NULL ||
      (n->type != LUKS_JSON_STRING && n->type != LUKS_JSON_NUMBER))
    return -1;
  s = n->text;
  if (*s == '\0' || (s[0] == '0' && s[1] != '\0'))
    return -1;
  for (; *s; s++) {
    if (*s < '0' || *s > '9' || r > (UINT64_MAX - (*s - '0')) / 10)
      return -1;
    r = r * 10 + (*s - '0');
  }
  *v = r;
  return 0;
}

static int
b64_value (char c)
{
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

int
luks_base64_decode (const char *s, uint8_t *out, size_t out_max,
                    size_t *out_len)
{
  size_t len = strlen (s), i, o = 0;
  int v[4], j, pad;
  uint32_t w;

  if (len % 4 != 0)
    return -1;
  for (i = 0; i < len; i += 4) {
    pad = 0;
    for (j = 0; j < 4; j++) {
      /* '=' only as the last one or two characters of the text. */
      if (s[i + j] == '=' && i + 4 == len && j >= 2 &&
          (j == 3 || s[i + 3] == '=')) {
        v[j] = 0;
        pad++;
      }
      else if ((v[j] = b64_value (s[i + j])) == -1)
        return -1;
    }
    w = (uint32_t) v[0] << 18 | v[1] << 12 | v[2] << 6 | v[3];
    if (o + 3 - pad > out_max)
      return -1;
    out[o++] = w >> 16;
    if (pad < 2)
      out[o++] = w >> 8;
    if (pad < 1)
      out[o++] = w;
  }
  *out_len = o;
  return 0;
}
