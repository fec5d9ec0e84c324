/* nbdsrv luks filter: a small, strict JSON reader for the LUKSv2
 * metadata area, and the base64 its binary fields are written in.
 *
 * The whole text is parsed into a tree at once; nothing here logs or
 * calls the server, so the unit test (tests/unit/test-luks-json.c)
 * links it alone.  Strict: RFC 8259 grammar only (no comments, no
 * trailing commas, no leading zeros), valid UTF-8, no duplicate member
 * names, no "\u0000", nesting at most LUKS_JSON_MAX_DEPTH deep.
 */
#ifndef NBDSRV_LUKS_JSON_H
#define NBDSRV_LUKS_JSON_H

#include <stddef.h>
#include <stdint.h>

#define LUKS_JSON_MAX_DEPTH 32
#define LUKS_JSON_MAX_NODES 65536

enum luks_json_type {
  LUKS_JSON_NULL,
  LUKS_JSON_FALSE,
  LUKS_JSON_TRUE,
  LUKS_JSON_NUMBER,
  LUKS_JSON_STRING,
  LUKS_JSON_ARRAY,
  LUKS_JSON_OBJECT,
};

struct luks_json_node {
  enum luks_json_type type;
  const char *key;      /* member name inside an object, else NULL */
  const char *text;     /* STRING: decoded; NUMBER: as written */
  uint32_t child;       /* index of the first child, 0 if none */
  uint32_t next;        /* index of the next sibling, 0 if none */
};

/* Node 0 is unused, so that index 0 means "none"; the root is 1. */
struct luks_json {
  struct luks_json_node *nodes; /* owned */
  size_t nr_nodes, cap_nodes;
  char *strings;                /* owned: every key and text */
};

/* Parse TEXT[LEN] into DOC.  0, or -1 with a reason (and the byte
 * offset) in ERR[ERR_LEN] and DOC left empty.
 */
extern int luks_json_parse (const char *text, size_t len,
                            struct luks_json *doc,
                            char *err, size_t err_len);
extern void luks_json_free (struct luks_json *doc);

extern const struct luks_json_node *
luks_json_root (const struct luks_json *doc);

/* The member KEY of OBJ, or NULL (also when OBJ is not an object). */
extern const struct luks_json_node *
luks_json_get (const struct luks_json *doc, const struct luks_json_node *obj,
               const char *key);

/* Iterate over the members of an object or elements of an array:
 * first child, then next sibling; NULL at the end.
 */
extern const struct luks_json_node *
luks_json_first (const struct luks_json *doc,
                 const struct luks_json_node *n);
extern const struct luks_json_node *
luks_json_next (const struct luks_json *doc,
                const struct luks_json_node *n);

/* The text of a STRING node, or NULL for any other node (or N NULL). */
extern const char *luks_json_string (const struct luks_json_node *n);

/* An unsigned 64-bit integer written as a JSON integer or (as LUKSv2
 * does for offsets and sizes) as a string of decimal digits.  0, or -1
 * if N is missing, of another type, not an integer, or too large.
 */
extern int luks_json_u64 (const struct luks_json_node *n, uint64_t *v);

/* Decode standard padded base64 S into OUT[OUT_MAX].  0 with *OUT_LEN
 * set, or -1 if S is not valid base64 or does not fit.
 */
extern int luks_base64_decode (const char *s, uint8_t *out, size_t out_max,
                               size_t *out_len);

#endif /* NBDSRV_LUKS_JSON_H */
