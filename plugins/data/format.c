/* nbdsrv data plugin: parser and evaluator of the data= mini-language
 * (see format.h and docs/nbdkit-data-plugin.md).
 *
 * The string is parsed into a tree first and evaluated afterwards,
 * because \NAME assignments are closures: a name stands for the
 * expression it was given together with the names visible at that
 * point, and it is only evaluated (files read, scripts run, slices
 * checked) where it is used.  Everything the parser allocates lives
 * in one arena that is freed when data_format_parse returns.
 *
 * Behaviour that nbdkit 1.32 shows and this file reproduces on purpose:
 *   - numbers are read as scanf's %i would: "08" is the byte 0 then
 *     the byte 8, "0x" alone is 0, and a byte value is cut to 32 bits
 *     before the 0..255 check;
 *   - @+N, @-N, @^N, *N and slice bounds may have white space and a
 *     sign before the number, @N and bytes may not;
 *   - in a slice [N:M] an omitted N is 0 and an omitted or negative M
 *     is the end; N equal to M (both given or both -1) is empty;
 *   - a file name runs to the next white space, ')', '*' or '[';
 *   - <(SCRIPT) ends at the parenthesis that balances the opening one,
 *     counting every parenthesis, even quoted ones.
 */

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "format.h"

/* Guards against stack exhaustion on hostile input: nesting of ( ),
 * $VAR expansion and \NAME evaluation all recurse.
 */
#define DATA_MAX_DEPTH 200

/* More separate writes than this means a pathological expression such
 * as (@4096 1)*1000000000; refuse it instead of exhausting memory.
 */
#define DATA_MAX_WRITES (UINT64_C (1) << 22)

#define DATA_MAX_OFFSET ((uint64_t) INT64_MAX)

enum node_type {
  NODE_BYTE,                    /* n = value */
  NODE_STRING,                  /* text, text_len */
  NODE_FILE,                    /* text = path */
  NODE_SCRIPT,                  /* text = shell script */
  NODE_GROUP,                   /* items: ( ... ) or $VAR, own scope */
  NODE_NAME,                    /* text = name without backslash */
  NODE_ASSIGN,                  /* child -> \text */
  NODE_REPEAT,                  /* child * n */
  NODE_SLICE,                   /* child [slice_n:slice_m] */
  NODE_OFFSET,                  /* @n */
  NODE_FORWARD,                 /* @+n */
  NODE_BACKWARD,                /* @-n */
  NODE_ALIGN,                   /* @^n */
};

struct node {
  enum node_type type;
  const char *source;           /* arena: "data" or "$NAME", for errors */
  size_t pos;                   /* offset of the node in its source */
  uint64_t n;
  int64_t slice_n, slice_m;
  char *text;                   /* arena */
  size_t text_len;
  struct node *child;
  struct node **items;          /* malloc'd, freed with the arena */
  size_t nr_items, cap_items;
};

/* One name binding.  ENV is what the expression sees when evaluated:
 * the bindings that existed when it was assigned.
 */
struct binding {
  const char *name;
  const struct node *expr;
  const struct binding *env;
  const struct binding *next;
};

struct arena_chunk {
  struct arena_chunk *next;
  void *extra;                  /* malloc'd array hung off a node */
  max_align_t data[];
};

struct ctx {
  struct arena_chunk *arena;
  data_format_lookup_fn lookup;
  void *opaque;
  struct data_format *out;      /* receives the first error */
  bool failed;
  unsigned depth;
};

static void
set_error (struct ctx *c, const char *source, size_t pos,
           const char *fmt, ...)
{
  va_list args;

  if (c->failed)
    return;
  c->failed = true;
  va_start (args, fmt);
  vsnprintf (c->out->error, sizeof c->out->error, fmt, args);
  va_end (args);
  snprintf (c->out->error_source, sizeof c->out->error_source, "%s",
            source);
  c->out->error_pos = pos;
}

static void *
arena_alloc (struct ctx *c, size_t size)
{
  struct arena_chunk *chunk;

  chunk = calloc (1, sizeof *chunk + size);
  if (chunk == NULL)
    return NULL;
  chunk->next = c->arena;
  c->arena = chunk;
  return chunk->data;
}

static void
arena_free (struct ctx *c)
{
  struct arena_chunk *next;

  while (c->arena) {
    next = c->arena->next;
    free (c->arena->extra);
    free (c->arena);
    c->arena = next;
  }
}

static char *
arena_strndup (struct ctx *c, const char *s, size_t len)
{
  char *r = arena_alloc (c, len + 1);

  if (r)
    memcpy (r, s, len);
  return r;
}

static struct node *
node_new (struct ctx *c, enum node_type type, const char *source,
          size_t pos)
{
  struct node *node = arena_alloc (c, sizeof *node);

  if (node == NULL) {
    set_error (c, source, pos, "out of memory");
    return NULL;
  }
  node->type = type;
  node->source = source;
  node->pos = pos;
  return node;
}

/* The item array of a group is the one allocation that grows, so it
 * is malloc'd and remembered in the node's own arena chunk.
 */
static int
group_push (struct ctx *c, struct node *group, struct node *item)
{
  struct arena_chunk *chunk;
  struct node **items;
  size_t cap;

  if (group->nr_items == group->cap_items) {
    cap = group->cap_items ? group->cap_items * 2 : 8;
    items = realloc (group->items, cap * sizeof *items);
    if (items == NULL) {
      set_error (c, item->source, item->pos, "out of memory");
      return -1;
    }
    chunk = (struct arena_chunk *) ((char *) group
                                    - offsetof (struct arena_chunk, data));
    chunk->extra = items;
    group->items = items;
    group->cap_items = cap;
  }
  group->items[group->nr_items++] = item;
  return 0;
}

static bool
is_offset_node (const struct node *node)
{
  return node->type == NODE_OFFSET || node->type == NODE_FORWARD ||
    node->type == NODE_BACKWARD || node->type == NODE_ALIGN;
}

/* Read an integer at *PP as scanf's %lli would: optional white space
 * (if SKIP_SPACE), optional sign, then 0x hex, 0 octal or decimal.
 * Values that do not fit saturate at INT64_MIN/INT64_MAX.  Returns
 * false, leaving *PP alone, if there is no number.
 */
static bool
scan_int (const char *s, size_t *pp, bool skip_space, int64_t *value)
{
  size_t p = *pp;
  bool negative = false, overflow = false, any = false;
  unsigned base = 10, digit;
  uint64_t v = 0;

  if (skip_space)
    while (isspace ((unsigned char) s[p]))
      p++;
  if (s[p] == '+' || s[p] == '-')
    negative = s[p++] == '-';
  if (s[p] == '0' && (s[p+1] == 'x' || s[p+1] == 'X')) {
    base = 16;
    p += 2;
    any = true;                 /* "0x" alone reads as 0, as in glibc */
  }
  else if (s[p] == '0')
    base = 8;

  for (;; p++) {
    if (isdigit ((unsigned char) s[p]))
      digit = s[p] - '0';
    else if (base == 16 && isxdigit ((unsigned char) s[p]))
      digit = tolower ((unsigned char) s[p]) - 'a' + 10;
    else
      break;
    if (digit >= base)
      break;
    any = true;
    if (v > (UINT64_MAX - digit) / base)
      overflow = true;
    else
      v = v * base + digit;
  }
  if (!any)
    return false;

  if (negative)
    *value = overflow || v > (uint64_t) INT64_MAX + 1
      ? INT64_MIN : (int64_t) (0 - v);
  else
    *value = overflow || v > (uint64_t) INT64_MAX ? INT64_MAX : (int64_t) v;
  *pp = p;
  return true;
}

static struct node *parse_list (struct ctx *c, const char *source,
                                const char *s, size_t *pp, bool nested);

static struct node *
parse_byte (struct ctx *c, const char *source, const char *s, size_t *pp)
{
  size_t start = *pp;
  struct node *node;
  int64_t v;
  int32_t b;

  scan_int (s, pp, false, &v);
  /* %i stores into an int, which keeps only the low 32 bits. */
  b = (int32_t) (uint32_t) (uint64_t) v;
  if (b < 0 || b > 255) {
    set_error (c, source, start,
               "byte value %.*s is out of range: a BYTE must be 0..255, "
               "use le16:, be32: etc. for wider values",
               (int) (*pp - start), s + start);
    return NULL;
  }
  node = node_new (c, NODE_BYTE, source, start);
  if (node)
    node->n = b;
  return node;
}

/* le16:WORD, be32:WORD ...: the word runs to the next white space. */
static struct node *
parse_word (struct ctx *c, const char *source, const char *s, size_t *pp)
{
  static const char *const prefixes[] = {
    "le16:", "le32:", "le64:", "be16:", "be32:", "be64:",
  };
  size_t start = *pp, p, len, i, bytes;
  char *token, *end;
  unsigned long long v;
  struct node *node;
  bool big_endian;

  for (i = 0; i < 6; ++i)
    if (strncmp (s + start, prefixes[i], 5) == 0)
      break;
  if (i == 6) {
    set_error (c, source, start,
               "expected le16:, le32:, le64:, be16:, be32: or be64: "
               "followed by a number");
    return NULL;
  }
  big_endian = s[start] == 'b';
  bytes = (i % 3 == 0) ? 2 : (i % 3 == 1) ? 4 : 8;

  p = start + 5;
  for (len = 0; s[p+len] && !isspace ((unsigned char) s[p+len]); ++len)
    ;
  token = arena_strndup (c, s + p, len);
  if (token == NULL) {
    set_error (c, source, start, "out of memory");
    return NULL;
  }
  if (len == 0) {
    set_error (c, source, p, "%.4s: a number must follow the colon",
               s + start);
    return NULL;
  }
  if (token[0] == '-') {
    set_error (c, source, p, "%.4s:%s: the number must not be negative",
               s + start, token);
    return NULL;
  }
  errno = 0;
  v = strtoull (token, &end, 0);
  if (end == token || *end != '\0') {
    set_error (c, source, p, "%.4s:%s: not a number (trailing '%s')",
               s + start, token, end);
    return NULL;
  }
  if (errno == ERANGE || (bytes < 8 && v >> (bytes * 8) != 0)) {
    set_error (c, source, p, "%.4s:%s: the number does not fit in %zu bits",
               s + start, token, bytes * 8);
    return NULL;
  }

  node = node_new (c, NODE_STRING, source, start);
  if (node == NULL)
    return NULL;
  node->text = arena_alloc (c, bytes);
  if (node->text == NULL) {
    set_error (c, source, start, "out of memory");
    return NULL;
  }
  node->text_len = bytes;
  for (i = 0; i < bytes; ++i) {
    unsigned shift = big_endian ? (bytes - 1 - i) * 8 : i * 8;
    node->text[i] = (v >> shift) & 0xff;
  }
  *pp = p + len;
  return node;
}

/* @N, @+N, @-N, @^N */
static struct node *
parse_offset (struct ctx *c, const char *source, const char *s, size_t *pp)
{
  size_t start = *pp, p = start + 1;
  enum node_type type;
  struct node *node;
  int64_t v = 0;
  char op = s[p];

  if (isdigit ((unsigned char) op)) {
    type = NODE_OFFSET;
    scan_int (s, &p, false, &v);
  }
  else if (op == '+' || op == '-' || op == '^') {
    type = op == '+' ? NODE_FORWARD : op == '-' ? NODE_BACKWARD : NODE_ALIGN;
    p++;
    if (!scan_int (s, &p, true, &v)) {
      set_error (c, source, p, "@%c must be followed by a number", op);
      return NULL;
    }
    if (v < 0) {
      set_error (c, source, start, "@%c%" PRIi64 ": N must not be negative",
                 op, v);
      return NULL;
    }
    if (type == NODE_ALIGN && (v == 0 || (v & (v - 1)) != 0)) {
      set_error (c, source, start,
                 "@^%" PRIi64 ": the alignment must be a power of 2",
                 v);
      return NULL;
    }
  }
  else {
    set_error (c, source, p,
               "@ must be followed by OFFSET, +N, -N or ^ALIGNMENT");
    return NULL;
  }

  node = node_new (c, type, source, start);
  if (node)
    node->n = v;
  *pp = p;
  return node;
}

static int
hexval (char ch)
{
  return isdigit ((unsigned char) ch) ? ch - '0'
    : tolower ((unsigned char) ch) - 'a' + 10;
}

/* "STRING" with C escapes.  \xNN is supported; octal and \u escapes
 * are refused, as in nbdkit 1.32, instead of guessing their meaning.
 */
static struct node *
parse_string (struct ctx *c, const char *source, const char *s, size_t *pp)
{
  size_t start = *pp, p = start + 1, len = 0;
  struct node *node;
  char *buf, ch;

  /* The decoded string is never longer than the source text. */
  buf = arena_alloc (c, strlen (s + p) + 1);
  if (buf == NULL) {
    set_error (c, source, start, "out of memory");
    return NULL;
  }

  for (; s[p] != '"'; p++) {
    if (s[p] == '\0') {
      set_error (c, source, start,
                 "unterminated string: add the closing '\"'");
      return NULL;
    }
    if (s[p] != '\\') {
      buf[len++] = s[p];
      continue;
    }
    ch = s[++p];
    switch (ch) {
    case '\0':
      set_error (c, source, start,
                 "unterminated string: add the closing '\"'");
      return NULL;
    case 'a': buf[len++] = '\a'; break;
    case 'b': buf[len++] = '\b'; break;
    case 'f': buf[len++] = '\f'; break;
    case 'n': buf[len++] = '\n'; break;
    case 'r': buf[len++] = '\r'; break;
    case 't': buf[len++] = '\t'; break;
    case 'v': buf[len++] = '\v'; break;
    case 'x':
      if (!isxdigit ((unsigned char) s[p+1]) ||
          !isxdigit ((unsigned char) s[p+2])) {
        set_error (c, source, p - 1,
                   "\\x must be followed by exactly two hex digits");
        return NULL;
      }
      buf[len++] = hexval (s[p+1]) * 16 + hexval (s[p+2]);
      p += 2;
      break;
    case '0': case '1': case '2': case '3':
    case '4': case '5': case '6': case '7':
    case 'u': case 'U':
      set_error (c, source, p - 1,
                 "octal and unicode escapes are not supported in strings: "
                 "use \\xNN or a byte outside the string");
      return NULL;
    default:
      /* \\, \", \' and any other character stand for themselves. */
      buf[len++] = ch;
    }
  }

  node = node_new (c, NODE_STRING, source, start);
  if (node) {
    node->text = buf;
    node->text_len = len;
  }
  *pp = p + 1;
  return node;
}

/* <FILE or <(SCRIPT) */
static struct node *
parse_input (struct ctx *c, const char *source, const char *s, size_t *pp)
{
  size_t start = *pp, p = start + 1, len;
  unsigned level;
  struct node *node;

  if (s[p] == '(') {
    level = 1;
    for (len = 0; s[p+1+len]; ++len) {
      if (s[p+1+len] == '(')
        level++;
      else if (s[p+1+len] == ')' && --level == 0)
        break;
    }
    if (level != 0) {
      set_error (c, source, start,
                 "<(SCRIPT) has no closing ')': parentheses in the script "
                 "must balance");
      return NULL;
    }
    node = node_new (c, NODE_SCRIPT, source, start);
    p += 1 + len + 1;
  }
  else {
    for (len = 0; s[p+len] && !strchr (")*[", s[p+len]) &&
           !isspace ((unsigned char) s[p+len]); ++len)
      ;
    if (len == 0) {
      set_error (c, source, start,
                 "<FILE: the file name must follow '<' without a space");
      return NULL;
    }
    node = node_new (c, NODE_FILE, source, start);
    p += len;
  }
  if (node == NULL)
    return NULL;
  node->text = arena_strndup (c, s + (node->type == NODE_SCRIPT
                                      ? start + 2 : start + 1), len);
  if (node->text == NULL) {
    set_error (c, source, start, "out of memory");
    return NULL;
  }
  node->text_len = len;
  *pp = p;
  return node;
}

static size_t
name_length (const char *s, bool allow_dash)
{
  size_t len = 0;

  while (isalnum ((unsigned char) s[len]) || s[len] == '_' ||
         (allow_dash && s[len] == '-'))
    len++;
  return len;
}

/* \NAME, used both for references and after -> */
static char *
parse_name (struct ctx *c, const char *source, const char *s, size_t *pp)
{
  size_t p = *pp, len;
  char *name;

  if (s[p] != '\\' || (len = name_length (s + p + 1, true)) == 0) {
    set_error (c, source, p,
               "expected \\NAME (letters, digits, '-' and '_')");
    return NULL;
  }
  name = arena_strndup (c, s + p + 1, len);
  if (name == NULL)
    set_error (c, source, p, "out of memory");
  *pp = p + 1 + len;
  return name;
}

/* $VAR: the value is parsed now, as its own scope. */
static struct node *
parse_var (struct ctx *c, const char *source, const char *s, size_t *pp)
{
  size_t start = *pp, len = name_length (s + start + 1, false), p0 = 0;
  const char *value = NULL;
  char *name, *label;
  struct node *node;

  if (len == 0) {
    set_error (c, source, start,
               "$ must be followed by a variable name");
    return NULL;
  }
  name = arena_strndup (c, s + start + 1, len);
  label = arena_alloc (c, len + 2);
  if (name == NULL || label == NULL) {
    set_error (c, source, start, "out of memory");
    return NULL;
  }
  label[0] = '$';
  memcpy (label + 1, name, len);

  if (c->lookup)
    value = c->lookup (name, c->opaque);
  if (value == NULL) {
    set_error (c, source, start,
               "$%s is not set: pass %s=... as a parameter or set it "
               "in the environment", name, name);
    return NULL;
  }
  if (c->depth >= DATA_MAX_DEPTH) {
    set_error (c, source, start,
               "$%s: variables nest more than %d deep (does it refer to "
               "itself?)", name, DATA_MAX_DEPTH);
    return NULL;
  }
  c->depth++;
  node = parse_list (c, label, value, &p0, false);
  c->depth--;
  *pp = start + 1 + len;
  return node;
}

/* [N:M] after an expression; -1 marks an omitted bound. */
static bool
parse_slice_bounds (const char *s, size_t *pp, int64_t *n, int64_t *m)
{
  size_t p = *pp + 1;

  *n = 0;
  *m = -1;
  if (s[p] != ':' && !scan_int (s, &p, true, n))
    return false;
  if (s[p] != ':')
    return false;
  p++;
  if (s[p] != ']' && !scan_int (s, &p, true, m))
    return false;
  if (s[p] != ']')
    return false;
  *pp = p + 1;
  return true;
}

/* *N, [N:M] and -> \NAME apply to the expression before them, which
 * is taken off the end of GROUP and wrapped.
 */
static int
parse_postfix (struct ctx *c, const char *source, const char *s,
               size_t *pp, struct node *group)
{
  size_t start = *pp, p = start;
  const char *what = s[p] == '*' ? "*N" : s[p] == '[' ? "[N:M]" : "->";
  struct node *prev, *node;
  int64_t v, m;

  if (group->nr_items == 0) {
    set_error (c, source, start, "%s must follow an expression", what);
    return -1;
  }
  prev = group->items[group->nr_items - 1];
  if (is_offset_node (prev)) {
    set_error (c, source, start,
               "%s cannot be applied to an @ offset: put the bytes in "
               "( ) first", what);
    return -1;
  }

  if (s[p] == '*') {
    p++;
    if (!scan_int (s, &p, true, &v)) {
      set_error (c, source, start, "*N: N must be a number");
      return -1;
    }
    if (v < 0) {
      set_error (c, source, start, "*%" PRIi64 ": N must not be negative",
                 v);
      return -1;
    }
    node = node_new (c, NODE_REPEAT, source, start);
    if (node)
      node->n = v;
  }
  else if (s[p] == '[') {
    if (!parse_slice_bounds (s, &p, &v, &m)) {
      set_error (c, source, start,
                 "malformed slice: use [N:M], [N:], [:M] or [:] with "
                 "numbers and no spaces before ':' or ']'");
      return -1;
    }
    node = node_new (c, NODE_SLICE, source, start);
    if (node) {
      node->slice_n = v;
      node->slice_m = m;
    }
  }
  else {
    if (s[p+1] != '>') {
      set_error (c, source, p + 1, "expected '->' (assignment)");
      return -1;
    }
    p += 2;
    while (isspace ((unsigned char) s[p]))
      p++;
    node = node_new (c, NODE_ASSIGN, source, start);
    if (node) {
      node->text = parse_name (c, source, s, &p);
      if (node->text == NULL)
        return -1;
    }
  }

  if (node == NULL)
    return -1;
  node->child = prev;
  group->items[group->nr_items - 1] = node;
  *pp = p;
  return 0;
}

/* Parse items up to the end of S, or up to the ')' closing a group
 * when NESTED.  Returns a NODE_GROUP, or NULL after set_error.  Every
 * iteration consumes at least one character, so the loop is bounded
 * by the length of S.
 */
static struct node *
parse_list (struct ctx *c, const char *source, const char *s, size_t *pp,
            bool nested)
{
  size_t open_pos = *pp > 0 ? *pp - 1 : 0, p = *pp;
  struct node *group, *item;
  char ch;

  group = node_new (c, NODE_GROUP, source, *pp);
  if (group == NULL)
    return NULL;

  for (;;) {
    ch = s[p];
    item = NULL;
    if (ch == '\0') {
      if (nested) {
        set_error (c, source, open_pos,
                   "unmatched '(': add the closing ')'");
        return NULL;
      }
      break;
    }
    if (isspace ((unsigned char) ch)) {
      p++;
      continue;
    }
    if (ch == '#') {
      while (s[p] && s[p] != '\n')
        p++;
      continue;
    }
    if (ch == ')') {
      if (!nested) {
        set_error (c, source, p, "unmatched ')': remove it or add '('");
        return NULL;
      }
      p++;
      break;
    }

    if (ch == '*' || ch == '[' || ch == '-') {
      if (parse_postfix (c, source, s, &p, group) == -1)
        return NULL;
      continue;
    }

    if (ch == '(') {
      if (c->depth >= DATA_MAX_DEPTH) {
        set_error (c, source, p, "( ) nest more than %d deep",
                   DATA_MAX_DEPTH);
        return NULL;
      }
      p++;
      c->depth++;
      item = parse_list (c, source, s, &p, true);
      c->depth--;
    }
    else if (isdigit ((unsigned char) ch))
      item = parse_byte (c, source, s, &p);
    else if (ch == 'l' || ch == 'b')
      item = parse_word (c, source, s, &p);
    else if (ch == '@')
      item = parse_offset (c, source, s, &p);
    else if (ch == '"')
      item = parse_string (c, source, s, &p);
    else if (ch == '<')
      item = parse_input (c, source, s, &p);
    else if (ch == '$')
      item = parse_var (c, source, s, &p);
    else if (ch == '\\') {
      size_t start = p;
      char *name = parse_name (c, source, s, &p);

      if (name == NULL)
        return NULL;
      item = node_new (c, NODE_NAME, source, start);
      if (item)
        item->text = name;
    }
    else {
      set_error (c, source, p, "unexpected character '%c'", ch);
      return NULL;
    }

    if (item == NULL || group_push (c, group, item) == -1)
      return NULL;
  }

  *pp = p;
  return group;
}

/* ---- Evaluation ---- */

static void
writes_clear (struct data_format *v)
{
  size_t i;

  for (i = 0; i < v->nr_writes; ++i)
    free (v->writes[i].bytes);
  free (v->writes);
  v->writes = NULL;
  v->nr_writes = v->cap_writes = 0;
}

/* Append one write to V, merging it into the last write when they are
 * of the same kind and adjacent, so that long runs stay one write.
 */
static int
add_write (struct ctx *c, const struct node *at, struct data_format *v,
           enum data_write_kind kind, uint64_t offset, uint64_t len,
           const unsigned char *bytes)
{
  struct data_write *last = v->nr_writes ? &v->writes[v->nr_writes-1] : NULL;
  struct data_write *w;
  unsigned char *buf;
  size_t cap;

  if (len == 0)
    return 0;

  if (last && last->kind == kind && last->offset + last->len == offset) {
    if (kind == DATA_WRITE_BYTES) {
      if (last->len + len > last->cap) {
        cap = last->cap * 2 > last->len + len ? last->cap * 2
          : last->len + len;
        buf = realloc (last->bytes, cap);
        if (buf == NULL)
          goto out_nomem;
        last->bytes = buf;
        last->cap = cap;
      }
      memcpy (last->bytes + last->len, bytes, len);
    }
    last->len += len;
    return 0;
  }

  if (v->nr_writes >= DATA_MAX_WRITES) {
    set_error (c, at->source, at->pos,
               "more than %" PRIu64 " separate pieces of data: the "
               "expression is too fragmented", DATA_MAX_WRITES);
    return -1;
  }
  if (v->nr_writes == v->cap_writes) {
    cap = v->cap_writes ? v->cap_writes * 2 : 4;
    w = realloc (v->writes, cap * sizeof *w);
    if (w == NULL)
      goto out_nomem;
    v->writes = w;
    v->cap_writes = cap;
  }
  w = &v->writes[v->nr_writes];
  memset (w, 0, sizeof *w);
  w->kind = kind;
  w->offset = offset;
  w->len = len;
  if (kind == DATA_WRITE_BYTES) {
    w->bytes = malloc (len);
    if (w->bytes == NULL)
      goto out_nomem;
    memcpy (w->bytes, bytes, len);
    w->cap = len;
  }
  v->nr_writes++;
  return 0;

 out_nomem:
  set_error (c, at->source, at->pos, "out of memory building the disk");
  return -1;
}

/* Copy the writes of SRC into DST, shifted by SHIFT and clipped to the
 * window [FROM, TO) of SRC.
 */
static int
copy_writes (struct ctx *c, const struct node *at, struct data_format *dst,
             const struct data_format *src, uint64_t shift,
             uint64_t from, uint64_t to)
{
  const struct data_write *w;
  uint64_t start, end;
  size_t i;

  for (i = 0; i < src->nr_writes; ++i) {
    w = &src->writes[i];
    start = w->offset > from ? w->offset : from;
    end = w->offset + w->len < to ? w->offset + w->len : to;
    if (start >= end)
      continue;
    if (add_write (c, at, dst, w->kind, start - from + shift, end - start,
                   w->bytes ? w->bytes + (start - w->offset) : NULL) == -1)
      return -1;
  }
  return 0;
}

static int
check_end (struct ctx *c, const struct node *at, uint64_t offset,
           uint64_t len)
{
  if (offset > DATA_MAX_OFFSET || len > DATA_MAX_OFFSET - offset) {
    set_error (c, at->source, at->pos,
               "the data would extend beyond the largest disk size "
               "(2^63-1 bytes)");
    return -1;
  }
  return 0;
}

/* Read at most LIMIT bytes of FP into V. */
static int
read_stream (struct ctx *c, const struct node *at, FILE *fp,
             uint64_t limit, struct data_format *v)
{
  unsigned char buf[65536];
  size_t n, want;

  while (v->size < limit) {
    want = limit - v->size < sizeof buf ? limit - v->size : sizeof buf;
    n = fread (buf, 1, want, fp);
    if (n == 0)
      break;
    if (add_write (c, at, v, DATA_WRITE_BYTES, v->size, n, buf) == -1)
      return -1;
    v->size += n;
  }
  if (ferror (fp)) {
    set_error (c, at->source, at->pos, "%s: read error: %s",
               at->type == NODE_SCRIPT ? "<(SCRIPT)" : at->text,
               strerror (errno));
    return -1;
  }
  return 0;
}

/* <FILE or <(SCRIPT), reading at most LIMIT bytes so that slices of
 * endless inputs such as </dev/urandom[:512] or <(yes)[:10] work.
 */
static int
eval_input (struct ctx *c, const struct node *node, uint64_t limit,
            struct data_format *v)
{
  FILE *fp;
  int r, status;

  if (node->type == NODE_FILE) {
    fp = fopen (node->text, "rb");
    if (fp == NULL) {
      set_error (c, node->source, node->pos, "<%s: %s", node->text,
                 strerror (errno));
      return -1;
    }
    r = read_stream (c, node, fp, limit, v);
    fclose (fp);
    return r;
  }

  fflush (NULL);
  fp = popen (node->text, "r");
  if (fp == NULL) {
    set_error (c, node->source, node->pos, "<(SCRIPT): cannot run: %s",
               strerror (errno));
    return -1;
  }
  r = read_stream (c, node, fp, limit, v);
  status = pclose (fp);
  /* A script cut short by the limit dies of SIGPIPE: that is fine. */
  if (r == 0 && v->size < limit &&
      (status == -1 || !WIFEXITED (status) || WEXITSTATUS (status) != 0)) {
    set_error (c, node->source, node->pos,
               "<(SCRIPT) failed with status %d: scripts must exit 0",
               status == -1 ? -1 : WIFEXITED (status)
               ? WEXITSTATUS (status) : 128 + WTERMSIG (status));
    return -1;
  }
  return r;
}

static int eval_node (struct ctx *c, const struct node *node,
                      const struct binding *env, struct data_format *v);

/* Evaluate the items of a group in a scope of their own. */
static int
eval_group (struct ctx *c, const struct node *group,
            const struct binding *env, struct data_format *v)
{
  struct data_format item = { 0 };
  const struct node *node;
  struct binding *b;
  uint64_t pos = 0;
  size_t i;

  for (i = 0; i < group->nr_items; ++i) {
    node = group->items[i];
    switch (node->type) {
    case NODE_OFFSET:
      pos = node->n;
      break;
    case NODE_FORWARD:
      if (check_end (c, node, pos, node->n) == -1)
        return -1;
      pos += node->n;
      break;
    case NODE_BACKWARD:
      if (node->n > pos) {
        set_error (c, node->source, node->pos,
                   "@-%" PRIu64 " would move before the start: the "
                   "current offset is only %" PRIu64, node->n, pos);
        return -1;
      }
      pos -= node->n;
      break;
    case NODE_ALIGN:
      if (check_end (c, node, pos, node->n - 1) == -1)
        return -1;
      pos = (pos + node->n - 1) & ~(node->n - 1);
      break;
    case NODE_ASSIGN:
      b = arena_alloc (c, sizeof *b);
      if (b == NULL) {
        set_error (c, node->source, node->pos, "out of memory");
        return -1;
      }
      b->name = node->text;
      b->expr = node->child;
      b->env = env;
      b->next = env;
      env = b;
      break;
    default:
      memset (&item, 0, sizeof item);
      if (eval_node (c, node, env, &item) == -1 ||
          check_end (c, node, pos, item.size) == -1 ||
          copy_writes (c, node, v, &item, pos, 0, item.size) == -1) {
        writes_clear (&item);
        return -1;
      }
      pos += item.size;
      writes_clear (&item);
    }
    if (pos > v->size)
      v->size = pos;
  }
  return 0;
}

static int
eval_repeat_bytes (struct ctx *c, const struct node *node,
                   struct data_format *one, uint64_t count,
                   struct data_format *v)
{
  struct data_write *w = &one->writes[0];
  uint64_t total = one->size * count, done;
  unsigned char *buf;

  if (total > SIZE_MAX || (buf = malloc (total)) == NULL) {
    set_error (c, node->source, node->pos,
               "*%" PRIu64 ": %" PRIu64 " bytes of data do not fit in "
               "memory", count, total);
    return -1;
  }
  memcpy (buf, w->bytes, w->len);
  for (done = w->len; done < total; done *= 2)
    memcpy (buf + done, buf, done < total - done ? done : total - done);

  /* Hand the buffer over instead of copying it once more. */
  free (w->bytes);
  w->bytes = buf;
  w->len = w->cap = total;
  one->size = total;
  *v = *one;
  memset (one, 0, sizeof *one);
  return 0;
}

static int
eval_repeat (struct ctx *c, const struct node *node,
             const struct binding *env, struct data_format *v)
{
  struct data_format one = { 0 };
  uint64_t i, count = node->n;
  int r = -1;

  if (eval_node (c, node->child, env, &one) == -1)
    goto out;
  if (one.size != 0 && count > DATA_MAX_OFFSET / one.size) {
    check_end (c, node, DATA_MAX_OFFSET, 1);
    goto out;
  }

  /* Whole-range zero runs stay one write however large the count. */
  if (one.nr_writes == 1 && one.writes[0].kind == DATA_WRITE_ZERO &&
      one.writes[0].offset == 0 && one.writes[0].len == one.size) {
    r = count ? add_write (c, node, v, DATA_WRITE_ZERO, 0,
                           one.size * count, NULL) : 0;
    v->size = one.size * count;
    goto out;
  }
  if (one.nr_writes == 0) {
    v->size = one.size * count;
    r = 0;
    goto out;
  }

  /* Whole-range bytes, such as 1*4096 or ("Hello")*2000, are built by
   * doubling, so the work is logarithmic in the count and an absurd
   * count fails at once in malloc instead of looping.
   */
  if (one.nr_writes == 1 && one.writes[0].offset == 0 &&
      one.writes[0].len == one.size && count > 1) {
    r = eval_repeat_bytes (c, node, &one, count, v);
    goto out;
  }

  /* Bounded by count, and count * nr_writes by DATA_MAX_WRITES unless
   * the copies merge into one write.
   */
  for (i = 0; i < count; ++i)
    if (copy_writes (c, node, v, &one, i * one.size, 0, one.size) == -1)
      goto out;
  v->size = one.size * count;
  r = 0;

 out:
  writes_clear (&one);
  return r;
}

static int
eval_slice (struct ctx *c, const struct node *node,
            const struct binding *env, struct data_format *v)
{
  struct data_format whole = { 0 };
  int64_t n = node->slice_n, m = node->slice_m;
  const struct node *child = node->child;
  int r = -1;

  /* An empty slice needs no evaluation; nbdkit does not check it. */
  if (n == m)
    return 0;

  if ((child->type == NODE_FILE || child->type == NODE_SCRIPT) && m >= 0)
    r = eval_input (c, child, m, &whole);
  else
    r = eval_node (c, child, env, &whole);
  if (r == -1)
    goto out;

  if (m < 0)
    m = whole.size;
  if (n < 0 || n > m || (uint64_t) m > whole.size) {
    set_error (c, node->source, node->pos,
               "[%" PRIi64 ":%" PRIi64 "] is not a valid slice of an "
               "expression of %" PRIu64 " bytes", n, m, whole.size);
    r = -1;
    goto out;
  }
  r = copy_writes (c, node, v, &whole, 0, n, m);
  v->size = m - n;

 out:
  writes_clear (&whole);
  return r;
}

static int
eval_node (struct ctx *c, const struct node *node,
           const struct binding *env, struct data_format *v)
{
  const struct binding *b;
  unsigned char byte;
  int r;

  if (c->depth >= DATA_MAX_DEPTH) {
    set_error (c, node->source, node->pos,
               "expressions nest more than %d deep", DATA_MAX_DEPTH);
    return -1;
  }

  c->depth++;
  switch (node->type) {
  case NODE_BYTE:
    byte = node->n;
    r = add_write (c, node, v, byte ? DATA_WRITE_BYTES : DATA_WRITE_ZERO,
                   0, 1, &byte);
    v->size = 1;
    break;
  case NODE_STRING:
    r = add_write (c, node, v, DATA_WRITE_BYTES, 0, node->text_len,
                   (unsigned char *) node->text);
    v->size = node->text_len;
    break;
  case NODE_FILE:
  case NODE_SCRIPT:
    r = eval_input (c, node, UINT64_MAX, v);
    break;
  case NODE_GROUP:
    r = eval_group (c, node, env, v);
    break;
  case NODE_NAME:
    for (b = env; b; b = b->next)
      if (strcmp (b->name, node->text) == 0)
        break;
    if (b == NULL) {
      set_error (c, node->source, node->pos,
                 "\\%s is not defined here: assign it first with "
                 "EXPR -> \\%s in this scope or an outer one",
                 node->text, node->text);
      r = -1;
    }
    else
      r = eval_node (c, b->expr, b->env, v);
    break;
  case NODE_ASSIGN:
    /* Used as a value (for example assigned again) it is empty. */
    r = 0;
    break;
  case NODE_REPEAT:
    r = eval_repeat (c, node, env, v);
    break;
  case NODE_SLICE:
    r = eval_slice (c, node, env, v);
    break;
  default:
    /* Offsets only occur as group items, handled by eval_group. */
    set_error (c, node->source, node->pos, "internal error: bad node");
    r = -1;
  }
  c->depth--;
  return r;
}

int
data_format_parse (const char *str, data_format_lookup_fn lookup,
                   void *opaque, struct data_format *out)
{
  struct ctx c = { .lookup = lookup, .opaque = opaque, .out = out };
  struct node *root;
  size_t p = 0;
  int r = -1;

  memset (out, 0, sizeof *out);
  root = parse_list (&c, "data", str, &p, false);
  if (root && eval_group (&c, root, NULL, out) == 0)
    r = 0;
  if (r == -1) {
    writes_clear (out);
    out->size = 0;
  }
  arena_free (&c);
  return r;
}

void
data_format_free (struct data_format *f)
{
  writes_clear (f);
}

static int
base64_value (char ch)
{
  if (ch >= 'A' && ch <= 'Z') return ch - 'A';
  if (ch >= 'a' && ch <= 'z') return ch - 'a' + 26;
  if (ch >= '0' && ch <= '9') return ch - '0' + 52;
  if (ch == '+') return 62;
  if (ch == '/') return 63;
  return -1;
}

int
data_base64_decode (const char *in, unsigned char **out, size_t *out_len)
{
  unsigned char *buf;
  unsigned quad[4];
  size_t n = 0, len = 0, pad = 0;
  const char *p;
  int v;

  buf = malloc (strlen (in) / 4 * 3 + 3);
  if (buf == NULL)
    return -1;

  for (p = in; *p; ++p) {
    if (isspace ((unsigned char) *p))
      continue;
    if (pad > 0 && *p != '=')
      goto out_bad;             /* data after the padding */
    if (*p == '=') {
      if (n < 2)
        goto out_bad;
      pad++;
      quad[n++] = 0;
    }
    else {
      if ((v = base64_value (*p)) == -1)
        goto out_bad;
      quad[n++] = v;
    }
    if (n == 4) {
      buf[len++] = quad[0] << 2 | quad[1] >> 4;
      if (pad < 2)
        buf[len++] = (quad[1] << 4 | quad[2] >> 2) & 0xff;
      if (pad < 1)
        buf[len++] = (quad[2] << 6 | quad[3]) & 0xff;
      n = 0;
      if (pad)
        pad = 3;                /* only white space may follow */
    }
  }
  if (n != 0)
    goto out_bad;
  *out = buf;
  *out_len = len;
  return 0;

 out_bad:
  free (buf);
  return -1;
}
