/* nbdsrv eval plugin: a shell plugin written on the command line.
 *
 *   nbdsrv eval get_size='echo 64M' \
 *               pread='dd if=/dev/zero count=$3 iflag=count_bytes'
 *
 * Each METHOD=SNIPPET parameter is saved as the file $tmpdir/METHOD
 * and run as "$tmpdir/METHOD METHOD ARGS...", under /bin/sh unless the
 * snippet starts with "#!".  From there on it is the sh plugin: the
 * callbacks are shared (methods.c).  Two things differ: a method with
 * no snippet behaves as if it had exited with status 2 (or runs the
 * missing= snippet), and can_write, can_flush, can_trim, can_zero,
 * can_extents and can_cache default to true when the method they
 * guard was given, because here we can tell whether it was.
 */

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NBDKIT_API_VERSION 2
#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
#include <nbdkit-plugin.h>

#include "../sh/call.h"

/* Every method a snippet may define, plus "missing", sorted.  There is
 * no load: it runs before any parameter could define it.
 */
static const char *const methods[] = {
  "after_fork", "block_size", "cache", "can_cache", "can_extents",
  "can_fast_zero", "can_flush", "can_fua", "can_multi_conn", "can_trim",
  "can_write", "can_zero", "close", "config", "config_complete",
  "default_export", "dump_plugin", "export_description", "extents",
  "flush", "get_ready", "get_size", "is_rotational", "list_exports",
  "missing", "open", "pread", "preconnect", "pwrite", "thread_model",
  "trim", "unload", "zero",
};
#define N_METHODS (sizeof methods / sizeof methods[0])

static char *paths[N_METHODS];  /* owned: $tmpdir/METHOD once defined */

static int
method_index (const char *name)
{
  size_t i;

  for (i = 0; i < N_METHODS; ++i)
    if (strcmp (methods[i], name) == 0)
      return i;
  return -1;
}

const char *
sh_method_script (const char *method)
{
  int i = method_index (method);

  if (i >= 0 && paths[i])
    return paths[i];
  return paths[method_index ("missing")];
}

static void
eval_load (void)
{
  sh_tmpdir_create ();
}

static void
eval_unload (void)
{
  size_t i;

  sh_unload ();
  for (i = 0; i < N_METHODS; ++i) {
    free (paths[i]);
    paths[i] = NULL;
  }
}

/* Save SNIPPET as the program for method I. */
static int
method_define (int i, const char *snippet)
{
  char path[PATH_MAX];
  size_t len = strlen (snippet);
  int fd;

  if (paths[i]) {
    nbdkit_error ("%s= is given more than once: keep one", methods[i]);
    return -1;
  }
  if (sh_tmpdir == NULL) {
    nbdkit_error ("no temporary directory for the snippets: see the "
                  "mkdtemp error above");
    return -1;
  }
  snprintf (path, sizeof path, "%s/%s", sh_tmpdir, methods[i]);
  fd = open (path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0700);
  if (fd == -1) {
    nbdkit_error ("%s: %m", path);
    return -1;
  }
  if (write (fd, snippet, len) != (ssize_t) len ||
      write (fd, "\n", 1) != 1) {
    nbdkit_error ("%s: writing the %s snippet: %m", path, methods[i]);
    close (fd);
    return -1;
  }
  if (close (fd) == -1) {
    nbdkit_error ("%s: %m", path);
    return -1;
  }
  paths[i] = strdup (path);
  if (paths[i] == NULL) {
    nbdkit_error ("strdup: %m");
    return -1;
  }
  return 0;
}

/* A method name defines a snippet; any other key goes to the config
 * snippet, which must then exist.
 */
static int
eval_config (const char *key, const char *value)
{
  int i = method_index (key);

  if (i >= 0)
    return method_define (i, value);
  if (paths[method_index ("config")] == NULL) {
    nbdkit_error ("%s=%s is not a method name and there is no config "
                  "snippet to take it: check the spelling, or add "
                  "config='...' before it", key, value);
    return -1;
  }
  return sh_config_forward (key, value);
}

/* can_X defaults to true when X was given. */
static const struct {
  const char *can, *method, *snippet;
} implied[] = {
  { "can_write", "pwrite", "exit 0" },
  { "can_flush", "flush", "exit 0" },
  { "can_trim", "trim", "exit 0" },
  { "can_zero", "zero", "exit 0" },
  { "can_extents", "extents", "exit 0" },
  { "can_cache", "cache", "echo native" },
};

static int
eval_config_complete (void)
{
  size_t i;
  int c;

  for (i = 0; i < sizeof implied / sizeof implied[0]; ++i) {
    c = method_index (implied[i].can);
    if (paths[c] == NULL && paths[method_index (implied[i].method)] &&
        method_define (c, implied[i].snippet) == -1)
      return -1;
  }
  return sh_config_complete ();
}

#define eval_config_help \
  "METHOD=<SCRIPT>    Shell snippet run for METHOD (get_size, pread, ...).\n" \
  "missing=<SCRIPT>   Snippet run for any method not given.\n" \
  "[other arguments are passed to the config snippet]"

static struct nbdkit_plugin plugin = {
  .name               = "eval",
  .longname           = "nbdsrv shell snippet plugin",
  .version            = "0.1.0",
  .load               = eval_load,
  .unload             = eval_unload,
  .dump_plugin        = sh_dump_plugin,
  .config             = eval_config,
  .config_complete    = eval_config_complete,
  .config_help        = eval_config_help,
  .thread_model       = sh_thread_model,
  SH_SCRIPT_CALLBACKS
};

NBDKIT_REGISTER_PLUGIN (plugin)
