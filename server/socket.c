/* nbdsrv: listening (TCP, Unix, vsock, systemd socket activation) and
 * accepting.  A small pool of threads accepts clients and wakes parked
 * ones (park.c); the thread that accepts a client runs its handshake
 * and then serves it until it goes idle.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <linux/vm_sockets.h>

#include "internal.h"
#include "connection.h"
#include "park.h"
#include "socket.h"

#define LISTEN_BACKLOG 1024
#define FIRST_ACTIVATION_FD 3   /* sd_listen_fds(3) */
#define UNIX_SOCKET_BUFFER (4 * 1024 * 1024)

static int
add_fd (struct listeners *l, int fd)
{
  if (l->n >= sizeof l->fds / sizeof l->fds[0]) {
    close (fd);
    fprintf (stderr, "nbdsrv: error: too many listening sockets\n");
    return -1;
  }
  l->fds[l->n++] = fd;
  return 0;
}

/* Bind a Unix socket that only its owner can connect to, whatever the
 * umask: the socket file is made 0600 (connecting needs write access),
 * so no other user can connect in the moment before the mode is set.
 * With -u/-g it is given to that user and group, so the server keeps
 * owning it after dropping privileges, and -g GROUP lets that group's
 * members connect (0660).
 */
static int
unix_bind (int fd, const struct sockaddr_un *addr)
{
  mode_t old = umask (0177);
  int r = bind (fd, (const struct sockaddr *) addr, sizeof *addr);

  umask (old);
  if (r == -1)
    return -1;
  if ((cfg.set_uid || cfg.set_gid) &&
      chown (addr->sun_path, cfg.set_uid ? cfg.uid : (uid_t) -1,
             cfg.set_gid ? cfg.gid : (gid_t) -1) == -1)
    return -1;
  if (cfg.group_access && chmod (addr->sun_path, 0660) == -1)
    return -1;
  return 0;
}

static int
open_unix (struct listeners *l)
{
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  const char *path = cfg.unixsocket;
  char buf[sizeof addr.sun_path];
  int fd;

  if (strcmp (path, "-") == 0) {
    char tmpl[] = "/tmp/nbdsrvXXXXXX";

    if (mkdtemp (tmpl) == NULL) {
      fprintf (stderr, "nbdsrv: error: cannot make a private socket "
               "directory in /tmp: %m\n");
      return -1;
    }
    l->tmpdir = strdup (tmpl);
    snprintf (buf, sizeof buf, "%s/socket", tmpl);
    path = buf;
  }
  if (strlen (path) >= sizeof addr.sun_path) {
    fprintf (stderr, "nbdsrv: error: -U %s: the path is longer than %zu "
             "bytes: use a shorter path\n", path, sizeof addr.sun_path - 1);
    return -1;
  }
  strcpy (addr.sun_path, path);
  fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd == -1 || unix_bind (fd, &addr) == -1 ||
      listen (fd, LISTEN_BACKLOG) == -1) {
    fprintf (stderr, "nbdsrv: error: -U %s: cannot listen: %m%s\n", path,
             errno == EADDRINUSE ? " (remove the stale socket or choose "
             "another path)" : "");
    if (fd >= 0)
      close (fd);
    return -1;
  }
  l->unixpath = strdup (path);
  return add_fd (l, fd);
}

static int
open_vsock (struct listeners *l)
{
  struct sockaddr_vm addr = {
    .svm_family = AF_VSOCK,
    .svm_cid = VMADDR_CID_ANY,
    .svm_port = cfg.port ? (unsigned) atoi (cfg.port) : 10809,
  };
  int fd = socket (AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);

  if (fd == -1 ||
      bind (fd, (struct sockaddr *) &addr, sizeof addr) == -1 ||
      listen (fd, LISTEN_BACKLOG) == -1) {
    fprintf (stderr, "nbdsrv: error: --vsock port %u: cannot listen: %m "
             "(is the vsock module loaded?)\n", addr.svm_port);
    if (fd >= 0)
      close (fd);
    return -1;
  }
  l->port = addr.svm_port;
  return add_fd (l, fd);
}

static int
bound_port (int fd)
{
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;

  if (getsockname (fd, (struct sockaddr *) &ss, &len) == -1)
    return 0;
  if (ss.ss_family == AF_INET)
    return ntohs (((struct sockaddr_in *) &ss)->sin_port);
  if (ss.ss_family == AF_INET6)
    return ntohs (((struct sockaddr_in6 *) &ss)->sin6_port);
  return 0;
}

/* Put PORT into the IPv4 or IPv6 address SA. */
static void
set_port (struct sockaddr *sa, int port)
{
  if (sa->sa_family == AF_INET)
    ((struct sockaddr_in *) sa)->sin_port = htons (port);
  else if (sa->sa_family == AF_INET6)
    ((struct sockaddr_in6 *) sa)->sin6_port = htons (port);
}

static int
open_tcp (struct listeners *l)
{
  struct addrinfo hints = {
    .ai_family = cfg.ipfamily, .ai_socktype = SOCK_STREAM,
    .ai_flags = AI_PASSIVE | AI_ADDRCONFIG,
  };
  struct addrinfo *res, *a;
  const char *port = cfg.port ? cfg.port : "10809";
  int r, one = 1;

  r = getaddrinfo (cfg.ipaddr, port, &hints, &res);
  if (r != 0) {
    fprintf (stderr, "nbdsrv: error: cannot listen on %s port %s: %s\n",
             cfg.ipaddr ? cfg.ipaddr : "any address", port,
             gai_strerror (r));
    return -1;
  }
  for (a = res; a; a = a->ai_next) {
    int fd = socket (a->ai_family, a->ai_socktype | SOCK_CLOEXEC,
                     a->ai_protocol);

    if (fd == -1)
      continue;
    setsockopt (fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (a->ai_family == AF_INET6)
      setsockopt (fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    /* With -p 0 the kernel picks the first socket's port; the others
     * (IPv4 beside IPv6) take the same, so that $uri reaches them all.
     */
    if (l->port != 0)
      set_port (a->ai_addr, l->port);
    if (bind (fd, a->ai_addr, a->ai_addrlen) == -1 ||
        listen (fd, LISTEN_BACKLOG) == -1) {
      fprintf (stderr, "nbdsrv: error: cannot listen on %s port %s: %m%s\n",
               cfg.ipaddr ? cfg.ipaddr : "any address", port,
               errno == EADDRINUSE ? " (another server is using it: "
               "choose another with -p)" : "");
      close (fd);
      freeaddrinfo (res);
      return -1;
    }
    if (add_fd (l, fd) == -1) {
      freeaddrinfo (res);
      return -1;
    }
    l->port = bound_port (fd);
  }
  freeaddrinfo (res);
  if (l->n == 0) {
    fprintf (stderr, "nbdsrv: error: no usable address to listen on\n");
    return -1;
  }
  return 0;
}

/* LISTEN_PID/LISTEN_FDS (systemd socket activation). */
static int
open_activated (struct listeners *l)
{
  int n = atoi (getenv ("LISTEN_FDS"));

  for (int i = 0; i < n; i++) {
    int fd = FIRST_ACTIVATION_FD + i;

    fcntl (fd, F_SETFD, FD_CLOEXEC);
    if (add_fd (l, fd) == -1)
      return -1;
  }
  unsetenv ("LISTEN_PID");
  unsetenv ("LISTEN_FDS");
  unsetenv ("LISTEN_FDNAMES");
  return 0;
}

/* --selinux-label: the label for the sockets this thread makes next
 * (NULL: back to the default), through the kernel's sockcreate
 * attribute, which is what libselinux's setsockcreatecon writes.
 * Without SELinux the option is accepted with a warning, so one command
 * line serves hosts with and without it.
 */
static int
selinux_label_set (const char *label)
{
  const char *attr = "/proc/thread-self/attr/sockcreate";
  int fd, r;

  if (cfg.selinux_label == NULL)
    return 0;
  if (access ("/sys/fs/selinux/enforce", F_OK) == -1) {
    if (label)
      startup_warning ("--selinux-label=%s ignored: SELinux is not "
                       "enabled on this host", label);
    return 0;
  }
  fd = open (attr, O_WRONLY | O_CLOEXEC);
  r = fd == -1 ? -1 : (int) write (fd, label ? label : "",
                                   label ? strlen (label) : 0);
  if (fd != -1)
    close (fd);
  if (r == -1) {
    fprintf (stderr, "nbdsrv: error: --selinux-label=%s: %m (is the "
             "label valid for this policy?)\n", cfg.selinux_label);
    return -1;
  }
  return 0;
}

static int
listeners_open_any (struct listeners *l)
{
  if (cfg.socket_activation)
    return open_activated (l);
  if (cfg.unixsocket)
    return open_unix (l);
  if (cfg.vsock)
    return open_vsock (l);
  return open_tcp (l);
}

int
listeners_open (struct listeners *l)
{
  int r;

  memset (l, 0, sizeof *l);
  if (selinux_label_set (cfg.selinux_label) == -1)
    return -1;
  r = listeners_open_any (l);
  if (selinux_label_set (NULL) == -1)
    return -1;
  return r;
}

void
listeners_close (struct listeners *l)
{
  for (size_t i = 0; i < l->n; i++)
    close (l->fds[i]);
  l->n = 0;
  if (l->unixpath)
    unlink (l->unixpath);
  if (l->tmpdir)
    rmdir (l->tmpdir);
  free (l->unixpath);
  free (l->tmpdir);
  l->unixpath = l->tmpdir = NULL;
}

/* Set up an accepted socket as a connection, or close it.  PEER is the
 * address accept() returned; its family is the listener's.
 */
static struct connection *
conn_accepted (int fd, const struct sockaddr_storage *peer,
               socklen_t peer_len)
{
  struct connection *conn;
  int one = 1;

  if (peer->ss_family == AF_INET || peer->ss_family == AF_INET6) {
    setsockopt (fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (cfg.keepalive)
      setsockopt (fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
  }
  else if (peer->ss_family == AF_UNIX) {
    /* Unix sockets do not autotune: with the default (about 200 KiB) a
     * 1 MiB reply or payload crosses in several sleeps and wake-ups.
     */
    int size = UNIX_SOCKET_BUFFER;

    setsockopt (fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    setsockopt (fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
  }
  conn = conn_new (fd, fd, peer, peer_len);
  if (conn == NULL)
    close (fd);
  return conn;
}

/* Acceptor threads: a small pool that waits on park.c's set for a new
 * client or a parked one with something to say.  The thread that
 * takes a new client serves it itself, so a new client never waits for
 * another thread to be created or scheduled (the connection-rate case:
 * connect, one request, leave); it serves the handshake and the
 * requests until the client goes quiet and the connection parks, then
 * waits again.  Before serving, a thread makes sure another one waits.
 * Threads beyond ACCEPTORS_IDLE_MAX waiting leave after LINGER_MS with
 * nothing to do: long enough that a burst of clients (filling, or all
 * leaving at once) reuses threads instead of starting one per client,
 * short enough that the thread count is back to its base within a
 * second of the burst.  The first thread to find nothing to do for as
 * long after many clients left trims the heap (conns_trim).
 */
#define ACCEPTORS_IDLE_MAX 2
#define LINGER_MS 200

static atomic_uint acceptors_idle;      /* waiting for work */
static unsigned acceptors;              /* alive, under acceptors_lock */
static pthread_mutex_t acceptors_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t acceptors_cond = PTHREAD_COND_INITIALIZER;

static int acceptor_spawn (struct listeners *l);

/* A waiting thread beyond ACCEPTORS_IDLE_MAX counts itself out. */
static bool
acceptor_surplus_leave (void)
{
  unsigned idle = atomic_load (&acceptors_idle);

  do {
    if (idle <= ACCEPTORS_IDLE_MAX)
      return false;
  } while (!atomic_compare_exchange_weak (&acceptors_idle, &idle, idle - 1));
  return true;
}

/* Accept the client waiting on LISTENER.  Returns its fd, or -1 after
 * a lost race (another thread took it) or a transient error.
 */
static int
acceptor_accept (int listener, struct sockaddr_storage *peer,
                 socklen_t *peer_len)
{
  int fd;

  *peer_len = sizeof *peer;
  fd = accept4 (listener, (struct sockaddr *) peer, peer_len,
                SOCK_CLOEXEC);
  if (fd == -1 && errno != EINTR && errno != EAGAIN &&
      errno != ECONNABORTED) {
    server_error ("accept: %m");
    poll (NULL, 0, 100);        /* EMFILE and the like: do not spin */
  }
  return fd;
}

static void *
acceptor_thread (void *arg)
{
  struct listeners *l = arg;

  for (;;) {
    int timeout = atomic_load (&acceptors_idle) > ACCEPTORS_IDLE_MAX ||
      conns_trim_due () ? LINGER_MS : -1;
    int *listener = NULL, fd = -1;
    struct connection *conn = NULL;
    struct sockaddr_storage peer;
    socklen_t peer_len;
    enum park_ready what = quit ? PARK_QUIT
      : park_wait (timeout, &listener, &conn);

    if (what == PARK_QUIT)
      break;
    if (what == PARK_TIMER) {
      conns_sweep_greeted ();
      continue;
    }
    if (what == PARK_TIMEOUT) {
      conns_trim ();
      if (acceptor_surplus_leave ())
        goto out_exit;
      continue;
    }
    if (what == PARK_LISTENER &&
        (quit || (fd = acceptor_accept (*listener, &peer, &peer_len)) == -1))
      continue;                 /* still waiting, as counted */
    if (atomic_fetch_sub (&acceptors_idle, 1) == 1)
      acceptor_spawn (l);
    if (fd == -1)
      conn_resume (conn);
    else if ((conn = conn_accepted (fd, &peer, peer_len)) != NULL)
      conn_serve (conn);
    atomic_fetch_add (&acceptors_idle, 1);
  }
  atomic_fetch_sub (&acceptors_idle, 1);
 out_exit:
  pthread_mutex_lock (&acceptors_lock);
  acceptors--;
  pthread_cond_broadcast (&acceptors_cond);
  pthread_mutex_unlock (&acceptors_lock);
  return NULL;
}

static int
acceptor_spawn (struct listeners *l)
{
  int r;

  pthread_mutex_lock (&acceptors_lock);
  acceptors++;
  atomic_fetch_add (&acceptors_idle, 1);
  r = thread_start_detached (acceptor_thread, l);
  if (r != 0) {
    acceptors--;
    atomic_fetch_sub (&acceptors_idle, 1);
    errno = r;
    server_error ("cannot start a thread to accept clients: %m");
  }
  pthread_mutex_unlock (&acceptors_lock);
  return r == 0 ? 0 : -1;
}

/* Serve until quit.  The main thread only sets up the wait set, starts
 * the first acceptors and waits; accepting and serving happen in
 * acceptor threads.  The listeners are non-blocking: several threads
 * may wake for one client, and the losers just wait again.
 */
void
accept_loop (struct listeners *l)
{
  struct pollfd pfd = { .fd = quit_fd, .events = POLLIN };

  if (park_init () == -1) {
    quit_set ();
    return;
  }
  for (size_t i = 0; i < l->n; i++) {
    fcntl (l->fds[i], F_SETFL, fcntl (l->fds[i], F_GETFL) | O_NONBLOCK);
    if (park_add_listener (&l->fds[i]) == -1) {
      quit_set ();
      return;
    }
  }
  for (int i = 0; i < ACCEPTORS_IDLE_MAX; i++)
    if (acceptor_spawn (l) == -1)
      quit_set ();
  while (!quit)
    poll (&pfd, 1, -1);
}

/* After quit.  ALL false: wait until no acceptor is waiting in park.c's
 * set, so the listeners can be closed and the main thread may take the
 * parked connections' events (busy acceptors see quit before they
 * would wait again).  ALL true: wait until every acceptor has exited.
 */
void
acceptors_wait (bool all)
{
  pthread_mutex_lock (&acceptors_lock);
  while (all ? acceptors > 0 : atomic_load (&acceptors_idle) > 0)
    pthread_cond_wait (&acceptors_cond, &acceptors_lock);
  pthread_mutex_unlock (&acceptors_lock);
}

/* -s: one client on the stdin/stdout the server was started with
 * (kept aside by stdio_detach, which pointed fds 0 and 1 at /dev/null
 * so nothing else writes to the client).  It is served in its own
 * thread, as any client, and the main thread waits for quit (set by a
 * signal, or when the client's connection closes), so shutdown works
 * the same.
 */
void
serve_single (void)
{
  struct pollfd pfd = { .fd = quit_fd, .events = POLLIN };
  struct connection *conn;

  if (stdio_in == -1 || stdio_out == -1) {
    server_error ("-s: stdin or stdout is closed: start the server with "
                  "the client's connection on both");
    return;
  }
  conn = conn_new (stdio_in, stdio_out, NULL, 0);
  if (conn == NULL || conn_spawn (conn) == -1)
    return;
  while (!quit)
    poll (&pfd, 1, -1);
}
