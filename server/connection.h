/* nbdsrv: one client connection, shared by handshake.c, protocol.c
 * and connection.c.
 */
#ifndef NBDSRV_CONNECTION_H
#define NBDSRV_CONNECTION_H

#include <stdatomic.h>
#include <sys/socket.h>

#include "internal.h"

/* Ordered: only comparisons matter (protocol-rules.md §3). */
enum conn_status {
  CONN_DEAD = 0,                /* hard disconnect, no more replies */
  CONN_CLIENT_DONE = 1,         /* orderly close: EOF or DISC */
  CONN_SHUTDOWN = 2,            /* server quitting: finish in flight */
  CONN_ACTIVE = 3,
};

#define CONN_RBUF_SIZE (128 * 1024)
#define CONN_OBUF_SIZE (256 * 1024)

/* How long a worker that has answered everything waits for the next
 * request before the connection parks.  Parking and waking cost about
 * two system calls and a hand-off to another thread, so a client that
 * keeps sending (any queue depth, or QD1 with a short think time) must
 * never pay them: this covers the gaps of a busy client with a wide
 * margin while an idle client gives its thread back almost at once.
 * A connection fresh from the handshake parks at once: it has just
 * shown it waits.  Measured here: a QD1 client pausing 1 or 3 ms
 * between reads never parks (latency as before parking); one pausing
 * 8 to 50 ms parks every time and pays about 10 us of median latency,
 * a fraction of its own pause.
 */
#define PARK_GRACE_MS 5

/* Backend calls averaging under this run inline (protocol.c). */
#define INLINE_MAX_NS 10000

struct connection {
  unsigned id;                  /* for log lines, from 1 */
  int fd_in, fd_out;            /* one socket, or stdin/stdout for -s */
  bool is_socket;
  _Atomic int status;           /* enum conn_status */
  struct sockaddr_storage peer;
  socklen_t peer_len;
  int64_t deadline_ms;          /* handshake deadline, 0 once negotiated */
  /* Owned (tls.c): set by STARTTLS before any worker starts, then read
   * only; NULL in plain text.  Reads go through it under read_lock,
   * writes under write_lock: GnuTLS allows one of each at once.
   */
  struct tls_session *tls;

  /* Negotiated during the handshake; read-only afterwards. */
  bool no_zeroes;               /* client set C_NO_ZEROES */
  bool structured;              /* NBD_OPT_STRUCTURED_REPLY, or implied
                                   by extended headers */
  bool extended;                /* NBD_OPT_EXTENDED_HEADERS (§6) */
  uint32_t meta_ids;            /* selected meta contexts: 1 << id */
  char *meta_export;            /* owned: name SET_META_CONTEXT saw */
  bool listed;                  /* NBD_OPT_LIST answered once */
  bool tls_refusal_logged;      /* TLS_REQD was logged once */
  uint32_t align;               /* V-16: minimum block size to enforce */
  struct export exp;            /* open while exp.handle != NULL */

  /* Receive side: only the holder of read_lock reads the socket. */
  pthread_mutex_t read_lock;
  char *rbuf;                   /* owned (park.c's block), CONN_RBUF_SIZE
                                   bytes; NULL while parked */
  size_t rpos, rlen;            /* unread bytes are rbuf[rpos..rlen) */
  bool hdr_exact;               /* a large payload was just read: read
                                   only the next request's header */
  char *obuf;                   /* batched replies (reply.c): the same
                                   block, after rbuf */
  size_t olen;                  /* bytes waiting in obuf */
  atomic_uint call_ns;          /* running average of a backend call */
  unsigned call_ns_start;       /* its value at the start */

  pthread_mutex_t write_lock;   /* one whole reply at a time */

  /* Worker threads, started on demand up to max_workers. */
  pthread_mutex_t workers_lock;
  atomic_uint nworkers;         /* alive; changed under workers_lock */
  unsigned max_workers;
  atomic_uint readers_waiting;  /* workers queued on read_lock */

  /* READ/WRITE buffers above REQUEST_BIG in use on this connection,
   * at most REQUEST_BIG_MAX at once (protocol.c), so a client cannot
   * make the server hold -t workers x 64 MiB.
   */
  pthread_mutex_t big_lock;
  pthread_cond_t big_cond;
  unsigned big_inflight;        /* guarded by big_lock */

  /* Parking (park.c): set up after the handshake, read and written
   * only by the worker holding read_lock, or by the thread that
   * resumes the parked connection.
   */
  bool can_park;                /* may give its thread back when idle */
  bool park_now;                /* park without a grace period */
  bool spin;                    /* the client answers fast: poll first */
  bool park_added;              /* the socket is in the epoll set */
  bool greeted;                 /* parked before the client's flags */
  /* In the list of greeted parked connections (connection.c), under
   * its greeted_lock.
   */
  bool hs_listed;
  struct connection *hs_next;
  struct connection **hs_prevp;

  struct intern_set *interned;  /* nbdkit_*_intern strings */
  int hs_fail;                  /* enum metrics_hs, or -1: why the
                                   handshake failed */
  unsigned metrics_export;      /* the export's slot in metrics.c */
  /* The list of live connections, under conns_lock: unlinked in
   * constant time, as ten thousand clients may leave at once.
   */
  struct connection *next;
  struct connection **prevp;    /* the pointer that points here */
};

/* connection.c */
/* PEER: the client's address from accept(), or NULL to look it up. */
struct connection *conn_new (int fd_in, int fd_out,
                             const struct sockaddr_storage *peer,
                             socklen_t peer_len);
/* Runs the handshake and the requests until the connection closes
 * (and frees it) or parks.
 */
void conn_serve (struct connection *conn);
void conn_negotiate (struct connection *conn, int stage, bool serialize);
void conn_worker_run (struct connection *conn);
int64_t conn_now_ms (void);             /* CLOCK_MONOTONIC */
int conn_spawn (struct connection *conn);  /* conn_serve in a new thread */
int conn_read (struct connection *conn, void *buf, size_t n);
int conn_read_request (struct connection *conn, void *buf, size_t n);
int conn_skip (struct connection *conn, uint64_t n);
int conn_readv (struct connection *conn, struct iovec *iov, int iovcnt);
int conn_writev (struct connection *conn, struct iovec *iov, int iovcnt);
int conn_starttls (struct connection *conn);
void conn_set_status (struct connection *conn, enum conn_status s);
void conn_maybe_add_worker (struct connection *conn);
void conns_shutdown_all (void);
bool conns_trim_due (void);
void conns_trim (void);

/* conn-park.c */
void conn_park_setup (struct connection *conn);
bool conn_park_greeted (struct connection *conn);
bool conn_idle (struct connection *conn);
void conn_resume (struct connection *conn); /* a parked one woke */
void conns_sweep_greeted (void);
unsigned conns_parked (void);
int conns_wait_all (void);

/* handshake.c: handshake_start sends the greeting (0: the client
 * speaks next; 1: transmission starts; -1: close), handshake the rest
 * (0 when transmission starts, -1 to close).
 */
int handshake_start (struct connection *conn);
int handshake (struct connection *conn);

/* protocol.c: one worker's request loop.  Returns true when the worker
 * left a connection that went idle (conn_idle), false when it closes.
 */
bool protocol_worker (struct connection *conn);

#endif /* NBDSRV_CONNECTION_H */
