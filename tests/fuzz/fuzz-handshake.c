/* nbdsrv fuzz target: one whole client connection, in process.
 *
 * The input is what a client sends: two configuration bytes, then the
 * byte stream.  The stream is written into one end of a socketpair by a
 * helper thread, which also drains and discards every reply; the server
 * core runs conn_serve() on the other end exactly as for a real client,
 * so option parsing, request decoding, validation, the backend's
 * emulations and every reply path are covered.
 *
 * Configuration byte 0:
 *   bit 0 -r            bit 1 --no-sr       bit 2 --no-mc
 *   bit 3 parallel, 2 workers (else serialize_requests, 1 worker)
 *   bit 4 --mask-handshake=0 (old newstyle: only EXPORT_NAME)
 *   bit 5 plugin reports block sizes 512/4096/1M
 *   bit 6 plugin uses API version 1 callbacks
 *   bit 7 export of 2^40+4096 bytes (else 1 MiB + 512)
 * Configuration byte 1:
 *   bits 0-1 FUA: none, emulate, native, native
 *   bit 2 plugin has flush, trim and zero callbacks
 *   bit 3 plugin has extents
 *   bit 4 plugin has a native cache callback
 *   bit 5 plugin can do fast zero
 *   bit 6 data callbacks fail when bit 12 of the offset is set
 *   bit 7 plugin lists exports, names a default and describes them
 *
 * The in-harness plugin keeps at most 64 KiB per connection (allocated
 * in .open, freed in .close); beyond that it reads zeroes and drops
 * writes, so a 1 TiB export costs nothing.
 *
 * FUZZ_LOG=FILE sends the server's debug log there (default /dev/null),
 * which is the way to see what a reproducer does.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>

#include "internal.h"
#include "connection.h"

/* main.c is not linked: the harness owns the command-line state. */
struct server_config cfg;

#define STORE_MAX (64 * 1024)
#define SMALL_SIZE (1024 * 1024 + 512)
#define BIG_SIZE ((INT64_C (1) << 40) + 4096)

static uint8_t conf0, conf1;

struct fz_handle {
  uint8_t *store;               /* owned, store_len bytes */
  size_t store_len;
  int readonly;
};

static int64_t
fz_size (void)
{
  return conf0 & 0x80 ? BIG_SIZE : SMALL_SIZE;
}

static bool
fz_fail (uint64_t offset)
{
  if ((conf1 & 0x40) && (offset & 0x1000)) {
    nbdkit_error ("injected failure at offset %" PRIu64, offset);
    nbdkit_set_error (offset & 0x2000 ? ENOSPC : EIO);
    return true;
  }
  return false;
}

/* The part of [offset, offset+count) that lies in the store. */
static size_t
fz_in_store (const struct fz_handle *h, uint32_t count, uint64_t offset)
{
  if (offset >= h->store_len)
    return 0;
  return count < h->store_len - offset ? count : h->store_len - offset;
}

static void *
fz_open (int readonly)
{
  struct fz_handle *h;
  const char *name = nbdkit_export_name ();

  if (name && strcmp (name, "fail") == 0) {
    nbdkit_error ("export 'fail' refuses to open");
    return NULL;
  }
  h = calloc (1, sizeof *h);
  if (h == NULL)
    return NULL;
  h->store_len = fz_size () < STORE_MAX ? (size_t) fz_size () : STORE_MAX;
  h->store = calloc (1, h->store_len);
  if (h->store == NULL) {
    free (h);
    return NULL;
  }
  h->readonly = readonly;
  return h;
}

static void
fz_close (void *handle)
{
  struct fz_handle *h = handle;

  free (h->store);
  free (h);
}

static int64_t
fz_get_size (void *handle)
{
  return fz_size ();
}

static int
fz_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
          uint32_t flags)
{
  struct fz_handle *h = handle;
  size_t n = fz_in_store (h, count, offset);

  if (fz_fail (offset))
    return -1;
  if (n)
    memcpy (buf, h->store + offset, n);
  memset ((char *) buf + n, 0, count - n);
  return 0;
}

static int
fz_pwrite (void *handle, const void *buf, uint32_t count, uint64_t offset,
           uint32_t flags)
{
  struct fz_handle *h = handle;
  size_t n = fz_in_store (h, count, offset);

  if (fz_fail (offset))
    return -1;
  if (n)
    memcpy (h->store + offset, buf, n);
  return 0;
}

static int
fz_zero (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct fz_handle *h = handle;
  size_t n = fz_in_store (h, count, offset);

  if (fz_fail (offset))
    return -1;
  /* Decline now and then so the server falls back to writing zeroes. */
  if (offset & 0x4000) {
    nbdkit_set_error (ENOTSUP);
    return -1;
  }
  if (n)
    memset (h->store + offset, 0, n);
  return 0;
}

static int
fz_trim (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct fz_handle *h = handle;
  size_t n = fz_in_store (h, count, offset);

  if (fz_fail (offset))
    return -1;
  if (n)
    memset (h->store + offset, 0, n);
  return 0;
}

static int
fz_flush (void *handle, uint32_t flags)
{
  return 0;
}

static int
fz_cache (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  return fz_fail (offset) ? -1 : 0;
}

/* Alternating 4 KiB extents of every type, at most 64 per call. */
static int
fz_extents (void *handle, uint32_t count, uint64_t offset, uint32_t flags,
            struct nbdkit_extents *extents)
{
  uint64_t pos = offset & ~UINT64_C (4095);
  uint64_t end = offset + count;

  if (fz_fail (offset))
    return -1;
  for (int i = 0; i < 64 && pos < end; i++, pos += 4096)
    if (nbdkit_add_extent (extents, pos, 4096, (pos >> 12) & 3) == -1)
      return -1;
  return 0;
}

static int
fz_can_fua (void *handle)
{
  static const int modes[] = {
    NBDKIT_FUA_NONE, NBDKIT_FUA_EMULATE, NBDKIT_FUA_NATIVE, NBDKIT_FUA_NATIVE,
  };

  return modes[conf1 & 3];
}

static int
fz_can_fast_zero (void *handle)
{
  return (conf1 & 0x20) != 0;
}

static int
fz_can_multi_conn (void *handle)
{
  return 1;
}

static int
fz_block_size (void *handle, uint32_t *min, uint32_t *pref, uint32_t *max)
{
  *min = 512;
  *pref = 4096;
  *max = 1024 * 1024;
  return 0;
}

static int
fz_list_exports (int readonly, int is_tls, struct nbdkit_exports *exports)
{
  if (nbdkit_add_export (exports, "", "the default export") == -1 ||
      nbdkit_add_export (exports, "a", NULL) == -1 ||
      nbdkit_add_export (exports, "fail", "cannot be opened") == -1)
    return -1;
  return nbdkit_use_default_export (exports);
}

static const char *
fz_default_export (int readonly, int is_tls)
{
  return "default";
}

static const char *
fz_export_description (void *handle)
{
  return "fuzz export";
}

/* API version 1 wrappers. */
static int
fz_pread_v1 (void *h, void *buf, uint32_t count, uint64_t offset)
{
  return fz_pread (h, buf, count, offset, 0);
}

static int
fz_pwrite_v1 (void *h, const void *buf, uint32_t count, uint64_t offset)
{
  return fz_pwrite (h, buf, count, offset, 0);
}

static int
fz_flush_v1 (void *h)
{
  return 0;
}

static int
fz_trim_v1 (void *h, uint32_t count, uint64_t offset)
{
  return fz_trim (h, count, offset, 0);
}

static int
fz_zero_v1 (void *h, uint32_t count, uint64_t offset, int may_trim)
{
  return fz_zero (h, count, offset, 0);
}

/* Fill the global plugin from the configuration bytes. */
static void
plugin_setup (void)
{
  struct nbdkit_plugin *p = &plugin.p;
  bool v1 = conf0 & 0x40;
  bool data_cbs = conf1 & 0x04;

  memset (p, 0, sizeof *p);
  p->_struct_size = sizeof *p;
  p->_api_version = v1 ? 1 : 2;
  p->_thread_model = conf0 & 0x08 ? NBDKIT_THREAD_MODEL_PARALLEL
    : NBDKIT_THREAD_MODEL_SERIALIZE_REQUESTS;
  p->name = "fuzz";
  p->open = fz_open;
  p->close = fz_close;
  p->get_size = fz_get_size;
  p->can_multi_conn = fz_can_multi_conn;
  p->errno_is_preserved = 1;
  if (v1) {
    p->_pread_v1 = fz_pread_v1;
    p->_pwrite_v1 = fz_pwrite_v1;
    if (data_cbs) {
      p->_flush_v1 = fz_flush_v1;
      p->_trim_v1 = fz_trim_v1;
      p->_zero_v1 = fz_zero_v1;
    }
  }
  else {
    p->pread = fz_pread;
    p->pwrite = fz_pwrite;
    p->can_fua = fz_can_fua;
    if (data_cbs) {
      p->flush = fz_flush;
      p->trim = fz_trim;
      p->zero = fz_zero;
    }
  }
  if (conf1 & 0x08)
    p->extents = fz_extents;
  if (conf1 & 0x10)
    p->cache = fz_cache;
  p->can_fast_zero = fz_can_fast_zero;
  if (conf0 & 0x20)
    p->block_size = fz_block_size;
  if (conf1 & 0x80) {
    p->list_exports = fz_list_exports;
    p->default_export = fz_default_export;
    p->export_description = fz_export_description;
  }
  plugin.thread_model = p->_thread_model;
  /* The stack is the plugin alone. */
  plugin.backend.is_plugin = true;
  plugin.backend.name = p->name;
  stack.thread_model = plugin.thread_model;

  cfg.readonly = conf0 & 0x01;
  cfg.no_sr = conf0 & 0x02;
  cfg.no_mc = conf0 & 0x04;
  cfg.threads = conf0 & 0x08 ? 2 : 1;
  cfg.mask_handshake = conf0 & 0x10 ? 0 : ~0u;
}

/* The client: write the stream, half-close, read until the server
 * closes.  Non-blocking, so neither side can wait on the other.
 */
struct client {
  int fd;
  const uint8_t *data;
  size_t len;
};

static void *
client_thread (void *arg)
{
  struct client *c = arg;
  char sink[65536];
  size_t sent = 0;
  bool open_in = true;

  if (c->len == 0)
    shutdown (c->fd, SHUT_WR);
  while (open_in) {
    struct pollfd pfd = { .fd = c->fd, .events = POLLIN };

    if (sent < c->len)
      pfd.events |= POLLOUT;
    if (poll (&pfd, 1, -1) == -1 && errno != EINTR)
      break;
    if (pfd.revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t r = read (c->fd, sink, sizeof sink);

      if (r == 0 || (r == -1 && errno != EAGAIN && errno != EINTR))
        open_in = false;
    }
    if (sent < c->len && (pfd.revents & POLLOUT)) {
      ssize_t r = send (c->fd, c->data + sent, c->len - sent,
                        MSG_NOSIGNAL);

      if (r > 0)
        sent += r;
      else if (r == -1 && errno != EAGAIN && errno != EINTR)
        sent = c->len;          /* the server has gone: stop writing */
      if (sent == c->len)
        shutdown (c->fd, SHUT_WR);
    }
  }
  close (c->fd);
  return NULL;
}

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
  signal (SIGPIPE, SIG_IGN);
  cfg.ipfamily = AF_UNSPEC;
  cfg.log_to = LOG_TO_FILE;     /* every message is still formatted */
  cfg.log_file = getenv ("FUZZ_LOG") ? getenv ("FUZZ_LOG") : "/dev/null";
  cfg.verbose = true;
  log_open ();
  quit_init ();
  return 0;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  struct client c;
  struct connection *conn;
  pthread_t thread;
  int sv[2];

  if (size < 2)
    return -1;
  conf0 = data[0];
  conf1 = data[1];
  plugin_setup ();

  if (socketpair (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == -1)
    abort ();
  fcntl (sv[0], F_SETFL, O_NONBLOCK);
  c = (struct client) { .fd = sv[0], .data = data + 2, .len = size - 2 };
  if (pthread_create (&thread, NULL, client_thread, &c) != 0)
    abort ();
  conn = conn_new (sv[1], sv[1], NULL, 0);
  if (conn == NULL)
    abort ();
  conn_serve (conn);            /* closes sv[1] when the last worker ends */
  conns_wait_all ();
  pthread_join (thread, NULL);
  return 0;
}
