/* nbdsrv: finding, loading and configuring the plugin.
 *
 * The plugin hands us a pointer to its struct nbdkit_plugin; we copy at
 * most _struct_size bytes of it into a zeroed struct of our size, so a
 * plugin built against an older header (shorter struct) loads, and
 * fields it lacks read as NULL.
 */
#include "config.h"

#include <ctype.h>
#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

struct plugin plugin;

static const char *const thread_model_names[] = {
  "serialize_connections", "serialize_all_requests",
  "serialize_requests", "parallel",
};

static bool
is_plugin_name (const char *s)
{
  if (!*s || !isalnum ((unsigned char) *s))
    return false;
  for (; *s; s++)
    if (!isalnum ((unsigned char) *s) && *s != '-' && *s != '_')
      return false;
  return true;
}

enum plugin_kind { PLUGIN_NONE, PLUGIN_SO, PLUGIN_SCRIPT };

/* What plugin NAME is in DIR, with its path in PATH: the shared object
 * nbdkit-NAME-plugin.so, else an executable nbdkit-NAME-plugin (a
 * script that names its interpreter plugin in its "#!" line, as
 * Debian's nbdkit-example4-plugin).
 */
static enum plugin_kind
plugin_in_dir (const char *dir, const char *name, char *path, size_t size)
{
  struct stat st;

  snprintf (path, size, "%s/nbdkit-%s-plugin.so", dir, name);
  if (stat (path, &st) == 0)
    return PLUGIN_SO;
  snprintf (path, size, "%s/nbdkit-%s-plugin", dir, name);
  if (stat (path, &st) == 0 && S_ISREG (st.st_mode) &&
      access (path, X_OK) == 0)
    return PLUGIN_SCRIPT;
  return PLUGIN_NONE;
}

/* NAME or a path.  A name is looked up in the directories of dirs.c:
 * nbdsrv's own, then nbdkit's, so scripts written for nbdkit keep
 * working with plugins nbdsrv does not ship.  Script plugins were run
 * by plugin_script_exec before this is called.
 */
static char *
plugin_find (const char *name)
{
  if (!is_plugin_name (name)) {
    char *abs = realpath (name, NULL);

    return abs ? abs : strdup (name);   /* dlopen reports the error */
  }
  return dirs_find (MODULE_PLUGIN, name);
}

/* When ARGV[PLUGIN_INDEX] names a script plugin (found before any
 * shared object of that name), run it as nbdkit does: argv[0] is the
 * name, then the options (getopt has moved them before the plugin
 * name), then the parameters.  The kernel then runs the interpreter
 * from its "#!" line with the script's path and those arguments.
 * Returns only when there is no such script.
 */
void
plugin_script_exec (int argc, char **argv, int plugin_index)
{
  const char *name = argv[plugin_index];
  enum plugin_kind kind = PLUGIN_NONE;
  const char *dirs[DIRS_SEARCH_MAX];
  size_t nd;
  char path[PATH_MAX];
  char **args;
  int i, n = 0;

  if (!is_plugin_name (name))
    return;
  nd = dirs_search (MODULE_PLUGIN, dirs);
  for (size_t d = 0; kind == PLUGIN_NONE && d < nd; d++)
    kind = plugin_in_dir (dirs[d], name, path, sizeof path);
  if (kind != PLUGIN_SCRIPT)
    return;
  args = calloc (argc + 1, sizeof *args);
  if (args == NULL) {
    perror ("nbdsrv: calloc");
    exit (EXIT_FAILURE);
  }
  args[n++] = (char *) name;
  for (i = 1; i < plugin_index; i++)
    args[n++] = argv[i];
  for (i = plugin_index + 1; i < argc; i++)
    args[n++] = argv[i];
  execv (path, args);
  fprintf (stderr, "nbdsrv: error: cannot run plugin script %s: %m: "
           "check its \"#!\" line\n", path);
  exit (EXIT_FAILURE);
}

static int
plugin_check (const struct nbdkit_plugin *p, const char *filename)
{
  if (p->_api_version < 1 || p->_api_version > 2) {
    fprintf (stderr, "nbdsrv: error: %s: plugin API version %d is not "
             "supported (only 1 and 2): rebuild the plugin\n",
             filename, p->_api_version);
    return -1;
  }
  if (p->_struct_size < offsetof (struct nbdkit_plugin, errno_is_preserved)) {
    fprintf (stderr, "nbdsrv: error: %s: plugin struct is too small "
             "(%" PRIu64 " bytes): rebuild the plugin\n",
             filename, p->_struct_size);
    return -1;
  }
  if (p->name == NULL || !is_plugin_name (p->name)) {
    fprintf (stderr, "nbdsrv: error: %s: the plugin has no valid .name\n",
             filename);
    return -1;
  }
  if (p->open == NULL || p->get_size == NULL ||
      (p->pread == NULL && p->_pread_v1 == NULL)) {
    fprintf (stderr, "nbdsrv: error: %s: the plugin must define .open, "
             ".get_size and .pread\n", filename);
    return -1;
  }
  return 0;
}

int
plugin_load (const char *name_or_path)
{
  struct nbdkit_plugin *(*init) (void);
  const struct nbdkit_plugin *p;
  size_t size;

  plugin.filename = plugin_find (name_or_path);
  if (plugin.filename == NULL)
    return -1;
  plugin.dl = dlopen (plugin.filename, RTLD_NOW | RTLD_GLOBAL);
  if (plugin.dl == NULL) {
    fprintf (stderr, "nbdsrv: error: cannot load plugin %s: %s\n",
             plugin.filename, dlerror ());
    return -1;
  }
  init = (struct nbdkit_plugin *(*) (void)) dlsym (plugin.dl, "plugin_init");
  if (init == NULL || (p = init ()) == NULL) {
    fprintf (stderr, "nbdsrv: error: %s is not an nbdkit plugin "
             "(no plugin_init): check the file name\n", plugin.filename);
    return -1;
  }
  if (plugin_check (p, plugin.filename) == -1)
    return -1;
  plugin.orig = p;
  size = p->_struct_size < sizeof plugin.p ? p->_struct_size
    : sizeof plugin.p;
  memcpy (&plugin.p, p, size);

  plugin.backend.is_plugin = true;
  plugin.backend.name = plugin.p.name;
  thread_state ()->name = plugin.p.name;
  if (plugin.p._thread_model < 0 ||
      plugin.p._thread_model > NBDKIT_THREAD_MODEL_PARALLEL) {
    fprintf (stderr, "nbdsrv: error: %s: unknown thread model %d\n",
             plugin.filename, plugin.p._thread_model);
    return -1;
  }
  plugin.thread_model = plugin.p._thread_model;
  plugin.write_target = (write_target_fn *)
    dlsym (plugin.dl, WRITE_TARGET_SYMBOL);
  plugin.write_target_done = (write_target_done_fn *)
    dlsym (plugin.dl, WRITE_TARGET_DONE_SYMBOL);
  if (plugin.write_target_done == NULL)
    plugin.write_target = NULL;
  plugin.read_source = (read_source_fn *)
    dlsym (plugin.dl, READ_SOURCE_SYMBOL);
  if (plugin.p.load)
    plugin.p.load ();
  return 0;
}

void
plugin_cleanup (void)
{
  if (plugin.dl && plugin.p.cleanup)
    plugin.p.cleanup ();
}

void
plugin_unload (void)
{
  if (plugin.dl == NULL)
    return;
  if (plugin.p.unload)
    plugin.p.unload ();
  intern_set_free (&plugin.interned);
  free (plugin.filename);
  plugin.filename = NULL;
  /* The plugin stays mapped: threads of its own may still be exiting. */
}

/* Read from the plugin's own struct, not our copy: a script plugin (sh)
 * sets its magic key only once it has read its script.
 */
const char *
plugin_magic_config_key (void)
{
  if (plugin.orig->_struct_size <=
      offsetof (struct nbdkit_plugin, magic_config_key))
    return NULL;
  return plugin.orig->magic_config_key;
}

int
plugin_config (const char *key, const char *value)
{
  if (plugin.p.config == NULL) {
    fprintf (stderr, "nbdsrv: error: the %s plugin takes no parameters, "
             "but was given %s=%s\n", plugin.p.name, key, value);
    return -1;
  }
  return plugin.p.config (key, value);
}

int
plugin_config_complete (void)
{
  return plugin.p.config_complete ? plugin.p.config_complete () : 0;
}

/* The plugin may lower its thread model once it is configured (a
 * script plugin, say, learns from its script), so .thread_model is asked
 * after the parameters, as nbdkit does.
 */
int
plugin_thread_model_settle (void)
{
  int m;

  if (plugin.p.thread_model == NULL)
    return 0;
  m = plugin.p.thread_model ();
  if (m == -1)
    return -1;
  if (m < 0 || m > NBDKIT_THREAD_MODEL_PARALLEL) {
    fprintf (stderr, "nbdsrv: error: %s: .thread_model returned unknown "
             "model %d\n", plugin.filename, m);
    return -1;
  }
  if (m < plugin.thread_model)
    plugin.thread_model = m;
  return 0;
}

int
plugin_get_ready (void)
{
  return plugin.p.get_ready ? plugin.p.get_ready () : 0;
}

int
plugin_after_fork (void)
{
  return plugin.p.after_fork ? plugin.p.after_fork () : 0;
}

void
plugin_usage (void)
{
  printf ("\nplugin: %s", plugin.p.name);
  if (plugin.p.longname)
    printf (" (%s)", plugin.p.longname);
  printf ("\n(%s)\n", plugin.filename);
  if (plugin.p.description)
    printf ("%s\n", plugin.p.description);
  if (plugin.p.config_help)
    printf ("%s\n", plugin.p.config_help);
}

/* The same lines as nbdkit --dump-plugin, so scripts can parse them. */
void
plugin_dump (void)
{
  const struct nbdkit_plugin *p = &plugin.p;

  printf ("path=%s\n", plugin.filename);
  printf ("name=%s\n", p->name);
  if (p->version)
    printf ("version=%s\n", p->version);
  printf ("api_version=%d\n", p->_api_version);
  printf ("struct_size=%" PRIu64 "\n", p->_struct_size);
  printf ("max_thread_model=%s\n", thread_model_names[p->_thread_model & 3]);
  /* With filters: the model of the whole stack, as nbdkit prints. */
  printf ("thread_model=%s\n", thread_model_names[stack.thread_model]);
  printf ("errno_is_preserved=%d\n", p->errno_is_preserved);
  if (plugin_magic_config_key ())
    printf ("magic_config_key=%s\n", plugin_magic_config_key ());
#define HAS(f) if (p->f) printf ("has_%s=1\n", #f)
  HAS (longname); HAS (description); HAS (load); HAS (unload);
  HAS (dump_plugin); HAS (config); HAS (config_complete); HAS (config_help);
  HAS (thread_model); HAS (get_ready); HAS (after_fork); HAS (cleanup);
  HAS (preconnect); HAS (list_exports); HAS (default_export); HAS (open);
  HAS (close); HAS (export_description); HAS (get_size); HAS (block_size);
  HAS (can_write); HAS (can_flush); HAS (is_rotational); HAS (can_trim);
  HAS (can_zero); HAS (can_fast_zero); HAS (can_extents); HAS (can_fua);
  HAS (can_multi_conn); HAS (can_cache);
  HAS (pread); HAS (pwrite); HAS (flush); HAS (trim); HAS (zero);
  HAS (extents); HAS (cache);
  /* nbdkit names version 1 callbacks by their struct fields, last. */
  HAS (_pread_v1); HAS (_pwrite_v1); HAS (_flush_v1); HAS (_trim_v1);
  HAS (_zero_v1);
#undef HAS
  fflush (stdout);
  if (p->dump_plugin)
    p->dump_plugin ();
}

const char *
plugin_default_export (bool readonly)
{
  if (plugin.p.default_export)
    return plugin.p.default_export (readonly, conn_is_tls ());
  return "";
}

int
plugin_list_exports (bool readonly, struct nbdkit_exports *exports)
{
  if (plugin.p.list_exports)
    return plugin.p.list_exports (readonly, conn_is_tls (), exports);
  return nbdkit_use_default_export (exports);
}

/* -D NAME.FLAG=N: set the global int SYM (NAME_debug_FLAG) of the
 * plugin or filter NAME, which is loaded.  Returns -1 if it has no such
 * variable; the caller warns.
 */
int
plugin_debug_flag_set (const char *name, const char *sym, int value)
{
  int *var = dlsym (stack_dl_of (name), sym);

  if (var == NULL)
    return -1;
  *var = value;
  return 0;
}
