/* nbdsrv: the fixed newstyle handshake (protocol-rules.md §1).
 *
 * Options are handled one at a time (H-8).  Every option's payload is
 * read in full before it is answered, so an error reply never leaves
 * the stream out of step (H-3 beyond, H-5).  Errors carry a short text
 * saying what the client should do (§1.2 beyond).
 */
#include "config.h"

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "internal.h"
#include "connection.h"
#include "metrics.h"
#include "protocol.h"

/* H-6: options a client may send before GO/EXPORT_NAME. */
#define OPTION_BUDGET 32

/* Option payloads up to this size are buffered; larger ones (still
 * within H-5's limit) are read and dropped and answered INVALID, so a
 * client cannot make the server hold 64 MiB per connection.
 */
#define OPTION_MAX_BUFFERED (1024 * 1024)

static int
send_all (struct connection *conn, const void *buf, size_t len)
{
  struct iovec iov = { (void *) buf, len };

  return conn_writev (conn, &iov, 1);
}

/* One option reply: header plus up to two data pieces. */
static int
send_reply2 (struct connection *conn, uint32_t option, uint32_t reply,
             const void *d1, size_t l1, const void *d2, size_t l2)
{
  struct nbd_fixed_new_option_reply hdr = {
    .magic = htobe64 (NBD_OPT_REPLY_MAGIC),
    .option = htobe32 (option),
    .reply = htobe32 (reply),
    .length = htobe32 (l1 + l2),
  };
  struct iovec iov[3] = {
    { &hdr, sizeof hdr }, { (void *) d1, l1 }, { (void *) d2, l2 },
  };

  if (conn_writev (conn, iov, 3) == -1) {
    debug ("sending option reply: %m");
    return -1;
  }
  return 0;
}

static int
send_ack (struct connection *conn, uint32_t option)
{
  return send_reply2 (conn, option, NBD_REP_ACK, NULL, 0, NULL, 0);
}

/* An error reply whose data is a message for the user. */
static int
send_error (struct connection *conn, uint32_t option, uint32_t reply,
            const char *fmt, ...) ATTRIBUTE_PRINTF (4, 5);
static int
send_error (struct connection *conn, uint32_t option, uint32_t reply,
            const char *fmt, ...)
{
  char msg[512];
  va_list args;
  int n;

  va_start (args, fmt);
  n = vsnprintf (msg, sizeof msg, fmt, args);
  va_end (args);
  if (n < 0)
    n = 0;
  if ((size_t) n >= sizeof msg)
    n = sizeof msg - 1;
  debug ("option %" PRIu32 ": error %#" PRIx32 ": %s", option, reply, msg);
  return send_reply2 (conn, option, reply, msg, n, NULL, 0);
}

/* H-7: a string from the client. */
static bool
string_ok (const char *s, size_t len)
{
  return len <= NBD_MAX_STRING && memchr (s, 0, len) == NULL;
}

static int
send_info_export (struct connection *conn, uint32_t option)
{
  struct {
    uint16_t type;
    uint64_t size;
    uint16_t eflags;
  } __attribute__ ((__packed__)) info = {
    htobe16 (NBD_INFO_EXPORT),
    htobe64 (conn->exp.caps.size),
    htobe16 (conn->exp.caps.eflags),
  };

  return send_reply2 (conn, option, NBD_REP_INFO, &info, sizeof info,
                      NULL, 0);
}

static int
send_info_string (struct connection *conn, uint32_t option, uint16_t type,
                  const char *s)
{
  uint16_t be = htobe16 (type);

  return send_reply2 (conn, option, NBD_REP_INFO, &be, 2, s, strlen (s));
}

static int
send_info_block_size (struct connection *conn, uint32_t option)
{
  const struct export_caps *c = &conn->exp.caps;
  struct {
    uint16_t type;
    uint32_t min, pref, max;
  } __attribute__ ((__packed__)) info = {
    htobe16 (NBD_INFO_BLOCK_SIZE),
    htobe32 (c->block_min), htobe32 (c->block_pref), htobe32 (c->block_max),
  };

  return send_reply2 (conn, option, NBD_REP_INFO, &info, sizeof info,
                      NULL, 0);
}

/* Open NAME for INFO, GO or EXPORT_NAME.  An empty name means the
 * plugin's default export.  H-12: a different export than the one
 * SET_META_CONTEXT named drops the selected contexts.
 */
static int
export_open (struct connection *conn, const char *name)
{
  const char *resolved = name;

  if (conn->meta_export == NULL || strcmp (conn->meta_export, name) != 0)
    conn->meta_ids = 0;
  if (*name == '\0') {
    resolved = stack_default_export (cfg.readonly);
    if (resolved == NULL)
      return -1;
  }
  if (backend_open (&conn->exp, resolved, cfg.readonly) == -1)
    return -1;
  if (conn->structured)
    conn->exp.caps.eflags |= NBD_FLAG_SEND_DF;      /* X-6 */
  return 0;
}

/* NBD_OPT_EXPORT_NAME: cannot return an error, so failures disconnect. */
static int
opt_export_name (struct connection *conn, const char *data, uint32_t len)
{
  static const char zeroes[124];
  struct {
    uint64_t size;
    uint16_t eflags;
  } __attribute__ ((__packed__)) reply;
  char *name;

  if (!string_ok (data, len)) {
    server_error ("client sent an invalid export name: disconnecting");
    conn->hs_fail = MH_EXPORT;
    return -1;
  }
  name = strndup (data, len);
  if (name == NULL || export_open (conn, name) == -1) {
    conn->hs_fail = MH_EXPORT;
    server_error ("cannot open export '%s': disconnecting",
                  name ? name : "");
    free (name);
    return -1;
  }
  free (name);
  reply.size = htobe64 (conn->exp.caps.size);
  reply.eflags = htobe16 (conn->exp.caps.eflags);
  if (send_all (conn, &reply, sizeof reply) == -1 ||
      (!conn->no_zeroes && send_all (conn, zeroes, sizeof zeroes) == -1))
    return -1;
  return 1;
}

/* One requested NBD_INFO_* reply (§1.4 step 7).  NAME is the name the
 * client asked for.
 */
static int
send_info (struct connection *conn, uint32_t option, uint16_t type,
           const char *name)
{
  struct export *exp = &conn->exp;
  const char *desc;

  switch (type) {
  case NBD_INFO_NAME:
    return send_info_string (conn, option, NBD_INFO_NAME,
                             *name ? name : exp->name);
  case NBD_INFO_DESCRIPTION:
    desc = backend_export_description (exp);
    if (desc == NULL)
      return 0;
    return send_info_string (conn, option, NBD_INFO_DESCRIPTION, desc);
  case NBD_INFO_BLOCK_SIZE:
    if (exp->caps.block_min == 0)
      return 0;
    /* V-16: the client asked for the sizes, so it must honour them. */
    if (option == NBD_OPT_GO && exp->caps.block_min > 1)
      conn->align = exp->caps.block_min;
    return send_info_block_size (conn, option);
  default:                      /* EXPORT again, or unknown: ignored */
    return 0;
  }
}

/* NBD_OPT_INFO and NBD_OPT_GO, checked in the order of §1.4. */
static int
opt_info_go (struct connection *conn, uint32_t option,
             const char *data, uint32_t len)
{
  uint32_t namelen;
  uint16_t nreqs;
  char name[NBD_MAX_STRING + 1];

  if (len < 6)
    return send_error (conn, option, NBD_REP_ERR_INVALID,
                       "option payload of %" PRIu32 " bytes is too short "
                       "for a name length and request count", len);
  memcpy (&namelen, data, 4);
  namelen = be32toh (namelen);
  if (namelen > len - 6)
    return send_error (conn, option, NBD_REP_ERR_INVALID,
                       "export name length %" PRIu32 " does not fit in "
                       "the option payload", namelen);
  memcpy (&nreqs, data + 4 + namelen, 2);
  nreqs = be16toh (nreqs);
  if (len != 4 + namelen + 2 + 2 * (uint32_t) nreqs)
    return send_error (conn, option, NBD_REP_ERR_INVALID,
                       "option payload is %" PRIu32 " bytes, but %u info "
                       "requests need %" PRIu32, len, nreqs,
                       4 + namelen + 2 + 2 * (uint32_t) nreqs);
  if (!string_ok (data + 4, namelen))
    return send_error (conn, option, NBD_REP_ERR_INVALID,
                       "export name is longer than 4096 bytes or "
                       "contains a NUL byte");
  memcpy (name, data + 4, namelen);
  name[namelen] = '\0';

  thread_clear_error ();
  if (export_open (conn, name) == -1) {
    struct thread_state *ts = thread_state ();

    return send_error (conn, option, NBD_REP_ERR_UNKNOWN,
                       "cannot open export '%s'%s%.*s", name,
                       ts->last_error_len ? ": " : "",
                       (int) ts->last_error_len, ts->last_error);
  }
  if (send_info_export (conn, option) == -1)
    return -1;
  for (unsigned i = 0; i < nreqs; i++) {
    uint16_t type;

    memcpy (&type, data + 4 + namelen + 2 + 2 * i, 2);
    if (send_info (conn, option, be16toh (type), name) == -1)
      return -1;
  }
  if (send_ack (conn, option) == -1)
    return -1;
  if (option == NBD_OPT_GO)
    return 1;
  backend_close (&conn->exp);
  return 0;
}

static int
opt_list (struct connection *conn, uint32_t len, unsigned *budget)
{
  struct nbdkit_exports *exports;
  int r = 0;

  if (len != 0)
    return send_error (conn, NBD_OPT_LIST, NBD_REP_ERR_INVALID,
                       "NBD_OPT_LIST takes no data");
  if (conn->listed)
    return send_error (conn, NBD_OPT_LIST, NBD_REP_ERR_INVALID,
                       "the export list was already sent on this "
                       "connection");
  conn->listed = true;
  exports = exports_new ();
  if (exports == NULL)
    return send_error (conn, NBD_OPT_LIST, NBD_REP_ERR_TOO_BIG,
                       "out of memory building the export list");
  if (stack_list_exports (cfg.readonly, exports) == -1) {
    exports_free (exports);
    return send_error (conn, NBD_OPT_LIST, NBD_REP_ERR_PLATFORM,
                       "the plugin could not list its exports");
  }
  if (exports->use_default) {
    const char *def = stack_default_export (cfg.readonly);

    if (def && nbdkit_add_export (exports, def, NULL) == -1)
      r = -1;
  }
  for (size_t i = 0; r == 0 && i < exports->len; i++) {
    const struct export_entry *e = &exports->ptr[i];
    uint32_t nlen = strlen (e->name);
    size_t dlen = e->description ? strlen (e->description) : 0;
    char *buf = malloc (4 + nlen + dlen);

    if (buf == NULL) {
      r = -1;
      break;
    }
    nlen = htobe32 (nlen);
    memcpy (buf, &nlen, 4);
    nlen = be32toh (nlen);
    memcpy (buf + 4, e->name, nlen);
    if (dlen)
      memcpy (buf + 4 + nlen, e->description, dlen);
    r = send_reply2 (conn, NBD_OPT_LIST, NBD_REP_SERVER,
                     buf, 4 + nlen + dlen, NULL, 0);
    free (buf);
  }
  *budget += OPTION_BUDGET * exports->len;
  exports_free (exports);
  return r == -1 ? -1 : send_ack (conn, NBD_OPT_LIST);
}

static int
send_meta_context (struct connection *conn, uint32_t option, uint32_t id,
                   const char *name)
{
  uint32_t be = htobe32 (id);

  return send_reply2 (conn, option, NBD_REP_META_CONTEXT,
                      &be, 4, name, strlen (name));
}

/* Answer one query: every offered context it matches, each once in
 * SET, which selects it (id as the reply), while LIST answers id 0.
 */
static int
meta_query (struct connection *conn, uint32_t option, const char *q,
            uint32_t qlen, const struct meta_offer *offers, size_t n)
{
  bool set = option == NBD_OPT_SET_META_CONTEXT;

  for (size_t i = 0; i < n; i++) {
    uint32_t bit = UINT32_C (1) << offers[i].id;

    if (!meta_matches (offers[i].name, q, qlen, !set) ||
        (set && (conn->meta_ids & bit)))
      continue;
    if (send_meta_context (conn, option, set ? offers[i].id : 0,
                           offers[i].name) == -1)
      return -1;
    if (set)
      conn->meta_ids |= bit;
  }
  return 0;
}

/* NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT, §1.6. */
static int
opt_meta_context (struct connection *conn, uint32_t option,
                  const char *data, uint32_t len)
{
  bool set = option == NBD_OPT_SET_META_CONTEXT;
  uint32_t namelen, nqueries, pos;
  struct meta_offer offers[META_MAX];
  size_t noffers = meta_offered (offers, META_MAX);

  if (set && !conn->structured)
    return send_error (conn, option, NBD_REP_ERR_INVALID,
                       "negotiate structured replies before "
                       "NBD_OPT_SET_META_CONTEXT");
  if (len < 8)
    return send_error (conn, option, NBD_REP_ERR_INVALID,
                       "option payload of %" PRIu32 " bytes is too short",
                       len);
  memcpy (&namelen, data, 4);
  namelen = be32toh (namelen);
  if (namelen > len - 8 || !string_ok (data + 4, namelen))
    return send_error (conn, option, NBD_REP_ERR_INVALID,
                       "export name does not fit in the payload, is "
                       "longer than 4096 bytes or contains a NUL byte");
  if (set) {
    char *name = strndup (data + 4, namelen);

    if (name == NULL)
      return -1;
    free (conn->meta_export);
    conn->meta_export = name;
  }
  memcpy (&nqueries, data + 4 + namelen, 4);
  nqueries = be32toh (nqueries);
  if (set)
    conn->meta_ids = 0;
  for (size_t i = 0; nqueries == 0 && !set && i < noffers; i++)
    if (send_meta_context (conn, option, 0, offers[i].name) == -1)
      return -1;

  pos = 4 + namelen + 4;
  for (uint32_t i = 0; i < nqueries; i++) {
    uint32_t qlen;
    const char *q;

    if (len - pos < 4)
      return send_error (conn, option, NBD_REP_ERR_INVALID,
                         "query %" PRIu32 " of %" PRIu32 " is missing",
                         i + 1, nqueries);
    memcpy (&qlen, data + pos, 4);
    qlen = be32toh (qlen);
    pos += 4;
    if (qlen > len - pos || !string_ok (data + pos, qlen))
      return send_error (conn, option, NBD_REP_ERR_INVALID,
                         "query %" PRIu32 " does not fit in the payload, "
                         "is longer than 4096 bytes or contains a NUL",
                         i + 1);
    q = data + pos;
    pos += qlen;
    if (meta_query (conn, option, q, qlen, offers, noffers) == -1)
      return -1;
  }
  return send_ack (conn, option);
}

/* NBD_OPT_EXTENDED_HEADERS (X-1): 64-bit requests and replies.  They
 * imply structured replies (X-2), so --no-sr refuses them too.
 */
static int
opt_extended_headers (struct connection *conn, uint32_t len)
{
  uint32_t option = NBD_OPT_EXTENDED_HEADERS;

  if (len != 0)
    return send_error (conn, option, NBD_REP_ERR_INVALID,
                       "NBD_OPT_EXTENDED_HEADERS takes no data");
  if (cfg.no_sr)
    return send_error (conn, option, NBD_REP_ERR_UNSUP,
                       "extended headers need structured replies, which "
                       "are disabled (--no-sr)");
  if (conn->extended)
    return send_error (conn, option, NBD_REP_ERR_INVALID,
                       "extended headers are already on");
  conn->extended = true;
  conn->structured = true;
  return send_ack (conn, option);
}

/* Handle one option.  Returns 1 when transmission starts, 0 to go on
 * haggling, -1 to disconnect.
 */
static int
option_dispatch (struct connection *conn, uint32_t option,
                 const char *data, uint32_t len, bool fixed,
                 unsigned *budget)
{
  if (!fixed && option != NBD_OPT_EXPORT_NAME)    /* H-3 */
    return send_error (conn, option, NBD_REP_ERR_INVALID,
                       "only NBD_OPT_EXPORT_NAME is allowed without "
                       "fixed newstyle");
  switch (option) {
  case NBD_OPT_EXPORT_NAME:
    if (conn->extended) {                                     /* X-3 */
      conn->hs_fail = MH_BAD_OPTION;
      server_error ("client sent NBD_OPT_EXPORT_NAME after extended "
                    "headers, which need NBD_OPT_GO: disconnecting");
      return -1;
    }
    return opt_export_name (conn, data, len);
  case NBD_OPT_ABORT:
    conn->hs_fail = MH_ABORT;
    send_ack (conn, option);
    conn_set_status (conn, CONN_CLIENT_DONE);
    return -1;
  case NBD_OPT_LIST:
    return opt_list (conn, len, budget);
  case NBD_OPT_INFO:
  case NBD_OPT_GO:
    return opt_info_go (conn, option, data, len);
  case NBD_OPT_STRUCTURED_REPLY:
    if (len != 0)
      return send_error (conn, option, NBD_REP_ERR_INVALID,
                         "NBD_OPT_STRUCTURED_REPLY takes no data");
    if (cfg.no_sr)
      return send_error (conn, option, NBD_REP_ERR_UNSUP,
                         "structured replies are disabled (--no-sr)");
    if (conn->extended)                                       /* X-2 */
      return send_error (conn, option, NBD_REP_ERR_EXT_HEADER_REQD,
                         "extended headers are on, and they cannot be "
                         "turned back into structured replies");
    if (conn->structured)
      return send_error (conn, option, NBD_REP_ERR_INVALID,
                         "structured replies are already on");
    conn->structured = true;
    return send_ack (conn, option);
  case NBD_OPT_EXTENDED_HEADERS:
    return opt_extended_headers (conn, len);
  case NBD_OPT_LIST_META_CONTEXT:
  case NBD_OPT_SET_META_CONTEXT:
    if (cfg.no_mc)
      break;
    return opt_meta_context (conn, option, data, len);
  default:
    break;
  }
  return send_error (conn, option, NBD_REP_ERR_UNSUP,
                     "option %" PRIu32 " is not supported by this server",
                     option);
}

/* NBD_OPT_STARTTLS accepted: ACK in plain text, then the TLS
 * handshake.  H-10, X-5: what was negotiated before is forgotten, and
 * the client negotiates again under TLS.
 */
static int
opt_starttls (struct connection *conn)
{
  if (send_ack (conn, NBD_OPT_STARTTLS) == -1 || conn_starttls (conn) == -1)
    return -1;
  conn->structured = false;
  conn->extended = false;                                       /* X-5 */
  conn->meta_ids = 0;
  free (conn->meta_export);
  conn->meta_export = NULL;
  conn->listed = false;
  debug ("TLS is running: the client negotiates again");
  return 0;
}

static enum tls_option_mode
tls_mode (void)
{
  switch (cfg.tls) {
  case TLS_ON: return TLS_MODE_ON;
  case TLS_REQUIRE: return TLS_MODE_REQUIRE;
  default: return TLS_MODE_OFF;
  }
}

/* The STARTTLS rules (option-tls.c) for one option whose header was
 * just read.  Returns 2 when they do not apply, else as option_read.
 */
static int
option_tls (struct connection *conn, uint32_t option, uint32_t len)
{
  struct tls_option_state st = {
    .mode = tls_mode (),
    .active = conn->tls != NULL,
    .pending = conn->rlen - conn->rpos,
  };
  uint32_t reply;
  const char *why;

  switch (option_tls_check (&st, option, len, &reply, &why)) {
  case TLS_VERDICT_PASS:
    return 2;
  case TLS_VERDICT_START:
    return opt_starttls (conn);
  case TLS_VERDICT_DISCONNECT:
    conn->hs_fail = MH_TLS;
    server_error ("%s: disconnecting", why);
    return -1;
  case TLS_VERDICT_REPLY:
    break;
  }
  if (conn_skip (conn, len) == -1)
    return -1;
  /* One line per refused plain-text client, not one per option. */
  if (reply == NBD_REP_ERR_TLS_REQD && !conn->tls_refusal_logged) {
    server_error ("client sent option %" PRIu32 " without TLS, which "
                  "--tls=require needs: answering NBD_REP_ERR_TLS_REQD",
                  option);
    conn->tls_refusal_logged = true;
  }
  return send_error (conn, option, reply, "%s", why);
}

/* Read one option's payload, or drop it if it is too large to keep. */
static int
option_read (struct connection *conn, uint32_t option, uint32_t len,
             bool fixed, unsigned *budget)
{
  char *data;
  int r;

  /* H-3 first: a client without fixed newstyle cannot start TLS. */
  if (fixed || option == NBD_OPT_EXPORT_NAME) {
    r = option_tls (conn, option, len);
    if (r != 2)
      return r;
  }
  if (len > OPTION_MAX_BUFFERED) {
    bool known = option >= NBD_OPT_EXPORT_NAME &&
      option <= NBD_OPT_EXTENDED_HEADERS && option != 4;

    if (conn_skip (conn, len) == -1)
      return -1;
    if (fixed && !known)
      return send_error (conn, option, NBD_REP_ERR_UNSUP,
                         "option %" PRIu32 " is not supported by this "
                         "server", option);
    return send_error (conn, option, NBD_REP_ERR_INVALID,
                       "option payload of %" PRIu32 " bytes is too large",
                       len);
  }
  data = malloc (len + 1);
  if (data == NULL)
    return -1;
  if (conn_read (conn, data, len) == -1) {
    free (data);
    return -1;
  }
  data[len] = '\0';
  r = option_dispatch (conn, option, data, len, fixed, budget);
  free (data);
  return r;
}

static uint16_t
handshake_gflags (void)
{
  return (NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES)
    & cfg.mask_handshake;                                   /* H-1 */
}

/* -o: the oldstyle greeting (protocol rules, section 1): the default
 * export's size and flags at once, no options, then transmission.
 * Without options there are no structured replies, meta contexts or
 * export names, as in nbdkit -o.
 */
static int
handshake_oldstyle (struct connection *conn)
{
  struct {
    uint64_t magic, version, size;
    uint16_t gflags, eflags;
    char zeroes[124];
  } __attribute__ ((__packed__)) greeting = {
    .magic = htobe64 (NBD_MAGIC),
    .version = htobe64 (NBD_OLD_VERSION),
  };

  if (export_open (conn, "") == -1) {
    server_error ("cannot open the default export: disconnecting");
    return -1;
  }
  greeting.size = htobe64 (conn->exp.caps.size);
  greeting.eflags = htobe16 (conn->exp.caps.eflags);
  return send_all (conn, &greeting, sizeof greeting);
}

/* The server speaks first.  Returns 0 when the client speaks next (the
 * connection may park until it does), 1 when transmission starts (the
 * oldstyle handshake is all the server's), -1 to close.
 */
int
handshake_start (struct connection *conn)
{
  struct {
    uint64_t magic, version;
    uint16_t gflags;
  } __attribute__ ((__packed__)) greeting;

  if (cfg.oldstyle)
    return handshake_oldstyle (conn) == -1 ? -1 : 1;
  greeting.magic = htobe64 (NBD_MAGIC);
  greeting.version = htobe64 (NBD_NEW_VERSION);
  greeting.gflags = htobe16 (handshake_gflags ());
  return send_all (conn, &greeting, sizeof greeting);
}

/* After handshake_start: the client's flags and options. */
int
handshake (struct connection *conn)
{
  uint16_t gflags = handshake_gflags ();
  uint32_t cflags;
  unsigned budget = OPTION_BUDGET;

  if (conn_read (conn, &cflags, 4) == -1)
    return -1;
  cflags = be32toh (cflags);
  if (cflags & ~(uint32_t) gflags) {                          /* H-2 */
    conn->hs_fail = MH_BAD_FLAGS;
    server_error ("client flags %#" PRIx32 " include flags the server "
                  "did not offer (%#x): disconnecting", cflags, gflags);
    return -1;
  }
  conn->no_zeroes = cflags & NBD_FLAG_C_NO_ZEROES;

  for (unsigned used = 0;; used++) {
    struct nbd_new_option opt;
    int r;

    if (used >= budget) {                                     /* H-6 */
      conn->hs_fail = MH_TOO_MANY_OPTIONS;
      server_error ("client spent too much time negotiating without "
                    "selecting an export: disconnecting");
      return -1;
    }
    if (conn_read (conn, &opt, sizeof opt) == -1)
      return -1;
    if (be64toh (opt.magic) != NBD_NEW_VERSION) {             /* H-4 */
      conn->hs_fail = MH_BAD_OPTION;
      server_error ("client sent an option with a bad magic number: "
                    "disconnecting");
      return -1;
    }
    opt.option = be32toh (opt.option);
    opt.length = be32toh (opt.length);
    if (opt.length > NBD_MAX_REQUEST_SIZE) {                  /* H-5 */
      conn->hs_fail = MH_BAD_OPTION;
      server_error ("client sent an option of %" PRIu32 " bytes, more "
                    "than the limit of %d: disconnecting",
                    opt.length, NBD_MAX_REQUEST_SIZE);
      return -1;
    }
    debug ("option %" PRIu32 " with %" PRIu32 " bytes of data",
           opt.option, opt.length);
    r = option_read (conn, opt.option, opt.length,
                     cflags & NBD_FLAG_C_FIXED_NEWSTYLE, &budget);
    if (r == 1 && tls_mode () == TLS_MODE_REQUIRE && conn->tls == NULL) {
      /* H-11: unreachable through option_tls; kept as a last guard. */
      conn->hs_fail = MH_TLS;
      server_error ("client reached transmission without TLS under "
                    "--tls=require: disconnecting");
      return -1;
    }
    if (r != 0)
      return r == 1 ? 0 : -1;
  }
}
