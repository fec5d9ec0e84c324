/* nbdsrv: the filter API (filter API version 6, as in nbdkit 1.32).
 *
 * Written for nbdsrv from nbdkit's documented filter API
 * (nbdkit-filter(3)).  A filter binary built for nbdkit 1.32 hands the
 * server a pointer to struct nbdkit_filter and calls the layer below
 * it through struct nbdkit_next_ops, so the order and types of both
 * are ABI facts, compared with nbdkit's by tests/test_abi.py.  Unlike
 * the plugin struct, the filter struct has no size field: a filter
 * loads only into the release whose layout it was built with, named
 * by _version.
 */
#ifndef NBDKIT_FILTER_H
#define NBDKIT_FILTER_H

#include <stdlib.h>

#include <nbdkit-common.h>

#ifdef __cplusplus
extern "C" {
#endif

#define NBDKIT_FILTER_API_VERSION 6

/* Return values of a filter's can_zero (and of next->can_zero). */
#define NBDKIT_ZERO_NONE     0  /* do not advertise write zeroes */
#define NBDKIT_ZERO_EMULATE  1  /* write zeroes by pwrite at once */
#define NBDKIT_ZERO_NATIVE   2  /* try .zero, fall back on ENOTSUP */

/* Opaque to filters: the layer below as a whole (nbdkit_backend), one
 * filter's per-connection state (nbdkit_context), and an open context
 * of the layer below, which starts with its table of calls
 * (nbdkit_next).
 */
typedef struct nbdkit_backend nbdkit_backend;
typedef struct nbdkit_context nbdkit_context;
typedef struct nbdkit_next_ops nbdkit_next;

/* The calls a filter makes on the layer below outside a connection. */
typedef int nbdkit_next_config (nbdkit_backend *nxdata,
                                const char *key, const char *value);
typedef int nbdkit_next_config_complete (nbdkit_backend *nxdata);
typedef int nbdkit_next_preconnect (nbdkit_backend *nxdata, int readonly);
typedef int nbdkit_next_list_exports (nbdkit_backend *nxdata, int readonly,
                                      struct nbdkit_exports *exports);
typedef const char *nbdkit_next_default_export (nbdkit_backend *nxdata,
                                                int readonly);
typedef int nbdkit_next_open (nbdkit_context *context, int readonly,
                              const char *exportname);

/* An open context of the layer below.  Every call takes the context
 * itself as its first argument: next->pread (next, ...).  Data calls
 * return -1 with the errno for the client in *err.
 */
struct nbdkit_next_ops {
  /* Only for contexts the filter opened itself. */
  int (*prepare) (nbdkit_next *nxdata);
  int (*finalize) (nbdkit_next *nxdata);

  int64_t (*get_size) (nbdkit_next *nxdata);
  const char * (*export_description) (nbdkit_next *nxdata);
  int (*block_size) (nbdkit_next *nxdata, uint32_t *minimum,
                     uint32_t *preferred, uint32_t *maximum);

  int (*can_write) (nbdkit_next *nxdata);
  int (*can_flush) (nbdkit_next *nxdata);
  int (*is_rotational) (nbdkit_next *nxdata);
  int (*can_trim) (nbdkit_next *nxdata);
  int (*can_zero) (nbdkit_next *nxdata);
  int (*can_fast_zero) (nbdkit_next *nxdata);
  int (*can_extents) (nbdkit_next *nxdata);
  int (*can_fua) (nbdkit_next *nxdata);
  int (*can_multi_conn) (nbdkit_next *nxdata);
  int (*can_cache) (nbdkit_next *nxdata);

  int (*pread) (nbdkit_next *nxdata, void *buf, uint32_t count,
                uint64_t offset, uint32_t flags, int *err);
  int (*pwrite) (nbdkit_next *nxdata, const void *buf, uint32_t count,
                 uint64_t offset, uint32_t flags, int *err);
  int (*flush) (nbdkit_next *nxdata, uint32_t flags, int *err);
  int (*trim) (nbdkit_next *nxdata, uint32_t count, uint64_t offset,
               uint32_t flags, int *err);
  int (*zero) (nbdkit_next *nxdata, uint32_t count, uint64_t offset,
               uint32_t flags, int *err);
  int (*extents) (nbdkit_next *nxdata, uint32_t count, uint64_t offset,
                  uint32_t flags, struct nbdkit_extents *extents, int *err);
  int (*cache) (nbdkit_next *nxdata, uint32_t count, uint64_t offset,
                uint32_t flags, int *err);
};

/* Extent lists a filter builds or reads. */
struct nbdkit_extent {
  uint64_t offset;
  uint64_t length;
  uint32_t type;                /* NBDKIT_EXTENT_* */
};

NBDKIT_EXTERN_DECL (struct nbdkit_extents *, nbdkit_extents_new,
                    (uint64_t start, uint64_t end));
NBDKIT_EXTERN_DECL (void, nbdkit_extents_free, (struct nbdkit_extents *));
NBDKIT_EXTERN_DECL (size_t, nbdkit_extents_count,
                    (const struct nbdkit_extents *));
NBDKIT_EXTERN_DECL (struct nbdkit_extent, nbdkit_get_extent,
                    (const struct nbdkit_extents *, size_t));
NBDKIT_EXTERN_DECL (struct nbdkit_extents *, nbdkit_extents_full,
                    (nbdkit_next *next, uint32_t count, uint64_t offset,
                     uint32_t flags, int *err));
NBDKIT_EXTERN_DECL (int, nbdkit_extents_aligned,
                    (nbdkit_next *next, uint32_t count, uint64_t offset,
                     uint32_t flags, uint32_t align,
                     struct nbdkit_extents *extents, int *err));

/* Export lists a filter builds or reads. */
struct nbdkit_export {
  char *name;
  char *description;
};

NBDKIT_EXTERN_DECL (struct nbdkit_exports *, nbdkit_exports_new, (void));
NBDKIT_EXTERN_DECL (void, nbdkit_exports_free, (struct nbdkit_exports *));
NBDKIT_EXTERN_DECL (size_t, nbdkit_exports_count,
                    (const struct nbdkit_exports *));
/* nbdkit declares the result const; a qualifier on a returned value has
 * no effect (C17 drops it from the function type), so the ABI is the
 * same without it, and -Wignored-qualifiers stays quiet.
 */
NBDKIT_EXTERN_DECL (struct nbdkit_export, nbdkit_get_export,
                    (const struct nbdkit_exports *, size_t));

/* Contexts a filter manages itself. */
NBDKIT_EXTERN_DECL (nbdkit_backend *, nbdkit_context_get_backend,
                    (nbdkit_context *context));
NBDKIT_EXTERN_DECL (nbdkit_next *, nbdkit_next_context_open,
                    (nbdkit_backend *backend, int readonly,
                     const char *exportname, int shared));
NBDKIT_EXTERN_DECL (void, nbdkit_next_context_close, (nbdkit_next *next));
NBDKIT_EXTERN_DECL (nbdkit_next *, nbdkit_context_set_next,
                    (nbdkit_context *context, nbdkit_next *next));

struct nbdkit_filter {
  /* Filled in by NBDKIT_REGISTER_FILTER, never by hand.  The server
   * loads a filter only if both match its own.
   */
  int _api_version;
  const char *_version;

  const char *name;             /* required: [a-z0-9-] */
  const char *longname;
  const char *description;

  void (*load) (void);
  void (*unload) (void);

  int (*config) (nbdkit_next_config *next, nbdkit_backend *nxdata,
                 const char *key, const char *value);
  int (*config_complete) (nbdkit_next_config_complete *next,
                          nbdkit_backend *nxdata);
  const char *config_help;

  int (*thread_model) (void);
  int (*get_ready) (int thread_model);
  int (*after_fork) (nbdkit_backend *backend);
  void (*cleanup) (nbdkit_backend *backend);
  int (*preconnect) (nbdkit_next_preconnect *next, nbdkit_backend *nxdata,
                     int readonly);
  int (*list_exports) (nbdkit_next_list_exports *next,
                       nbdkit_backend *nxdata, int readonly, int is_tls,
                       struct nbdkit_exports *exports);
  const char * (*default_export) (nbdkit_next_default_export *next,
                                  nbdkit_backend *nxdata,
                                  int readonly, int is_tls);
  void * (*open) (nbdkit_next_open *next, nbdkit_context *context,
                  int readonly, const char *exportname, int is_tls);
  void (*close) (void *handle);

  int (*prepare) (nbdkit_next *next, void *handle, int readonly);
  int (*finalize) (nbdkit_next *next, void *handle);

  int64_t (*get_size) (nbdkit_next *next, void *handle);
  const char * (*export_description) (nbdkit_next *next, void *handle);
  int (*block_size) (nbdkit_next *next, void *handle, uint32_t *minimum,
                     uint32_t *preferred, uint32_t *maximum);

  int (*can_write) (nbdkit_next *next, void *handle);
  int (*can_flush) (nbdkit_next *next, void *handle);
  int (*is_rotational) (nbdkit_next *next, void *handle);
  int (*can_trim) (nbdkit_next *next, void *handle);
  int (*can_zero) (nbdkit_next *next, void *handle);
  int (*can_fast_zero) (nbdkit_next *next, void *handle);
  int (*can_extents) (nbdkit_next *next, void *handle);
  int (*can_fua) (nbdkit_next *next, void *handle);
  int (*can_multi_conn) (nbdkit_next *next, void *handle);
  int (*can_cache) (nbdkit_next *next, void *handle);

  int (*pread) (nbdkit_next *next, void *handle, void *buf,
                uint32_t count, uint64_t offset, uint32_t flags, int *err);
  int (*pwrite) (nbdkit_next *next, void *handle, const void *buf,
                 uint32_t count, uint64_t offset, uint32_t flags,
                 int *err);
  int (*flush) (nbdkit_next *next, void *handle, uint32_t flags, int *err);
  int (*trim) (nbdkit_next *next, void *handle, uint32_t count,
               uint64_t offset, uint32_t flags, int *err);
  int (*zero) (nbdkit_next *next, void *handle, uint32_t count,
               uint64_t offset, uint32_t flags, int *err);
  int (*extents) (nbdkit_next *next, void *handle, uint32_t count,
                  uint64_t offset, uint32_t flags,
                  struct nbdkit_extents *extents, int *err);
  int (*cache) (nbdkit_next *next, void *handle, uint32_t count,
                uint64_t offset, uint32_t flags, int *err);
};

/* The one symbol the server looks up in a filter: filter_init. */
#define NBDKIT_REGISTER_FILTER(filter)                          \
  NBDKIT_CXX_LANG_C NBDKIT_DLL_PUBLIC struct nbdkit_filter *    \
  filter_init (void)                                            \
  {                                                             \
    (filter)._api_version = NBDKIT_FILTER_API_VERSION;          \
    (filter)._version = NBDKIT_VERSION_STRING;                  \
    return &(filter);                                           \
  }

#ifdef __cplusplus
}
#endif

#endif /* NBDKIT_FILTER_H */
