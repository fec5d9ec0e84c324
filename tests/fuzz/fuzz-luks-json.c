/* nbdsrv fuzz target: the luks filter's JSON reader and base64
 * decoder (filters/luks/luks-json.c), which read LUKSv2 metadata from
 * the disk, so from whoever wrote the disk.
 *
 * Input: the JSON text.  A document that parses must be a consistent
 * tree: every link inside the node array, members of objects named and
 * elements of arrays not, no text longer than the input, each member
 * found by its name; u64 and base64 are tried on every node and
 * string.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "luks-json.h"

#define REQUIRE(cond) do { if (!(cond)) {                               \
      fprintf (stderr, "fuzz-luks-json: broken promise: %s (line %d)\n", \
               #cond, __LINE__);                                         \
      abort ();                                                          \
    } } while (0)

static void
walk (const struct luks_json *doc, const struct luks_json_node *n,
      unsigned depth, size_t size)
{
  const struct luks_json_node *c;
  uint8_t out[256];
  size_t len;
  uint64_t v;

  REQUIRE (depth <= LUKS_JSON_MAX_DEPTH);
  REQUIRE (n->child < doc->nr_nodes && n->next < doc->nr_nodes);
  (void) luks_json_u64 (n, &v);
  if (n->type == LUKS_JSON_STRING) {
    REQUIRE (luks_json_string (n) != NULL);
    (void) luks_base64_decode (n->text, out, sizeof out, &len);
  }
  /* Decoding never lengthens: a text is no longer than the input. */
  if (n->type == LUKS_JSON_STRING || n->type == LUKS_JSON_NUMBER)
    REQUIRE (n->text != NULL && strlen (n->text) <= size);
  for (c = luks_json_first (doc, n); c; c = luks_json_next (doc, c)) {
    REQUIRE (n->type == LUKS_JSON_OBJECT || n->type == LUKS_JSON_ARRAY);
    REQUIRE ((c->key != NULL) == (n->type == LUKS_JSON_OBJECT));
    if (c->key)
      REQUIRE (luks_json_get (doc, n, c->key) == c);
    walk (doc, c, depth + 1, size);
  }
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  struct luks_json doc;
  char err[128];

  if (luks_json_parse ((const char *) data, size, &doc, err,
                       sizeof err) == -1) {
    REQUIRE (err[0] != '\0');
    REQUIRE (doc.nodes == NULL && doc.strings == NULL);
    return 0;
  }
  REQUIRE (luks_json_root (&doc) != NULL);
  walk (&doc, luks_json_root (&doc), 0, size);
  luks_json_free (&doc);
  return 0;
}
