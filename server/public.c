/* nbdsrv: plugin API calls that ask about the current connection. */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"
#include "connection.h"

static struct connection *
current_conn (const char *fn)
{
  struct connection *conn = thread_state ()->conn;

  if (conn == NULL)
    nbdkit_error ("%s: only callable while serving a connection", fn);
  return conn;
}

const char *
nbdkit_export_name (void)
{
  struct connection *conn = thread_state ()->conn;

  if (conn == NULL || conn->exp.name == NULL) {
    nbdkit_error ("nbdkit_export_name: no export is being opened");
    return NULL;
  }
  /* The name the plugin was opened with: a filter may change it. */
  return conn->exp.plugin_name ? conn->exp.plugin_name : conn->exp.name;
}

int
nbdkit_is_tls (void)
{
  struct connection *conn = current_conn ("nbdkit_is_tls");

  if (conn == NULL)
    return -1;
  return conn->tls != NULL;
}

/* For the is_tls arguments of .list_exports and .default_export. */
bool
conn_is_tls (void)
{
  struct connection *conn = thread_state ()->conn;

  return conn && conn->tls;
}

int
nbdkit_peer_name (struct sockaddr *addr, socklen_t *addrlen)
{
  struct connection *conn = current_conn ("nbdkit_peer_name");

  if (conn == NULL)
    return -1;
  if (!conn->is_socket) {
    nbdkit_error ("nbdkit_peer_name: the client is not on a socket (-s)");
    return -1;
  }
  if (*addrlen > conn->peer_len)
    *addrlen = conn->peer_len;
  memcpy (addr, &conn->peer, *addrlen);
  *addrlen = conn->peer_len;
  return 0;
}

/* SO_PEERCRED: only Unix-domain clients have credentials. */
static int64_t
peer_cred (const char *fn, int which)
{
  struct connection *conn = current_conn (fn);
  struct ucred cred;
  socklen_t len = sizeof cred;

  if (conn == NULL)
    return -1;
  if (!conn->is_socket || conn->peer.ss_family != AF_UNIX ||
      getsockopt (conn->fd_in, SOL_SOCKET, SO_PEERCRED, &cred, &len) == -1) {
    nbdkit_error ("%s: peer credentials are only known for clients "
                  "on a Unix socket", fn);
    return -1;
  }
  if (which == 0)
    return cred.pid;
  return which == 1 ? (int64_t) cred.uid : (int64_t) cred.gid;
}

int64_t
nbdkit_peer_pid (void)
{
  return peer_cred ("nbdkit_peer_pid", 0);
}

int64_t
nbdkit_peer_uid (void)
{
  return peer_cred ("nbdkit_peer_uid", 1);
}

int64_t
nbdkit_peer_gid (void)
{
  return peer_cred ("nbdkit_peer_gid", 2);
}

/* SO_PEERSEC: the label a Linux security module gave the client's
 * end (Unix sockets, and TCP under labelled networking).  Without a
 * module the kernel answers ENOPROTOOPT and there is no label.  The
 * caller frees the string.
 */
char *
nbdkit_peer_security_context (void)
{
  struct connection *conn = current_conn ("nbdkit_peer_security_context");
  socklen_t len = 256;
  char *label = NULL;

  if (conn == NULL)
    return NULL;
  if (!conn->is_socket) {
    nbdkit_error ("nbdkit_peer_security_context: the client is not on a "
                  "socket (-s)");
    return NULL;
  }
  for (;;) {
    char *p = realloc (label, len + 1);

    if (p == NULL) {
      nbdkit_error ("nbdkit_peer_security_context: %m");
      break;
    }
    label = p;
    if (getsockopt (conn->fd_in, SOL_SOCKET, SO_PEERSEC, label, &len) == 0) {
      label[len] = '\0';       /* the kernel may count the NUL, or not */
      return label;
    }
    if (errno != ERANGE) {
      nbdkit_error ("nbdkit_peer_security_context: the client has no "
                    "security label: %m");
      break;
    }
  }
  free (label);
  return NULL;
}

/* force: drop the connection now; otherwise stop reading requests and
 * let the ones in flight finish.
 */
void
nbdkit_disconnect (int force)
{
  struct connection *conn = thread_state ()->conn;

  if (conn == NULL)
    return;
  conn_set_status (conn, force ? CONN_DEAD : CONN_SHUTDOWN);
  if (conn->is_socket)
    shutdown (conn->fd_in, force ? SHUT_RDWR : SHUT_RD);
}

/* Where nbdkit_*_intern keeps its strings (intern.c). */
struct intern_set **
threadlocal_intern_set (void)
{
  struct connection *conn = thread_state ()->conn;

  return conn ? &conn->interned : &plugin.interned;
}
