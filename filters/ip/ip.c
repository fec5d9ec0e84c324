/* nbdsrv ip filter: admit or refuse a client by where it connects
 * from: IP address or network, Unix socket peer (process, user,
 * group), vsock peer, or the security label of its socket.
 *
 * A client matching any allow rule is admitted; else one matching any
 * deny rule is refused; else it is admitted.  The check runs at
 * preconnect, before the handshake.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <linux/vm_sockets.h>

#include <nbdkit-filter.h>

enum rule_kind {
  RULE_ANY, RULE_ANYV4, RULE_ANYV6, RULE_ANYUNIX, RULE_ANYVSOCK,
  RULE_IPV4, RULE_IPV6, RULE_PID, RULE_UID, RULE_GID,
  RULE_VSOCK_CID, RULE_VSOCK_PORT, RULE_SECURITY,
};

/* nbdkit 1.32 has no nbdkit_peer_security_context: weak, so that this
 * .so still loads there, where security: rules are refused at config.
 */
#pragma weak nbdkit_peer_security_context

struct rule {
  enum rule_kind kind;
  union {
    struct { struct in_addr addr; unsigned bits; } v4;
    struct { struct in6_addr addr; unsigned bits; } v6;
    int64_t id;                 /* pid, uid, gid, cid or port */
    char *label;                /* owned: security: */
  } u;
};

struct rule_list {
  struct rule *rules;           /* owned */
  size_t n;
};

static struct rule_list allow, deny;
static bool need_label;          /* a security: rule exists */

static void
rule_list_free (struct rule_list *list)
{
  for (size_t i = 0; i < list->n; ++i)
    if (list->rules[i].kind == RULE_SECURITY)
      free (list->rules[i].u.label);
  free (list->rules);
}

static void
ip_unload (void)
{
  rule_list_free (&allow);
  rule_list_free (&deny);
}

static int
rule_list_add (struct rule_list *list, const struct rule *r)
{
  struct rule *p = reallocarray (list->rules, list->n + 1, sizeof *p);

  if (p == NULL) {
    nbdkit_error ("ip: realloc: %m");
    return -1;
  }
  list->rules = p;
  list->rules[list->n++] = *r;
  return 0;
}

static const struct { const char *word; enum rule_kind kind; } keywords[] = {
  { "all", RULE_ANY }, { "any", RULE_ANY },
  { "allipv4", RULE_ANYV4 }, { "anyipv4", RULE_ANYV4 },
  { "allipv6", RULE_ANYV6 }, { "anyipv6", RULE_ANYV6 },
  { "allunix", RULE_ANYUNIX }, { "anyunix", RULE_ANYUNIX },
  { "allvsock", RULE_ANYVSOCK }, { "anyvsock", RULE_ANYVSOCK },
};

static const struct { const char *prefix; enum rule_kind kind; } id_rules[] = {
  { "pid:", RULE_PID }, { "uid:", RULE_UID }, { "gid:", RULE_GID },
  { "vsock-cid:", RULE_VSOCK_CID }, { "vsock-port:", RULE_VSOCK_PORT },
};

/* ITEM is "ADDRESS" or "ADDRESS/BITS", IPv4 or IPv6. */
static int
rule_parse_address (const char *key, const char *item, struct rule *r)
{
  char addr[INET6_ADDRSTRLEN + 1];
  const char *slash = strchr (item, '/');
  size_t len = slash ? (size_t) (slash - item) : strlen (item);
  unsigned bits, max;

  if (len >= sizeof addr)
    return -1;
  memcpy (addr, item, len);
  addr[len] = '\0';
  if (inet_pton (AF_INET, addr, &r->u.v4.addr) == 1) {
    r->kind = RULE_IPV4;
    max = 32;
  }
  else if (inet_pton (AF_INET6, addr, &r->u.v6.addr) == 1) {
    r->kind = RULE_IPV6;
    max = 128;
  }
  else
    return -1;
  bits = max;
  if (slash) {
    char *end;
    errno = 0;
    bits = strtoul (slash + 1, &end, 10);
    if (errno || end == slash + 1 || *end || bits > max) {
      nbdkit_error ("ip: %s=%s: network prefix /%s is not a number from 0 "
                    "to %u", key, item, slash + 1, max);
      return -2;
    }
  }
  if (r->kind == RULE_IPV4)
    r->u.v4.bits = bits;
  else
    r->u.v6.bits = bits;
  return 0;
}

static int
rule_parse (const char *key, const char *item, struct rule *r)
{
  size_t n;
  int ret;

  for (size_t i = 0; i < sizeof keywords / sizeof keywords[0]; ++i) {
    if (strcmp (item, keywords[i].word) == 0) {
      r->kind = keywords[i].kind;
      return 0;
    }
  }
  for (size_t i = 0; i < sizeof id_rules / sizeof id_rules[0]; ++i) {
    n = strlen (id_rules[i].prefix);
    if (strncmp (item, id_rules[i].prefix, n) == 0) {
      r->kind = id_rules[i].kind;
      return nbdkit_parse_int64_t (id_rules[i].prefix, item + n, &r->u.id);
    }
  }
  if (strncmp (item, "security:", 9) == 0) {
    if (nbdkit_peer_security_context == NULL) {
      nbdkit_error ("ip: %s=%s: this server cannot read security labels "
                    "(it lacks nbdkit_peer_security_context): use nbdsrv "
                    "or nbdkit >= 1.36", key, item);
      return -1;
    }
    r->kind = RULE_SECURITY;
    need_label = true;
    r->u.label = strdup (item + 9);
    if (r->u.label == NULL) {
      nbdkit_error ("ip: strdup: %m");
      return -1;
    }
    return 0;
  }
  ret = rule_parse_address (key, item, r);
  if (ret == -1)
    nbdkit_error ("ip: don't know how to parse rule '%s' in %s=: use all, "
                  "anyipv4, anyipv6, anyunix, anyvsock, an IP address or "
                  "network (A.B.C.D/NN), pid:, uid:, gid:, vsock-cid:, "
                  "vsock-port: or security:", item, key);
  return ret < 0 ? -1 : 0;
}

/* VALUE is a comma-separated list of rules. */
static int
rule_list_parse (const char *key, const char *value, struct rule_list *list)
{
  char *copy = strdup (value), *item, *save = NULL;
  struct rule r;
  int ret = 0;

  if (copy == NULL) {
    nbdkit_error ("ip: strdup: %m");
    return -1;
  }
  for (item = strtok_r (copy, ",", &save); item && ret == 0;
       item = strtok_r (NULL, ",", &save)) {
    memset (&r, 0, sizeof r);
    ret = rule_parse (key, item, &r);
    if (ret == 0) {
      ret = rule_list_add (list, &r);
      if (ret == -1 && r.kind == RULE_SECURITY)
        free (r.u.label);
    }
  }
  free (copy);
  return ret;
}

static int
ip_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
           const char *key, const char *value)
{
  if (strcmp (key, "allow") == 0)
    return rule_list_parse (key, value, &allow);
  if (strcmp (key, "deny") == 0)
    return rule_list_parse (key, value, &deny);
  return next (nxdata, key, value);
}

#define ip_config_help \
  "allow=addr[,addr...]           Set allow list.\n" \
  "deny=addr[,addr...]            Set deny list."

static bool
prefix_match (const unsigned char *a, const unsigned char *b, unsigned bits)
{
  unsigned bytes = bits / 8, rest = bits % 8;

  if (memcmp (a, b, bytes) != 0)
    return false;
  if (rest == 0)
    return true;
  return ((a[bytes] ^ b[bytes]) & (0xff << (8 - rest))) == 0;
}

/* The client, as far as the rules need it. */
struct peer {
  struct sockaddr_storage addr;
  int64_t pid, uid, gid;        /* Unix sockets only; -1 if unknown */
  char *label;                  /* owned; NULL if it has none */
};

static bool
rule_matches (const struct rule *r, const struct peer *p)
{
  const struct sockaddr_in *sin = (const void *) &p->addr;
  const struct sockaddr_in6 *sin6 = (const void *) &p->addr;
  const struct sockaddr_vm *svm = (const void *) &p->addr;
  int family = p->addr.ss_family;

  switch (r->kind) {
  case RULE_ANY: return true;
  case RULE_ANYV4: return family == AF_INET;
  case RULE_ANYV6: return family == AF_INET6;
  case RULE_ANYUNIX: return family == AF_UNIX;
  case RULE_ANYVSOCK: return family == AF_VSOCK;
  case RULE_IPV4:
    return family == AF_INET
      && prefix_match ((const void *) &sin->sin_addr,
                       (const void *) &r->u.v4.addr, r->u.v4.bits);
  case RULE_IPV6:
    return family == AF_INET6
      && prefix_match ((const void *) &sin6->sin6_addr,
                       (const void *) &r->u.v6.addr, r->u.v6.bits);
  case RULE_PID: return family == AF_UNIX && p->pid == r->u.id;
  case RULE_UID: return family == AF_UNIX && p->uid == r->u.id;
  case RULE_GID: return family == AF_UNIX && p->gid == r->u.id;
  case RULE_VSOCK_CID:
    return family == AF_VSOCK && svm->svm_cid == r->u.id;
  case RULE_VSOCK_PORT:
    return family == AF_VSOCK && svm->svm_port == r->u.id;
  case RULE_SECURITY:
    return p->label && strcmp (p->label, r->u.label) == 0;
  }
  return false;
}

static bool
rule_list_matches (const struct rule_list *list, const struct peer *p)
{
  for (size_t i = 0; i < list->n; ++i)
    if (rule_matches (&list->rules[i], p))
      return true;
  return false;
}

static int
ip_preconnect (nbdkit_next_preconnect *next, nbdkit_backend *nxdata,
               int readonly)
{
  struct peer p = { .pid = -1, .uid = -1, .gid = -1 };
  socklen_t len = sizeof p.addr;
  bool denied;

  if (allow.n == 0 && deny.n == 0)
    return next (nxdata, readonly);
  if (nbdkit_peer_name ((struct sockaddr *) &p.addr, &len) == -1)
    return -1;
  if (p.addr.ss_family == AF_UNIX) {
    p.pid = nbdkit_peer_pid ();
    p.uid = nbdkit_peer_uid ();
    p.gid = nbdkit_peer_gid ();
  }
  if (need_label)
    p.label = nbdkit_peer_security_context ();
  denied = !rule_list_matches (&allow, &p) && rule_list_matches (&deny, &p);
  free (p.label);
  if (denied) {
    nbdkit_error ("client not permitted to connect because of source "
                  "address restriction");
    return -1;
  }
  return next (nxdata, readonly);
}

static struct nbdkit_filter filter = {
  .name = "ip",
  .longname = "nbdsrv ip filter",
  .unload = ip_unload,
  .config = ip_config,
  .config_help = ip_config_help,
  .preconnect = ip_preconnect,
};

NBDKIT_REGISTER_FILTER (filter)
