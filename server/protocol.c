/* nbdsrv: the transmission phase: read a request, validate it, call the
 * backend, reply (§3).
 *
 * Each worker reads one request under read_lock (R-1), releases it
 * (R-11) and runs the request while another worker reads the next.
 */
#include "config.h"

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"
#include "minmax.h"
#include "monotonic.h"
#include "connection.h"
#include "protocol.h"
#include "reply.h"
#include "metrics.h"

/* Most descriptors one BLOCK_STATUS reply carries (§5.2 beyond). */
#define BLOCKSTATUS_MAX_DESC (1 << 20)

/* A request is run inline by the worker holding the read lock, its
 * reply batched, when backend calls on this connection have recently
 * taken less than INLINE_MAX_NS (connection.h) on average, and it moves
 * at most INLINE_MAX_DATA bytes.  Handing a request to another thread
 * costs a wake-up and a context switch (several microseconds), more
 * than a fast plugin takes to answer; slow requests still run in
 * parallel.
 */
#define INLINE_MAX_DATA (64 * 1024)

/* At most REQUEST_BIG_MAX requests above REQUEST_BIG bytes are in
 * flight per connection (whether their data sits in a thread buffer or
 * in pages staged by write-target.h); buffers are freed afterwards.  So a
 * connection holds at most about 2 x 64 MiB for data however many
 * maximum-size writes its client sends, and the reader simply stops
 * reading until one finishes.
 */
#define REQUEST_BIG (4 * 1024 * 1024)
#define REQUEST_BIG_MAX 2

/* WRITEs from this size up are received straight into the plugin's
 * storage when it offers that (write-target.h): below it the copy saved
 * is worth less than the staging and the lock.  Up to IN_PLACE_IOV
 * pieces (32 MiB of the memory plugin's 32 KiB pages).
 */
#define IN_PLACE_MIN (64 * 1024)
#define IN_PLACE_IOV 1024

/* A request once read: the decoded header, the validation result and,
 * for READ/WRITE, the thread's data buffer.
 */
struct work {
  struct request req;
  int err;                      /* host errno from validation, or 0 */
  const char *why;              /* validation failure text */
  char *buf;                    /* borrowed thread buffer */
  bool big;                     /* holds one of the REQUEST_BIG slots */
  bool in_place;                /* WRITE payload received into TOKEN's */
  void *token;                  /* storage (write-target.h) */
  int64_t start;                /* when it began to run (CLOCK_MONOTONIC) */
  int64_t end;                  /* when its answer was ready, or 0 */
  bool counted;                 /* for --metrics */
};

static void
big_acquire (struct connection *conn)
{
  pthread_mutex_lock (&conn->big_lock);
  while (conn->big_inflight >= REQUEST_BIG_MAX)
    pthread_cond_wait (&conn->big_cond, &conn->big_lock);
  conn->big_inflight++;
  pthread_mutex_unlock (&conn->big_lock);
}

static void
big_release (struct connection *conn)
{
  thread_buffer_release ();
  pthread_mutex_lock (&conn->big_lock);
  conn->big_inflight--;
  pthread_cond_signal (&conn->big_cond);
  pthread_mutex_unlock (&conn->big_lock);
}

/* Count an answered request for --metrics before its reply can leave,
 * so a client holding the reply finds it counted.  The duration runs
 * from the start of the stack call to the answer being ready (sending
 * it is not included).
 */
static void
work_count (const struct connection *conn, struct work *w, int err)
{
  if (!metrics_on || w->counted)
    return;
  if (w->end == 0)
    w->end = monotonic_ns ();
  w->counted = true;
  metrics_request (conn->metrics_export, w->req.type, w->req.count,
                   errno_to_nbd (err, w->req.flags), w->end - w->start,
                   w->err ? 0 : w->end - w->start);
}

static void
validate_state_of (const struct connection *conn, struct validate_state *st)
{
  st->size = conn->exp.caps.size;
  st->eflags = conn->exp.caps.eflags;
  st->structured = conn->structured;
  st->extended = conn->extended;
  st->meta_selected = conn->meta_ids != 0;
  st->align = conn->align;
}

/* §4.3: NBD command flags to plugin flags. */
static uint32_t
plugin_flags (const struct request *r)
{
  uint32_t f = 0;

  if (r->flags & NBD_CMD_FLAG_FUA)
    f |= NBDKIT_FLAG_FUA;
  if (r->type == NBD_CMD_WRITE_ZEROES) {
    if (!(r->flags & NBD_CMD_FLAG_NO_HOLE))
      f |= NBDKIT_FLAG_MAY_TRIM;
    if (r->flags & NBD_CMD_FLAG_FAST_ZERO)
      f |= NBDKIT_FLAG_FAST_ZERO;
  }
  if (r->type == NBD_CMD_BLOCK_STATUS && (r->flags & NBD_CMD_FLAG_REQ_ONE))
    f |= NBDKIT_FLAG_REQ_ONE;
  return f;
}

/* Receive a valid WRITE's payload straight into storage the plugin
 * hands out (write-target.h), if it does; the write is committed when
 * the request runs.  Returns 1 when received, 0 to read into the
 * buffer as usual, -1 when the connection died (the payload is dropped:
 * R-10, a short WRITE never runs).
 */
static int
request_recv_in_place (struct connection *conn, struct work *w)
{
  struct iovec iov[IN_PLACE_IOV];
  int iovcnt = IN_PLACE_IOV;
  const struct request *r = &w->req;
  int err;

  if (r->count < IN_PLACE_MIN ||
      backend_write_target (&conn->exp, r->count, r->offset,
                            plugin_flags (r), iov, &iovcnt,
                            &w->token) == -1)
    return 0;
  if (conn_readv (conn, iov, iovcnt) == -1) {
    debug ("reading WRITE payload: %s", errno ? strerror (errno) : "EOF");
    conn_set_status (conn, CONN_DEAD);
    backend_write_target_done (&conn->exp, w->token, false, &err);
    return -1;
  }
  w->in_place = true;
  return 1;
}

/* Read and decode one request header: 28 bytes, or 32 with extended
 * headers (X-7).  The compact part comes first, so a request of the
 * wrong shape is caught by its magic before waiting for more bytes.
 * Returns 1, 0 when the connection should stop, or 2 when the client
 * is idle and the connection may park (conn_read_request).
 */
static int
request_header_recv (struct connection *conn, struct request *r)
{
  union {
    struct nbd_request compact;
    struct nbd_request_ext ext;
  } wire;
  const size_t tail = sizeof wire.ext - sizeof wire.compact;
  uint32_t want = conn->extended ? NBD_EXTENDED_REQUEST_MAGIC
    : NBD_REQUEST_MAGIC;
  int got = conn_read_request (conn, &wire, sizeof wire.compact);

  if (got == -1 && errno == EAGAIN)
    return 2;
  if (got == -1 ||
      (be32toh (wire.compact.magic) == want && conn->extended &&
       conn_read (conn, (char *) &wire + sizeof wire.compact, tail) == -1)) {
    if (errno == 0)                                               /* R-3 */
      conn_set_status (conn, CONN_CLIENT_DONE);
    else {
      if (atomic_load (&conn->status) == CONN_ACTIVE)
        debug ("reading request: %m");
      conn_set_status (conn, CONN_DEAD);
    }
    return 0;
  }
  if (be32toh (wire.compact.magic) != want) {               /* R-4, X-7 */
    server_error ("client sent a request with magic %#" PRIx32 ", not "
                  "%#" PRIx32 " as negotiated: disconnecting",
                  be32toh (wire.compact.magic), want);
    conn_set_status (conn, CONN_DEAD);
    return 0;
  }
  if (conn->extended)
    request_decode_ext (&wire.ext, r);
  else
    request_decode (&wire.compact, r);
  return 1;
}

/* Read one request.  Returns 1 with W filled, 0 when this worker should
 * stop (EOF, DISC, a dead stream), 2 when the client is idle.  Caller
 * holds read_lock.
 */
static int
request_recv (struct connection *conn, struct work *w)
{
  struct validate_state st;
  struct request *r = &w->req;
  int ret;

  w->big = false;
  w->in_place = false;
  if (atomic_load (&conn->status) < CONN_ACTIVE)                  /* R-2 */
    return 0;
  if ((ret = request_header_recv (conn, r)) != 1)
    return ret;
  if (r->type == NBD_CMD_DISC) {                                  /* R-5 */
    debug ("client sent DISC");
    conn_set_status (conn, CONN_CLIENT_DONE);
    return 0;
  }
  validate_state_of (conn, &st);
  w->why = NULL;
  w->buf = NULL;
  w->err = request_validate (&st, r, &w->why);                    /* R-6 */
  if (w->err == 0 && (r->type == NBD_CMD_READ || r->type == NBD_CMD_WRITE)) {
    /* The bound counts the data a request holds, in the thread buffer
     * or staged in the plugin.
     */
    if (r->count > REQUEST_BIG) {
      big_acquire (conn);
      w->big = true;
    }
    if (r->type == NBD_CMD_WRITE) {
      int done = request_recv_in_place (conn, w);

      if (done != 0)
        return done == 1;
    }
    w->buf = thread_buffer (r->count);                            /* R-7 */
    if (w->buf == NULL) {
      w->err = ENOMEM;
      w->why = "out of memory for the request buffer";
    }
  }
  if (r->payload == 0)
    return 1;
  if (w->err) {                                             /* R-9, X-10 */
    if (r->payload > 2 * (uint64_t) NBD_MAX_REQUEST_SIZE) {
      server_error ("client sent a %s payload of %" PRIu64 " bytes, too "
                    "large to skip: disconnecting", nbd_cmd_name (r->type),
                    r->payload);
      conn_set_status (conn, CONN_DEAD);
      return 0;
    }
    if (conn_skip (conn, r->payload) == -1) {
      conn_set_status (conn, CONN_DEAD);
      return 0;
    }
    return 1;
  }
  if (conn_read (conn, w->buf, r->count) == -1) {                 /* R-10 */
    debug ("reading WRITE payload: %s", errno ? strerror (errno) : "EOF");
    conn_set_status (conn, CONN_DEAD);
    return 0;
  }
  return 1;
}

/* Calls on the stack take 32-bit counts; a 64-bit request under
 * extended headers (X-11) becomes calls of at most SPLIT_MAX bytes in
 * ascending order.  A multiple of every power-of-two block size up to
 * 1 GiB, so the pieces stay aligned.
 */
#define SPLIT_MAX (UINT32_C (3) << 30)

typedef int split_fn (struct export *exp, uint32_t count, uint64_t offset,
                      uint32_t flags, int *err);

static int
split_run (split_fn *fn, struct export *exp, const struct request *r,
           uint32_t flags, int *err)
{
  uint64_t offset = r->offset, left = r->count;

  while (left > 0) {
    uint32_t n = left > SPLIT_MAX ? SPLIT_MAX : (uint32_t) left;

    if (fn (exp, n, offset, flags, err) == -1)
      return -1;
    offset += n;
    left -= n;
  }
  return 0;
}

/* Context META's extents for [offset, offset+count) into E: the
 * stack's, asking for depths for qemu:allocation-depth, or a dirty
 * bitmap's from the filter tracking it.  The stack takes 32-bit counts;
 * a longer request (extended headers, X-11) asks again from where each
 * answer ended, as long as the answer reached the end of what was asked
 * (longer extents are then likely), at most EXTENTS_ROUNDS times.  A
 * later round that fails only shortens the answer, which R-22 allows.
 */
#define EXTENTS_ROUNDS 16

static int
extents_collect (struct connection *conn, const struct request *r,
                 uint32_t meta, struct nbdkit_extents *e, int *err)
{
  uint64_t pos = r->offset, end = r->offset + r->count;
  uint32_t flags = plugin_flags (r);
  struct nbdkit_backend *dirty = NULL;

  if (meta == META_ALLOCATION_DEPTH)
    flags |= NBDSRV_FLAG_DEPTH;
  else if (meta >= META_DIRTY_FIRST)
    dirty = meta_dirty_layer (meta);
  extents_reset (e, r->offset, conn->exp.caps.size);
  for (int round = 0; round < EXTENTS_ROUNDS && pos < end; round++) {
    uint32_t n = end - pos > SPLIT_MAX ? SPLIT_MAX : (uint32_t) (end - pos);
    int ignored, *rerr = round == 0 ? err : &ignored;
    int ret;

    if (dirty)
      ret = backend_dirty_extents (&conn->exp, dirty, n, pos, e, rerr);
    else
      ret = backend_extents (&conn->exp, n, pos, flags, e, rerr);
    if (ret == -1)
      return round == 0 ? -1 : 0;
    if (e->next < pos + n)
      break;
    pos = e->next;
  }
  return 0;
}

/* Block status: one chunk per selected context, in id order (R-20),
 * sent in one write so they stay together (R-24).  Each context's
 * extents go into the thread's list in turn and its descriptors after
 * the previous ones in the thread's buffer.  Nothing is allocated per
 * request once the buffers have grown.
 */
static int
do_block_status (struct connection *conn, bool batch, struct work *w,
                 int *err)
{
  const struct request *r = &w->req;
  struct nbdkit_extents *e = thread_extents ();
  bool req_one = r->flags & NBD_CMD_FLAG_REQ_ONE;
  size_t size = conn->extended ? sizeof (struct nbd_block_descriptor_ext)
    : sizeof (struct nbd_block_descriptor);
  struct bs_chunk chunks[META_MAX];
  size_t k = 0, used = 0;
  char *buf = NULL;

  if (e == NULL) {
    *err = ENOMEM;
    return -1;
  }
  for (uint32_t id = 1; id <= META_MAX; id++) {
    size_t max;

    if (!(conn->meta_ids & (UINT32_C (1) << id)))
      continue;
    if (extents_collect (conn, r, id, e, err) == -1)
      return -1;
    /* Only a 32-bit descriptor can need splitting, and then the
     * request is under 4 GiB, so only the extent that reaches its end
     * needs a second one: len + 1 is enough.
     */
    max = req_one ? 1 : MIN (e->len + 1, (size_t) BLOCKSTATUS_MAX_DESC);
    buf = thread_buffer (used + max * size);
    if (buf == NULL) {
      *err = ENOMEM;
      return -1;
    }
    chunks[k].context_id = id;
    chunks[k].desc_offset = used;
    chunks[k].n = blockstatus_encode (e, r->offset, r->count, req_one,
                                      conn->extended, id, buf + used, max);
    used += chunks[k].n * size;
    k++;
  }
  work_count (conn, w, 0);
  reply_block_status (conn, batch, r, buf, chunks, k);
  return -2;                    /* the reply is sent */
}

/* R-18 beyond: a structured READ of at least SPARSE_READ_MIN bytes
 * answers the whole HOLE_MIN blocks of its data that are all zero
 * bytes with OFFSET_HOLE chunks instead of sending the zeroes, unless
 * the client set DF (one data chunk wanted).  The data decides, not
 * block status: asking the stack first costs a call per read that
 * some plugins make expensive (SEEK_HOLE walks a whole tmpfs file),
 * and a plugin that misreports zeroes cannot corrupt a read.  Finding
 * zeroes costs a memcmp, cheaper than sending them.  Below
 * SPARSE_READ_MIN it is not worth a chunk header per run.
 */
#define SPARSE_READ_MIN (64 * 1024)
#define HOLE_MIN 4096

/* READs from SPLICE_READ_MIN bytes up are answered by splicing the
 * data from the plugin's file into the socket when the plugin offers
 * that (read-source.h), saving the copy into and out of user space.
 * Smaller ones are copied: below this size page references and the
 * extra syscalls cost more than copying the bytes.  Copied as before:
 *   - over TLS (the bytes are encrypted in user space);
 *   - when stdin/stdout are not a socket (-s on pipes);
 *   - when a filter is stacked or the stack is not PARALLEL
 *     (backend_read_source);
 *   - when the plugin says the range may hold holes and the reply is
 *     structured without DF, so that runs of zeroes still go as
 *     OFFSET_HOLE chunks (the data decides them, and only a copy sees
 *     the data);
 *   - when the file turns out shorter than the range or fails to read
 *     before the reply starts (reply-splice.c): .pread then reports it.
 */
#define SPLICE_READ_MIN (64 * 1024)

/* Returns 0 when sent, -1 when the connection died, 1 to copy. */
static int
read_splice (struct connection *conn, bool batch, const struct request *r)
{
  uint64_t fd_offset;
  unsigned flags;
  int fd;

  if (r->count < SPLICE_READ_MIN || conn->tls || !conn->is_socket ||
      backend_read_source (&conn->exp, r->count, r->offset, &fd,
                           &fd_offset, &flags) == -1)
    return 1;
  if ((flags & READ_SOURCE_MAY_HOLD_HOLES) && conn->structured &&
      !(r->flags & NBD_CMD_FLAG_DF))
    return 1;
  return reply_read_splice (conn, batch, r, r->count, fd, fd_offset);
}

/* Returns 0 when W's buffer holds the data for a plain reply, -1 with
 * *err, or -2 when the reply (spliced, or with holes) was sent.
 */
static int
do_read (struct connection *conn, bool batch, struct work *w, int *err)
{
  const struct request *r = &w->req;
  struct read_piece p[READ_PIECES_MAX];
  size_t n;

  if (read_splice (conn, batch, r) != 1)
    return -2;
  if (backend_pread (&conn->exp, w->buf, r->count, r->offset, 0, err) == -1)
    return -1;
  if (!conn->structured || (r->flags & NBD_CMD_FLAG_DF) ||
      r->count < SPARSE_READ_MIN)
    return 0;
  n = read_plan (w->buf, r->offset, r->count, HOLE_MIN, p, READ_PIECES_MAX);
  if (n == 1 && !p[0].hole)
    return 0;
  work_count (conn, w, 0);
  reply_read_pieces (conn, batch, r, w->buf, p, n);
  return -2;
}

/* Call the backend for a valid request (R-13).  Returns 0, -1 with
 * *err set, or -2 if the reply was already sent (or failed).
 */
static int
request_run (struct connection *conn, bool batch, struct work *w, int *err)
{
  const struct request *r = &w->req;
  struct export *exp = &conn->exp;
  uint32_t f = plugin_flags (r);

  switch (r->type) {
  case NBD_CMD_READ:
    return do_read (conn, batch, w, err);
  case NBD_CMD_WRITE:
    if (w->in_place)
      return backend_write_target_done (exp, w->token, true, err);
    return backend_pwrite (exp, w->buf, r->count, r->offset, f, err);
  case NBD_CMD_FLUSH:
    return backend_flush (exp, 0, err);
  case NBD_CMD_TRIM:
    return split_run (backend_trim, exp, r, f, err);
  case NBD_CMD_CACHE:
    return split_run (backend_cache, exp, r, 0, err);
  case NBD_CMD_WRITE_ZEROES:
    return split_run (backend_zero, exp, r, f, err);
  case NBD_CMD_BLOCK_STATUS:
    return do_block_status (conn, batch, w, err);
  default:
    *err = EINVAL;              /* unreachable: validation rejects it */
    return -1;
  }
}

/* Send the error reply for W.  With structured replies every error is
 * an ERROR chunk with a message (R-16, R-17 beyond); otherwise simple.
 */
static void
reply_failure (struct connection *conn, bool batch, const struct work *w,
               int err)
{
  const struct request *r = &w->req;
  struct thread_state *ts = thread_state ();
  uint32_t nbd_err = errno_to_nbd (err, r->flags);
  char msg[NBD_MAX_STRING + 1];
  int len;

  if (!conn->structured) {
    reply_simple (conn, batch, r, nbd_err);
    return;
  }
  if (w->why)
    len = snprintf (msg, sizeof msg, "%s at offset %" PRIu64 " length %"
                    PRIu64 " (export size %" PRIu64 "): %s",
                    nbd_cmd_name (r->type), r->offset, r->count,
                    conn->exp.caps.size, w->why);
  else if (ts->last_error_len)
    len = snprintf (msg, sizeof msg, "%.*s", (int) ts->last_error_len,
                    ts->last_error);
  else
    len = snprintf (msg, sizeof msg, "%s failed: %s",
                    nbd_cmd_name (r->type), strerror (err));
  if (len < 0)
    len = 0;
  if ((size_t) len >= sizeof msg)
    len = sizeof msg - 1;
  reply_error (conn, batch, r, nbd_err, msg, len);
}

/* Run one request and reply, now or into the batch (BATCH).  The stack
 * call is timed for the inline heuristic (conn->call_ns); --metrics
 * reuses those two clock reads.
 */
static void
request_answer (struct connection *conn, bool batch, struct work *w)
{
  const struct request *r = &w->req;
  int err = w->err;
  int ret = -1;

  w->start = w->end = 0;
  w->counted = false;
  if (metrics_on) {
    metrics_request_start ();
    w->start = monotonic_ns ();
  }
  thread_clear_error ();                                          /* R-13 */
  if (err == 0) {
    if (atomic_load (&conn->status) == CONN_DEAD) {               /* R-12 */
      int ignored;

      err = ESHUTDOWN;
      if (w->in_place)          /* drop the received payload */
        backend_write_target_done (&conn->exp, w->token, false, &ignored);
    }
    else {
      unsigned avg = atomic_load (&conn->call_ns);
      int64_t t;

      if (w->start == 0)
        w->start = monotonic_ns ();
      ret = request_run (conn, batch, w, &err);
      if (w->end == 0)
        w->end = monotonic_ns ();
      t = w->end - w->start;
      /* Moving average over about 8 calls; races only blur it. */
      atomic_store (&conn->call_ns,
                    avg - avg / 8 + (t > UINT32_MAX ? UINT32_MAX : t) / 8);
    }
  }
  else
    debug ("%s: %s", nbd_cmd_name (r->type), w->why);
  if (ret == -2 || atomic_load (&conn->status) == CONN_DEAD) {    /* R-14 */
    work_count (conn, w, ret == -2 ? 0 : err);
    return;
  }
  if (ret == -1) {
    if (w->err == 0)                                              /* R-15 */
      debug ("%s at offset %" PRIu64 " length %" PRIu64 " failed: %s",
             nbd_cmd_name (r->type), r->offset, r->count, strerror (err));
    work_count (conn, w, err);
    reply_failure (conn, batch, w, err);
    return;
  }
  work_count (conn, w, 0);
  if (r->type == NBD_CMD_READ)
    reply_read (conn, batch, r, w->buf, r->count);
  else
    reply_ok (conn, batch, r);
}

static bool
request_is_fast (const struct connection *conn, const struct work *w)
{
  if (w->err)                   /* a validation error: just a reply */
    return true;
  if ((w->req.type == NBD_CMD_READ || w->req.type == NBD_CMD_WRITE) &&
      w->req.count > INLINE_MAX_DATA)
    return false;
  return atomic_load (&conn->call_ns) < INLINE_MAX_NS;
}

/* One worker.  While requests are fast it keeps the read lock, running
 * them inline and batching their replies; a slow request makes it let
 * go of the lock (after flushing the batch) so another worker reads the
 * next request while this one waits on the plugin.  When the client
 * goes quiet the worker leaves (conn_idle) and returns true.
 */
bool
protocol_worker (struct connection *conn)
{
  bool locked = false;

  for (;;) {
    struct work w;
    int r;

    if (!locked) {
      atomic_fetch_add (&conn->readers_waiting, 1);
      pthread_mutex_lock (&conn->read_lock);
      atomic_fetch_sub (&conn->readers_waiting, 1);
      locked = true;
    }
    r = request_recv (conn, &w);
    if (r == 2) {
      if (!conn_idle (conn))
        return true;
      continue;                 /* still ours, read_lock held */
    }
    if (r == 1 && request_is_fast (conn, &w))
      request_answer (conn, true, &w);
    else {
      reply_flush (conn);
      if (r == 1)
        conn_maybe_add_worker (conn);
      pthread_mutex_unlock (&conn->read_lock);                    /* R-11 */
      locked = false;
      if (r == 1)
        request_answer (conn, false, &w);
    }
    if (w.big)
      big_release (conn);
    if (r == 0)
      return false;
  }
}
