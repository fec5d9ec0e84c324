/* nbdsrv: TLS with GnuTLS: credentials, the handshake, and the record
 * layer that connection.c reads and writes through (tls.h).
 *
 * Every refused client gets one log line saying why, written where the
 * refusal is found: in the PSK lookup, or after the handshake failed.
 */
#include "config.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "internal.h"
#include "minmax.h"
#include "tls.h"

/* The largest TLS record payload (RFC 8446 5.1).  Writes are cut into
 * records of this size: a record costs a header, a tag and a syscall,
 * so fewer, fuller records are cheaper.
 */
#define TLS_RECORD_MAX 16384

/* Bytes read from the socket at once.  GnuTLS reads a record's 5-byte
 * header and then its body, two reads a record; through this buffer one
 * read brings in many small records (pipelined requests) or four full
 * ones, at the cost of one copy.
 */
#define TLS_RX_SIZE (64 * 1024)

/* Key exchanges added to the priority for PSK, as QEMU and nbdkit do. */
#define TLS_PSK_KX ":+ECDHE-PSK:+DHE-PSK:+PSK"

struct tls_session {
  gnutls_session_t s;
  int fd_in, fd_out;            /* the same socket, or -s's pipes */
  bool refused_logged;          /* the refusal was logged (PSK lookup) */
  const char *psk_user;         /* borrowed (psk_users): known user */
  size_t record_max;            /* payload bytes per record we send */
  /* Reader side (one reader at a time). */
  bool nonblock;                /* pull fails with EAGAIN, never waits */
  size_t rx_pos, rx_len;        /* unread bytes: rx[rx_pos..rx_len) */
  char rx[TLS_RX_SIZE];
  /* Writer side (one writer at a time). */
  char stage[TLS_RECORD_MAX];   /* small pieces gather here */
};

/* One user of the --tls-psk file, loaded at start-up. */
struct psk_user {
  char *name;                   /* owned */
  unsigned char *key;           /* owned */
  size_t key_len;
};

static gnutls_certificate_credentials_t x509_creds;
static gnutls_psk_server_credentials_t psk_creds;
static gnutls_priority_t priority;
static struct psk_user *psk_users;      /* owned */
static size_t n_psk_users;

static void
gnutls_log (int level, const char *msg)
{
  size_t len = strlen (msg);

  server_debug ("gnutls: %d: %.*s", level,
                (int) (len && msg[len - 1] == '\n' ? len - 1 : len), msg);
}

static int
dir_check (const char *dir)
{
  struct stat st;

  if (stat (dir, &st) == -1) {
    server_error ("--tls-certificates %s: %m", dir);
    return -1;
  }
  if (!S_ISDIR (st.st_mode)) {
    server_error ("--tls-certificates %s: not a directory", dir);
    return -1;
  }
  return 0;
}

/* A file named on the command line must be readable now: one message
 * naming it, then the caller exits with status 1.
 */
static int
file_check (const char *path, const char *what)
{
  if (access (path, R_OK) == 0)
    return 0;
  server_error ("%s %s: %m", what, path);
  return -1;
}

/* Parse one "user:hexkey" line of a psktool file into U. */
static int
psk_line_parse (const char *file, unsigned lineno, char *line,
                struct psk_user *u)
{
  char *colon = strchr (line, ':');
  gnutls_datum_t hex, bin = { NULL, 0 };

  if (colon == NULL || colon == line || colon[1] == '\0') {
    server_error ("--tls-psk %s line %u: expected USERNAME:HEXKEY as "
                  "psktool writes", file, lineno);
    return -1;
  }
  *colon = '\0';
  hex.data = (unsigned char *) colon + 1;
  hex.size = strlen (colon + 1);
  if (gnutls_hex_decode2 (&hex, &bin) < 0) {
    server_error ("--tls-psk %s line %u: the key of user '%s' is not "
                  "hexadecimal", file, lineno, line);
    return -1;
  }
  u->name = strdup (line);
  u->key = malloc (bin.size);
  if (u->name == NULL || u->key == NULL) {
    gnutls_free (bin.data);
    server_error ("--tls-psk %s: out of memory", file);
    return -1;
  }
  memcpy (u->key, bin.data, bin.size);
  u->key_len = bin.size;
  gnutls_free (bin.data);
  return 0;
}

/* Read the whole --tls-psk file now, while we may still read it (before
 * -u/-g), and so a broken file fails at start-up, not per client.
 */
static int
psk_file_load (const char *file)
{
  FILE *fp;
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  unsigned lineno = 0;
  int r = 0;

  if (file_check (file, "--tls-psk") == -1)
    return -1;
  fp = fopen (file, "r");
  if (fp == NULL) {
    server_error ("--tls-psk %s: %m", file);
    return -1;
  }
  while (r == 0 && (len = getline (&line, &cap, fp)) != -1) {
    struct psk_user *n;

    lineno++;
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
      line[--len] = '\0';
    if (len == 0)
      continue;
    n = realloc (psk_users, (n_psk_users + 1) * sizeof *n);
    if (n == NULL) {
      server_error ("--tls-psk %s: out of memory", file);
      r = -1;
      break;
    }
    psk_users = n;
    memset (&psk_users[n_psk_users], 0, sizeof *n);
    r = psk_line_parse (file, lineno, line, &psk_users[n_psk_users++]);
  }
  free (line);
  fclose (fp);
  if (r == 0 && n_psk_users == 0) {
    server_error ("--tls-psk %s: the file has no users: add one with "
                  "'psktool -u NAME -p %s'", file, file);
    r = -1;
  }
  return r;
}

/* GnuTLS asks for USERNAME's key during a PSK handshake. */
static int
psk_lookup (gnutls_session_t s, const char *username, gnutls_datum_t *key)
{
  struct tls_session *t = gnutls_session_get_ptr (s);

  for (size_t i = 0; i < n_psk_users; i++) {
    if (strcmp (psk_users[i].name, username) != 0)
      continue;
    key->data = gnutls_malloc (psk_users[i].key_len);
    if (key->data == NULL)
      return -1;
    memcpy (key->data, psk_users[i].key, psk_users[i].key_len);
    key->size = psk_users[i].key_len;
    t->psk_user = psk_users[i].name;
    return 0;
  }
  server_error ("TLS: refusing PSK user '%s': not in the --tls-psk file",
                username);
  t->refused_logged = true;
  return -1;
}

static int
psk_load (void)
{
  int r;

  if (psk_file_load (cfg.tls_psk) == -1)
    return -1;
  r = gnutls_psk_allocate_server_credentials (&psk_creds);
  if (r < 0) {
    server_error ("TLS: cannot allocate PSK credentials: %s",
                  gnutls_strerror (r));
    return -1;
  }
  gnutls_psk_set_server_credentials_function (psk_creds, psk_lookup);
  return 0;
}

/* Load DIR's certificates (nbdkit's and QEMU's layout).  ca-cert.pem is
 * needed only to check clients; ca-crl.pem is optional.
 */
static int
x509_load (const char *dir)
{
  char ca[4096], crl[4096], cert[4096], key[4096];
  int r;

  snprintf (ca, sizeof ca, "%s/ca-cert.pem", dir);
  snprintf (crl, sizeof crl, "%s/ca-crl.pem", dir);
  snprintf (cert, sizeof cert, "%s/server-cert.pem", dir);
  snprintf (key, sizeof key, "%s/server-key.pem", dir);
  if (file_check (cert, "TLS certificate") == -1 ||
      file_check (key, "TLS private key") == -1 ||
      (cfg.tls_verify_peer &&
       file_check (ca, "TLS CA certificate (for --tls-verify-peer)") == -1))
    return -1;
  r = gnutls_certificate_allocate_credentials (&x509_creds);
  if (r < 0) {
    server_error ("TLS: cannot allocate certificate credentials: %s",
                  gnutls_strerror (r));
    return -1;
  }
  if (access (ca, F_OK) == 0 &&
      (r = gnutls_certificate_set_x509_trust_file (x509_creds, ca,
                                                   GNUTLS_X509_FMT_PEM)) < 0) {
    server_error ("TLS CA certificate %s: %s", ca, gnutls_strerror (r));
    return -1;
  }
  if (access (crl, F_OK) == 0 &&
      (r = gnutls_certificate_set_x509_crl_file (x509_creds, crl,
                                                 GNUTLS_X509_FMT_PEM)) < 0) {
    server_error ("TLS revocation list %s: %s", crl, gnutls_strerror (r));
    return -1;
  }
  r = gnutls_certificate_set_x509_key_file (x509_creds, cert, key,
                                            GNUTLS_X509_FMT_PEM);
  if (r < 0) {
    server_error ("TLS certificate %s with key %s: %s", cert, key,
                  gnutls_strerror (r));
    return -1;
  }
  debug ("TLS: loaded the certificates in %s", dir);
  return 0;
}

/* nbdkit's default certificate directories, in order; the first that
 * exists is used.  Returns it in BUF, or NULL.
 */
static const char *
default_dir_find (char *buf, size_t n)
{
  const char *home = getenv ("HOME");
  const char *subdirs[] = { "/.pki/nbdkit", "/.config/pki/nbdkit" };
  struct stat st;

  if (geteuid () == 0) {
    snprintf (buf, n, "%s", TLS_ROOT_CERTIFICATES_DIR);
    return stat (buf, &st) == 0 && S_ISDIR (st.st_mode) ? buf : NULL;
  }
  for (size_t i = 0; home && i < 2; i++) {
    snprintf (buf, n, "%s%s", home, subdirs[i]);
    if (stat (buf, &st) == 0 && S_ISDIR (st.st_mode))
      return buf;
  }
  return NULL;
}

static int
priority_load (void)
{
  const char *base = cfg.tls_priority ? cfg.tls_priority
    : TLS_DEFAULT_PRIORITY;
  char str[1024];
  const char *err = NULL;
  int r;

  snprintf (str, sizeof str, "%s%s", base, psk_creds ? TLS_PSK_KX : "");
  r = gnutls_priority_init (&priority, str, &err);
  if (r < 0) {
    server_error ("--tls-priority %s: %s at '%s': see "
                  "gnutls_priority_init(3) for the syntax", base,
                  gnutls_strerror (r), err ? err : "?");
    return -1;
  }
  return 0;
}

/* Credentials when neither --tls-psk nor --tls-certificates was given:
 * nbdkit's default directories.  Nothing found turns TLS off, with a
 * warning under --tls=on and an error under --tls=require (as nbdkit).
 */
static int
default_load (void)
{
  char dir[4096];

  if (default_dir_find (dir, sizeof dir))
    return x509_load (dir);
  if (cfg.tls == TLS_REQUIRE) {
    server_error ("--tls=require: no certificates in %s: use "
                  "--tls-certificates=DIR or --tls-psk=FILE",
                  geteuid () == 0 ? TLS_ROOT_CERTIFICATES_DIR
                  : "$HOME/.pki/nbdkit or $HOME/.config/pki/nbdkit");
    return -1;
  }
  if (cfg.tls == TLS_ON)
    startup_warning ("--tls=on but no certificates were found: TLS is "
                     "disabled (use --tls-certificates=DIR or "
                     "--tls-psk=FILE)");
  cfg.tls = TLS_OFF;
  return 0;
}

int
tls_load (void)
{
  int r;

  if (cfg.tls == TLS_OFF) {
    if (cfg.tls_verify_peer)
      startup_warning ("--tls-verify-peer has no effect with --tls=off");
    return 0;
  }
  if (cfg.tls_log > 0) {
    gnutls_global_set_log_function (gnutls_log);
    gnutls_global_set_log_level (cfg.tls_log);
  }
  if (cfg.tls_psk)
    r = psk_load ();
  else if (cfg.tls_certificates)
    r = dir_check (cfg.tls_certificates) == -1 ? -1
      : x509_load (cfg.tls_certificates);
  else
    r = default_load ();
  if (r == -1 || cfg.tls == TLS_OFF)
    return r;
  if (cfg.tls == TLS_UNSET)
    cfg.tls = TLS_ON;
  return priority_load ();
}

void
tls_unload (void)
{
  if (priority)
    gnutls_priority_deinit (priority);
  if (x509_creds)
    gnutls_certificate_free_credentials (x509_creds);
  if (psk_creds)
    gnutls_psk_free_server_credentials (psk_creds);
  for (size_t i = 0; i < n_psk_users; i++) {
    free (psk_users[i].name);
    free (psk_users[i].key);
  }
  free (psk_users);
  psk_users = NULL;
  n_psk_users = 0;
  priority = NULL;
  x509_creds = NULL;
  psk_creds = NULL;
}

/* -D nbdkit.tls.session=1: who the client is and what was agreed. */
static void
session_describe (gnutls_session_t s)
{
  char *desc = gnutls_session_get_desc (s);
  const gnutls_datum_t *peers;
  unsigned n = 0;
  gnutls_x509_crt_t crt;
  gnutls_datum_t line;

  debug ("TLS session: %s", desc ? desc : "?");
  gnutls_free (desc);
  if (psk_creds) {
    debug ("TLS PSK user: %s", gnutls_psk_server_get_username (s));
    return;
  }
  peers = gnutls_certificate_get_peers (s, &n);
  if (peers == NULL || n == 0) {
    debug ("TLS: the client sent no certificate");
    return;
  }
  if (gnutls_x509_crt_init (&crt) < 0)
    return;
  if (gnutls_x509_crt_import (crt, &peers[0], GNUTLS_X509_FMT_DER) == 0 &&
      gnutls_x509_crt_print (crt, GNUTLS_CRT_PRINT_ONELINE, &line) == 0) {
    debug ("TLS client certificate: %s", line.data);
    gnutls_free (line.data);
  }
  gnutls_x509_crt_deinit (crt);
}

/* The one line saying why handshake error R refused the client. */
static void
refusal_log (struct tls_session *t, int r)
{
  gnutls_datum_t out;

  if (t->refused_logged)
    return;
  switch (r) {
  case GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR:
    if (gnutls_certificate_verification_status_print
        (gnutls_session_get_verify_cert_status (t->s), GNUTLS_CRT_X509,
         &out, 0) == 0) {
      size_t len = strlen ((char *) out.data);

      while (len > 0 && out.data[len - 1] == ' ')      /* GnuTLS adds one */
        len--;
      server_error ("TLS: refusing the client's certificate "
                    "(--tls-verify-peer): %.*s", (int) len, out.data);
      gnutls_free (out.data);
      return;
    }
    break;
  case GNUTLS_E_NO_CERTIFICATE_FOUND:
  case GNUTLS_E_CERTIFICATE_REQUIRED:
    /* GnuTLS clients send no certificate when ours is not the CA that
     * issued theirs, so this is also the wrong-CA case.
     */
    server_error ("TLS: refusing a client that sent no certificate "
                  "issued by our CA: --tls-verify-peer requires one");
    return;
  case GNUTLS_E_TIMEDOUT:
    server_error ("TLS: client did not finish the handshake within "
                  "%u seconds: disconnecting (see --timeout)",
                  cfg.handshake_timeout);
    return;
  case GNUTLS_E_PREMATURE_TERMINATION:
  case GNUTLS_E_PULL_ERROR:
  case GNUTLS_E_PUSH_ERROR:
    server_error ("TLS: client went away during the TLS handshake");
    return;
  case GNUTLS_E_UNSUPPORTED_VERSION_PACKET:
    server_error ("TLS: client offered no TLS version that "
                  "--tls-priority allows (%s): disconnecting",
                  gnutls_strerror (r));
    return;
  case GNUTLS_E_UNEXPECTED_PACKET_LENGTH:
  case GNUTLS_E_UNEXPECTED_PACKET:
    server_error ("TLS: client sent something other than a TLS "
                  "handshake after NBD_OPT_STARTTLS (%s): disconnecting",
                  gnutls_strerror (r));
    return;
  case GNUTLS_E_FATAL_ALERT_RECEIVED:
    server_error ("TLS: client aborted the handshake with alert '%s' "
                  "(does it trust our certificate's CA?)",
                  gnutls_alert_get_name (gnutls_alert_get (t->s)));
    return;
  case GNUTLS_E_RECEIVED_ILLEGAL_PARAMETER:   /* TLS 1.3 binder */
  case GNUTLS_E_DECRYPTION_FAILED:            /* TLS 1.2 Finished */
  case GNUTLS_E_MAC_VERIFY_FAILED:
    if (t->psk_user) {
      server_error ("TLS: refusing PSK user '%s': wrong key, not the "
                    "one in the --tls-psk file (%s)", t->psk_user,
                    gnutls_strerror (r));
      return;
    }
    break;
  default:
    break;
  }
  server_error ("TLS: handshake failed: %s: disconnecting",
                gnutls_strerror (r));
}

static bool
fd_readable_now (int fd)
{
  struct pollfd p = { .fd = fd, .events = POLLIN };

  return poll (&p, 1, 0) > 0;
}

/* GnuTLS's read: from rx, refilled by one read(2) when empty. */
static ssize_t
pull (gnutls_transport_ptr_t ptr, void *buf, size_t n)
{
  struct tls_session *t = ptr;
  ssize_t r;

  if (t->rx_pos == t->rx_len) {
    if (t->nonblock && !fd_readable_now (t->fd_in)) {
      errno = EAGAIN;
      return -1;
    }
    do
      r = read (t->fd_in, t->rx, sizeof t->rx);
    while (r == -1 && errno == EINTR);
    if (r <= 0)
      return r;
    t->rx_pos = 0;
    t->rx_len = r;
  }
  r = MIN (n, t->rx_len - t->rx_pos);
  memcpy (buf, t->rx + t->rx_pos, r);
  t->rx_pos += r;
  return r;
}

/* GnuTLS's write: writev, not GnuTLS's sendmsg, so -s works on pipes
 * too (SIGPIPE is ignored by main).
 */
static ssize_t
push (gnutls_transport_ptr_t ptr, const giovec_t *iov, int iovcnt)
{
  struct tls_session *t = ptr;
  ssize_t r;

  do
    r = writev (t->fd_out, (const struct iovec *) iov, iovcnt);
  while (r == -1 && errno == EINTR);
  return r;
}

/* For the handshake's time limit: wait up to MS for input. */
static int
pull_timeout (gnutls_transport_ptr_t ptr, unsigned ms)
{
  struct tls_session *t = ptr;
  struct pollfd p = { .fd = t->fd_in, .events = POLLIN };

  if (t->rx_pos < t->rx_len)
    return 1;
  return poll (&p, 1, ms == GNUTLS_INDEFINITE_TIMEOUT ? -1 : (int) ms);
}

static int
session_setup (struct tls_session *t, int fd_in, int fd_out)
{
  int r = gnutls_init (&t->s, GNUTLS_SERVER);

  if (r < 0) {
    server_error ("TLS: cannot start a session: %s", gnutls_strerror (r));
    t->s = NULL;
    return -1;
  }
  gnutls_session_set_ptr (t->s, t);
  r = gnutls_priority_set (t->s, priority);
  if (r == 0 && psk_creds)
    r = gnutls_credentials_set (t->s, GNUTLS_CRD_PSK, psk_creds);
  else if (r == 0) {
    r = gnutls_credentials_set (t->s, GNUTLS_CRD_CERTIFICATE, x509_creds);
    if (cfg.tls_verify_peer) {
      gnutls_certificate_server_set_request (t->s, GNUTLS_CERT_REQUIRE);
      gnutls_session_set_verify_cert (t->s, NULL, 0);
    }
  }
  if (r < 0) {
    server_error ("TLS: cannot set up a session: %s", gnutls_strerror (r));
    return -1;
  }
  t->fd_in = fd_in;
  t->fd_out = fd_out;
  gnutls_transport_set_ptr (t->s, t);
  gnutls_transport_set_pull_function (t->s, pull);
  gnutls_transport_set_pull_timeout_function (t->s, pull_timeout);
  gnutls_transport_set_vec_push_function (t->s, push);
  return 0;
}

struct tls_session *
tls_session_new (int fd_in, int fd_out, int64_t timeout_ms)
{
  struct tls_session *t = calloc (1, sizeof *t);
  int r;

  if (t == NULL) {
    server_error ("TLS: out of memory starting a session");
    return NULL;
  }
  if (session_setup (t, fd_in, fd_out) == -1)
    goto out_free;
  /* --timeout bounds the whole handshake, not each read. */
  gnutls_handshake_set_timeout (t->s, timeout_ms > 0
                                ? (unsigned) MIN (timeout_ms, UINT32_MAX)
                                : 0);
  do
    r = gnutls_handshake (t->s);
  while (r < 0 && !gnutls_error_is_fatal (r));
  if (r < 0) {
    refusal_log (t, r);
    gnutls_alert_send_appropriate (t->s, r);    /* tell the client why */
    goto out_free;
  }
  t->record_max = MIN (gnutls_record_get_max_size (t->s),
                       (size_t) TLS_RECORD_MAX);
  if (t->record_max == 0)
    t->record_max = TLS_RECORD_MAX;
  if (cfg.tls_session_debug)
    session_describe (t->s);
  return t;

 out_free:
  tls_session_free (t, false);
  return NULL;
}

void
tls_session_free (struct tls_session *t, bool orderly)
{
  if (t == NULL)
    return;
  if (t->s) {
    /* close_notify, without waiting for the client's. */
    if (orderly)
      gnutls_bye (t->s, GNUTLS_SHUT_WR);
    gnutls_deinit (t->s);
  }
  free (t);
}

bool
tls_pending (struct tls_session *t)
{
  return t->rx_pos < t->rx_len || gnutls_record_check_pending (t->s) > 0;
}

/* A GnuTLS record error R as errno, for the caller's usual paths. */
static int
errno_of (int r)
{
  switch (r) {
  case GNUTLS_E_PUSH_ERROR:
  case GNUTLS_E_PULL_ERROR:
    return errno ? errno : EPIPE;
  case GNUTLS_E_TIMEDOUT:
    return ETIMEDOUT;
  default:
    return EIO;
  }
}

static ssize_t
record_recv (struct tls_session *t, void *buf, size_t n)
{
  ssize_t r;

  do
    r = gnutls_record_recv (t->s, buf, n);
  while (r == GNUTLS_E_INTERRUPTED || (r == GNUTLS_E_AGAIN && !t->nonblock));
  if (r >= 0)
    return r;
  if (r == GNUTLS_E_AGAIN) {
    errno = EAGAIN;
    return -1;
  }
  /* A client that closes without close_notify between requests is how
   * most of them leave: the same as end of stream.
   */
  if (r == GNUTLS_E_PREMATURE_TERMINATION)
    return 0;
  debug ("TLS: receiving: %s", gnutls_strerror (r));
  errno = errno_of (r);
  return -1;
}

/* Fill IOV with what has arrived; only the first record may be waited
 * for (not even that with NONBLOCK), so a caller holding batched
 * replies learns when the next read would block.
 */
ssize_t
tls_readv (struct tls_session *t, const struct iovec *iov, int iovcnt,
           bool nonblock)
{
  ssize_t total = 0;

  t->nonblock = nonblock;
  for (int i = 0; i < iovcnt; i++) {
    char *p = iov[i].iov_base;
    size_t left = iov[i].iov_len;

    while (left > 0) {
      ssize_t r = record_recv (t, p, left);

      if (r == -1 && errno == EAGAIN && total > 0)
        return total;
      if (r <= 0)
        return total > 0 ? total : r;
      total += r;
      p += r;
      left -= r;
      t->nonblock = true;
    }
  }
  return total;
}

static int
send_all (struct tls_session *t, const char *p, size_t n)
{
  while (n > 0) {
    ssize_t r = gnutls_record_send (t->s, p, n);

    if (r == GNUTLS_E_INTERRUPTED || r == GNUTLS_E_AGAIN)
      continue;
    if (r < 0) {
      debug ("TLS: sending: %s", gnutls_strerror (r));
      errno = errno_of (r);
      return -1;
    }
    p += r;
    n -= r;
  }
  return 0;
}

/* Pieces smaller than a record (reply headers, small replies) gather in
 * the stage so a header and its data share a record; whole records of a
 * large piece go straight from the caller's memory, without a copy.
 */
int
tls_writev (struct tls_session *t, const struct iovec *iov, int iovcnt)
{
  size_t staged = 0, max = t->record_max;

  for (int i = 0; i < iovcnt; i++) {
    const char *p = iov[i].iov_base;
    size_t len = iov[i].iov_len;

    while (len > 0) {
      size_t k;

      if (staged == 0 && len >= max) {
        k = len - len % max;
        if (send_all (t, p, k) == -1)
          return -1;
      }
      else {
        k = MIN (len, max - staged);
        memcpy (t->stage + staged, p, k);
        staged += k;
        if (staged == max && send_all (t, t->stage, max) == -1)
          return -1;
        if (staged == max)
          staged = 0;
      }
      p += k;
      len -= k;
    }
  }
  return staged ? send_all (t, t->stage, staged) : 0;
}
