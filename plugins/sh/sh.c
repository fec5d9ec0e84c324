/* nbdsrv sh plugin: a plugin written as one script or executable.
 *
 *   nbdsrv sh /path/to/script [key=value ...]
 *   nbdsrv sh - < script
 *
 * Every callback runs the script as "SCRIPT METHOD ARGS..."; see
 * docs/nbdkit-sh-plugin.md for the calling convention, which is
 * nbdkit's, so scripts written for nbdkit-sh-plugin run unchanged.
 * This file only handles the script itself (the first parameter,
 * the inline form, load and the script's magic key); the callbacks
 * are shared with the eval plugin in methods.c.
 */

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NBDKIT_API_VERSION 2
/* The script chooses its own thread model (thread_model method);
 * the plugin itself allows anything up to parallel.
 */
#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
#include <nbdkit-plugin.h>

#include "call.h"

static char *script;            /* owned: absolute path of the script */
static char *script_magic_key;  /* owned: the script's magic_config_key */

const char *
sh_method_script (const char *method)
{
  return script;
}

static void
sh_plugin_load (void)
{
  /* load cannot fail; config reports the missing directory. */
  sh_tmpdir_create ();
}

static void
sh_plugin_unload (void)
{
  sh_unload ();
  free (script);
  script = NULL;
  free (script_magic_key);
  script_magic_key = NULL;
}

/* "script=-": copy stdin into $tmpdir so that it can be run like any
 * other script.  Without "#!" it runs under /bin/sh (see call.c).
 */
static char *
script_from_stdin (void)
{
  char path[PATH_MAX], buf[65536];
  ssize_t r;
  int fd;

  if (!nbdkit_stdio_safe ()) {
    nbdkit_error ("script=- reads the script from stdin, which is not "
                  "possible here (for example with -s): give the "
                  "script's path instead");
    return NULL;
  }
  snprintf (path, sizeof path, "%s/inline-script.sh", sh_tmpdir);
  fd = open (path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0700);
  if (fd == -1) {
    nbdkit_error ("%s: %m", path);
    return NULL;
  }
  while ((r = read (STDIN_FILENO, buf, sizeof buf)) != 0) {
    if (r == -1 && errno == EINTR)
      continue;
    if (r == -1 || write (fd, buf, r) != r) {
      nbdkit_error ("copying the inline script from stdin to %s: %m", path);
      close (fd);
      return NULL;
    }
  }
  if (close (fd) == -1) {
    nbdkit_error ("%s: %m", path);
    return NULL;
  }
  return strdup (path);
}

/* Ask the script for its magic key, so that a bare word after the
 * script goes to it.  The server reads .magic_config_key from our
 * struct after each parameter, as nbdkit does.
 */
static struct nbdkit_plugin plugin;

static int
script_magic_key_query (void)
{
  struct sh_buf out = { 0 };
  char *key;
  int r = 0;

  switch (sh_call ("magic_config_key", NULL, NULL, 0, &out)) {
  case SH_OK:
    if (out.data == NULL)
      break;
    key = out.data + strspn (out.data, " \t\n");
    key[strcspn (key, " \t\n")] = '\0';
    if (*key) {
      script_magic_key = strdup (key);
      if (script_magic_key == NULL) {
        nbdkit_error ("strdup: %m");
        r = -1;
      }
    }
    break;
  case SH_ERROR:
    r = -1;
    break;
  default:
    break;
  }
  plugin.magic_config_key = script_magic_key;
  sh_buf_free (&out);
  return r;
}

static int
script_set (const char *value)
{
  if (sh_tmpdir == NULL) {
    nbdkit_error ("no temporary directory for the script: see the "
                  "mkdtemp error above");
    return -1;
  }
  if (strcmp (value, "-") == 0)
    script = script_from_stdin ();
  else
    script = nbdkit_realpath (value);
  if (script == NULL)
    return -1;

  if (sh_call ("load", NULL, NULL, 0, NULL) == SH_ERROR)
    return -1;
  return script_magic_key_query ();
}

/* The first parameter is the script; every later one is the script's
 * business, also a second script=.
 */
static int
sh_plugin_config (const char *key, const char *value)
{
  if (script == NULL) {
    if (strcmp (key, "script") != 0) {
      nbdkit_error ("the script must come first: 'nbdsrv sh SCRIPT "
                    "%s=%s', not %s=%s before it", key, value, key, value);
      return -1;
    }
    return script_set (value);
  }
  return sh_config_forward (key, value);
}

static int
sh_plugin_config_complete (void)
{
  if (script == NULL) {
    nbdkit_error ("no script given: run 'nbdsrv sh /path/to/script' "
                  "or 'nbdsrv sh - < script'");
    return -1;
  }
  return sh_config_complete ();
}

/* Without a script there is nothing to ask and nothing to serve; it
 * happens only for --dump-plugin sh, where nbdkit 1.32 says parallel
 * (the most a script may choose), and so do we.  With a script, its
 * thread_model method decides.
 */
static int
sh_plugin_thread_model (void)
{
  if (script == NULL)
    return NBDKIT_THREAD_MODEL_PARALLEL;
  return sh_thread_model ();
}

#define sh_config_help \
  "script=<FILENAME>     (required) The script to run, or - for stdin.\n" \
  "[other arguments may be used by the script]"

static struct nbdkit_plugin plugin = {
  .name               = "sh",
  .longname           = "nbdsrv shell script plugin",
  .version            = "0.1.0",
  .load               = sh_plugin_load,
  .unload             = sh_plugin_unload,
  .dump_plugin        = sh_dump_plugin,
  .config             = sh_plugin_config,
  .config_complete    = sh_plugin_config_complete,
  .config_help        = sh_config_help,
  .magic_config_key   = "script",
  .thread_model       = sh_plugin_thread_model,
  SH_SCRIPT_CALLBACKS
};

NBDKIT_REGISTER_PLUGIN (plugin)
