/* nbdsrv: the TLS record layer (tls.c), with GnuTLS.
 *
 * connection.c calls into this file when a connection has a session;
 * this file knows nothing of connections, requests or replies, so the
 * protocol code exists once and runs the same over plain sockets and
 * TLS.  Credentials are loaded once at start-up (before -u/-g drop
 * privileges); a session is made per connection after STARTTLS.
 */
#ifndef NBDSRV_TLS_H
#define NBDSRV_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

/* Where nbdkit looks for certificates when started as root. */
#define TLS_ROOT_CERTIFICATES_DIR "/etc/pki/nbdkit"

/* The default --tls-priority: GnuTLS's secure set, TLS 1.2 and 1.3
 * only (older versions have known weaknesses and no client we support
 * needs them).
 */
#define TLS_DEFAULT_PRIORITY "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2"

struct tls_session;             /* opaque: one client's GnuTLS session */

/* Load the credentials --tls, --tls-certificates and --tls-psk ask for,
 * and settle cfg.tls (nbdkit's defaults: on when credentials are found,
 * off when not).  Returns 0, or -1 after one message naming the file.
 */
int tls_load (void);
void tls_unload (void);

/* Run the server side of a TLS handshake on FD_IN/FD_OUT, within
 * TIMEOUT_MS (0: no limit).  Returns the session, or NULL after logging
 * why the client was refused.
 */
struct tls_session *tls_session_new (int fd_in, int fd_out,
                                     int64_t timeout_ms);
/* ORDERLY: say goodbye (close_notify) before freeing. */
void tls_session_free (struct tls_session *t, bool orderly);

/* Input already read from the socket, so poll() on it would lie. */
bool tls_pending (struct tls_session *t);

/* Like readv: bytes read, 0 at end of stream, -1 with errno.  Waits
 * for the first record only, and with NONBLOCK not even for that
 * (EAGAIN).  One reader at a time.
 */
ssize_t tls_readv (struct tls_session *t, const struct iovec *iov,
                   int iovcnt, bool nonblock);

/* Send the whole iovec, coalesced into full records.  One writer at a
 * time (it may run alongside the reader).  Returns 0 or -1 with errno.
 */
int tls_writev (struct tls_session *t, const struct iovec *iov,
                int iovcnt);

#endif /* NBDSRV_TLS_H */
