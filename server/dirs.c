/* nbdsrv: the directories plugins and filters are looked up in.
 *
 * A plugin or filter given by name is searched for in:
 *   1. nbdsrv's own directory: the build tree's when this binary is the
 *      one built there, otherwise the directory that `make install`
 *      put beside this binary (BINDIR/../LIBDIR/nbdsrv/plugins), so an
 *      install under DESTDIR, or a moved prefix, uses its own plugins
 *      and never those of a build tree or of another install;
 *   2. the configured install directory, when it is another one (a
 *      binary copied out of its prefix still finds the installed set);
 *   3. Debian's nbdkit directory, so scripts written for nbdkit keep
 *      working with the plugins and filters nbdsrv does not ship.
 */
#include "config.h"

#include <limits.h>
#include <stdbool.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

static const char *const build_dirs[] = { BUILD_PLUGINDIR, BUILD_FILTERDIR };
static const char *const configured_dirs[] = { PLUGINDIR, FILTERDIR };
static const char *const nbdkit_dirs[] = { NBDKIT_PLUGINDIR,
                                           NBDKIT_FILTERDIR };
static const char *const subdirs[] = { "plugins", "filters" };
static const char *const kind_names[] = { "plugin", "filter" };

/* Owned here for the life of the process; set once by dirs_compute.
 * Room for a PATH_MAX library directory and "/filters".
 */
static char own_dirs[2][PATH_MAX + 16];
static pthread_once_t dirs_once = PTHREAD_ONCE_INIT;

/* The real directory this binary is in, or "" if /proc cannot say
 * (then only the configured and nbdkit directories are searched).
 */
static void
exe_dir (char *buf, size_t size)
{
  char *exe = realpath ("/proc/self/exe", NULL);
  char *slash;

  buf[0] = '\0';
  if (exe == NULL)
    return;
  slash = strrchr (exe, '/');
  if (slash && (size_t) (slash - exe) < size) {
    memcpy (buf, exe, slash - exe);
    buf[slash - exe] = '\0';
  }
  free (exe);
}

static bool
is_build_tree (const char *dir)
{
  char *root = realpath (BUILD_ROOT, NULL);
  bool r = root && strcmp (root, dir) == 0;

  free (root);
  return r;
}

/* nbdsrv's library directory beside the binary in BINDIR, when it
 * exists, in PKGLIBDIR (PATH_MAX bytes); false otherwise.
 */
static bool
pkglibdir_beside (const char *bindir, char *pkglibdir)
{
  char candidate[PATH_MAX];

  if (!bindir[0] || !PKGLIBDIR_FROM_BINDIR[0])
    return false;
  if (snprintf (candidate, sizeof candidate, "%s/%s", bindir,
                PKGLIBDIR_FROM_BINDIR) >= (int) sizeof candidate)
    return false;
  return realpath (candidate, pkglibdir) != NULL;
}

static void
dirs_compute (void)
{
  char bindir[PATH_MAX], pkglibdir[PATH_MAX];
  bool beside;

  exe_dir (bindir, sizeof bindir);
  beside = pkglibdir_beside (bindir, pkglibdir);
  for (int k = 0; k < 2; k++) {
    if (bindir[0] && is_build_tree (bindir))
      snprintf (own_dirs[k], sizeof own_dirs[k], "%s", build_dirs[k]);
    else if (beside)
      snprintf (own_dirs[k], sizeof own_dirs[k], "%s/%s", pkglibdir,
                subdirs[k]);
    else
      snprintf (own_dirs[k], sizeof own_dirs[k], "%s", configured_dirs[k]);
  }
}

const char *
dirs_own (enum module_kind kind)
{
  pthread_once (&dirs_once, dirs_compute);
  return own_dirs[kind];
}

size_t
dirs_search (enum module_kind kind, const char *dirs[DIRS_SEARCH_MAX])
{
  size_t n = 0;

  dirs[n++] = dirs_own (kind);
  if (strcmp (dirs[0], configured_dirs[kind]) != 0)
    dirs[n++] = configured_dirs[kind];
  dirs[n++] = nbdkit_dirs[kind];
  return n;
}

char *
dirs_find (enum module_kind kind, const char *name)
{
  const char *dirs[DIRS_SEARCH_MAX];
  size_t n = dirs_search (kind, dirs);
  const char *k = kind_names[kind];
  char path[PATH_MAX];
  struct stat st;
  char *ret;

  for (size_t i = 0; i < n; i++) {
    snprintf (path, sizeof path, "%s/nbdkit-%s-%s.so", dirs[i], name, k);
    if (stat (path, &st) == 0) {
      ret = strdup (path);
      if (ret == NULL)
        fprintf (stderr, "nbdsrv: error: strdup: %m\n");
      return ret;
    }
  }
  fprintf (stderr, "nbdsrv: error: unknown %s '%s': no nbdkit-%s-%s.so in",
           k, name, name, k);
  for (size_t i = 0; i < n; i++)
    fprintf (stderr, "%s %s", i == 0 ? "" : i + 1 < n ? "," : " or",
             dirs[i]);
  fprintf (stderr, "; give the %s's path or see 'nbdsrv --help'\n", k);
  return NULL;
}
