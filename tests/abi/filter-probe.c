/* ABI probe for the filter API: prints every layout fact a filter
 * binary depends on (struct nbdkit_filter, struct nbdkit_next_ops,
 * struct nbdkit_extent, struct nbdkit_export, the constants and what
 * NBDKIT_REGISTER_FILTER stores), one per line, so that this file
 * compiled against nbdkit's headers and against ours can be compared
 * line by line (tests/test_abi.py).  As in probe.c, each field's type
 * is checked against the type nbdkit-filter(3) documents.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <nbdkit-filter.h>

typedef void *handle_t;
typedef struct nbdkit_extents extents_t;
typedef struct nbdkit_exports exports_t;

static struct nbdkit_filter probe_filter;
static struct nbdkit_next_ops probe_next;

#define FIELD_OF(var, sname, f, type)                                   \
  do {                                                                  \
    __typeof__ (type) probe_var_ = var.f;                               \
    (void) probe_var_;                                                  \
    printf ("%s %-20s offset=%-4zu size=%zu type_ok=%d\n", #sname, #f,  \
            offsetof (struct sname, f), sizeof var.f,                   \
            __builtin_types_compatible_p (__typeof__ (var.f), type));   \
  } while (0)
#define FIELD(f, type) FIELD_OF (probe_filter, nbdkit_filter, f, type)
#define NEXT(f, type) FIELD_OF (probe_next, nbdkit_next_ops, f, type)

#define INT_CONSTANT(c) printf ("constant %s=%lld\n", #c, (long long) (c))

static void
print_filter_fields (void)
{
  FIELD (_api_version, int);
  FIELD (_version, const char *);
  FIELD (name, const char *);
  FIELD (longname, const char *);
  FIELD (description, const char *);
  FIELD (load, void (*) (void));
  FIELD (unload, void (*) (void));
  FIELD (config, int (*) (nbdkit_next_config *, nbdkit_backend *,
                          const char *, const char *));
  FIELD (config_complete, int (*) (nbdkit_next_config_complete *,
                                   nbdkit_backend *));
  FIELD (config_help, const char *);
  FIELD (thread_model, int (*) (void));
  FIELD (get_ready, int (*) (int));
  FIELD (after_fork, int (*) (nbdkit_backend *));
  FIELD (cleanup, void (*) (nbdkit_backend *));
  FIELD (preconnect, int (*) (nbdkit_next_preconnect *, nbdkit_backend *,
                              int));
  FIELD (list_exports, int (*) (nbdkit_next_list_exports *,
                                nbdkit_backend *, int, int, exports_t *));
  FIELD (default_export, const char * (*) (nbdkit_next_default_export *,
                                           nbdkit_backend *, int, int));
  FIELD (open, void * (*) (nbdkit_next_open *, nbdkit_context *, int,
                           const char *, int));
  FIELD (close, void (*) (handle_t));
  FIELD (prepare, int (*) (nbdkit_next *, handle_t, int));
  FIELD (finalize, int (*) (nbdkit_next *, handle_t));
  FIELD (get_size, int64_t (*) (nbdkit_next *, handle_t));
  FIELD (export_description, const char * (*) (nbdkit_next *, handle_t));
  FIELD (block_size, int (*) (nbdkit_next *, handle_t, uint32_t *,
                              uint32_t *, uint32_t *));
  FIELD (can_write, int (*) (nbdkit_next *, handle_t));
  FIELD (can_flush, int (*) (nbdkit_next *, handle_t));
  FIELD (is_rotational, int (*) (nbdkit_next *, handle_t));
  FIELD (can_trim, int (*) (nbdkit_next *, handle_t));
  FIELD (can_zero, int (*) (nbdkit_next *, handle_t));
  FIELD (can_fast_zero, int (*) (nbdkit_next *, handle_t));
  FIELD (can_extents, int (*) (nbdkit_next *, handle_t));
  FIELD (can_fua, int (*) (nbdkit_next *, handle_t));
  FIELD (can_multi_conn, int (*) (nbdkit_next *, handle_t));
  FIELD (can_cache, int (*) (nbdkit_next *, handle_t));
  FIELD (pread, int (*) (nbdkit_next *, handle_t, void *, uint32_t,
                         uint64_t, uint32_t, int *));
  FIELD (pwrite, int (*) (nbdkit_next *, handle_t, const void *, uint32_t,
                          uint64_t, uint32_t, int *));
  FIELD (flush, int (*) (nbdkit_next *, handle_t, uint32_t, int *));
  FIELD (trim, int (*) (nbdkit_next *, handle_t, uint32_t, uint64_t,
                        uint32_t, int *));
  FIELD (zero, int (*) (nbdkit_next *, handle_t, uint32_t, uint64_t,
                        uint32_t, int *));
  FIELD (extents, int (*) (nbdkit_next *, handle_t, uint32_t, uint64_t,
                           uint32_t, extents_t *, int *));
  FIELD (cache, int (*) (nbdkit_next *, handle_t, uint32_t, uint64_t,
                         uint32_t, int *));
}

static void
print_next_fields (void)
{
  NEXT (prepare, int (*) (nbdkit_next *));
  NEXT (finalize, int (*) (nbdkit_next *));
  NEXT (get_size, int64_t (*) (nbdkit_next *));
  NEXT (export_description, const char * (*) (nbdkit_next *));
  NEXT (block_size, int (*) (nbdkit_next *, uint32_t *, uint32_t *,
                             uint32_t *));
  NEXT (can_write, int (*) (nbdkit_next *));
  NEXT (can_flush, int (*) (nbdkit_next *));
  NEXT (is_rotational, int (*) (nbdkit_next *));
  NEXT (can_trim, int (*) (nbdkit_next *));
  NEXT (can_zero, int (*) (nbdkit_next *));
  NEXT (can_fast_zero, int (*) (nbdkit_next *));
  NEXT (can_extents, int (*) (nbdkit_next *));
  NEXT (can_fua, int (*) (nbdkit_next *));
  NEXT (can_multi_conn, int (*) (nbdkit_next *));
  NEXT (can_cache, int (*) (nbdkit_next *));
  NEXT (pread, int (*) (nbdkit_next *, void *, uint32_t, uint64_t,
                        uint32_t, int *));
  NEXT (pwrite, int (*) (nbdkit_next *, const void *, uint32_t, uint64_t,
                         uint32_t, int *));
  NEXT (flush, int (*) (nbdkit_next *, uint32_t, int *));
  NEXT (trim, int (*) (nbdkit_next *, uint32_t, uint64_t, uint32_t, int *));
  NEXT (zero, int (*) (nbdkit_next *, uint32_t, uint64_t, uint32_t, int *));
  NEXT (extents, int (*) (nbdkit_next *, uint32_t, uint64_t, uint32_t,
                          extents_t *, int *));
  NEXT (cache, int (*) (nbdkit_next *, uint32_t, uint64_t, uint32_t, int *));
}

static void
print_other_layouts (void)
{
  printf ("sizeof struct nbdkit_filter=%zu\n", sizeof (struct nbdkit_filter));
  printf ("sizeof struct nbdkit_next_ops=%zu\n",
          sizeof (struct nbdkit_next_ops));
  printf ("sizeof struct nbdkit_extent=%zu offset=%zu,%zu,%zu\n",
          sizeof (struct nbdkit_extent),
          offsetof (struct nbdkit_extent, offset),
          offsetof (struct nbdkit_extent, length),
          offsetof (struct nbdkit_extent, type));
  printf ("sizeof struct nbdkit_export=%zu offset=%zu,%zu\n",
          sizeof (struct nbdkit_export),
          offsetof (struct nbdkit_export, name),
          offsetof (struct nbdkit_export, description));
  INT_CONSTANT (NBDKIT_FILTER_API_VERSION);
  INT_CONSTANT (NBDKIT_ZERO_NONE);
  INT_CONSTANT (NBDKIT_ZERO_EMULATE);
  INT_CONSTANT (NBDKIT_ZERO_NATIVE);
  INT_CONSTANT (NBDKIT_FLAG_FUA);
  INT_CONSTANT (NBDKIT_EXTENT_HOLE);
  printf ("constant NBDKIT_VERSION_STRING=%s\n", NBDKIT_VERSION_STRING);
}

NBDKIT_REGISTER_FILTER (probe_filter)

int
main (void)
{
  struct nbdkit_filter *f = filter_init ();

  print_filter_fields ();
  print_next_fields ();
  print_other_layouts ();
  printf ("register same_struct=%d _api_version=%d _version=%s\n",
          f == &probe_filter, f->_api_version, f->_version);
  return 0;
}
