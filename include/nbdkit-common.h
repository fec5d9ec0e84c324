/* nbdsrv: declarations shared by the plugin and filter APIs.
 *
 * Written for nbdsrv from nbdkit's documented API (nbdkit-plugin(3)).
 * Every constant, type and symbol name here is an interface fact that
 * existing plugins depend on; the ABI test in tests/unit/abi compares
 * them with nbdkit's headers.  Never reorder or renumber anything.
 */
#ifndef NBDKIT_COMMON_H
#define NBDKIT_COMMON_H

#if !defined (NBDKIT_PLUGIN_H) && !defined (NBDKIT_FILTER_H)
#error "include <nbdkit-plugin.h> or <nbdkit-filter.h>, not this header"
#endif

#include <stdarg.h>
#include <stdint.h>
#include <errno.h>
#include <sys/socket.h>

#include <nbdkit-version.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined (__GNUC__) || defined (__clang__)
#define ATTRIBUTE_FORMAT_PRINTF(fmtpos, argpos) \
  __attribute__ ((__format__ (__printf__, fmtpos, argpos)))
#else
#define ATTRIBUTE_FORMAT_PRINTF(fmtpos, argpos)
#endif

/* Thread models, weakest guarantee last. */
#define NBDKIT_THREAD_MODEL_SERIALIZE_CONNECTIONS     0
#define NBDKIT_THREAD_MODEL_SERIALIZE_ALL_REQUESTS    1
#define NBDKIT_THREAD_MODEL_SERIALIZE_REQUESTS        2
#define NBDKIT_THREAD_MODEL_PARALLEL                  3

/* Flags passed to data callbacks. */
#define NBDKIT_FLAG_MAY_TRIM  (1<<0) /* client did not send NO_HOLE */
#define NBDKIT_FLAG_FUA       (1<<1) /* force unit access */
#define NBDKIT_FLAG_REQ_ONE   (1<<2) /* block status: one extent is enough */
#define NBDKIT_FLAG_FAST_ZERO (1<<3) /* zero: fail rather than be slow */

/* Return values of can_fua. */
#define NBDKIT_FUA_NONE       0
#define NBDKIT_FUA_EMULATE    1
#define NBDKIT_FUA_NATIVE     2

/* Return values of can_cache. */
#define NBDKIT_CACHE_NONE     0
#define NBDKIT_CACHE_EMULATE  1
#define NBDKIT_CACHE_NATIVE   2

/* Extent types; equal to the NBD base:allocation status bits. */
#define NBDKIT_EXTENT_HOLE    (1<<0)
#define NBDKIT_EXTENT_ZERO    (1<<1)

#define NBDKIT_EXTERN_DECL(ret, fn, args) extern ret fn args
#define NBDKIT_DLL_PUBLIC __attribute__ ((__visibility__ ("default")))

/* Messages. */
NBDKIT_EXTERN_DECL (void, nbdkit_error,
                    (const char *msg, ...) ATTRIBUTE_FORMAT_PRINTF (1, 2));
NBDKIT_EXTERN_DECL (void, nbdkit_verror,
                    (const char *msg, va_list args)
                    ATTRIBUTE_FORMAT_PRINTF (1, 0));
NBDKIT_EXTERN_DECL (void, nbdkit_debug,
                    (const char *msg, ...) ATTRIBUTE_FORMAT_PRINTF (1, 2));
NBDKIT_EXTERN_DECL (void, nbdkit_vdebug,
                    (const char *msg, va_list args)
                    ATTRIBUTE_FORMAT_PRINTF (1, 0));

/* Parsing configuration values. */
NBDKIT_EXTERN_DECL (char *, nbdkit_absolute_path, (const char *path));
NBDKIT_EXTERN_DECL (int64_t, nbdkit_parse_size, (const char *str));
NBDKIT_EXTERN_DECL (int, nbdkit_parse_bool, (const char *str));
NBDKIT_EXTERN_DECL (int, nbdkit_parse_int,
                    (const char *what, const char *str, int *r));
NBDKIT_EXTERN_DECL (int, nbdkit_parse_unsigned,
                    (const char *what, const char *str, unsigned *r));
NBDKIT_EXTERN_DECL (int, nbdkit_parse_int8_t,
                    (const char *what, const char *str, int8_t *r));
NBDKIT_EXTERN_DECL (int, nbdkit_parse_uint8_t,
                    (const char *what, const char *str, uint8_t *r));
NBDKIT_EXTERN_DECL (int, nbdkit_parse_int16_t,
                    (const char *what, const char *str, int16_t *r));
NBDKIT_EXTERN_DECL (int, nbdkit_parse_uint16_t,
                    (const char *what, const char *str, uint16_t *r));
NBDKIT_EXTERN_DECL (int, nbdkit_parse_int32_t,
                    (const char *what, const char *str, int32_t *r));
NBDKIT_EXTERN_DECL (int, nbdkit_parse_uint32_t,
                    (const char *what, const char *str, uint32_t *r));
NBDKIT_EXTERN_DECL (int, nbdkit_parse_int64_t,
                    (const char *what, const char *str, int64_t *r));
NBDKIT_EXTERN_DECL (int, nbdkit_parse_uint64_t,
                    (const char *what, const char *str, uint64_t *r));
NBDKIT_EXTERN_DECL (int, nbdkit_parse_probability,
                    (const char *what, const char *str, double *r));
NBDKIT_EXTERN_DECL (int, nbdkit_parse_delay,
                    (const char *what, const char *str,
                     unsigned *sec, unsigned *nsec));
NBDKIT_EXTERN_DECL (int, nbdkit_stdio_safe, (void));
NBDKIT_EXTERN_DECL (int, nbdkit_read_password,
                    (const char *value, char **password));
NBDKIT_EXTERN_DECL (char *, nbdkit_realpath, (const char *path));

/* Connection and server state. */
NBDKIT_EXTERN_DECL (int, nbdkit_nanosleep, (unsigned sec, unsigned nsec));
NBDKIT_EXTERN_DECL (int, nbdkit_peer_name,
                    (struct sockaddr *addr, socklen_t *addrlen));
NBDKIT_EXTERN_DECL (int64_t, nbdkit_peer_pid, (void));
NBDKIT_EXTERN_DECL (int64_t, nbdkit_peer_uid, (void));
NBDKIT_EXTERN_DECL (int64_t, nbdkit_peer_gid, (void));
/* Later nbdkit (1.36): the client's security label, malloc'd. */
NBDKIT_EXTERN_DECL (char *, nbdkit_peer_security_context, (void));
NBDKIT_EXTERN_DECL (void, nbdkit_shutdown, (void));
NBDKIT_EXTERN_DECL (void, nbdkit_disconnect, (int force));

/* Strings that live as long as the current connection (or, outside a
 * connection, until the plugin is unloaded).
 */
NBDKIT_EXTERN_DECL (const char *, nbdkit_strdup_intern,
                    (const char *str));
NBDKIT_EXTERN_DECL (const char *, nbdkit_strndup_intern,
                    (const char *str, size_t n));
NBDKIT_EXTERN_DECL (const char *, nbdkit_printf_intern,
                    (const char *msg, ...) ATTRIBUTE_FORMAT_PRINTF (1, 2));
NBDKIT_EXTERN_DECL (const char *, nbdkit_vprintf_intern,
                    (const char *msg, va_list args)
                    ATTRIBUTE_FORMAT_PRINTF (1, 0));

/* Extent lists (block status) and export lists. */
struct nbdkit_extents;
NBDKIT_EXTERN_DECL (int, nbdkit_add_extent,
                    (struct nbdkit_extents *,
                     uint64_t offset, uint64_t length, uint32_t type));

struct nbdkit_exports;
NBDKIT_EXTERN_DECL (int, nbdkit_add_export,
                    (struct nbdkit_exports *,
                     const char *name, const char *description));
NBDKIT_EXTERN_DECL (int, nbdkit_use_default_export,
                    (struct nbdkit_exports *));

/* A non-NULL handle for plugins that keep no per-connection state. */
#define NBDKIT_HANDLE_NOT_NEEDED (&errno)

#ifdef __cplusplus
}
#endif

#ifdef __cplusplus
#define NBDKIT_CXX_LANG_C extern "C"
#else
#define NBDKIT_CXX_LANG_C
#endif

#endif /* NBDKIT_COMMON_H */
