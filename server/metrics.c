/* nbdsrv: --metrics, live counters in the Prometheus text format,
 * served over HTTP by Debian's libmicrohttpd (metrics.h says how the
 * counting stays off the request path's toes).
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <microhttpd.h>

#include "internal.h"
#include "metrics.h"
#include "nbd-protocol.h"

bool metrics_on;

/* Latency bucket upper bounds, in ns (the last bucket is +Inf). */
static const uint64_t bucket_ns[] = {
  10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000,
  5000000, 10000000, 25000000, 50000000, 100000000, 250000000,
  1000000000, 10000000000,
};
#define NBUCKETS (sizeof bucket_ns / sizeof bucket_ns[0] + 1)

/* The NBD errors a client can see (§2.5). */
static const struct { uint32_t nbd; const char *name; } nbd_errors[] = {
  { NBD_EPERM, "EPERM" }, { NBD_EIO, "EIO" }, { NBD_ENOMEM, "ENOMEM" },
  { NBD_EINVAL, "EINVAL" }, { NBD_ENOSPC, "ENOSPC" },
  { NBD_EOVERFLOW, "EOVERFLOW" }, { NBD_ENOTSUP, "ENOTSUP" },
  { NBD_ESHUTDOWN, "ESHUTDOWN" },
};
#define NERRORS (sizeof nbd_errors / sizeof nbd_errors[0])

static const char *const cmd_names[MC_COUNT] = {
  "read", "write", "flush", "trim", "cache", "write_zeroes",
  "block_status", "other",
};

static const char *const hs_names[MH_COUNT] = {
  "eof", "timeout", "bad-flags", "bad-option", "too-many-options", "tls",
  "export", "abort", "preconnect", "other",
};

/* One thread's counters: written only by that thread, read by scrapes
 * (relaxed atomics: a scrape may see a request half counted, never a
 * torn value).
 */
struct thread_counts {
  uint64_t requests[METRICS_EXPORTS][MC_COUNT];
  uint64_t bytes[METRICS_EXPORTS][MC_COUNT];
  uint64_t errors[NERRORS];
  uint64_t buckets[MC_COUNT][NBUCKETS];
  uint64_t total_ns[MC_COUNT];
  uint64_t call_ns[MC_COUNT];
  uint64_t started, finished;
  struct thread_counts *next;   /* the list of live threads */
};

static pthread_mutex_t counts_lock = PTHREAD_MUTEX_INITIALIZER;
static struct thread_counts *live;     /* guarded by counts_lock */
static struct thread_counts retired;   /* guarded by counts_lock */
static pthread_key_t counts_key;
static pthread_once_t counts_once = PTHREAD_ONCE_INIT;
static __thread struct thread_counts *mine;

static char *export_names[METRICS_EXPORTS];  /* guarded by counts_lock */

static atomic_uint_fast64_t conns_total, conns_open, conns_refused;
static atomic_uint_fast64_t hs_failed[MH_COUNT];

static int listen_fd = -1;
static char *unix_path;                /* owned: removed at exit */
static struct MHD_Daemon *daemon_;

#define ADD(field, n) \
  __atomic_store_n (&(field), __atomic_load_n (&(field), __ATOMIC_RELAXED) \
                    + (n), __ATOMIC_RELAXED)
#define GET(field) __atomic_load_n (&(field), __ATOMIC_RELAXED)

static void
fold (struct thread_counts *dst, const struct thread_counts *src)
{
  const uint64_t *s = (const uint64_t *) src;
  uint64_t *d = (uint64_t *) dst;
  size_t n = offsetof (struct thread_counts, next) / sizeof (uint64_t);

  for (size_t i = 0; i < n; i++)
    d[i] += __atomic_load_n (&s[i], __ATOMIC_RELAXED);
}

/* A thread's counts outlive it in the retired total. */
static void
thread_retire (void *p)
{
  struct thread_counts *t = p, **pp;

  pthread_mutex_lock (&counts_lock);
  for (pp = &live; *pp; pp = &(*pp)->next)
    if (*pp == t) {
      *pp = t->next;
      break;
    }
  fold (&retired, t);
  pthread_mutex_unlock (&counts_lock);
  free (t);
}

static void
make_key (void)
{
  pthread_key_create (&counts_key, thread_retire);
}

/* This thread's counters: allocated once per thread, not per request. */
static struct thread_counts *
thread_counts (void)
{
  if (mine == NULL) {
    struct thread_counts *t = calloc (1, sizeof *t);

    if (t == NULL)
      return NULL;
    pthread_once (&counts_once, make_key);
    pthread_setspecific (counts_key, t);
    pthread_mutex_lock (&counts_lock);
    t->next = live;
    live = t;
    pthread_mutex_unlock (&counts_lock);
    mine = t;
  }
  return mine;
}

static enum metrics_cmd
cmd_of (uint16_t type)
{
  switch (type) {
  case NBD_CMD_READ: return MC_READ;
  case NBD_CMD_WRITE: return MC_WRITE;
  case NBD_CMD_FLUSH: return MC_FLUSH;
  case NBD_CMD_TRIM: return MC_TRIM;
  case NBD_CMD_CACHE: return MC_CACHE;
  case NBD_CMD_WRITE_ZEROES: return MC_ZERO;
  case NBD_CMD_BLOCK_STATUS: return MC_BLOCK_STATUS;
  default: return MC_OTHER;
  }
}

void
metrics_request_start (void)
{
  struct thread_counts *t = thread_counts ();

  if (t)
    ADD (t->started, 1);
}

void
metrics_request (unsigned slot, uint16_t type, uint64_t bytes,
                 uint32_t nbd_error, uint64_t total_ns, uint64_t call_ns)
{
  struct thread_counts *t = thread_counts ();
  enum metrics_cmd c = cmd_of (type);
  size_t b = 0;

  if (t == NULL)
    return;
  ADD (t->requests[slot][c], 1);
  if (nbd_error == 0)
    ADD (t->bytes[slot][c], bytes);
  for (size_t i = 0; nbd_error && i < NERRORS; i++)
    if (nbd_errors[i].nbd == nbd_error)
      ADD (t->errors[i], 1);
  while (b < NBUCKETS - 1 && total_ns > bucket_ns[b])
    b++;
  ADD (t->buckets[c][b], 1);
  ADD (t->total_ns[c], total_ns);
  ADD (t->call_ns[c], call_ns);
  ADD (t->finished, 1);
}

/* A slot per export name, the first METRICS_EXPORTS - 1 seen; later
 * names share the last, labelled "(other)".  Once per connection.
 */
unsigned
metrics_export_slot (const char *name)
{
  unsigned i;

  pthread_mutex_lock (&counts_lock);
  for (i = 0; i < METRICS_EXPORTS - 1 && export_names[i]; i++)
    if (strcmp (export_names[i], name) == 0)
      break;
  if (i < METRICS_EXPORTS - 1 && export_names[i] == NULL)
    export_names[i] = strdup (name);
  if (i < METRICS_EXPORTS - 1 && export_names[i] == NULL)
    i = METRICS_EXPORTS - 1;    /* out of memory: counted as other */
  pthread_mutex_unlock (&counts_lock);
  return i;
}

void metrics_connection_open (void) { conns_total++; conns_open++; }
void metrics_connection_close (void) { conns_open--; }
void metrics_connection_refused (void) { conns_refused++; }

void
metrics_handshake_failed (enum metrics_hs why)
{
  hs_failed[why < MH_COUNT ? why : MH_OTHER]++;
}

/* The scrape's text, growing as needed. */
struct text {
  char *p;
  size_t len, cap;
  bool failed;
};

static void __attribute__ ((__format__ (__printf__, 2, 3)))
put (struct text *t, const char *fmt, ...)
{
  va_list ap;
  int n;

  for (;;) {
    va_start (ap, fmt);
    n = vsnprintf (t->p + t->len, t->cap - t->len, fmt, ap);
    va_end (ap);
    if (n < 0) {
      t->failed = true;
      return;
    }
    if ((size_t) n < t->cap - t->len) {
      t->len += n;
      return;
    }
    char *q = realloc (t->p, t->cap * 2 + n);

    if (q == NULL) {
      t->failed = true;
      return;
    }
    t->p = q;
    t->cap = t->cap * 2 + n;
  }
}

/* An export name as a label value: \, " and newline escaped. */
static void
put_label (struct text *t, const char *s)
{
  for (; *s; s++) {
    if (*s == '\\' || *s == '"')
      put (t, "\\%c", *s);
    else if (*s == '\n')
      put (t, "\\n");
    else
      put (t, "%c", *s);
  }
}

static void
family (struct text *t, const char *name, const char *type,
        const char *help)
{
  put (t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void
put_requests (struct text *t, const struct thread_counts *sum,
              char *const *names)
{
  family (t, "nbdsrv_requests_total", "counter",
          "Requests answered, by command and export.");
  for (unsigned e = 0; e < METRICS_EXPORTS; e++)
    for (unsigned c = 0; names[e] && c < MC_COUNT; c++) {
      put (t, "nbdsrv_requests_total{command=\"%s\",export=\"",
           cmd_names[c]);
      put_label (t, names[e]);
      put (t, "\"} %" PRIu64 "\n", sum->requests[e][c]);
    }
  family (t, "nbdsrv_bytes_total", "counter",
          "Bytes covered by successful requests, by command and export.");
  for (unsigned e = 0; e < METRICS_EXPORTS; e++)
    for (unsigned c = 0; names[e] && c < MC_COUNT; c++) {
      put (t, "nbdsrv_bytes_total{command=\"%s\",export=\"", cmd_names[c]);
      put_label (t, names[e]);
      put (t, "\"} %" PRIu64 "\n", sum->bytes[e][c]);
    }
}

static void
put_latency (struct text *t, const struct thread_counts *sum)
{
  family (t, "nbdsrv_request_duration_seconds", "histogram",
          "Time from reading a request to answering it, by command.");
  for (unsigned c = 0; c < MC_COUNT; c++) {
    uint64_t cum = 0;

    for (size_t b = 0; b < NBUCKETS; b++) {
      cum += sum->buckets[c][b];
      if (b < NBUCKETS - 1)
        put (t, "nbdsrv_request_duration_seconds_bucket{command=\"%s\","
             "le=\"%g\"} %" PRIu64 "\n", cmd_names[c],
             bucket_ns[b] / 1e9, cum);
      else
        put (t, "nbdsrv_request_duration_seconds_bucket{command=\"%s\","
             "le=\"+Inf\"} %" PRIu64 "\n", cmd_names[c], cum);
    }
    put (t, "nbdsrv_request_duration_seconds_sum{command=\"%s\"} %.9f\n",
         cmd_names[c], sum->total_ns[c] / 1e9);
    put (t, "nbdsrv_request_duration_seconds_count{command=\"%s\"} %"
         PRIu64 "\n", cmd_names[c], cum);
  }
  family (t, "nbdsrv_plugin_call_seconds_total", "counter",
          "Time spent in the filters and the plugin, by command.");
  for (unsigned c = 0; c < MC_COUNT; c++)
    put (t, "nbdsrv_plugin_call_seconds_total{command=\"%s\"} %.9f\n",
         cmd_names[c], sum->call_ns[c] / 1e9);
}

static void
put_connections (struct text *t)
{
  family (t, "nbdsrv_connections_open", "gauge", "Client connections open.");
  put (t, "nbdsrv_connections_open %" PRIu64 "\n", (uint64_t) conns_open);
  family (t, "nbdsrv_connections_total", "counter",
          "Client connections accepted.");
  put (t, "nbdsrv_connections_total %" PRIu64 "\n", (uint64_t) conns_total);
  family (t, "nbdsrv_connections_refused_total", "counter",
          "Client connections refused, by reason.");
  put (t, "nbdsrv_connections_refused_total{reason=\"max-connections\"} %"
       PRIu64 "\n", (uint64_t) conns_refused);
  family (t, "nbdsrv_handshakes_failed_total", "counter",
          "Connections that ended before transmission, by reason.");
  for (unsigned i = 0; i < MH_COUNT; i++)
    put (t, "nbdsrv_handshakes_failed_total{reason=\"%s\"} %" PRIu64 "\n",
         hs_names[i], (uint64_t) hs_failed[i]);
}

/* Sum every thread's counters, under the lock that guards the list. */
static char *
scrape (size_t *len)
{
  struct thread_counts *sum = calloc (1, sizeof *sum);
  char *names[METRICS_EXPORTS] = { NULL };
  struct text t = { .cap = 16384 };

  t.p = malloc (t.cap);
  if (sum == NULL || t.p == NULL) {
    free (sum);
    free (t.p);
    return NULL;
  }
  pthread_mutex_lock (&counts_lock);
  fold (sum, &retired);
  for (struct thread_counts *c = live; c; c = c->next)
    fold (sum, c);
  for (unsigned e = 0; e < METRICS_EXPORTS - 1; e++)
    names[e] = export_names[e];
  pthread_mutex_unlock (&counts_lock);
  names[METRICS_EXPORTS - 1] = "(other)";

  put_connections (&t);
  put_requests (&t, sum, names);
  family (&t, "nbdsrv_request_errors_total", "counter",
          "Requests answered with an error, by NBD error.");
  for (size_t i = 0; i < NERRORS; i++)
    put (&t, "nbdsrv_request_errors_total{error=\"%s\"} %" PRIu64 "\n",
         nbd_errors[i].name, sum->errors[i]);
  family (&t, "nbdsrv_requests_in_flight", "gauge",
          "Requests read and not yet answered.");
  put (&t, "nbdsrv_requests_in_flight %" PRIu64 "\n",
       sum->started - sum->finished);
  put_latency (&t, sum);
  free (sum);
  if (t.failed) {
    free (t.p);
    return NULL;
  }
  *len = t.len;
  return t.p;
}

static enum MHD_Result
answer (void *cls, struct MHD_Connection *c, const char *url,
        const char *method, const char *version, const char *upload,
        size_t *upload_size, void **state)
{
  struct MHD_Response *resp;
  enum MHD_Result r;
  unsigned status = MHD_HTTP_OK;
  size_t len = 0;
  char *body = NULL;

  if (strcmp (method, "GET") != 0 && strcmp (method, "HEAD") != 0)
    status = MHD_HTTP_METHOD_NOT_ALLOWED;
  else if (strcmp (url, "/metrics") != 0 && strcmp (url, "/") != 0)
    status = MHD_HTTP_NOT_FOUND;
  else if ((body = scrape (&len)) == NULL)
    status = MHD_HTTP_INTERNAL_SERVER_ERROR;
  if (body)
    resp = MHD_create_response_from_buffer (len, body,
                                            MHD_RESPMEM_MUST_FREE);
  else
    resp = MHD_create_response_from_buffer (0, (void *) "",
                                            MHD_RESPMEM_PERSISTENT);
  if (resp == NULL)
    return MHD_NO;
  if (body)
    MHD_add_response_header (resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                             "text/plain; version=0.0.4; charset=utf-8");
  r = MHD_queue_response (c, status, resp);
  MHD_destroy_response (resp);
  return r;
}

/* unix:PATH, or ADDR:PORT with ADDR an IPv4 address, a host name or an
 * IPv6 address in brackets.
 */
static int
listen_on (const char *where)
{
  struct addrinfo hints = { .ai_socktype = SOCK_STREAM,
                            .ai_flags = AI_PASSIVE };
  struct addrinfo *ai;
  char host[256];
  const char *colon = strrchr (where, ':');
  int fd, err, one = 1;

  if (strncmp (where, "unix:", 5) == 0) {
    struct sockaddr_un sun = { .sun_family = AF_UNIX };

    if (strlen (where + 5) >= sizeof sun.sun_path || where[5] == '\0') {
      fprintf (stderr, "nbdsrv: error: --metrics=%s: the socket path is "
               "empty or too long\n", where);
      return -1;
    }
    strcpy (sun.sun_path, where + 5);
    fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd == -1 || bind (fd, (struct sockaddr *) &sun, sizeof sun) == -1 ||
        listen (fd, 16) == -1) {
      fprintf (stderr, "nbdsrv: error: --metrics=%s: %m\n", where);
      if (fd >= 0)
        close (fd);
      return -1;
    }
    unix_path = strdup (sun.sun_path);
    return fd;
  }
  if (colon == NULL || colon == where || colon[1] == '\0' ||
      (size_t) (colon - where) >= sizeof host) {
    fprintf (stderr, "nbdsrv: error: --metrics=%s: give ADDR:PORT (for "
             "example 127.0.0.1:9100) or unix:PATH\n", where);
    return -1;
  }
  memcpy (host, where, colon - where);
  host[colon - where] = '\0';
  if (host[0] == '[' && host[strlen (host) - 1] == ']') {
    memmove (host, host + 1, strlen (host));
    host[strlen (host) - 1] = '\0';
  }
  err = getaddrinfo (host, colon + 1, &hints, &ai);
  if (err) {
    fprintf (stderr, "nbdsrv: error: --metrics=%s: %s\n", where,
             gai_strerror (err));
    return -1;
  }
  fd = socket (ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd == -1 ||
      setsockopt (fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == -1 ||
      bind (fd, ai->ai_addr, ai->ai_addrlen) == -1 || listen (fd, 16) == -1) {
    fprintf (stderr, "nbdsrv: error: --metrics=%s: %m\n", where);
    if (fd >= 0)
      close (fd);
    fd = -1;
  }
  freeaddrinfo (ai);
  return fd;
}

/* Bind at start-up, with the other sockets and before privileges are
 * dropped; the HTTP thread starts in metrics_start, after any fork.
 */
int
metrics_open (const char *where)
{
  listen_fd = listen_on (where);
  if (listen_fd == -1)
    return -1;
  metrics_on = true;
  return 0;
}

int
metrics_start (void)
{
  if (listen_fd == -1)
    return 0;
  daemon_ = MHD_start_daemon (MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL,
                              NULL, answer, NULL,
                              MHD_OPTION_LISTEN_SOCKET, listen_fd,
                              MHD_OPTION_END);
  if (daemon_ == NULL) {
    server_error ("--metrics: cannot start the HTTP server");
    return -1;
  }
  return 0;
}

void
metrics_stop (void)
{
  if (daemon_)
    MHD_stop_daemon (daemon_);
  daemon_ = NULL;
  if (unix_path)
    unlink (unix_path);
  free (unix_path);
  unix_path = NULL;
}
