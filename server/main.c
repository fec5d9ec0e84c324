/* nbdsrv: the command line (nbdkit's), start-up and shut-down.
 *
 *   nbdsrv [OPTIONS] PLUGIN [[KEY=]VALUE ...]
 *
 * Every mistake on the command line is reported in one line that says
 * what to do, before any socket exists, with exit status 1.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>

#include "internal.h"
#include "connection.h"
#include "socket.h"
#include "run.h"
#include "metrics.h"
#include "tls.h"

struct server_config cfg = {
  .ipfamily = AF_UNSPEC,
  .threads = 16,                /* -t 0 means this too */
  .handshake_timeout = 60,
  .mask_handshake = ~0u,
  .tls = TLS_UNSET,
};

static const char *user, *group;
static bool swap;                       /* --swap */

/* -D NAME.FLAG=N, applied once the plugin is loaded. */
struct debug_flag {
  char *name, *flag;
  int value;
  bool used;                    /* a plugin or filter has NAME */
  struct debug_flag *next;
};
static struct debug_flag *debug_flags;

/* --filter NAME|PATH, in command-line order; loaded once the plugin is,
 * the last one first (filter.c).
 */
static const char **filter_names;
static size_t nfilter_names;

static const char *metrics_where;       /* --metrics, or NULL */

enum {
  OPT_DUMP_CONFIG = 256, OPT_DUMP_PLUGIN, OPT_EXIT_WITH_PARENT, OPT_FILTER,
  OPT_HELP, OPT_KEEPALIVE, OPT_LOG, OPT_MASK_HANDSHAKE, OPT_MAX_CONNECTIONS,
  OPT_NO_MC,
  OPT_NO_SR, OPT_PRINT_URI, OPT_RUN, OPT_SELINUX_LABEL, OPT_SWAP,
  OPT_TIMEOUT, OPT_TLS, OPT_TLS_CERTIFICATES, OPT_TLS_PRIORITY, OPT_TLS_PSK,
  OPT_TLS_VERIFY_PEER, OPT_VSOCK, OPT_SHORT_OPTIONS, OPT_LONG_OPTIONS,
  OPT_METRICS,
};

static const char short_opts[] = ":46D:e:fg:i:noP:p:rst:U:u:vV";
static const struct option long_opts[] = {
  { "debug", required_argument, NULL, 'D' },
  { "dump-config", no_argument, NULL, OPT_DUMP_CONFIG },
  { "dump-plugin", no_argument, NULL, OPT_DUMP_PLUGIN },
  { "exit-with-parent", no_argument, NULL, OPT_EXIT_WITH_PARENT },
  { "export", required_argument, NULL, 'e' },
  { "export-name", required_argument, NULL, 'e' },
  { "exportname", required_argument, NULL, 'e' },
  { "filter", required_argument, NULL, OPT_FILTER },
  { "foreground", no_argument, NULL, 'f' },
  { "no-fork", no_argument, NULL, 'f' },
  { "group", required_argument, NULL, 'g' },
  { "help", no_argument, NULL, OPT_HELP },
  { "ip-addr", required_argument, NULL, 'i' },
  { "ipaddr", required_argument, NULL, 'i' },
  { "ipv4-only", no_argument, NULL, '4' },
  { "ipv6-only", no_argument, NULL, '6' },
  { "keepalive", no_argument, NULL, OPT_KEEPALIVE },
  { "log", required_argument, NULL, OPT_LOG },
  { "long-options", no_argument, NULL, OPT_LONG_OPTIONS },
  { "mask-handshake", required_argument, NULL, OPT_MASK_HANDSHAKE },
  { "max-connections", required_argument, NULL, OPT_MAX_CONNECTIONS },
  { "metrics", required_argument, NULL, OPT_METRICS },
  { "new-style", no_argument, NULL, 'n' },
  { "newstyle", no_argument, NULL, 'n' },
  { "no-mc", no_argument, NULL, OPT_NO_MC },
  { "no-meta-contexts", no_argument, NULL, OPT_NO_MC },
  { "no-sr", no_argument, NULL, OPT_NO_SR },
  { "no-structured-replies", no_argument, NULL, OPT_NO_SR },
  { "old-style", no_argument, NULL, 'o' },
  { "oldstyle", no_argument, NULL, 'o' },
  { "pid-file", required_argument, NULL, 'P' },
  { "pidfile", required_argument, NULL, 'P' },
  { "port", required_argument, NULL, 'p' },
  { "print-uri", no_argument, NULL, OPT_PRINT_URI },
  { "read-only", no_argument, NULL, 'r' },
  { "readonly", no_argument, NULL, 'r' },
  { "run", required_argument, NULL, OPT_RUN },
  { "selinux-label", required_argument, NULL, OPT_SELINUX_LABEL },
  { "short-options", no_argument, NULL, OPT_SHORT_OPTIONS },
  { "single", no_argument, NULL, 's' },
  { "stdin", no_argument, NULL, 's' },
  { "swap", no_argument, NULL, OPT_SWAP },
  { "threads", required_argument, NULL, 't' },
  { "timeout", required_argument, NULL, OPT_TIMEOUT },
  { "tls", required_argument, NULL, OPT_TLS },
  { "tls-certificates", required_argument, NULL, OPT_TLS_CERTIFICATES },
  { "tls-priority", required_argument, NULL, OPT_TLS_PRIORITY },
  { "tls-psk", required_argument, NULL, OPT_TLS_PSK },
  { "tls-verify-peer", no_argument, NULL, OPT_TLS_VERIFY_PEER },
  { "unix", required_argument, NULL, 'U' },
  { "user", required_argument, NULL, 'u' },
  { "verbose", no_argument, NULL, 'v' },
  { "version", no_argument, NULL, 'V' },
  { "vsock", no_argument, NULL, OPT_VSOCK },
  { NULL },
};

static void
usage (void)
{
  printf ("nbdsrv - a Network Block Device server, nbdkit-compatible\n\n"
          "nbdsrv [-4|-6] [-D PLUGIN.FLAG=N] [-e EXPORTNAME]\n"
          "       [--exit-with-parent] [-f] [-g GROUP] [-i IPADDR]\n"
          "       [--keepalive] [--log=stderr|syslog|null|FILE]\n"
          "       [--mask-handshake=MASK] [--max-connections=N]\n"
          "       [--metrics=ADDR:PORT|unix:PATH]\n"
          "       [--no-mc] [--no-sr]\n"
          "       [-P PIDFILE] [-p PORT] [--print-uri] [-r]\n"
          "       [--run 'COMMAND ARGS ...'] [--selinux-label=LABEL]\n"
          "       [-s] [-t THREADS] [--timeout=SECONDS]\n"
          "       [--tls=off|on|require] [--tls-certificates=DIR]\n"
          "       [--tls-psk=FILE] [--tls-priority=STRING]\n"
          "       [--tls-verify-peer] [-U SOCKET|-] [-u USER] [-v]\n"
          "       [--vsock] PLUGIN [[KEY=]VALUE [KEY=VALUE ...]]\n\n"
          "nbdsrv --dump-config\n"
          "nbdsrv PLUGIN --dump-plugin\n"
          "nbdsrv PLUGIN --help\n"
          "nbdsrv -V|--version\n\n"
          "Example: nbdsrv -f -U - memory size=1G --run 'nbdinfo \"$uri\"'\n"
          "See docs/nbdsrv.md for every option.\n");
}

static void __attribute__ ((__noreturn__))
die (const char *fmt, ...) ATTRIBUTE_PRINTF (1, 2);
static void
die (const char *fmt, ...)
{
  va_list args;

  va_start (args, fmt);
  startup_vmessage ("error", fmt, args);
  va_end (args);
  exit (EXIT_FAILURE);
}

static unsigned
parse_uint_opt (const char *opt, const char *arg, unsigned min,
                unsigned max)
{
  char *end;
  unsigned long v;

  errno = 0;
  v = strtoul (arg, &end, 0);
  if (errno || end == arg || *end || arg[0] == '-' || v < min || v > max)
    die ("%s %s: expected a number from %u to %u", opt, arg, min, max);
  return v;
}

/* -D NAME.FLAG=N, as nbdkit parses it: NAME up to the first dot, FLAG
 * up to the '=', N any int nbdkit_parse_int takes.  The list is kept
 * last first, as nbdkit keeps it, so warnings come in nbdkit's order.
 */
static void
add_debug_flag (const char *arg)
{
  const char *dot = strchr (arg, '.'), *eq = strchr (arg, '=');
  struct debug_flag *d;
  int value;

  if (!dot || !eq || dot > eq || dot == arg || eq == dot + 1 ||
      eq[1] == '\0' || nbdkit_parse_int ("flag", eq + 1, &value) == -1) {
    /* nbdkit's words, without "error:", after any parse error. */
    fprintf (stderr, "nbdsrv: -D (Debug Flag) must have the format "
             "NAME.FLAG=N\n");
    exit (EXIT_FAILURE);
  }
  d = calloc (1, sizeof *d);
  if (d == NULL)
    die ("out of memory");
  d->name = strndup (arg, dot - arg);
  d->flag = strndup (dot + 1, eq - dot - 1);
  if (d->name == NULL || d->flag == NULL)
    die ("out of memory");
  d->value = value;
  d->next = debug_flags;
  debug_flags = d;
}

/* The server's own -D nbdkit.FLAG=N, nbdkit's names (nbdkit(1)); the
 * backend.* ones change nothing here.  Returns false for a flag nbdkit
 * does not have, which gets nbdkit's warning.
 */
static bool
server_debug_flag_set (const char *flag, int value)
{
  if (strcmp (flag, "tls.session") == 0)
    cfg.tls_session_debug = value;
  else if (strcmp (flag, "tls.log") == 0)
    cfg.tls_log = value;
  else if (strcmp (flag, "backend.controlpath") != 0 &&
           strcmp (flag, "backend.datapath") != 0)
    return false;
  return true;
}

/* The variable -D NAME.FLAG=N sets: NAME_debug_FLAG with the dots in
 * FLAG turned into underscores, as nbdkit spells it (so a name with a
 * dash, which no C variable has, sets nothing there or here).
 */
static void
debug_flag_symbol (char *buf, size_t n, const struct debug_flag *d)
{
  size_t name_len = strlen (d->name);

  snprintf (buf, n, "%s_debug_%s", d->name, d->flag);
  for (char *s = buf + (name_len < n ? name_len : n - 1); *s; s++)
    if (*s == '.')
      *s = '_';
}

/* Set each flag in the plugin or filter NAME.  As nbdkit does, a flag
 * for a variable the plugin lacks, then (once every name loaded has
 * taken its flags) one that names nothing loaded, is a warning and the
 * server still serves: scripts pass -D for an optional filter.
 */
static void
apply_debug_flags (void)
{
  char sym[256];
  struct debug_flag *d;

  for (d = debug_flags; d; d = d->next) {
    bool server = strcmp (d->name, "nbdkit") == 0 ||
      strcmp (d->name, "nbdsrv") == 0;

    d->used = server || stack_dl_of (d->name) != NULL;
    if (!d->used || (server && server_debug_flag_set (d->flag, d->value)))
      continue;
    debug_flag_symbol (sym, sizeof sym, d);
    if (server || plugin_debug_flag_set (d->name, sym, d->value) == -1)
      startup_warning ("-D %s.%s: %s does not contain a global variable "
                       "called %s", d->name, d->flag, d->name, sym);
  }
  for (d = debug_flags; d; d = d->next)
    if (!d->used)
      startup_warning ("debug flag -D %s.%s was not used", d->name,
                       d->flag);
}

static void
set_log (const char *arg)
{
  if (strcmp (arg, "stderr") == 0)
    cfg.log_to = LOG_TO_STDERR;
  else if (strcmp (arg, "syslog") == 0)
    cfg.log_to = LOG_TO_SYSLOG;
  else if (strcmp (arg, "null") == 0)
    cfg.log_to = LOG_TO_NULL;
  else if (strchr (arg, '/')) {
    cfg.log_to = LOG_TO_FILE;
    cfg.log_file = arg;
  }
  else
    die ("--log=%s: expected stderr, syslog, null or a file path "
         "containing '/'", arg);
}

/* --tls=off|on|require, with nbdkit's synonyms. */
static void
set_tls (const char *arg)
{
  static const char *const off[] = { "off", "0", "false", "f", "no", "n" };
  static const char *const on[] = { "on", "1", "true", "t", "yes", "y" };
  static const char *const req[] = { "require", "required", "force" };

  cfg.tls = TLS_UNSET;
  for (size_t i = 0; i < 6; i++) {
    if (strcasecmp (arg, off[i]) == 0)
      cfg.tls = TLS_OFF;
    if (strcasecmp (arg, on[i]) == 0)
      cfg.tls = TLS_ON;
    if (i < 3 && strcasecmp (arg, req[i]) == 0)
      cfg.tls = TLS_REQUIRE;
  }
  if (cfg.tls == TLS_UNSET)
    die ("--tls=%s: expected off, on or require", arg);
}

/* The option getopt just rejected, for the error message. */
static const char *bad_option_name (void);

static bool log_given;
static bool dump_config, dump_plugin, help, version;

static void
parse_option (int c, const char *arg)
{
  switch (c) {
  case '4': cfg.ipfamily = AF_INET; break;
  case '6': cfg.ipfamily = AF_INET6; break;
  case 'D': add_debug_flag (arg); break;
  case 'e': cfg.exportname = arg; break;
  case 'f': cfg.foreground = true; break;
  case 'g': group = arg; break;
  case 'i': cfg.ipaddr = arg; break;
  case 'n': cfg.oldstyle = false; break;        /* the last one wins */
  case 'o': cfg.oldstyle = true; break;
  case 'P': cfg.pidfile = arg; break;
  case 'p': cfg.port = arg; parse_uint_opt ("-p", arg, 0, 65535); break;
  case 'r': cfg.readonly = true; break;
  case 's': cfg.single = true; break;
  case 't':
    /* nbdkit takes -t 0 as "the default". */
    cfg.threads = parse_uint_opt ("-t", arg, 0, 1024);
    if (cfg.threads == 0)
      cfg.threads = 16;
    break;
  case 'U':
    if (*arg == '\0')
      die ("-U needs a socket path (or - for a private one)");
    cfg.unixsocket = arg;
    break;
  case 'u': user = arg; break;
  case 'v': cfg.verbose = true; break;
  case 'V': version = true; break;
  case OPT_DUMP_CONFIG: dump_config = true; break;
  case OPT_DUMP_PLUGIN: dump_plugin = true; break;
  case OPT_EXIT_WITH_PARENT: cfg.exit_with_parent = true; break;
  case OPT_FILTER:
    filter_names = realloc (filter_names,
                            (nfilter_names + 1) * sizeof *filter_names);
    if (filter_names == NULL)
      die ("out of memory");
    filter_names[nfilter_names++] = arg;
    break;
  case OPT_HELP: help = true; break;
  case OPT_KEEPALIVE: cfg.keepalive = true; break;
  case OPT_LOG: set_log (arg); log_given = true; break;
  case OPT_MASK_HANDSHAKE:
    /* Any 32-bit mask, as nbdkit; only the low 16 bits mean anything. */
    cfg.mask_handshake = parse_uint_opt ("--mask-handshake", arg, 0,
                                         0xffffffff);
    break;
  case OPT_METRICS: metrics_where = arg; break;
  case OPT_MAX_CONNECTIONS:
    cfg.max_connections = parse_uint_opt ("--max-connections", arg, 0,
                                          1000000);
    break;
  case OPT_NO_MC: cfg.no_mc = true; break;
  case OPT_NO_SR: cfg.no_sr = true; break;
  case OPT_PRINT_URI: cfg.print_uri = true; break;
  case OPT_RUN: cfg.run = arg; break;
  case OPT_SELINUX_LABEL: cfg.selinux_label = arg; break;
  case OPT_SHORT_OPTIONS:
    probe_short_options (short_opts);
    exit (EXIT_SUCCESS);
  case OPT_LONG_OPTIONS:
    probe_long_options (long_opts);
    exit (EXIT_SUCCESS);
  case OPT_SWAP: swap = true; break;
  case OPT_TIMEOUT:
    cfg.handshake_timeout = parse_uint_opt ("--timeout", arg, 0, 86400);
    break;
  case OPT_TLS: set_tls (arg); break;
  case OPT_TLS_CERTIFICATES: cfg.tls_certificates = arg; break;
  case OPT_TLS_PRIORITY: cfg.tls_priority = arg; break;
  case OPT_TLS_PSK: cfg.tls_psk = arg; break;
  case OPT_TLS_VERIFY_PEER: cfg.tls_verify_peer = true; break;
  case OPT_VSOCK: cfg.vsock = true; break;
  case ':':
    die ("option '%s' needs a value: see 'nbdsrv --help'",
         bad_option_name ());
  default:
    die ("unknown option '%s': see 'nbdsrv --help'", bad_option_name ());
  }
}

/* KEY=VALUE with KEY like an identifier: anything else is a bare VALUE
 * (a path may well contain '=').
 */
static bool
is_config_key (const char *s, size_t len)
{
  if (len == 0 || !(isalpha ((unsigned char) s[0]) || s[0] == '_'))
    return false;
  for (size_t i = 1; i < len; i++)
    if (!isalnum ((unsigned char) s[i]) && !strchr ("_.-", s[i]))
      return false;
  return true;
}

/* [KEY=]VALUE parameters.  A bare VALUE goes to the plugin's magic key
 * (every one of them, as nbdkit: `split a b`), or without a magic key
 * the first one to "script".  Keys are cut out of argv in place, so the
 * strings stay valid for the plugin's whole life, as the API promises.
 */
static void
configure_plugin (int argc, char **argv)
{
  for (int i = 0; i < argc; i++) {
    char *eq = strchr (argv[i], '=');
    const char *key;

    if (eq && is_config_key (argv[i], eq - argv[i])) {
      *eq = '\0';
      key = argv[i];
      if (stack_config (key, eq + 1) == -1)
        exit (EXIT_FAILURE);
      continue;
    }
    key = plugin_magic_config_key ();
    if (key == NULL && i == 0)
      key = "script";
    if (key == NULL)
      die ("parameter '%s' should be KEY=VALUE (see 'nbdsrv %s --help')",
           argv[i], plugin.p.name);
    if (stack_config (key, argv[i]) == -1)
      exit (EXIT_FAILURE);
  }
}

/* The pairs nbdkit 1.32 refuses, checked before --dump-plugin is
 * acted on (nbdkit refuses -s --dump-plugin too); each is named, with
 * what to do.
 */
static void
check_exclusive_options (void)
{
  const struct {
    bool a, b;
    const char *names, *fix;
  } pairs[] = {
    { cfg.port, cfg.unixsocket, "-p and -U",
      "listen on a TCP port or on a Unix socket" },
    { cfg.port, cfg.single, "-p and -s", "serve stdin or listen" },
    { cfg.unixsocket, cfg.single, "-U and -s", "serve stdin or listen" },
    { cfg.single, cfg.run, "-s and --run",
      "--run needs a socket for its command: drop -s" },
    { cfg.single, dump_plugin, "-s and --dump-plugin",
      "drop -s to describe the plugin" },
    { cfg.vsock, cfg.unixsocket, "--vsock and -U",
      "listen on vsock or on a Unix socket" },
    { cfg.vsock, cfg.single, "--vsock and -s", "serve stdin or listen" },
  };

  for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++)
    if (pairs[i].a && pairs[i].b)
      die ("%s cannot be used together: %s", pairs[i].names, pairs[i].fix);
}

static void
check_option_combinations (void)
{
  int where = !!cfg.unixsocket + !!cfg.vsock + !!cfg.single;

  if (where > 1 || (cfg.single && (cfg.port || cfg.ipaddr)))
    die ("choose one of -U, --vsock, -s or -p/-i");
  if ((cfg.unixsocket || cfg.vsock) && cfg.ipaddr)
    die ("-i %s only applies to TCP: drop it or drop -U/--vsock",
         cfg.ipaddr);
  if (cfg.single && (cfg.run || cfg.print_uri))
    die ("-s serves stdin/stdout, so --run and --print-uri do not apply");
  /* --run without an address gets a private Unix socket (as nbdkit). */
  if (cfg.run && !cfg.unixsocket && !cfg.port && !cfg.vsock && !cfg.ipaddr)
    cfg.unixsocket = "-";
  if (cfg.run || cfg.single || cfg.exit_with_parent)
    cfg.foreground = true;
  if (getenv ("LISTEN_PID") && getenv ("LISTEN_FDS") &&
      atoi (getenv ("LISTEN_PID")) == getpid ()) {
    if (cfg.unixsocket || cfg.port || cfg.vsock || cfg.ipaddr || cfg.single)
      die ("socket activation (LISTEN_FDS) cannot be combined with "
           "-U, -p, -i, --vsock or -s");
    cfg.socket_activation = true;
  }
}

/* A user or group name, or a number. */
static bool
parse_id (const char *s, unsigned long *id)
{
  char *end;

  errno = 0;
  *id = strtoul (s, &end, 10);
  return errno == 0 && end != s && *end == '\0' && s[0] != '-';
}

/* -u/-g: look the names up now, before the sockets are made, so the
 * Unix socket can be given to them (socket.c).  -u alone also takes the
 * user's primary group, where nbdkit would keep root's group: a dropped
 * server should not keep group 0's access.
 */
static void
lookup_user_group (void)
{
  unsigned long id;

  if (group) {
    struct group *g = getgrnam (group);

    if (g == NULL && !parse_id (group, &id))
      die ("-g %s: no such group: give a group name or number", group);
    cfg.gid = g ? g->gr_gid : (gid_t) id;
    cfg.set_gid = cfg.group_access = true;
  }
  if (user) {
    struct passwd *p = getpwnam (user);

    if (p == NULL && !parse_id (user, &id))
      die ("-u %s: no such user: give a user name or number", user);
    cfg.uid = p ? p->pw_uid : (uid_t) id;
    cfg.set_uid = true;
    if (!group && p) {
      cfg.gid = p->pw_gid;
      cfg.set_gid = true;
    }
  }
}

/* Drop privileges once the sockets are bound and the certificates and
 * keys are loaded, and check that they cannot be taken back.
 */
static void
change_user (void)
{
  if (cfg.set_gid &&
      (setgroups (1, &cfg.gid) == -1 || setgid (cfg.gid) == -1))
    die ("-g/-u: cannot change group to %u: %m (start as root)",
         (unsigned) cfg.gid);
  if (cfg.set_uid && setuid (cfg.uid) == -1)
    die ("-u %s: cannot change user to %u: %m (start as root)", user,
         (unsigned) cfg.uid);
  if (cfg.set_uid && cfg.uid != 0 && setuid (0) == 0)
    die ("-u %s: the server could become root again: refusing to run",
         user);
}

static void
write_pidfile (pid_t pid)
{
  FILE *fp;

  if (cfg.pidfile == NULL)
    return;
  fp = fopen (cfg.pidfile, "w");
  if (fp == NULL || fprintf (fp, "%d\n", (int) pid) < 0 || fclose (fp)) {
    fprintf (stderr, "nbdsrv: error: -P %s: %m\n", cfg.pidfile);
    exit (EXIT_FAILURE);
  }
}

static void
signal_quit (int sig)
{
  quit_set ();
}

static void
set_signals (void)
{
  struct sigaction sa = { .sa_handler = signal_quit };

  sigemptyset (&sa.sa_mask);
  sigaction (SIGINT, &sa, NULL);
  sigaction (SIGTERM, &sa, NULL);
  sigaction (SIGQUIT, &sa, NULL);
  sa.sa_handler = SIG_IGN;
  sigaction (SIGPIPE, &sa, NULL);
}

/* Without -f: the parent writes the pidfile with the child's pid and
 * exits once the sockets are listening, so callers can connect at once.
 */
static void
daemonize (void)
{
  pid_t pid = fork ();
  int fd;

  if (pid == -1)
    die ("fork: %m");
  if (pid > 0) {
    write_pidfile (pid);
    _exit (EXIT_SUCCESS);
  }
  setsid ();
  /* Start-up errors went to stderr; from now on nobody reads it. */
  if (!log_given) {
    cfg.log_to = LOG_TO_SYSLOG;
    log_open ();
  }
  if (chdir ("/") == -1)
    server_error ("chdir /: %m");
  /* Keeping the caller's stdout open would hang a caller that reads
   * it to the end, as $(nbdsrv ...) does.
   */
  close (stdio_in);
  close (stdio_out);
  stdio_in = stdio_out = -1;
  if (cfg.log_to != LOG_TO_STDERR) {
    fd = open ("/dev/null", O_RDWR);
    if (fd >= 0 && fd != 2) {
      dup2 (fd, 2);
      close (fd);
    }
  }
}

static int saved_argc;
static char **saved_argv;

static const char *
bad_option_name (void)
{
  static char buf[3];

  /* A long option's optopt is its value above 255, not a letter. */
  if (optopt > 0 && optopt < 256) {
    buf[0] = '-';
    buf[1] = optopt;
    return buf;
  }
  return optind > 0 && optind <= saved_argc ? saved_argv[optind - 1] : "?";
}

int
main (int argc, char **argv)
{
  struct listeners l = { .n = 0 };
  int c, status;

  saved_argc = argc;
  saved_argv = argv;
  while ((c = getopt_long (argc, argv, short_opts, long_opts, NULL)) != -1)
    parse_option (c, optarg);
  if (dump_config) {
    probe_dump_config ();
    exit (EXIT_SUCCESS);
  }
  check_exclusive_options ();
  if (optind >= argc) {
    if (help) {
      usage ();
      exit (EXIT_SUCCESS);
    }
    if (version) {
      probe_version (false);
      exit (EXIT_SUCCESS);
    }
    die ("no plugin given: try 'nbdsrv memory size=1G' or "
         "'nbdsrv --help'");
  }
  /* getopt has moved the options first, so options may come anywhere
   * on the line, as with nbdkit.
   */
  plugin_script_exec (argc, argv, optind);
  if (plugin_load (argv[optind++]) == -1)
    exit (EXIT_FAILURE);
  for (size_t i = nfilter_names; i-- > 0; )
    if (filter_add (filter_names[i]) == -1)
      exit (EXIT_FAILURE);
  if (version) {
    /* As nbdkit: the plugin must load; its parameters are not used. */
    probe_version (true);
    exit (EXIT_SUCCESS);
  }
  apply_debug_flags ();
  if (help) {
    usage ();
    stack_usage ();
    exit (EXIT_SUCCESS);
  }
  if (dump_plugin) {
    /* As nbdkit: parameters reach the plugin before it is described. */
    configure_plugin (argc - optind, argv + optind);
    if (stack_thread_model_settle () == -1)
      exit (EXIT_FAILURE);
    plugin_dump ();
    exit (EXIT_SUCCESS);
  }
  check_option_combinations ();
  lookup_user_group ();
  /* --swap: the disk may be this machine's swap, so the server must
   * never wait for its own pages to be swapped in (as nbdkit).
   */
  if (swap && mlockall (MCL_CURRENT | MCL_FUTURE) == -1)
    die ("--swap: mlockall: %m: run as root or raise the locked memory "
         "limit (ulimit -l)");
  log_open ();
  configure_plugin (argc - optind, argv + optind);
  /* As nbdkit 1.32: stdin and stdout are the plugin's up to get_ready
   * and /dev/null from after_fork on.
   */
  if (stack_config_complete () == -1 ||
      stack_thread_model_settle () == -1 ||
      stack_get_ready () == -1 ||
      tls_load () == -1 ||
      stdio_detach () == -1)
    exit (EXIT_FAILURE);

  quit_init ();
  set_signals ();
  if (cfg.exit_with_parent)
    prctl (PR_SET_PDEATHSIG, SIGTERM);
  if ((!cfg.single && listeners_open (&l) == -1) ||
      (metrics_where && metrics_open (metrics_where) == -1)) {
    listeners_close (&l);
    exit (EXIT_FAILURE);
  }
  change_user ();
  if (!cfg.foreground)
    daemonize ();
  else
    write_pidfile (getpid ());
  if (stack_after_fork () == -1 || metrics_start () == -1) {
    listeners_close (&l);
    exit (EXIT_FAILURE);
  }
  notify_ready ();

  if (cfg.single)
    serve_single ();
  else {
    char *uri = uri_new (&l);

    if (cfg.print_uri && uri && stdio_out >= 0)
      dprintf (stdio_out, "%s\n", uri);
    if (cfg.run && (uri == NULL || run_start (&l, uri) == -1))
      quit_set ();
    free (uri);
    accept_loop (&l);
  }

  /* Orderly shutdown: stop listening at once, then let requests in
   * flight finish.
   */
  notify_stopping ();
  acceptors_wait (false);
  listeners_close (&l);
  conns_shutdown_all ();
  if (conns_wait_all () == -1) {
    /* A plugin call is stuck: unloading under it would crash. */
    if (cfg.pidfile)
      unlink (cfg.pidfile);
    _exit (cfg.run ? run_wait () : EXIT_FAILURE);
  }
  acceptors_wait (true);
  metrics_stop ();
  stack_unload ();
  tls_unload ();
  if (cfg.pidfile)
    unlink (cfg.pidfile);
  status = cfg.run ? run_wait () : EXIT_SUCCESS;
  debug ("exiting with status %d", status);
  return status;
}
