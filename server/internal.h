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

#define NBDKIT_API_VERSION 2
#include "nbdkit-plugin.h"
#include "nbdkit-filter.h"
#include "write-target.h"
#include "nbd-protocol.h"

#define ATTRIBUTE_PRINTF(f, a) __attribute__ ((__format__ (__printf__, f, a)))
#define UNUSED __attribute__ ((__unused__))

/* main.c: the command line, fixed once the server starts. */
enum log_to { LOG_TO_STDERR, LOG_TO_SYSLOG, LOG_TO_NULL, LOG_TO_FILE };

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
  bool socket_activation;       /* LISTEN_FDS was set */
};
extern struct server_config cfg;

/* log.c: messages to the chosen log. */
void log_open (void);
void log_msg (bool is_error, const char *fmt, va_list args)
  ATTRIBUTE_PRINTF (2, 0);
void server_error (const char *fmt, ...) ATTRIBUTE_PRINTF (1, 2);
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
};
struct thread_state *thread_state (void);
void *thread_buffer (size_t n); /* NULL with errno ENOMEM */
void thread_buffer_release (void);
int thread_start_detached (void *(*fn) (void *), void *arg); /* 0/errno */
void thread_clear_error (void);
struct nbdkit_extents *thread_extents (void); /* NULL: ENOMEM */

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

/* plugin.c: the loaded plugin and the capabilities of an open export. */
struct export_caps {
  uint64_t size;
  uint16_t eflags;              /* NBD_FLAG_* as advertised (§1.7) */
  int can_zero;                 /* 0 none, 1 emulate, 2 native */
  int can_fua;                  /* NBDKIT_FUA_* */
  int can_cache;                /* NBDKIT_CACHE_* */
  bool can_extents, can_fast_zero;
  uint32_t block_min, block_pref, block_max; /* all 0 if not reported */
};

struct plugin {
  char *filename;               /* owned: path of the .so */
  void *dl;                     /* dlopen handle */
  struct nbdkit_plugin p;       /* copy, zero-padded to our size */
  const struct nbdkit_plugin *orig; /* the plugin's own struct */
  int thread_model;             /* min (plugin's, thread_model ()) */
  struct intern_set *interned;  /* strings interned outside connections */
  /* write-target.h, or both NULL: the plugin does not offer it. */
  write_target_fn *write_target;
  write_target_done_fn *write_target_done;
};
extern struct plugin plugin;

int plugin_load (const char *name_or_path);
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
int plugin_debug_flag_set (const char *name, const char *flag, int value);

/* backend.c: an open export as seen by the protocol layer.  All data
 * calls return 0 or -1 with the host errno in *err.
 */
struct export {
  void *handle;                 /* plugin's handle */
  struct export_caps caps;
  char *name;                   /* owned: name the client asked for */
  char *description;            /* owned, may be NULL */
};
int backend_open (struct export *exp, const char *name, bool readonly);
void backend_close (struct export *exp);
int backend_pread (struct export *exp, void *buf, uint32_t count,
                   uint64_t offset, uint32_t flags, int *err);
int backend_pwrite (struct export *exp, const void *buf, uint32_t count,
                    uint64_t offset, uint32_t flags, int *err);
int backend_write_target (struct export *exp, uint32_t count,
                          uint64_t offset, uint32_t flags,
                          struct iovec *iov, int *iovcnt, void **token);
int backend_write_target_done (struct export *exp, void *token,
                               bool commit, int *err);
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

#endif /* NBDSRV_INTERNAL_H */
