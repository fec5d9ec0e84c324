/* nbdsrv: declarations shared by the files of the server core.
 *
 * One section per file; each file owns the state it declares here.
 */
#ifndef NBDSRV_INTERNAL_H
#define NBDSRV_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdarg.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/types.h>

#define NBDKIT_API_VERSION 2
#include "nbdkit-plugin.h"
#include "nbdkit-filter.h"
#include "write-target.h"
#include "read-source.h"
#include "meta-ext.h"
#include "nbd-protocol.h"

#define ATTRIBUTE_PRINTF(f, a) __attribute__ ((__format__ (__printf__, f, a)))
#define UNUSED __attribute__ ((__unused__))

/* main.c: the command line, fixed once the server starts. */
enum log_to { LOG_TO_STDERR, LOG_TO_SYSLOG, LOG_TO_NULL, LOG_TO_FILE };
enum tls_mode { TLS_UNSET = -1, TLS_OFF, TLS_ON, TLS_REQUIRE };

struct server_config {
  const char *unixsocket;       /* -U; NULL if not given */
  const char *port;             /* -p; NULL means 10809 */
  const char *ipaddr;           /* -i; NULL means any */
  int ipfamily;                 /* -4/-6: AF_INET, AF_INET6 or AF_UNSPEC */
  const char *exportname;       /* -e: only used to build $uri */
  const char *run;              /* --run */
  const char *pidfile;          /* -P */
  const char *log_file;         /* --log=FILE */
  enum log_to log_to;
  unsigned threads;             /* -t: workers per connection */
  unsigned handshake_timeout;   /* --timeout, seconds; 0 = none */
  unsigned mask_handshake;      /* --mask-handshake */
  unsigned max_connections;     /* --max-connections; 0 = no limit */
  bool foreground, readonly, single, vsock, no_sr, no_mc;
  bool print_uri, exit_with_parent, verbose, keepalive;
  bool oldstyle;                /* -o: the oldstyle handshake */
  bool socket_activation;       /* LISTEN_FDS was set */
  const char *selinux_label;    /* --selinux-label, or NULL */
  /* -u/-g, looked up before the sockets are made (they are given to
   * the user and group the server drops to).
   */
  bool set_uid, set_gid;
  bool group_access;            /* -g: the group may use the Unix socket */
  uid_t uid;
  gid_t gid;

  /* TLS (tls.c).  tls stays TLS_UNSET until tls_load settles it. */
  int tls;                      /* enum tls_mode */
  const char *tls_certificates; /* --tls-certificates; NULL: defaults */
  const char *tls_psk;          /* --tls-psk, or NULL */
  const char *tls_priority;     /* --tls-priority; NULL: the default */
  bool tls_verify_peer;         /* --tls-verify-peer */
  int tls_session_debug;        /* -D nbdkit.tls.session=N */
  int tls_log;                  /* -D nbdkit.tls.log=N: GnuTLS's level */
};
extern struct server_config cfg;

/* log.c: messages to the chosen log. */
void log_open (void);
void log_msg (bool is_error, const char *fmt, va_list args)
  ATTRIBUTE_PRINTF (2, 0);
void server_error (const char *fmt, ...) ATTRIBUTE_PRINTF (1, 2);
void startup_vmessage (const char *kind, const char *fmt, va_list args)
  ATTRIBUTE_PRINTF (2, 0);
void startup_warning (const char *fmt, ...) ATTRIBUTE_PRINTF (1, 2);
void server_debug (const char *fmt, ...) ATTRIBUTE_PRINTF (1, 2);
#define debug(...) do { if (cfg.verbose) server_debug (__VA_ARGS__); } while (0)

/* threadlocal.c: per-thread state.  Buffers only grow, so the hot
 * path does not allocate (STYLE.md 8).
 */
struct connection;
struct thread_state {
  struct connection *conn;      /* borrowed; NULL outside a connection */
  const char *name;             /* "plugin name" for log prefixes */
  int err;                      /* nbdkit_set_error, 0 if unset */
  char last_error[4096];        /* last nbdkit_error text of a request */
  size_t last_error_len;
  char *buf;                    /* owned: READ/WRITE data buffer */
  size_t buf_size;
  struct nbdkit_extents *extents; /* owned: block status scratch list */
  int pipe_r, pipe_w;           /* owned: splice pipe (reply-splice.c),
                                   or both -1 until first used */
};
struct thread_state *thread_state (void);
bool conn_is_tls (void);        /* public.c: this thread's client has TLS */
void *thread_buffer (size_t n); /* NULL with errno ENOMEM */
void thread_buffer_release (void);
int thread_start_detached (void *(*fn) (void *), void *arg); /* 0/errno */
void thread_clear_error (void);
struct nbdkit_extents *thread_extents (void); /* NULL: ENOMEM */
int thread_pipe (int *pipe_r, int *pipe_w); /* 0, or -1 with errno */
void thread_pipe_discard (void);

/* probe.c: --dump-config, --version, --short/long-options. */
struct option;
void probe_dump_config (void);
void probe_version (bool with_stack);
void probe_short_options (const char *short_opts);
void probe_long_options (const struct option *long_opts);

/* stdio.c: the caller's stdin and stdout, kept aside (-1 if closed)
 * while fds 0 and 1 point at /dev/null from get_ready on.
 */
extern int stdio_in, stdio_out;
int stdio_detach (void);

/* dirs.c: where plugins and filters given by name are looked up.  The
 * strings are static.
 */
enum module_kind { MODULE_PLUGIN, MODULE_FILTER };
#define DIRS_SEARCH_MAX 3
const char *dirs_own (enum module_kind kind);
size_t dirs_search (enum module_kind kind, const char *dirs[DIRS_SEARCH_MAX]);
/* The file of the plugin or filter NAME in the first directory that
 * has it (the caller frees it), or NULL after saying where it looked.
 */
char *dirs_find (enum module_kind kind, const char *name);

/* notify.c: READY=1 and STOPPING=1 for systemd (Type=notify). */
void notify_ready (void);
void notify_stopping (void);

/* quit.c: shutting the server down. */
extern volatile int quit;       /* set once; never cleared */
extern int quit_fd;             /* becomes readable once quit is set */
void quit_init (void);
void quit_set (void);

/* extents.c: struct nbdkit_extents, owned by the thread that asks for
 * block status.
 */
struct extent {
  uint64_t offset;
  uint64_t length;
  uint32_t type;
};
struct nbdkit_extents {
  struct extent *ptr;           /* owned */
  size_t len, cap;
  uint64_t start, end;          /* range the plugin may describe */
  uint64_t next;                /* the next offset a new extent must have */
};
void extents_reset (struct nbdkit_extents *e, uint64_t start, uint64_t end);
void extents_release (struct nbdkit_extents *e);
struct nbdkit_extents *nbdkit_extents_new (uint64_t start, uint64_t end);
void nbdkit_extents_free (struct nbdkit_extents *e);

/* exports.c: struct nbdkit_exports and the default export. */
struct export_entry {
  char *name;                   /* owned */
  char *description;            /* owned, may be NULL */
};
struct nbdkit_exports {
  struct export_entry *ptr;     /* owned */
  size_t len, cap;
  bool use_default;             /* nbdkit_use_default_export was called */
};
struct nbdkit_exports *exports_new (void);
void exports_free (struct nbdkit_exports *exports);

/* intern.c: strings that live until the end of the connection (or
 * until unload outside a connection).
 */
struct intern_set;
struct intern_set **threadlocal_intern_set (void); /* public.c */
void intern_set_free (struct intern_set **set);

/* The stack of layers a request goes through: the filters, the one
 * named first nearest the client, then the plugin.  nbdkit-filter.h
 * calls one layer, as the filter below it sees it, an nbdkit_backend.
 * Fixed once the server is configured.
 */
struct nbdkit_backend {
  struct nbdkit_backend *next;  /* the layer below; NULL for the plugin */
  bool is_plugin;
  unsigned index;               /* 0 for the plugin, counting upwards */
  const char *name;             /* the filter's or plugin's .name */
  /* Filters only (the plugin's are in struct plugin). */
  char *filename;               /* owned: path of the .so */
  void *dl;                     /* dlopen handle */
  struct nbdkit_filter f;       /* a copy of its struct */
  /* meta-ext.h, where the filter offers them. */
  bool keeps_blocks;            /* honours NBDSRV_FLAG_DEPTH */
  dirty_bitmap_name_fn *dirty_name;
  dirty_extents_fn *dirty_extents;
};

/* One layer's state for one use of an export: per connection, or
 * shared when a filter opens it outside a connection.  A filter is
 * handed a pointer to one as its nbdkit_next (the call table must come
 * first) and, for its own layer, as its nbdkit_context.
 */
struct context {
  struct nbdkit_next_ops ops;   /* first: filters call next->fn (next) */
  struct nbdkit_backend *b;
  void *handle;                 /* the layer's own handle */
  struct context *c_next;       /* filter: the context below, or NULL */
  struct connection *conn;      /* borrowed; NULL when shared */
  bool readonly;
  bool prepared;                /* .prepare succeeded, not finalized */
  /* Answers cached for the life of the context, -1 until asked. */
  int64_t size;
  int can_write, can_flush, is_rotational, can_trim, can_zero;
  int can_fast_zero, can_extents, can_fua, can_multi_conn, can_cache;
};

/* plugin.c: the loaded plugin and the capabilities of an open export. */
struct export_caps {
  uint64_t size;
  uint16_t eflags;              /* NBD_FLAG_* as advertised (§1.7) */
  int can_zero;                 /* NBDKIT_ZERO_* */
  int can_fua;                  /* NBDKIT_FUA_* */
  int can_cache;                /* NBDKIT_CACHE_* */
  bool can_extents, can_fast_zero;
  uint32_t block_min, block_pref, block_max; /* all 0 if not reported */
};

struct plugin {
  char *filename;               /* owned: path of the .so */
  void *dl;                     /* dlopen handle */
  struct nbdkit_backend backend; /* the bottom layer of the stack */
  struct nbdkit_plugin p;       /* copy, zero-padded to our size */
  const struct nbdkit_plugin *orig; /* the plugin's own struct */
  int thread_model;             /* min (plugin's, thread_model ()) */
  struct intern_set *interned;  /* strings interned outside connections */
  /* write-target.h, or both NULL: the plugin does not offer it. */
  write_target_fn *write_target;
  write_target_done_fn *write_target_done;
  read_source_fn *read_source;  /* read-source.h, or NULL */
};
extern struct plugin plugin;

void plugin_script_exec (int argc, char **argv, int plugin_index);
int plugin_load (const char *name_or_path);
void plugin_cleanup (void);
void plugin_unload (void);
int plugin_config (const char *key, const char *value);
const char *plugin_magic_config_key (void);
int plugin_config_complete (void);
int plugin_thread_model_settle (void);
int plugin_get_ready (void);
int plugin_after_fork (void);
void plugin_usage (void);
void plugin_dump (void);
const char *plugin_default_export (bool readonly);
int plugin_list_exports (bool readonly, struct nbdkit_exports *exports);
int plugin_debug_flag_set (const char *name, const char *sym, int value);

/* plugin-calls.c: the plugin as the bottom layer of a context, with
 * what it lacks emulated (FUA by flush, zero by write).  Data calls
 * return 0 or -1 with the errno for the client in *err.
 */
void *plugin_open (struct context *c, const char *exportname);
void plugin_close (struct context *c);
int64_t plugin_get_size (struct context *c);
const char *plugin_export_description (struct context *c);
int plugin_block_size (struct context *c, uint32_t *minimum,
                       uint32_t *preferred, uint32_t *maximum);
int plugin_can_write (struct context *c);
int plugin_can_flush (struct context *c);
int plugin_is_rotational (struct context *c);
int plugin_can_trim (struct context *c);
int plugin_can_zero (struct context *c);
int plugin_can_fast_zero (struct context *c);
int plugin_can_extents (struct context *c);
int plugin_can_fua (struct context *c);
int plugin_can_multi_conn (struct context *c);
int plugin_can_cache (struct context *c);
int plugin_pread (struct context *c, void *buf, uint32_t count,
                  uint64_t offset, uint32_t flags, int *err);
int plugin_pwrite (struct context *c, const void *buf, uint32_t count,
                   uint64_t offset, uint32_t flags, int *err);
int plugin_flush (struct context *c, uint32_t flags, int *err);
int plugin_trim (struct context *c, uint32_t count, uint64_t offset,
                 uint32_t flags, int *err);
int plugin_zero (struct context *c, uint32_t count, uint64_t offset,
                 uint32_t flags, int *err);
int plugin_extents (struct context *c, uint32_t count, uint64_t offset,
                    uint32_t flags, struct nbdkit_extents *extents,
                    int *err);
int plugin_cache (struct context *c, uint32_t count, uint64_t offset,
                  uint32_t flags, int *err);
int plugin_write_target (struct context *c, uint32_t count, uint64_t offset,
                         struct iovec *iov, int *iovcnt, void **token);
int plugin_write_target_done (struct context *c, void *token, bool commit,
                              int *err);
int plugin_read_source (struct context *c, uint32_t count, uint64_t offset,
                        int *fd, uint64_t *fd_offset, unsigned *flags);

/* filter.c: loading and configuring the filters (--filter), and the
 * calls outside connections that go down the whole stack.
 */
struct stack {
  struct nbdkit_backend *top;   /* the layer clients talk to */
  unsigned nfilters;
  int thread_model;             /* the most restrictive of all layers */
};
extern struct stack stack;

int filter_add (const char *name_or_path); /* in command-line order */
void stack_unload (void);
int stack_config (const char *key, const char *value);
int stack_config_complete (void);
int stack_thread_model_settle (void);
int stack_get_ready (void);
int stack_after_fork (void);
void stack_usage (void);
int stack_preconnect (bool readonly);
const char *stack_default_export (bool readonly);
int stack_list_exports (bool readonly, struct nbdkit_exports *exports);
void *stack_dl_of (const char *name); /* the layer NAME's .so, or NULL */

/* filter-calls.c: a filter as one layer of a context. */
void *filter_open (struct context *c, bool readonly, const char *exportname);
void filter_close (struct context *c);
int filter_prepare (struct context *c);
int filter_finalize (struct context *c);
int64_t filter_get_size (struct context *c);
const char *filter_export_description (struct context *c);
int filter_block_size (struct context *c, uint32_t *minimum,
                       uint32_t *preferred, uint32_t *maximum);
int filter_can_write (struct context *c);
int filter_can_flush (struct context *c);
int filter_is_rotational (struct context *c);
int filter_can_trim (struct context *c);
int filter_can_zero (struct context *c);
int filter_can_fast_zero (struct context *c);
int filter_can_extents (struct context *c);
int filter_can_fua (struct context *c);
int filter_can_multi_conn (struct context *c);
int filter_can_cache (struct context *c);
int filter_pread (struct context *c, void *buf, uint32_t count,
                  uint64_t offset, uint32_t flags, int *err);
int filter_pwrite (struct context *c, const void *buf, uint32_t count,
                   uint64_t offset, uint32_t flags, int *err);
int filter_flush (struct context *c, uint32_t flags, int *err);
int filter_trim (struct context *c, uint32_t count, uint64_t offset,
                 uint32_t flags, int *err);
int filter_zero (struct context *c, uint32_t count, uint64_t offset,
                 uint32_t flags, int *err);
int filter_extents (struct context *c, uint32_t count, uint64_t offset,
                    uint32_t flags, struct nbdkit_extents *extents,
                    int *err);
int filter_cache (struct context *c, uint32_t count, uint64_t offset,
                  uint32_t flags, int *err);

/* metacontext.c: the meta contexts this server offers (§1.6), with
 * the ids of protocol.h.
 */
struct meta_offer {
  uint32_t id;
  const char *name;             /* borrowed, lives as long as the stack */
};
size_t meta_offered (struct meta_offer *out, size_t max);
bool meta_matches (const char *name, const char *query, size_t qlen,
                   bool list);
struct nbdkit_backend *meta_dirty_layer (uint32_t id);

/* context.c: opening, preparing, finalizing and closing contexts, and
 * the calls on one, each answered by its layer (filter or plugin).
 * The can_* answers and the size are asked once per context.
 */
struct context *ctx_open (struct nbdkit_backend *b, bool readonly,
                          const char *exportname, bool shared);
int ctx_prepare (struct context *c);
int ctx_finalize (struct context *c);
void ctx_close (struct context *c);
void ctx_pool_trim (void);      /* after a burst: conns_trim */
int64_t ctx_get_size (struct context *c);
const char *ctx_export_description (struct context *c);
int ctx_block_size (struct context *c, uint32_t *minimum,
                    uint32_t *preferred, uint32_t *maximum);
int ctx_can_write (struct context *c);
int ctx_can_flush (struct context *c);
int ctx_is_rotational (struct context *c);
int ctx_can_trim (struct context *c);
int ctx_can_zero (struct context *c);
int ctx_can_fast_zero (struct context *c);
int ctx_can_extents (struct context *c);
int ctx_can_fua (struct context *c);
int ctx_can_multi_conn (struct context *c);
int ctx_can_cache (struct context *c);
int ctx_pread (struct context *c, void *buf, uint32_t count,
               uint64_t offset, uint32_t flags, int *err);
int ctx_pwrite (struct context *c, const void *buf, uint32_t count,
                uint64_t offset, uint32_t flags, int *err);
int ctx_flush (struct context *c, uint32_t flags, int *err);
int ctx_trim (struct context *c, uint32_t count, uint64_t offset,
              uint32_t flags, int *err);
int ctx_zero (struct context *c, uint32_t count, uint64_t offset,
              uint32_t flags, int *err);
int ctx_zero_by_writing (struct context *c, uint32_t count,
                         uint64_t offset, uint32_t flags, int *err);
int ctx_extents (struct context *c, uint32_t count, uint64_t offset,
                 uint32_t flags, struct nbdkit_extents *extents, int *err);
int ctx_cache (struct context *c, uint32_t count, uint64_t offset,
               uint32_t flags, int *err);

/* backend.c: an open export as seen by the protocol layer: the stack's
 * top context, under the thread model's lock.  All data calls return 0
 * or -1 with the host errno in *err.
 */
#define EXPORT_NAME_INLINE 64
struct export {
  struct context *top;          /* open while not NULL */
  struct export_caps caps;
  char *name;                   /* name the client asked for: name_inline,
                                   or owned when longer */
  char *description;            /* owned: asked for once, may be NULL */
  const char *plugin_name;      /* name or interned: the name the plugin
                                   opened */
  /* A short name lives here rather than in malloc: see backend_open. */
  char name_inline[EXPORT_NAME_INLINE];
};
int backend_open (struct export *exp, const char *name, bool readonly);
void backend_close (struct export *exp);
const char *backend_export_description (struct export *exp);
int backend_pread (struct export *exp, void *buf, uint32_t count,
                   uint64_t offset, uint32_t flags, int *err);
int backend_pwrite (struct export *exp, const void *buf, uint32_t count,
                    uint64_t offset, uint32_t flags, int *err);
int backend_write_target (struct export *exp, uint32_t count,
                          uint64_t offset, uint32_t flags,
                          struct iovec *iov, int *iovcnt, void **token);
int backend_write_target_done (struct export *exp, void *token,
                               bool commit, int *err);
int backend_read_source (struct export *exp, uint32_t count,
                         uint64_t offset, int *fd, uint64_t *fd_offset,
                         unsigned *flags);
int backend_flush (struct export *exp, uint32_t flags, int *err);
int backend_trim (struct export *exp, uint32_t count, uint64_t offset,
                  uint32_t flags, int *err);
int backend_zero (struct export *exp, uint32_t count, uint64_t offset,
                  uint32_t flags, int *err);
int backend_cache (struct export *exp, uint32_t count, uint64_t offset,
                   uint32_t flags, int *err);
int backend_extents (struct export *exp, uint32_t count, uint64_t offset,
                     uint32_t flags, struct nbdkit_extents *extents,
                     int *err);
int backend_dirty_extents (struct export *exp, struct nbdkit_backend *b,
                           uint32_t count, uint64_t offset,
                           struct nbdkit_extents *extents, int *err);

#endif /* NBDSRV_INTERNAL_H */
