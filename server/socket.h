/* nbdsrv: listening sockets and the accept loop (socket.c). */
#ifndef NBDSRV_SOCKET_H
#define NBDSRV_SOCKET_H

#include <stdbool.h>
#include <stddef.h>

struct listeners {
  int fds[16];
  size_t n;
  char *tmpdir;                 /* owned: private dir for -U -, or NULL */
  char *unixpath;               /* owned: socket path to unlink, or NULL */
  int port;                     /* TCP or vsock port actually bound */
};

int listeners_open (struct listeners *l);
void listeners_close (struct listeners *l);
void accept_loop (struct listeners *l);
void acceptors_wait (bool all);
void serve_single (void);

#endif /* NBDSRV_SOCKET_H */
