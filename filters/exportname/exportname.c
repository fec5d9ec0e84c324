/* nbdsrv exportname filter: change the export list a client sees, the
 * export a client asking for "" gets, which names a client may ask
 * for, and the description sent with each name.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nbdkit-filter.h>

enum list_mode { LIST_KEEP, LIST_ERROR, LIST_EMPTY, LIST_DEFAULTONLY,
                 LIST_EXPLICIT };
enum desc_mode { DESC_KEEP, DESC_NONE, DESC_FIXED, DESC_SCRIPT };

static const char *default_export;      /* borrowed from the command line */
static enum list_mode list_mode = LIST_KEEP;
static int strict;
static enum desc_mode desc_mode = DESC_KEEP;
static const char *desc_arg;            /* text after "fixed:"/"script:" */
static struct nbdkit_exports *explicit_exports; /* exportname= names */

static void
exportname_unload (void)
{
  if (explicit_exports)
    nbdkit_exports_free (explicit_exports);
}

static int
exportname_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
                   const char *key, const char *value)
{
  static const char *const list_names[] = {
    "keep", "error", "empty", "defaultonly", "explicit",
  };
  int r;

  if (strcmp (key, "default-export") == 0
      || strcmp (key, "default_export") == 0) {
    default_export = value;
    return 0;
  }
  if (strcmp (key, "exportname-list") == 0) {
    for (size_t i = 0; i < sizeof list_names / sizeof list_names[0]; ++i) {
      if (strcmp (value, list_names[i]) == 0) {
        list_mode = i;
        return 0;
      }
    }
    nbdkit_error ("exportname: unrecognized exportname-list mode: %s "
                  "(use keep, error, empty, defaultonly or explicit)", value);
    return -1;
  }
  if (strcmp (key, "exportname-strict") == 0) {
    r = nbdkit_parse_bool (value);
    if (r == -1)
      return -1;
    strict = r;
    return 0;
  }
  if (strcmp (key, "exportname") == 0) {
    if (explicit_exports == NULL
        && (explicit_exports = nbdkit_exports_new ()) == NULL)
      return -1;
    return nbdkit_add_export (explicit_exports, value, NULL);
  }
  if (strcmp (key, "exportdesc") == 0) {
    if (strcmp (value, "keep") == 0)
      desc_mode = DESC_KEEP;
    else if (strcmp (value, "none") == 0)
      desc_mode = DESC_NONE;
    else if (strncmp (value, "fixed:", 6) == 0) {
      desc_mode = DESC_FIXED;
      desc_arg = value + 6;
    }
    else if (strncmp (value, "script:", 7) == 0) {
      desc_mode = DESC_SCRIPT;
      desc_arg = value + 7;
    }
    else {
      nbdkit_error ("exportname: unrecognized exportdesc mode: %s "
                    "(use keep, none, fixed:STRING or script:SCRIPT)", value);
      return -1;
    }
    return 0;
  }
  return next (nxdata, key, value);
}

#define exportname_config_help \
  "default-export=<NAME>          Canonical name for the \"\" default export.\n" \
  "exportname-list=<MODE>         Which exports to advertise: keep (default),\n" \
  "                               error, empty, defaultonly, explicit.\n" \
  "exportname-strict=<BOOL>       Limit clients to explicit exports.\n" \
  "exportname=<NAME>              Add an explicit export name, may be\n" \
  "                               used multiple times.\n" \
  "exportdesc=<FORM>              Set descriptions according to FORM: keep\n" \
  "                               (default), none, fixed:STRING,\n" \
  "                               script:SCRIPT."

static int
exportname_is_explicit (const char *name)
{
  size_t n = explicit_exports ? nbdkit_exports_count (explicit_exports) : 0;

  for (size_t i = 0; i < n; ++i)
    if (strcmp (nbdkit_get_export (explicit_exports, i).name, name) == 0)
      return 1;
  return 0;
}

/* Run the exportdesc script with $name set to NAME; return its output
 * without the final newline, interned for this connection, or NULL.
 */
static const char *
exportname_run_script (const char *name)
{
  char buf[4096];
  size_t len = 0;
  ssize_t r;
  int fd[2], status;
  pid_t pid;

  if (pipe (fd) == -1) {
    nbdkit_error ("exportname: pipe: %m");
    return NULL;
  }
  pid = fork ();
  if (pid == -1) {
    nbdkit_error ("exportname: fork: %m");
    close (fd[0]);
    close (fd[1]);
    return NULL;
  }
  if (pid == 0) {
    dup2 (fd[1], STDOUT_FILENO);
    close (fd[0]);
    close (fd[1]);
    setenv ("name", name, 1);
    execl ("/bin/sh", "sh", "-c", desc_arg, (char *) NULL);
    _exit (127);
  }
  close (fd[1]);
  while (len < sizeof buf - 1
         && ((r = read (fd[0], buf + len, sizeof buf - 1 - len)) > 0
             || (r == -1 && errno == EINTR)))
    if (r > 0)
      len += r;
  close (fd[0]);
  while (waitpid (pid, &status, 0) == -1 && errno == EINTR)
    ;
  if (!WIFEXITED (status) || WEXITSTATUS (status) != 0) {
    nbdkit_error ("exportname: exportdesc script failed for export '%s': "
                  "fix the script or use exportdesc=none", name);
    return NULL;
  }
  while (len > 0 && buf[len - 1] == '\n')
    len--;
  return nbdkit_strndup_intern (buf, len);
}

/* The description to send with NAME, PLUGIN_DESC being the layer
 * below's (may be NULL).
 */
static const char *
exportname_description (const char *name, const char *plugin_desc)
{
  switch (desc_mode) {
  case DESC_KEEP: return plugin_desc;
  case DESC_NONE: return NULL;
  case DESC_FIXED: return desc_arg;
  case DESC_SCRIPT: return exportname_run_script (name);
  }
  return NULL;
}

static int
exportname_add_described (struct nbdkit_exports *exports,
                          const struct nbdkit_exports *from)
{
  struct nbdkit_export e;

  for (size_t i = 0; i < nbdkit_exports_count (from); ++i) {
    e = nbdkit_get_export (from, i);
    if (nbdkit_add_export (exports, e.name,
                           exportname_description (e.name, e.description))
        == -1)
      return -1;
  }
  return 0;
}

static int
exportname_list_exports (nbdkit_next_list_exports *next,
                         nbdkit_backend *nxdata, int readonly, int is_tls,
                         struct nbdkit_exports *exports)
{
  struct nbdkit_exports *below;
  int r;

  switch (list_mode) {
  case LIST_ERROR:
    nbdkit_error ("export list restricted by policy");
    errno = EPERM;
    return -1;
  case LIST_EMPTY:
    return 0;
  case LIST_DEFAULTONLY:
    /* The server resolves "" to the canonical name; like nbdkit, the
     * default export is listed without a description.
     */
    if (default_export && *default_export)
      return nbdkit_add_export (exports, default_export, NULL);
    return nbdkit_use_default_export (exports);
  case LIST_EXPLICIT:
    return explicit_exports ? exportname_add_described (exports,
                                                        explicit_exports)
      : 0;
  case LIST_KEEP:
    break;
  }
  below = nbdkit_exports_new ();
  if (below == NULL)
    return -1;
  r = next (nxdata, readonly, below);
  if (r == 0)
    r = exportname_add_described (exports, below);
  nbdkit_exports_free (below);
  return r;
}

static const char *
exportname_default_export (nbdkit_next_default_export *next,
                           nbdkit_backend *nxdata, int readonly, int is_tls)
{
  if (default_export && *default_export)
    return default_export;
  return next (nxdata, readonly);
}

/* The handle is the export name the layer below was opened with. */
static void *
exportname_open (nbdkit_next_open *next, nbdkit_context *nxdata,
                 int readonly, const char *exportname, int is_tls)
{
  const char *name = exportname;

  /* "" means the default export; resolve it before the strict check,
   * so default-export=N with exportname=N admits default clients
   * (nbdkit 1.32 refuses them, which makes default-export useless
   * under exportname-strict).
   */
  if (*name == '\0' && default_export && *default_export)
    name = default_export;
  if (strict && !exportname_is_explicit (name)) {
    if (*name == '\0')
      nbdkit_error ("default export (\"\") not permitted: add exportname=\"\" "
                    "or set default-export");
    else
      nbdkit_error ("export '%s' not found: add exportname=%s to serve it",
                    name, name);
    errno = ENOENT;
    return NULL;
  }
  if (next (nxdata, readonly, name) == -1)
    return NULL;
  name = nbdkit_strdup_intern (name);
  return (void *) name;
}

static const char *
exportname_export_description (nbdkit_next *next, void *handle)
{
  const char *below = NULL;

  if (desc_mode == DESC_KEEP)
    below = next->export_description (next);
  return exportname_description (handle, below);
}

static struct nbdkit_filter filter = {
  .name = "exportname",
  .longname = "nbdsrv exportname filter",
  .unload = exportname_unload,
  .config = exportname_config,
  .config_help = exportname_config_help,
  .list_exports = exportname_list_exports,
  .default_export = exportname_default_export,
  .open = exportname_open,
  .export_description = exportname_export_description,
};

NBDKIT_REGISTER_FILTER (filter)
