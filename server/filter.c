/* nbdsrv: loading the filters (--filter) and the calls that go down
 * the whole stack outside connections: configuration, thread model,
 * readiness, preconnect, export lists, clean-up.
 *
 * A filter .so loads only if it was built for the filter API we
 * implement: API version 6 with the layout of nbdkit 1.32.  nbdkit
 * itself wants the exact release string; any nbdkit 1.32.x is accepted
 * here because a stable branch keeps the filter structs unchanged
 * (tests/test_abi.py compares them), and nothing else is, because we
 * cannot know another release's layout.
 */
#include "config.h"

#include <ctype.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* The filter builds we accept: _version must start with this. */
#define FILTER_VERSION_PREFIX "1.32."

struct stack stack = { .top = &plugin.backend };

static bool
is_filter_name (const char *s)
{
  if (!*s || !isalnum ((unsigned char) *s))
    return false;
  for (; *s; s++)
    if (!isalnum ((unsigned char) *s) && *s != '-')
      return false;
  return true;
}

/* NAME or a path, looked up as plugins are (dirs.c): nbdsrv's own
 * filter directory, then Debian's nbdkit filter directory.
 */
static char *
filter_find (const char *name)
{
  if (!is_filter_name (name)) {
    char *abs = realpath (name, NULL);

    return abs ? abs : strdup (name);   /* dlopen reports the error */
  }
  return dirs_find (MODULE_FILTER, name);
}

static int
filter_check (const struct nbdkit_filter *f, const char *filename)
{
  if (f->_api_version != NBDKIT_FILTER_API_VERSION) {
    fprintf (stderr, "nbdsrv: error: %s: filter API version %d is not "
             "supported (only %d, as in nbdkit 1.32): rebuild the filter "
             "against nbdsrv's nbdkit-filter.h\n", filename,
             f->_api_version, NBDKIT_FILTER_API_VERSION);
    return -1;
  }
  if (f->_version == NULL ||
      strncmp (f->_version, FILTER_VERSION_PREFIX,
               strlen (FILTER_VERSION_PREFIX)) != 0) {
    fprintf (stderr, "nbdsrv: error: %s: the filter was built for nbdkit "
             "%s, but nbdsrv runs filters built for nbdkit 1.32: rebuild "
             "the filter against nbdsrv's nbdkit-filter.h\n", filename,
             f->_version ? f->_version : "(unknown)");
    return -1;
  }
  if (f->name == NULL || !is_filter_name (f->name)) {
    fprintf (stderr, "nbdsrv: error: %s: the filter has no valid .name\n",
             filename);
    return -1;
  }
  return 0;
}

/* Load one filter and put it on top of the stack: called for the
 * last --filter first, so the first one named ends up nearest the
 * client, as in nbdkit.
 */
int
filter_add (const char *name_or_path)
{
  struct nbdkit_filter *(*init) (void);
  const struct nbdkit_filter *f;
  struct nbdkit_backend *b = calloc (1, sizeof *b);

  if (b == NULL) {
    perror ("nbdsrv: error: calloc");
    return -1;
  }
  b->filename = filter_find (name_or_path);
  if (b->filename == NULL)
    goto out_free;
  b->dl = dlopen (b->filename, RTLD_NOW | RTLD_GLOBAL);
  if (b->dl == NULL) {
    fprintf (stderr, "nbdsrv: error: cannot load filter %s: %s\n",
             b->filename, dlerror ());
    goto out_free;
  }
  init = (struct nbdkit_filter *(*) (void)) dlsym (b->dl, "filter_init");
  if (init == NULL || (f = init ()) == NULL) {
    fprintf (stderr, "nbdsrv: error: %s is not an nbdkit filter "
             "(no filter_init): check the file name\n", b->filename);
    goto out_free;
  }
  if (filter_check (f, b->filename) == -1)
    goto out_free;
  b->f = *f;
  b->name = b->f.name;
  b->keeps_blocks = dlsym (b->dl, NBDSRV_KEEPS_BLOCKS_SYMBOL) != NULL;
  b->dirty_name = (dirty_bitmap_name_fn *)
    dlsym (b->dl, NBDSRV_DIRTY_NAME_SYMBOL);
  b->dirty_extents = (dirty_extents_fn *)
    dlsym (b->dl, NBDSRV_DIRTY_EXTENTS_SYMBOL);
  if (b->dirty_extents == NULL)
    b->dirty_name = NULL;
  b->next = stack.top;
  b->index = stack.top->index + 1;
  stack.top = b;
  stack.nfilters++;
  if (b->f.load)
    b->f.load ();
  return 0;

  /* The .so stays mapped, as at unload. */
 out_free:
  free (b->filename);
  free (b);
  return -1;
}

/* nbdkit's order: every layer's .cleanup from the top down, then
 * .unload from the bottom up (the plugin first).  The .so files stay
 * mapped: threads of their own may still be exiting.
 */
static void
unload_from (struct nbdkit_backend *b)
{
  if (b->is_plugin) {
    plugin_unload ();
    return;
  }
  unload_from (b->next);
  if (b->f.unload)
    b->f.unload ();
}

void
stack_unload (void)
{
  for (struct nbdkit_backend *b = stack.top; !b->is_plugin; b = b->next)
    if (b->f.cleanup)
      b->f.cleanup (b->next);
  plugin_cleanup ();
  unload_from (stack.top);
}

/* The calls a filter's config-time callbacks make on the layer below. */
static int
config_below (nbdkit_backend *b, const char *key, const char *value)
{
  if (b->is_plugin)
    return plugin_config (key, value);
  if (b->f.config)
    return b->f.config (config_below, b->next, key, value);
  return config_below (b->next, key, value);
}

int
stack_config (const char *key, const char *value)
{
  return config_below (stack.top, key, value);
}

static int
config_complete_below (nbdkit_backend *b)
{
  if (b->is_plugin)
    return plugin_config_complete ();
  if (b->f.config_complete)
    return b->f.config_complete (config_complete_below, b->next);
  return config_complete_below (b->next);
}

int
stack_config_complete (void)
{
  return config_complete_below (stack.top);
}

/* The most restrictive model of all the layers (nbdkit-filter(3)). */
int
stack_thread_model_settle (void)
{
  int model;

  if (plugin_thread_model_settle () == -1)
    return -1;
  model = plugin.thread_model;
  for (struct nbdkit_backend *b = stack.top; !b->is_plugin; b = b->next) {
    int m;

    if (b->f.thread_model == NULL)
      continue;
    m = b->f.thread_model ();
    if (m == -1)
      return -1;
    if (m < NBDKIT_THREAD_MODEL_SERIALIZE_CONNECTIONS ||
        m > NBDKIT_THREAD_MODEL_PARALLEL) {
      fprintf (stderr, "nbdsrv: error: %s: .thread_model returned unknown "
               "model %d\n", b->filename, m);
      return -1;
    }
    if (m < model)
      model = m;
  }
  stack.thread_model = model;
  return 0;
}

/* get_ready and after_fork: the plugin first, then each filter from
 * the bottom up, so a filter may rely on the layers below being ready.
 */
static int
get_ready_from (struct nbdkit_backend *b)
{
  if (b->is_plugin)
    return plugin_get_ready ();
  if (get_ready_from (b->next) == -1)
    return -1;
  return b->f.get_ready ? b->f.get_ready (stack.thread_model) : 0;
}

int
stack_get_ready (void)
{
  return get_ready_from (stack.top);
}

static int
after_fork_from (struct nbdkit_backend *b)
{
  if (b->is_plugin)
    return plugin_after_fork ();
  if (after_fork_from (b->next) == -1)
    return -1;
  return b->f.after_fork ? b->f.after_fork (b->next) : 0;
}

int
stack_after_fork (void)
{
  return after_fork_from (stack.top);
}

static int
preconnect_below (nbdkit_backend *b, int readonly)
{
  if (b->is_plugin)
    return plugin.p.preconnect ? plugin.p.preconnect (readonly) : 0;
  if (b->f.preconnect)
    return b->f.preconnect (preconnect_below, b->next, readonly);
  return preconnect_below (b->next, readonly);
}

int
stack_preconnect (bool readonly)
{
  return preconnect_below (stack.top, readonly);
}

static const char *
default_export_below (nbdkit_backend *b, int readonly)
{
  if (b->is_plugin)
    return plugin_default_export (readonly);
  if (b->f.default_export)
    return b->f.default_export (default_export_below, b->next, readonly,
                                nbdkit_is_tls ());
  return default_export_below (b->next, readonly);
}

const char *
stack_default_export (bool readonly)
{
  return default_export_below (stack.top, readonly);
}

static int list_exports_next (nbdkit_backend *b, int readonly,
                              struct nbdkit_exports *exports);

static int
list_exports_below (nbdkit_backend *b, int readonly,
                    struct nbdkit_exports *exports)
{
  if (b->is_plugin)
    return plugin_list_exports (readonly, exports);
  if (b->f.list_exports)
    return b->f.list_exports (list_exports_next, b->next, readonly,
                              nbdkit_is_tls (), exports);
  return list_exports_below (b->next, readonly, exports);
}

/* What a filter's next() returns: as in nbdkit, a layer's "use the
 * default export" is resolved to that layer's default name before the
 * filter sees the list, so a filter can read, rename or describe it.
 */
static int
list_exports_next (nbdkit_backend *b, int readonly,
                   struct nbdkit_exports *exports)
{
  const char *def;

  if (list_exports_below (b, readonly, exports) == -1)
    return -1;
  if (!exports->use_default)
    return 0;
  exports->use_default = false;
  def = default_export_below (b, readonly);
  return def ? nbdkit_add_export (exports, def, NULL) : 0;
}

int
stack_list_exports (bool readonly, struct nbdkit_exports *exports)
{
  return list_exports_below (stack.top, readonly, exports);
}

/* --help: each filter's help, nearest the client first, then the
 * plugin's, as nbdkit prints them.
 */
void
stack_usage (void)
{
  for (struct nbdkit_backend *b = stack.top; !b->is_plugin; b = b->next) {
    printf ("\nfilter: %s", b->name);
    if (b->f.longname)
      printf (" (%s)", b->f.longname);
    printf ("\n(%s)\n", b->filename);
    if (b->f.description)
      printf ("%s\n", b->f.description);
    if (b->f.config_help)
      printf ("%s\n", b->f.config_help);
  }
  plugin_usage ();
}

/* -D NAME.FLAG=N: the layer called NAME, filter or plugin. */
void *
stack_dl_of (const char *name)
{
  for (struct nbdkit_backend *b = stack.top; !b->is_plugin; b = b->next)
    if (strcmp (b->name, name) == 0)
      return b->dl;
  return strcmp (plugin.p.name, name) == 0 ? plugin.dl : NULL;
}
