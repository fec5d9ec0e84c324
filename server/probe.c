/* nbdsrv: answers for scripts that probe the server (nbdkit-probing(1)):
 * --dump-config, --version, --short-options and --long-options.
 *
 * Probing scripts compare version_major and version_minor with nbdkit
 * releases to decide which features they may use ("nbdkit >= 1.12 is
 * required"), so those keys, and version=, name the nbdkit release
 * whose plugin API and command line nbdsrv implements (1.32.5);
 * nbdsrv's own release is nbdsrv_version=.  Features that release has
 * and nbdsrv lacks would have keys of their own (tls=, selinux=,
 * zstd=), as in nbdkit; all three exist now and say yes.
 * docs/nbdsrv.md says the same.
 */
#include "config.h"

#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "tls.h"

/* The absolute path of the running binary, as nbdkit's binary=, in
 * BUF; "" if it cannot be read.
 */
static const char *
binary_path (char *buf, size_t size)
{
  ssize_t len = readlink ("/proc/self/exe", buf, size - 1);

  buf[len > 0 ? len : 0] = '\0';
  return buf;
}

/* Sorted by key, as nbdkit prints them. */
void
probe_dump_config (void)
{
  char buf[PATH_MAX];
  const char *binary = binary_path (buf, sizeof buf);

  printf ("binary=%s\n", binary);
  printf ("bindir=%s\n", BINDIR);
  printf ("build_filterdir=%s\n", BUILD_FILTERDIR);
  printf ("build_plugindir=%s\n", BUILD_PLUGINDIR);
  printf ("exit_with_parent=yes\n");
  /* The directories searched first (dirs.c), which a probing script
   * lists: the build tree's for build/nbdsrv, else the installed ones
   * beside the binary.
   */
  printf ("filterdir=%s\n", dirs_own (MODULE_FILTER));
  printf ("host_cpu=%s\n", HOST_CPU);
  printf ("host_os=%s\n", HOST_OS);
  printf ("libdir=%s\n", LIBDIR);
  printf ("mandir=%s\n", MANDIR);
  printf ("name=nbdsrv\n");
  printf ("nbdkit_filterdir=%s\n", NBDKIT_FILTERDIR);
  printf ("nbdkit_plugindir=%s\n", NBDKIT_PLUGINDIR);
  printf ("nbdkit_version=%s\n", NBDKIT_VERSION_STRING);
  printf ("nbdsrv_version=%s\n", PACKAGE_VERSION);
  printf ("plugindir=%s\n", dirs_own (MODULE_PLUGIN));
  /* nbdkit's directory, so certificates set up for nbdkit serve. */
  printf ("root_tls_certificates_dir=%s\n", TLS_ROOT_CERTIFICATES_DIR);
  printf ("sbindir=%s\n", SBINDIR);
  printf ("selinux=yes\n");
  printf ("sysconfdir=%s\n", SYSCONFDIR);
  printf ("tls=yes\n");
  printf ("version=%s\n", NBDKIT_VERSION_STRING);
  printf ("version_major=%d\n", NBDKIT_VERSION_MAJOR);
  printf ("version_minor=%d\n", NBDKIT_VERSION_MINOR);
  printf ("zstd=yes\n");
}

/* The server's line; with the stack loaded, also "NAME [VERSION]" for
 * each filter, outermost first, then the plugin, as nbdkit prints them
 * (a filter's version is the nbdkit release it was built against).
 */
void
probe_version (bool with_stack)
{
  printf ("nbdsrv %s (plugin API of nbdkit %s)\n", PACKAGE_VERSION,
          NBDKIT_VERSION_STRING);
  if (!with_stack)
    return;
  for (const struct nbdkit_backend *b = stack.top; b; b = b->next) {
    const char *version = b->is_plugin ? plugin.p.version : b->f._version;

    if (version)
      printf ("%s %s\n", b->name, version);
    else
      printf ("%s\n", b->name);
  }
}

/* One "-X" per line for every letter of getopt's SHORT_OPTS. */
void
probe_short_options (const char *short_opts)
{
  for (const char *p = short_opts; *p; p++)
    if (*p != ':')
      printf ("-%c\n", *p);
}

/* Every long option but the two that list options, as nbdkit. */
void
probe_long_options (const struct option *long_opts)
{
  for (const struct option *o = long_opts; o->name; o++)
    if (strcmp (o->name, "short-options") != 0 &&
        strcmp (o->name, "long-options") != 0)
      printf ("--%s\n", o->name);
}
