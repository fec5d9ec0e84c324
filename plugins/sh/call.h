/* nbdsrv sh and eval plugins: shared declarations.
 *
 * Both plugins run an external program for every plugin callback and
 * translate its exit status, stdout and stderr back into the plugin
 * API.  call.c runs the program; methods.c implements the callbacks
 * on top of it.  What differs between the plugins is only which
 * program is run for a method, which each plugin supplies through
 * sh_method_script().
 */
#ifndef NBDSRV_SH_CALL_H
#define NBDSRV_SH_CALL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* How a method call ended.  The first four values are the exit codes
 * the calling convention gives a meaning to, so a status in 0..3 maps
 * onto them directly; every other exit code, a signal or a failure to
 * run the program at all is SH_ERROR.
 */
enum sh_status {
  SH_OK = 0,
  SH_ERROR = 1,
  SH_MISSING = 2,
  SH_FALSE = 3,
};

/* Output collected from a child.  A growable buffer starts with
 * data == NULL and cap == 0 and is grown as needed; the owner frees
 * data.  A fixed buffer (fixed == true) points at caller memory of cap
 * bytes; output beyond cap is counted in len but not stored.
 * Growable buffers are always kept NUL-terminated for parsing.
 */
struct sh_buf {
  char *data;                   /* owned unless fixed */
  size_t len;                   /* bytes produced, may exceed cap if fixed */
  size_t cap;
  bool fixed;
};

/* call.c */
extern const char *sh_tmpdir;   /* owned by call.c, set by sh_tmpdir_create */
extern int sh_tmpdir_create (void);
extern void sh_tmpdir_remove (void);
extern int sh_run (const char *path, const char **args,
                   const void *in, size_t inlen,
                   struct sh_buf *out, struct sh_buf *err, int *status);
extern enum sh_status sh_call (const char *method, const char **args,
                               const void *in, size_t inlen,
                               struct sh_buf *out);
extern void sh_buf_free (struct sh_buf *buf);
extern void sh_chomp (char *s);

/* Supplied by each plugin: the program that implements METHOD, or
 * NULL when it is known to be missing (the call then ends as if the
 * program had exited with status 2, without running anything).
 */
extern const char *sh_method_script (const char *method);

/* methods.c: the callbacks both plugins share. */
extern void sh_unload (void);
extern void sh_dump_plugin (void);
extern int sh_config_forward (const char *key, const char *value);
extern int sh_config_complete (void);
extern int sh_thread_model (void);
extern int sh_get_ready (void);
extern int sh_after_fork (void);
extern int sh_preconnect (int readonly);
struct nbdkit_exports;
extern int sh_list_exports (int readonly, int is_tls,
                            struct nbdkit_exports *exports);
extern const char *sh_default_export (int readonly, int is_tls);
extern void *sh_open (int readonly);
extern void sh_close (void *handle);
extern const char *sh_export_description (void *handle);
extern int64_t sh_get_size (void *handle);
extern int sh_block_size (void *handle, uint32_t *minimum,
                          uint32_t *preferred, uint32_t *maximum);
extern int sh_can_write (void *handle);
extern int sh_can_flush (void *handle);
extern int sh_is_rotational (void *handle);
extern int sh_can_trim (void *handle);
extern int sh_can_zero (void *handle);
extern int sh_can_fast_zero (void *handle);
extern int sh_can_extents (void *handle);
extern int sh_can_fua (void *handle);
extern int sh_can_multi_conn (void *handle);
extern int sh_can_cache (void *handle);
extern int sh_pread (void *handle, void *buf, uint32_t count,
                     uint64_t offset, uint32_t flags);
extern int sh_pwrite (void *handle, const void *buf, uint32_t count,
                      uint64_t offset, uint32_t flags);
extern int sh_flush (void *handle, uint32_t flags);
extern int sh_trim (void *handle, uint32_t count, uint64_t offset,
                    uint32_t flags);
extern int sh_zero (void *handle, uint32_t count, uint64_t offset,
                    uint32_t flags);
struct nbdkit_extents;
extern int sh_extents (void *handle, uint32_t count, uint64_t offset,
                       uint32_t flags, struct nbdkit_extents *extents);
extern int sh_cache (void *handle, uint32_t count, uint64_t offset,
                     uint32_t flags);

/* The callbacks sh and eval share: every one runs a script method
 * (methods.c).  Used inside both plugins' struct nbdkit_plugin.
 */
#define SH_SCRIPT_CALLBACKS \
  .get_ready          = sh_get_ready, \
  .after_fork         = sh_after_fork, \
  .preconnect         = sh_preconnect, \
  .list_exports       = sh_list_exports, \
  .default_export     = sh_default_export, \
  .open               = sh_open, \
  .close              = sh_close, \
  .export_description = sh_export_description, \
  .get_size           = sh_get_size, \
  .block_size         = sh_block_size, \
  .can_write          = sh_can_write, \
  .can_flush          = sh_can_flush, \
  .is_rotational      = sh_is_rotational, \
  .can_trim           = sh_can_trim, \
  .can_zero           = sh_can_zero, \
  .can_fast_zero      = sh_can_fast_zero, \
  .can_extents        = sh_can_extents, \
  .can_fua            = sh_can_fua, \
  .can_multi_conn     = sh_can_multi_conn, \
  .can_cache          = sh_can_cache, \
  .pread              = sh_pread, \
  .pwrite             = sh_pwrite, \
  .flush              = sh_flush, \
  .trim               = sh_trim, \
  .zero               = sh_zero, \
  .extents            = sh_extents, \
  .cache              = sh_cache, \
  .errno_is_preserved = 1,

#endif /* NBDSRV_SH_CALL_H */
