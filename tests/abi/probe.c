/* ABI probe: prints every layout fact of the plugin API that a plugin
 * binary depends on, one per line, so that the output of this file
 * compiled against nbdkit's headers and against ours can be compared
 * line by line (tests/test_abi.py).
 *
 * Build with -DPROBE_API=0 (leave NBDKIT_API_VERSION undefined, as an
 * old plugin does), 1 or 2.  Each field's type is also checked against
 * the type nbdkit-plugin(3) documents for it, with
 * __builtin_types_compatible_p (printed) and with an assignment that
 * -Werror=incompatible-pointer-types turns into a build failure.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#if PROBE_API == 1
#define NBDKIT_API_VERSION 1
#elif PROBE_API == 2
#define NBDKIT_API_VERSION 2
#elif PROBE_API != 0
#error "PROBE_API must be 0, 1 or 2"
#endif
#include <nbdkit-plugin.h>

struct nbdkit_plugin probe_plugin;

#define field_size(f) sizeof (((struct nbdkit_plugin *) 0)->f)
#define field_type(f) __typeof__ (((struct nbdkit_plugin *) 0)->f)

/* One line per field: offset, size, and whether its type is the
 * documented one.  The assignment is the compile-time half.
 */
#define FIELD(f, type)                                                  \
  do {                                                                  \
    __typeof__ (type) probe_var_ = probe_plugin.f;                               \
    (void) probe_var_;                                                  \
    printf ("field %-20s offset=%-4zu size=%zu type_ok=%d\n", #f,       \
            offsetof (struct nbdkit_plugin, f), field_size (f),         \
            __builtin_types_compatible_p (field_type (f), type));       \
  } while (0)

#define INT_CONSTANT(c) printf ("constant %s=%lld\n", #c, (long long) (c))

typedef void *handle_t;
typedef struct nbdkit_extents extents_t;
typedef struct nbdkit_exports exports_t;

static void
print_fields (void)
{
  FIELD (_struct_size, uint64_t);
  FIELD (_api_version, int);
  FIELD (_thread_model, int);
  FIELD (name, const char *);
  FIELD (longname, const char *);
  FIELD (version, const char *);
  FIELD (description, const char *);
  FIELD (load, void (*) (void));
  FIELD (unload, void (*) (void));
  FIELD (config, int (*) (const char *, const char *));
  FIELD (config_complete, int (*) (void));
  FIELD (config_help, const char *);
  FIELD (open, void * (*) (int));
  FIELD (close, void (*) (handle_t));
  FIELD (get_size, int64_t (*) (handle_t));
  FIELD (can_write, int (*) (handle_t));
  FIELD (can_flush, int (*) (handle_t));
  FIELD (is_rotational, int (*) (handle_t));
  FIELD (can_trim, int (*) (handle_t));
#if NBDKIT_API_VERSION == 1
  FIELD (pread, int (*) (handle_t, void *, uint32_t, uint64_t));
  FIELD (pwrite, int (*) (handle_t, const void *, uint32_t, uint64_t));
  FIELD (flush, int (*) (handle_t));
  FIELD (trim, int (*) (handle_t, uint32_t, uint64_t));
  FIELD (zero, int (*) (handle_t, uint32_t, uint64_t, int));
#else
  FIELD (_pread_v1, int (*) (handle_t, void *, uint32_t, uint64_t));
  FIELD (_pwrite_v1, int (*) (handle_t, const void *, uint32_t, uint64_t));
  FIELD (_flush_v1, int (*) (handle_t));
  FIELD (_trim_v1, int (*) (handle_t, uint32_t, uint64_t));
  FIELD (_zero_v1, int (*) (handle_t, uint32_t, uint64_t, int));
#endif
  FIELD (errno_is_preserved, int);
  FIELD (dump_plugin, void (*) (void));
  FIELD (can_zero, int (*) (handle_t));
  FIELD (can_fua, int (*) (handle_t));
#if NBDKIT_API_VERSION == 1
  FIELD (_unused1, int (*) (handle_t, void *, uint32_t, uint64_t, uint32_t));
  FIELD (_unused2, int (*) (handle_t, const void *, uint32_t, uint64_t,
                            uint32_t));
  FIELD (_unused3, int (*) (handle_t, uint32_t));
  FIELD (_unused4, int (*) (handle_t, uint32_t, uint64_t, uint32_t));
  FIELD (_unused5, int (*) (handle_t, uint32_t, uint64_t, uint32_t));
#else
  FIELD (pread, int (*) (handle_t, void *, uint32_t, uint64_t, uint32_t));
  FIELD (pwrite, int (*) (handle_t, const void *, uint32_t, uint64_t,
                          uint32_t));
  FIELD (flush, int (*) (handle_t, uint32_t));
  FIELD (trim, int (*) (handle_t, uint32_t, uint64_t, uint32_t));
  FIELD (zero, int (*) (handle_t, uint32_t, uint64_t, uint32_t));
#endif
  FIELD (magic_config_key, const char *);
  FIELD (can_multi_conn, int (*) (handle_t));
  FIELD (can_extents, int (*) (handle_t));
  FIELD (extents, int (*) (handle_t, uint32_t, uint64_t, uint32_t,
                           extents_t *));
  FIELD (can_cache, int (*) (handle_t));
  FIELD (cache, int (*) (handle_t, uint32_t, uint64_t, uint32_t));
  FIELD (thread_model, int (*) (void));
  FIELD (can_fast_zero, int (*) (handle_t));
  FIELD (preconnect, int (*) (int));
  FIELD (get_ready, int (*) (void));
  FIELD (after_fork, int (*) (void));
  FIELD (list_exports, int (*) (int, int, exports_t *));
  FIELD (default_export, const char * (*) (int, int));
  FIELD (export_description, const char * (*) (handle_t));
  FIELD (cleanup, void (*) (void));
  FIELD (block_size, int (*) (handle_t, uint32_t *, uint32_t *, uint32_t *));
}

static void
print_constants (void)
{
  INT_CONSTANT (NBDKIT_API_VERSION);
  INT_CONSTANT (NBDKIT_THREAD_MODEL_SERIALIZE_CONNECTIONS);
  INT_CONSTANT (NBDKIT_THREAD_MODEL_SERIALIZE_ALL_REQUESTS);
  INT_CONSTANT (NBDKIT_THREAD_MODEL_SERIALIZE_REQUESTS);
  INT_CONSTANT (NBDKIT_THREAD_MODEL_PARALLEL);
  INT_CONSTANT (NBDKIT_FLAG_MAY_TRIM);
  INT_CONSTANT (NBDKIT_FLAG_FUA);
  INT_CONSTANT (NBDKIT_FLAG_REQ_ONE);
  INT_CONSTANT (NBDKIT_FLAG_FAST_ZERO);
  INT_CONSTANT (NBDKIT_FUA_NONE);
  INT_CONSTANT (NBDKIT_FUA_EMULATE);
  INT_CONSTANT (NBDKIT_FUA_NATIVE);
  INT_CONSTANT (NBDKIT_CACHE_NONE);
  INT_CONSTANT (NBDKIT_CACHE_EMULATE);
  INT_CONSTANT (NBDKIT_CACHE_NATIVE);
  INT_CONSTANT (NBDKIT_EXTENT_HOLE);
  INT_CONSTANT (NBDKIT_EXTENT_ZERO);
  INT_CONSTANT (NBDKIT_VERSION_MAJOR);
  INT_CONSTANT (NBDKIT_VERSION_MINOR);
  INT_CONSTANT (NBDKIT_VERSION_MICRO);
  printf ("constant NBDKIT_VERSION_STRING=%s\n", NBDKIT_VERSION_STRING);
  /* Its value is per process; what matters is what it points at. */
  printf ("constant NBDKIT_HANDLE_NOT_NEEDED_is_errno=%d\n",
          (void *) NBDKIT_HANDLE_NOT_NEEDED == (void *) &errno);
}

/* What NBDKIT_REGISTER_PLUGIN stores, as the server will read it. */
#define THREAD_MODEL NBDKIT_THREAD_MODEL_SERIALIZE_REQUESTS
NBDKIT_REGISTER_PLUGIN (probe_plugin)

static void
print_registration (void)
{
  struct nbdkit_plugin *p = plugin_init ();

  printf ("register same_struct=%d\n", p == &probe_plugin);
  printf ("register _struct_size=%llu\n",
          (unsigned long long) p->_struct_size);
  printf ("register _api_version=%d\n", p->_api_version);
  printf ("register _thread_model=%d\n", p->_thread_model);
}

int
main (void)
{
  printf ("sizeof struct nbdkit_plugin=%zu\n", sizeof (struct nbdkit_plugin));
  printf ("alignof struct nbdkit_plugin=%zu\n",
          _Alignof (struct nbdkit_plugin));
  print_fields ();
  print_constants ();
  print_registration ();
  return 0;
}
