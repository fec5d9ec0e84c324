/* nbdsrv luks filter: the LUKSv2 header (nbdkit 1.32 reads only v1).
 *
 * A 4096-byte binary header, then a JSON metadata area, the two
 * together HDR_SIZE bytes and checksummed; a second copy follows at
 * offset HDR_SIZE.  The JSON describes the data segment (offset, size,
 * cipher, sector size), the digest that checks the volume key, and the
 * key slots (each with its own KDF, anti-forensic hash, and area
 * cipher).  Everything is checked before use; anything this filter
 * does not implement (integrity, reencryption, several segments) is
 * refused with a message rather than served wrongly.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "luks.h"
#include "luks-json.h"

#define V2_BINARY        4096
#define V2_HDR_SIZE      8
#define V2_SEQID         16
#define V2_CSUM_ALG      72
#define V2_HDR_OFFSET    256
#define V2_CSUM          448
#define V2_CSUM_LEN      64

static const uint8_t magic_2nd[LUKS_MAGIC_LEN] =
  { 'S', 'K', 'U', 'L', 0xba, 0xbe };

/* The header sizes LUKSv2 allows (binary header plus JSON area). */
static const uint64_t hdr_sizes[] = {
  16384, 32768, 65536, 131072, 262144, 524288, 1048576, 2097152, 4194304,
};

static uint64_t
be64 (const uint8_t *p)
{
  uint64_t v = 0;
  int i;

  for (i = 0; i < 8; i++)
    v = v << 8 | p[i];
  return v;
}

static int
valid_hdr_size (uint64_t size)
{
  size_t i;

  for (i = 0; i < sizeof hdr_sizes / sizeof hdr_sizes[0]; i++)
    if (size == hdr_sizes[i])
      return 1;
  return 0;
}

/* Whether AREA (HDR_SIZE bytes read from OFFSET) is an intact header
 * copy: magic, version, size, offset and checksum.
 */
static int
copy_intact (uint8_t *area, uint64_t hdr_size, uint64_t offset)
{
  uint8_t csum[V2_CSUM_LEN], sum[LUKS_MAX_DIGEST];
  gnutls_digest_algorithm_t alg;
  char name[33];
  int r;

  if (memcmp (area, offset ? magic_2nd : luks_magic, LUKS_MAGIC_LEN) != 0 ||
      area[6] != 0 || area[7] != 2 || be64 (area + V2_HDR_SIZE) != hdr_size ||
      be64 (area + V2_HDR_OFFSET) != offset)
    return 0;
  memcpy (name, area + V2_CSUM_ALG, 32);
  name[32] = '\0';
  alg = luks_hash_parse (name);
  if (alg == GNUTLS_DIG_UNKNOWN)
    return 0;
  memcpy (csum, area + V2_CSUM, sizeof csum);
  memset (area + V2_CSUM, 0, sizeof csum);
  r = gnutls_hash_fast (alg, area, hdr_size, sum);
  memcpy (area + V2_CSUM, csum, sizeof csum);
  return r == 0 && memcmp (sum, csum, gnutls_hash_get_len (alg)) == 0;
}

/* Read the header copy at OFFSET of HDR_SIZE bytes; the buffer if it
 * is intact, else NULL (a bad copy is not an error yet).
 */
static uint8_t *
read_copy (nbdkit_next *next, uint64_t disk_size, uint64_t offset,
           uint64_t hdr_size)
{
  uint8_t *area;
  int err;

  if (!valid_hdr_size (hdr_size) || offset + hdr_size > disk_size)
    return NULL;
  area = malloc (hdr_size);
  if (area == NULL)
    return NULL;
  if (next->pread (next, area, hdr_size, offset, 0, &err) == -1 ||
      !copy_intact (area, hdr_size, offset)) {
    free (area);
    return NULL;
  }
  return area;
}

/* The intact copy with the higher sequence number; the primary's
 * size says where the secondary is, and if the primary is damaged
 * each possible place is tried.
 */
static uint8_t *
read_binary_header (nbdkit_next *next, uint64_t disk_size, uint64_t *size)
{
  uint8_t first[V2_BINARY];
  uint8_t *primary = NULL, *secondary = NULL;
  uint64_t psize = 0;
  size_t i;
  int err;

  if (disk_size < V2_BINARY ||
      next->pread (next, first, sizeof first, 0, 0, &err) == -1)
    return NULL;
  psize = be64 (first + V2_HDR_SIZE);
  primary = read_copy (next, disk_size, 0, psize);
  if (primary)
    secondary = read_copy (next, disk_size, psize, psize);
  for (i = 0; !primary && i < sizeof hdr_sizes / sizeof hdr_sizes[0]; i++) {
    secondary = read_copy (next, disk_size, hdr_sizes[i], hdr_sizes[i]);
    if (secondary)
      break;
  }
  if (primary && secondary &&
      be64 (secondary + V2_SEQID) > be64 (primary + V2_SEQID)) {
    free (primary);
    primary = NULL;
  }
  if (primary) {
    free (secondary);
    *size = psize;
    return primary;
  }
  if (secondary) {
    nbdkit_debug ("luks: using the secondary LUKSv2 header");
    *size = be64 (secondary + V2_HDR_SIZE);
  }
  return secondary;
}

/* Metadata lookups that log what is wrong. */
struct meta {
  struct luks_json doc;
  uint64_t disk_size;
};

static int
bad (const char *what, const char *detail)
{
  nbdkit_error ("luks: bad LUKSv2 metadata: %s%s%s: the header is corrupt "
                "or made by a newer cryptsetup", what,
                detail ? " " : "", detail ? detail : "");
  return -1;
}

static int
get_u64 (struct meta *m, const struct luks_json_node *obj, const char *key,
         uint64_t *v)
{
  if (luks_json_u64 (luks_json_get (&m->doc, obj, key), v) == -1)
    return bad (key, "is missing or not an unsigned integer");
  return 0;
}

static const char *
get_string (struct meta *m, const struct luks_json_node *obj,
            const char *key)
{
  const char *s = luks_json_string (luks_json_get (&m->doc, obj, key));

  if (s == NULL)
    bad (key, "is missing or not a string");
  return s;
}

static int
get_base64 (struct meta *m, const struct luks_json_node *obj,
            const char *key, uint8_t *out, size_t max, size_t *len)
{
  const char *s = get_string (m, obj, key);

  if (s == NULL)
    return -1;
  if (luks_base64_decode (s, out, max, len) == -1 || *len == 0)
    return bad (key, "is not valid base64 of a sensible length");
  return 0;
}

/* "aes-xts-plain64" is cipher "aes", mode "xts-plain64". */
static int
parse_encryption (const char *spec, size_t key_bytes, struct luks_cipher *c)
{
  char cipher[32];
  const char *dash = strchr (spec, '-');

  if (dash == NULL || (size_t) (dash - spec) >= sizeof cipher) {
    nbdkit_error ("luks: the LUKSv2 volume uses encryption \"%s\", which "
                  "this filter does not support: use aes-xts-plain64", spec);
    return -1;
  }
  memcpy (cipher, spec, dash - spec);
  cipher[dash - spec] = '\0';
  return luks_cipher_parse (cipher, dash + 1, key_bytes, c);
}

static int
parse_kdf (struct meta *m, const struct luks_json_node *kdf,
           struct luks_kdf_params *p)
{
  const char *type = get_string (m, kdf, "type"), *hash;
  uint64_t v[3];

  if (type == NULL)
    return -1;
  if (get_base64 (m, kdf, "salt", p->salt, sizeof p->salt,
                  &p->salt_len) == -1)
    return -1;
  if (strcmp (type, "pbkdf2") == 0) {
    p->type = LUKS_KDF_PBKDF2;
    hash = get_string (m, kdf, "hash");
    if (hash == NULL || get_u64 (m, kdf, "iterations", &v[0]) == -1)
      return -1;
    p->hash = (gnutls_mac_algorithm_t) luks_hash_parse (hash);
    if (p->hash == GNUTLS_MAC_UNKNOWN || v[0] == 0 || v[0] > UINT32_MAX)
      return bad ("pbkdf2 hash or iterations", hash);
    p->iterations = v[0];
    return 0;
  }
  if (strcmp (type, "argon2i") != 0 && strcmp (type, "argon2id") != 0) {
    nbdkit_error ("luks: a LUKSv2 key slot uses KDF \"%s\", which this "
                  "filter does not support: use pbkdf2, argon2i or "
                  "argon2id", type);
    return -1;
  }
  p->type = strcmp (type, "argon2id") == 0 ? LUKS_KDF_ARGON2ID
                                              : LUKS_KDF_ARGON2I;
  if (get_u64 (m, kdf, "time", &v[0]) == -1 ||
      get_u64 (m, kdf, "memory", &v[1]) == -1 ||
      get_u64 (m, kdf, "cpus", &v[2]) == -1)
    return -1;
  if (v[0] > UINT32_MAX || v[1] > UINT32_MAX || v[2] > UINT32_MAX)
    return bad ("argon2 parameters", "are out of range");
  p->iterations = v[0];
  p->memory_kib = v[1];
  p->cpus = v[2];
  return 0;
}

/* The key slot NAME (linked to the segment's digest) into S: 1, or 0
 * for a slot that cryptsetup would not try with a passphrase either
 * (priority 0, "ignore"), or -1 after an error.
 */
static int
parse_keyslot (struct meta *m, const struct luks_json_node *slots,
               const char *name, size_t key_bytes, struct luks_keyslot *s)
{
  const struct luks_json_node *ks = luks_json_get (&m->doc, slots, name);
  const struct luks_json_node *af, *area;
  const char *type, *hash, *enc;
  uint64_t ksize, stripes, off, size, akey, id;
  char *end;

  id = strtoul (name, &end, 10);
  if (ks == NULL || end == name || *end || id >= LUKS_MAX_SLOTS)
    return bad ("key slot", name);
  memset (s, 0, sizeof *s);
  s->id = id;
  af = luks_json_get (&m->doc, ks, "af");
  area = luks_json_get (&m->doc, ks, "area");
  if ((type = get_string (m, ks, "type")) == NULL ||
      get_u64 (m, ks, "key_size", &ksize) == -1 ||
      (hash = get_string (m, af, "hash")) == NULL ||
      get_u64 (m, af, "stripes", &stripes) == -1 ||
      (enc = get_string (m, area, "encryption")) == NULL ||
      get_u64 (m, area, "offset", &off) == -1 ||
      get_u64 (m, area, "size", &size) == -1 ||
      get_u64 (m, area, "key_size", &akey) == -1)
    return -1;
  if (strcmp (type, "luks2") != 0 ||
      strcmp (get_string (m, af, "type") ?: "", "luks1") != 0 ||
      strcmp (get_string (m, area, "type") ?: "", "raw") != 0) {
    nbdkit_error ("luks: LUKSv2 key slot %s is of a kind this filter does "
                  "not support (type %s): use a luks2 slot with raw area",
                  name, type);
    return -1;
  }
  s->af_hash = luks_hash_parse (hash);
  if (ksize != key_bytes || stripes == 0 || stripes > 65536 ||
      s->af_hash == GNUTLS_DIG_UNKNOWN || akey == 0 || akey > LUKS_MAX_KEY ||
      key_bytes * stripes > size || off + size < off ||
      off + size > m->disk_size || off % LUKS_SECTOR)
    return bad ("key slot", name);
  s->stripes = stripes;
  s->area_offset = off;
  if (luks_json_get (&m->doc, ks, "priority") != NULL &&
      luks_json_u64 (luks_json_get (&m->doc, ks, "priority"), &id) == 0 &&
      id == 0) {
    nbdkit_debug ("luks: key slot %s has priority \"ignore\"", name);
    return 0;
  }
  if (parse_encryption (enc, akey, &s->area_cipher) == -1 ||
      parse_kdf (m, luks_json_get (&m->doc, ks, "kdf"), &s->kdf) == -1)
    return -1;
  return 1;
}

static int
parse_segment (struct meta *m, const struct luks_json_node *seg,
               struct luks_header *h)
{
  const char *type = get_string (m, seg, "type"), *size;
  uint64_t ss;

  if (type == NULL)
    return -1;
  if (strcmp (type, "crypt") != 0 ||
      luks_json_get (&m->doc, seg, "integrity") != NULL) {
    nbdkit_error ("luks: the LUKSv2 data segment is of type %s%s, which "
                  "this filter does not support", type,
                  strcmp (type, "crypt") ? "" : " with integrity");
    return -1;
  }
  if (get_u64 (m, seg, "offset", &h->payload_offset) == -1 ||
      get_u64 (m, seg, "iv_tweak", &h->iv_tweak) == -1 ||
      get_u64 (m, seg, "sector_size", &ss) == -1 ||
      (size = get_string (m, seg, "size")) == NULL)
    return -1;
  if (ss != 512 && ss != 1024 && ss != 2048 && ss != 4096)
    return bad ("sector_size", "is not 512, 1024, 2048 or 4096");
  h->sector_size = ss;
  if (strcmp (size, "dynamic") == 0)
    h->payload_size = 0;
  else if (get_u64 (m, seg, "size", &h->payload_size) == -1 ||
           h->payload_size == 0)
    return -1;
  if (h->payload_offset % LUKS_SECTOR || h->payload_offset > m->disk_size)
    return bad ("segment offset", "is unaligned or beyond the disk");
  return 0;
}

/* Whether the JSON array LIST holds the string NAME. */
static int
list_has (struct meta *m, const struct luks_json_node *list,
          const char *name)
{
  const struct luks_json_node *n;

  for (n = luks_json_first (&m->doc, list); n;
       n = luks_json_next (&m->doc, n))
    if (strcmp (luks_json_string (n) ?: "", name) == 0)
      return 1;
  return 0;
}

/* The digest linked to segment SEG_NAME into H; its keyslots list in
 * *SLOTS.
 */
static int
parse_digest (struct meta *m, const struct luks_json_node *digests,
              const char *seg_name, struct luks_header *h,
              const struct luks_json_node **slots)
{
  const struct luks_json_node *d;
  const char *type, *hash;
  uint64_t iter;

  for (d = luks_json_first (&m->doc, digests); d;
       d = luks_json_next (&m->doc, d))
    if (list_has (m, luks_json_get (&m->doc, d, "segments"), seg_name))
      break;
  if (d == NULL)
    return bad ("digests", "has none for the data segment");
  if ((type = get_string (m, d, "type")) == NULL ||
      (hash = get_string (m, d, "hash")) == NULL ||
      get_u64 (m, d, "iterations", &iter) == -1 ||
      get_base64 (m, d, "salt", h->digest.salt, sizeof h->digest.salt,
                  &h->digest.salt_len) == -1 ||
      get_base64 (m, d, "digest", h->digest.digest,
                  sizeof h->digest.digest, &h->digest.digest_len) == -1)
    return -1;
  h->digest.hash = (gnutls_mac_algorithm_t) luks_hash_parse (hash);
  if (strcmp (type, "pbkdf2") != 0 || h->digest.hash == GNUTLS_MAC_UNKNOWN ||
      iter == 0 || iter > UINT32_MAX)
    return bad ("digest", type);
  h->digest.iterations = iter;
  *slots = luks_json_get (&m->doc, d, "keyslots");
  return 0;
}

/* Requirements name features a reader must understand (such as a
 * reencryption in progress): none is understood here.
 */
static int
check_requirements (struct meta *m, const struct luks_json_node *root)
{
  const struct luks_json_node *req, *mand;

  req = luks_json_get (&m->doc, luks_json_get (&m->doc, root, "config"),
                       "requirements");
  mand = luks_json_get (&m->doc, req, "mandatory");
  if (luks_json_first (&m->doc, mand) == NULL)
    return 0;
  nbdkit_error ("luks: the LUKSv2 volume has mandatory requirement \"%s\" "
                "(such as a reencryption in progress), which this filter "
                "does not support: finish it with cryptsetup first",
                luks_json_string (luks_json_first (&m->doc, mand)) ?: "?");
  return -1;
}

static int
parse_metadata (struct meta *m, struct luks_header *h)
{
  const struct luks_json_node *root = luks_json_root (&m->doc);
  const struct luks_json_node *segs, *seg, *slots, *n, *ks;
  const char *enc;
  uint64_t key_bytes;
  int r;

  if (check_requirements (m, root) == -1)
    return -1;
  segs = luks_json_get (&m->doc, root, "segments");
  seg = luks_json_first (&m->doc, segs);
  if (seg == NULL || luks_json_next (&m->doc, seg) != NULL) {
    nbdkit_error ("luks: the LUKSv2 volume has %s data segments: this "
                  "filter reads volumes with exactly one",
                  seg ? "several" : "no");
    return -1;
  }
  if (parse_segment (m, seg, h) == -1 ||
      parse_digest (m, luks_json_get (&m->doc, root, "digests"), seg->key,
                    h, &slots) == -1)
    return -1;

  /* The volume key's size is the key size of its key slots. */
  ks = luks_json_get (&m->doc, luks_json_get (&m->doc, root, "keyslots"),
                      luks_json_string (luks_json_first (&m->doc, slots))
                      ?: "");
  if (ks == NULL || get_u64 (m, ks, "key_size", &key_bytes) == -1 ||
      key_bytes == 0 || key_bytes > LUKS_MAX_KEY)
    return bad ("keyslots", "has no usable slot for the data segment");
  h->key_bytes = key_bytes;
  if ((enc = get_string (m, seg, "encryption")) == NULL ||
      parse_encryption (enc, key_bytes, &h->cipher) == -1)
    return -1;

  for (n = luks_json_first (&m->doc, slots); n;
       n = luks_json_next (&m->doc, n)) {
    if (h->nr_slots == LUKS_MAX_SLOTS || luks_json_string (n) == NULL)
      return bad ("digest keyslots", "list");
    r = parse_keyslot (m, luks_json_get (&m->doc, root, "keyslots"),
                       luks_json_string (n), key_bytes,
                       &h->slots[h->nr_slots]);
    if (r == -1)
      return -1;
    h->nr_slots += r;
  }
  return 0;
}

int
luks_header_v2_read (nbdkit_next *next, uint64_t disk_size,
                     struct luks_header *h)
{
  struct meta m = { .disk_size = disk_size };
  uint64_t hdr_size = 0;
  uint8_t *area;
  const char *json;
  char err[128];
  int r;

  memset (h, 0, sizeof *h);
  h->version = 2;
  area = read_binary_header (next, disk_size, &hdr_size);
  if (area == NULL) {
    nbdkit_error ("luks: the LUKSv2 header is damaged (both copies fail "
                  "their checksum) or the disk is truncated: try "
                  "cryptsetup repair on a copy");
    return -1;
  }
  json = (const char *) area + V2_BINARY;
  r = luks_json_parse (json, strnlen (json, hdr_size - V2_BINARY), &m.doc,
                       err, sizeof err);
  if (r == -1)
    nbdkit_error ("luks: the LUKSv2 metadata is not valid JSON (%s): the "
                  "header is corrupt", err);
  else
    r = parse_metadata (&m, h);
  luks_json_free (&m.doc);
  free (area);
  return r;
}
