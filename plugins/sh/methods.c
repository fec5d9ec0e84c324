/* nbdsrv sh and eval plugins: the plugin callbacks, shared.
 *
 * Each callback turns its arguments into strings, runs the method
 * through sh_call and turns stdout and the exit status back into what
 * the plugin API expects, following the calling convention described
 * in nbdkit-sh-plugin(3).  Where the convention leaves a choice, the
 * behaviour is the one observed from nbdkit 1.32's sh plugin.
 */

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "call.h"

#define NUMBUF 32

/* A connection's handle: the string open printed, which every method
 * receives as $2, and the answers of the two methods that the server
 * and these callbacks both need, so that each runs at most once per
 * connection, as under nbdkit.  -2 means not asked yet.
 */
struct sh_handle {
  char *name;                   /* owned */
  int can_zero;
  int can_flush;
};

static const char *
h_name (void *handle)
{
  return ((struct sh_handle *) handle)->name;
}

static const char *
bool_str (int b)
{
  return b ? "true" : "false";
}

/* The program that runs METHOD, for messages; eval has none for a
 * method that was not given.
 */
static const char *
script_name (const char *method)
{
  const char *path = sh_method_script (method);

  return path ? path : method;
}

/* Run METHOD with ARGS, no input, stdout into OUT (may be NULL). */
static enum sh_status
call0 (const char *method, const char **args, struct sh_buf *out)
{
  return sh_call (method, args, NULL, 0, out);
}

/* Skip leading and cut trailing white space of S in place. */
static char *
trim (char *s)
{
  size_t len;

  while (isspace ((unsigned char) *s))
    s++;
  len = strlen (s);
  while (len > 0 && isspace ((unsigned char) s[len - 1]))
    s[--len] = '\0';
  return s;
}

/* Methods whose absence just means "nothing to do". */
static int
call_optional (const char *method, const char **args)
{
  switch (call0 (method, args, NULL)) {
  case SH_OK:
  case SH_MISSING:
  case SH_FALSE:
    return 0;
  default:
    return -1;
  }
}

/* Exit status 3 from a method that is not a boolean. */
static int
false_error (const char *method)
{
  nbdkit_error ("%s: %s exited with status 3 (false), which has no "
                "meaning for it: exit 0 on success or 1 on error",
                script_name (method), method);
  nbdkit_set_error (EIO);
  errno = EIO;
  return -1;
}

/* A method the client's request needs but the script did not
 * implement, although its can_* method said it would.
 */
static int
missing_error (const char *method, const char *can)
{
  nbdkit_error ("%s: method %s is missing (exit status 2) although %s "
                "said it is supported: implement %s or make %s exit "
                "with status 3", script_name (method), method, can,
                method, can);
  nbdkit_set_error (EIO);
  errno = EIO;
  return -1;
}

void
sh_unload (void)
{
  /* Errors are ignored: the server is going away anyway. */
  if (sh_tmpdir != NULL) {
    call0 ("unload", NULL, NULL);
    sh_tmpdir_remove ();
  }
}

/* nbdkit 1.32 prints max_known_status so that scripts can probe which
 * exit codes have a meaning, then whatever the script adds.
 */
void
sh_dump_plugin (void)
{
  struct sh_buf out = { 0 };

  printf ("max_known_status=%d\n", SH_FALSE);
  fflush (stdout);
  if (sh_tmpdir != NULL && sh_method_script ("dump_plugin") != NULL &&
      call0 ("dump_plugin", NULL, &out) == SH_OK && out.len > 0) {
    fwrite (out.data, 1, out.len, stdout);
    fflush (stdout);
  }
  sh_buf_free (&out);
}

/* Hand KEY=VALUE to the script's config method. */
int
sh_config_forward (const char *key, const char *value)
{
  const char *args[] = { key, value, NULL };

  switch (call0 ("config", args, NULL)) {
  case SH_OK:
    return 0;
  case SH_MISSING:
    nbdkit_error ("%s: parameter %s=%s was given but the script has no "
                  "config method to take it: drop the parameter or "
                  "implement config", script_name ("config"),
                  key, value);
    return -1;
  case SH_FALSE:
    nbdkit_error ("%s: config rejected %s=%s (exit status 3): check the "
                  "parameter", script_name ("config"), key, value);
    return -1;
  default:
    return -1;
  }
}

int
sh_config_complete (void)
{
  return call_optional ("config_complete", NULL);
}

static const char *const thread_models[] = {
  [NBDKIT_THREAD_MODEL_SERIALIZE_CONNECTIONS] = "serialize_connections",
  [NBDKIT_THREAD_MODEL_SERIALIZE_ALL_REQUESTS] = "serialize_all_requests",
  [NBDKIT_THREAD_MODEL_SERIALIZE_REQUESTS] = "serialize_requests",
  [NBDKIT_THREAD_MODEL_PARALLEL] = "parallel",
};

/* A script runs serialized unless it asks for more.  Output that names
 * no model is ignored, as the calling convention says.
 */
int
sh_thread_model (void)
{
  struct sh_buf out = { 0 };
  int model = NBDKIT_THREAD_MODEL_SERIALIZE_ALL_REQUESTS;
  const char *name;
  bool found = false;
  size_t i;

  switch (call0 ("thread_model", NULL, &out)) {
  case SH_OK:
    name = out.data ? trim (out.data) : "";
    for (i = 0; !found && i < sizeof thread_models / sizeof *thread_models;
         ++i) {
      found = strcmp (name, thread_models[i]) == 0;
      if (found)
        model = i;
    }
    if (!found)
      nbdkit_debug ("%s: thread_model printed '%s', which is not a "
                    "thread model: using serialize_all_requests",
                    script_name ("thread_model"), name);
    break;
  case SH_ERROR:
    model = -1;
    break;
  default:
    break;
  }
  sh_buf_free (&out);
  return model;
}

int
sh_get_ready (void)
{
  return call_optional ("get_ready", NULL);
}

int
sh_after_fork (void)
{
  return call_optional ("after_fork", NULL);
}

int
sh_preconnect (int readonly)
{
  const char *args[] = { bool_str (readonly), NULL };

  return call_optional ("preconnect", args);
}

/* Split the output of list_exports or default_export into lines, in
 * place.  Returns the number of lines; *LINES is allocated.  A final
 * newline ends the last line rather than starting an empty one.
 */
static ssize_t
split_lines (struct sh_buf *out, char ***lines)
{
  size_t n = 0, cap = 0, i;
  char **v = NULL, **nv;
  char *p = out->data;

  *lines = NULL;
  for (i = 0; out->data != NULL && i <= out->len; ++i) {
    if (i < out->len && out->data[i] != '\n')
      continue;
    if (i == out->len && p == out->data + out->len)
      break;                    /* nothing after the last newline */
    if (n == cap) {
      cap = cap ? cap * 2 : 16;
      nv = reallocarray (v, cap, sizeof *v);
      if (nv == NULL) {
        free (v);
        nbdkit_error ("reallocarray: %m");
        return -1;
      }
      v = nv;
    }
    out->data[i] = '\0';
    v[n++] = p;
    p = out->data + i + 1;
  }
  *lines = v;
  return n;
}

enum list_mode { LIST_NAMES, LIST_INTERLEAVED, LIST_NAMES_DESCS };

/* The first line may choose how the rest is read; any other first
 * line is itself a name, in the NAMES layout.  *FIRST is the index of
 * the first name line.
 */
static enum list_mode
list_mode_of (char **lines, size_t n, size_t *first)
{
  *first = 1;
  if (n > 0 && strcmp (lines[0], "NAMES") == 0)
    return LIST_NAMES;
  if (n > 0 && strcmp (lines[0], "INTERLEAVED") == 0)
    return LIST_INTERLEAVED;
  if (n > 0 && strcmp (lines[0], "NAMES+DESCRIPTIONS") == 0)
    return LIST_NAMES_DESCS;
  *first = 0;
  return LIST_NAMES;
}

/* Add the exports listed in OUT to EXPORTS. */
static int
exports_parse (struct sh_buf *out, struct nbdkit_exports *exports)
{
  char **lines;
  ssize_t n;
  size_t first, i, half;
  enum list_mode mode;
  int r = 0;

  n = split_lines (out, &lines);
  if (n == -1)
    return -1;
  mode = list_mode_of (lines, n, &first);
  lines += first;
  n -= first;

  switch (mode) {
  case LIST_NAMES:
    for (i = 0; r == 0 && i < (size_t) n; ++i)
      r = nbdkit_add_export (exports, lines[i], NULL);
    break;
  case LIST_INTERLEAVED:
    for (i = 0; r == 0 && i < (size_t) n; i += 2)
      r = nbdkit_add_export (exports, lines[i],
                             i + 1 < (size_t) n ? lines[i + 1] : NULL);
    break;
  case LIST_NAMES_DESCS:
    /* With an odd count the middle line is a name with no description. */
    half = (n + 1) / 2;
    for (i = 0; r == 0 && i < half; ++i)
      r = nbdkit_add_export (exports, lines[i],
                             half + i < (size_t) n ? lines[half + i] : NULL);
    break;
  }
  free (lines - first);
  return r;
}

int
sh_list_exports (int readonly, int is_tls, struct nbdkit_exports *exports)
{
  const char *args[] = { bool_str (readonly), bool_str (is_tls), NULL };
  struct sh_buf out = { 0 };
  int r;

  switch (call0 ("list_exports", args, &out)) {
  case SH_OK:
    /* nbdkit 1.32 lists only lines that end with a newline; an
     * unterminated last line is dropped, here too, so that the same
     * script lists the same exports.
     */
    while (out.len > 0 && out.data[out.len - 1] != '\n')
      out.data[--out.len] = '\0';
    r = exports_parse (&out, exports);
    break;
  case SH_MISSING:
    r = nbdkit_use_default_export (exports);
    break;
  case SH_FALSE:
    nbdkit_error ("%s: list_exports exited with status 3, which has no "
                  "meaning for it: exit 0 after printing the list",
                  script_name ("list_exports"));
    r = -1;
    break;
  default:
    r = -1;
  }
  sh_buf_free (&out);
  return r;
}

/* The name printed, in any of the list_exports layouts: the first
 * listed name, or "" for an empty list.
 */
const char *
sh_default_export (int readonly, int is_tls)
{
  const char *args[] = { bool_str (readonly), bool_str (is_tls), NULL };
  struct sh_buf out = { 0 };
  const char *name = NULL;
  char **lines;
  size_t first;
  ssize_t n;

  switch (call0 ("default_export", args, &out)) {
  case SH_OK:
    n = split_lines (&out, &lines);
    if (n == -1)
      break;
    list_mode_of (lines, n, &first);
    name = nbdkit_strdup_intern ((size_t) n > first ? lines[first] : "");
    free (lines);
    break;
  case SH_MISSING:
    name = "";
    break;
  case SH_FALSE:
    nbdkit_error ("%s: default_export exited with status 3, which has no "
                  "meaning for it: exit 0 after printing the name",
                  script_name ("default_export"));
    break;
  default:
    break;
  }
  sh_buf_free (&out);
  return name;
}

/* The handle holds the string open printed, owned by the server's
 * connection until close frees it.
 */
void *
sh_open (int readonly)
{
  const char *export = nbdkit_export_name ();
  const char *args[] = { bool_str (readonly), export ? export : "",
                         bool_str (nbdkit_is_tls () > 0), NULL };
  struct sh_buf out = { 0 };
  struct sh_handle *h = NULL;
  char *name = NULL;

  switch (call0 ("open", args, &out)) {
  case SH_OK:
    name = strdup (out.data ? out.data : "");
    if (name)
      sh_chomp (name);
    break;
  case SH_MISSING:
    name = strdup ("");
    break;
  case SH_FALSE:
    nbdkit_error ("%s: open exited with status 3, which has no meaning "
                  "for it: exit 0 and print a handle, or 1 to refuse",
                  script_name ("open"));
    goto out_free;
  default:
    goto out_free;
  }
  if (name)
    h = malloc (sizeof *h);
  if (h == NULL) {
    nbdkit_error ("malloc: %m");
    free (name);
    goto out_free;
  }
  *h = (struct sh_handle) { .name = name, .can_zero = -2, .can_flush = -2 };

 out_free:
  sh_buf_free (&out);
  return h;
}

void
sh_close (void *handle)
{
  struct sh_handle *h = handle;
  const char *args[] = { h->name, NULL };

  call0 ("close", args, NULL);
  free (h->name);
  free (h);
}

const char *
sh_export_description (void *handle)
{
  const char *args[] = { h_name (handle), NULL };
  struct sh_buf out = { 0 };
  const char *desc = NULL;

  if (call0 ("export_description", args, &out) == SH_OK) {
    if (out.data)
      sh_chomp (out.data);
    desc = nbdkit_strdup_intern (out.data ? out.data : "");
  }
  sh_buf_free (&out);
  return desc;
}

int64_t
sh_get_size (void *handle)
{
  const char *args[] = { h_name (handle), NULL };
  struct sh_buf out = { 0 };
  int64_t size = -1;

  switch (call0 ("get_size", args, &out)) {
  case SH_OK:
    size = nbdkit_parse_size (out.data ? trim (out.data) : "");
    break;
  case SH_MISSING:
  case SH_FALSE:
    nbdkit_error ("%s: get_size is required: it must print the disk "
                  "size, for example 'echo 1G', and exit 0",
                  script_name ("get_size"));
    break;
  default:
    break;
  }
  sh_buf_free (&out);
  return size;
}

/* Three sizes: minimum, preferred, maximum.  A missing method leaves
 * them all 0, which means "no constraint".
 */
int
sh_block_size (void *handle, uint32_t *minimum, uint32_t *preferred,
               uint32_t *maximum)
{
  const char *args[] = { h_name (handle), NULL };
  struct sh_buf out = { 0 };
  uint32_t *dest[3] = { minimum, preferred, maximum };
  char *p, *word, *save = NULL;
  int64_t v;
  int i, r = -1;

  *minimum = *preferred = *maximum = 0;
  switch (call0 ("block_size", args, &out)) {
  case SH_OK:
    break;
  case SH_MISSING:
    r = 0;
    goto out_free;
  default:
    goto out_free;
  }

  p = out.data ? out.data : (char *) "";
  for (i = 0; i < 3; ++i, p = NULL) {
    word = strtok_r (p, " \t\n", &save);
    if (word == NULL) {
      nbdkit_error ("%s: block_size must print three sizes (minimum, "
                    "preferred, maximum) but printed %d",
                    script_name ("block_size"), i);
      goto out_free;
    }
    v = nbdkit_parse_size (word);
    if (v == -1)
      goto out_free;
    if (v > UINT32_MAX) {
      nbdkit_error ("%s: block_size printed %s, which does not fit in 32 "
                    "bits", script_name ("block_size"), word);
      goto out_free;
    }
    *dest[i] = v;
  }
  r = 0;

 out_free:
  sh_buf_free (&out);
  return r;
}

/* A boolean method: exit 0 is true, 3 is false.  Missing means false:
 * the script cannot be asked whether it has a method without running
 * it, so it must opt in to each feature.
 */
static int
call_bool (const char *method, void *handle)
{
  const char *args[] = { h_name (handle), NULL };

  switch (call0 (method, args, NULL)) {
  case SH_OK:
    return 1;
  case SH_MISSING:
  case SH_FALSE:
    return 0;
  default:
    return -1;
  }
}

int sh_can_write (void *h) { return call_bool ("can_write", h); }
int sh_is_rotational (void *h) { return call_bool ("is_rotational", h); }
int sh_can_trim (void *h) { return call_bool ("can_trim", h); }

/* METHOD's answer, asked once per connection and kept in *CACHED. */
static int
call_bool_once (const char *method, void *handle, int *cached)
{
  if (*cached == -2)
    *cached = call_bool (method, handle);
  return *cached;
}

int
sh_can_flush (void *handle)
{
  struct sh_handle *h = handle;

  return call_bool_once ("can_flush", handle, &h->can_flush);
}

int
sh_can_zero (void *handle)
{
  struct sh_handle *h = handle;

  return call_bool_once ("can_zero", handle, &h->can_zero);
}

/* Without can_fast_zero, fast zero is advertised unless can_zero said
 * yes: with no zero support of its own the script's zeroes would be
 * written with pwrite, and a fast zero request then fails at once,
 * which is fast.  nbdkit-plugin(3) gives C plugins this rule, and
 * nbdkit's sh plugin follows it.
 */
int
sh_can_fast_zero (void *handle)
{
  const char *args[] = { h_name (handle), NULL };
  int r;

  switch (call0 ("can_fast_zero", args, NULL)) {
  case SH_OK:
    return 1;
  case SH_FALSE:
    return 0;
  case SH_MISSING:
    r = sh_can_zero (handle);
    return r == -1 ? -1 : !r;
  default:
    return -1;
  }
}
int sh_can_extents (void *h) { return call_bool ("can_extents", h); }
int sh_can_multi_conn (void *h) { return call_bool ("can_multi_conn", h); }

/* can_fua and can_cache print one of none, emulate or native.
 * Returns 0, 1 or 2, -1 on error, -2 if the method is missing.
 */
static int
call_tristate (const char *method, void *handle)
{
  static const char *const names[] = { "none", "emulate", "native" };
  const char *args[] = { h_name (handle), NULL };
  struct sh_buf out = { 0 };
  const char *word;
  int r = -1, i;

  switch (call0 (method, args, &out)) {
  case SH_OK:
    word = out.data ? trim (out.data) : "";
    for (i = 0; i < 3; ++i)
      if (strcmp (word, names[i]) == 0)
        r = i;
    if (r == -1)
      nbdkit_error ("%s: %s printed '%s': it must print none, emulate or "
                    "native", script_name (method), method, word);
    break;
  case SH_MISSING:
    r = -2;                     /* the caller picks the default */
    break;
  case SH_FALSE:
    /* Not a boolean: nbdkit refuses the connection, and so do we. */
    nbdkit_error ("%s: %s exited with status 3, but it is not a boolean: "
                  "print none, emulate or native and exit 0",
                  script_name (method), method);
    break;
  default:
    break;
  }
  sh_buf_free (&out);
  return r;
}

/* Without can_fua, FUA is emulated with flush when the script can
 * flush, as the server does for C plugins that lack can_fua.
 */
int
sh_can_fua (void *handle)
{
  int r = call_tristate ("can_fua", handle);

  if (r == -2)
    r = sh_can_flush (handle) == 1 ? NBDKIT_FUA_EMULATE : NBDKIT_FUA_NONE;
  return r;
}

/* Without can_cache there is no cache support at all. */
int
sh_can_cache (void *handle)
{
  int r = call_tristate ("can_cache", handle);

  return r == -2 ? NBDKIT_CACHE_NONE : r;
}

int
sh_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
          uint32_t flags)
{
  char cbuf[NUMBUF], obuf[NUMBUF];
  const char *args[] = { h_name (handle), cbuf, obuf, NULL };
  struct sh_buf out = { .data = buf, .cap = count, .fixed = true };

  snprintf (cbuf, sizeof cbuf, "%" PRIu32, count);
  snprintf (obuf, sizeof obuf, "%" PRIu64, offset);
  switch (sh_call ("pread", args, NULL, 0, &out)) {
  case SH_OK:
    break;
  case SH_MISSING:
    nbdkit_error ("%s: pread is required: it must print count ($3) "
                  "bytes from offset ($4)", script_name ("pread"));
    nbdkit_set_error (EIO);
    errno = EIO;
    return -1;
  case SH_FALSE:
    return false_error ("pread");
  default:
    return -1;
  }
  if (out.len != count) {
    nbdkit_error ("%s: pread printed %zu bytes but %" PRIu32 " were "
                  "requested at offset %" PRIu64 ": it must print "
                  "exactly count ($3) bytes",
                  script_name ("pread"), out.len, count, offset);
    nbdkit_set_error (EIO);
    errno = EIO;
    return -1;
  }
  return 0;
}

int
sh_pwrite (void *handle, const void *buf, uint32_t count, uint64_t offset,
           uint32_t flags)
{
  char cbuf[NUMBUF], obuf[NUMBUF];
  const char *args[] = { h_name (handle), cbuf, obuf,
                         flags & NBDKIT_FLAG_FUA ? "fua" : "", NULL };

  snprintf (cbuf, sizeof cbuf, "%" PRIu32, count);
  snprintf (obuf, sizeof obuf, "%" PRIu64, offset);
  switch (sh_call ("pwrite", args, buf, count, NULL)) {
  case SH_OK:
    return 0;
  case SH_MISSING:
    return missing_error ("pwrite", "can_write");
  case SH_FALSE:
    return false_error ("pwrite");
  default:
    return -1;
  }
}

/* flush, trim and cache are hints: a script that says it can do them
 * but has no such method succeeds without doing anything, as under
 * nbdkit.
 */
int
sh_flush (void *handle, uint32_t flags)
{
  const char *args[] = { h_name (handle), NULL };

  switch (call0 ("flush", args, NULL)) {
  case SH_OK:
    return 0;
  case SH_MISSING:
    return 0;
  case SH_FALSE:
    return false_error ("flush");
  default:
    return -1;
  }
}

int
sh_trim (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  char cbuf[NUMBUF], obuf[NUMBUF];
  const char *args[] = { h_name (handle), cbuf, obuf,
                         flags & NBDKIT_FLAG_FUA ? "fua" : "", NULL };

  snprintf (cbuf, sizeof cbuf, "%" PRIu32, count);
  snprintf (obuf, sizeof obuf, "%" PRIu64, offset);
  switch (call0 ("trim", args, NULL)) {
  case SH_OK:
    return 0;
  case SH_MISSING:
    return 0;
  case SH_FALSE:
    return false_error ("trim");
  default:
    return -1;
  }
}

/* A missing zero method is not an error: EOPNOTSUPP makes the server
 * write zeroes with pwrite instead (or fail a fast zero at once).
 */
int
sh_zero (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  char cbuf[NUMBUF], obuf[NUMBUF], fbuf[NUMBUF] = "";
  const char *args[] = { h_name (handle), cbuf, obuf, fbuf, NULL };

  snprintf (cbuf, sizeof cbuf, "%" PRIu32, count);
  snprintf (obuf, sizeof obuf, "%" PRIu64, offset);
  if (flags & NBDKIT_FLAG_MAY_TRIM)
    strcat (fbuf, "may_trim,");
  if (flags & NBDKIT_FLAG_FUA)
    strcat (fbuf, "fua,");
  if (flags & NBDKIT_FLAG_FAST_ZERO)
    strcat (fbuf, "fast,");
  if (*fbuf)
    fbuf[strlen (fbuf) - 1] = '\0';

  switch (call0 ("zero", args, NULL)) {
  case SH_OK:
    return 0;
  case SH_MISSING:
  case SH_FALSE:
    nbdkit_debug ("zero is missing: falling back to pwrite");
    nbdkit_set_error (EOPNOTSUPP);
    errno = EOPNOTSUPP;
    return -1;
  default:
    return -1;
  }
}

/* The type column: a number, nothing, or words separated by commas,
 * of which "hole" and "zero" count and others are ignored.  A number
 * is read as far as it goes ("3x" is 3).  nbdkit 1.32 reads the
 * column this leniently, and a script tested against it may rely on
 * that.
 */
static uint32_t
extent_type_parse (char *s)
{
  uint32_t type = 0;
  char *word, *save = NULL;

  if (s == NULL)
    return 0;
  if (isdigit ((unsigned char) *s))
    return strtoul (s, NULL, 10);
  for (word = strtok_r (s, ",", &save); word;
       word = strtok_r (NULL, ",", &save)) {
    if (strcmp (word, "hole") == 0)
      type |= NBDKIT_EXTENT_HOLE;
    else if (strcmp (word, "zero") == 0)
      type |= NBDKIT_EXTENT_ZERO;
  }
  return type;
}

/* One "offset length [type]" line.  Every line counts, also a blank
 * one in the middle, which is an error as in nbdkit.
 */
static int
extent_line_parse (char *line, struct nbdkit_extents *extents)
{
  char *save = NULL, *f_off, *f_len, *f_type;
  int64_t off, len;

  f_off = strtok_r (line, " \t", &save);
  f_len = f_off ? strtok_r (NULL, " \t", &save) : NULL;
  f_type = f_len ? strtok_r (NULL, " \t", &save) : NULL;
  if (f_len == NULL) {
    nbdkit_error ("%s: extents printed the line '%s', which is not "
                  "'offset length [type]'", script_name ("extents"),
                  f_off ? f_off : "");
    return -1;
  }
  off = nbdkit_parse_size (f_off);
  len = nbdkit_parse_size (f_len);
  if (off == -1 || len == -1)
    return -1;
  return nbdkit_add_extent (extents, off, len, extent_type_parse (f_type));
}

int
sh_extents (void *handle, uint32_t count, uint64_t offset, uint32_t flags,
            struct nbdkit_extents *extents)
{
  char cbuf[NUMBUF], obuf[NUMBUF];
  const char *args[] = { h_name (handle), cbuf, obuf,
                         flags & NBDKIT_FLAG_REQ_ONE ? "req_one" : "",
                         NULL };
  struct sh_buf out = { 0 };
  char **lines;
  ssize_t n;
  size_t i;
  int r = -1;

  snprintf (cbuf, sizeof cbuf, "%" PRIu32, count);
  snprintf (obuf, sizeof obuf, "%" PRIu64, offset);
  switch (call0 ("extents", args, &out)) {
  case SH_OK:
    break;
  case SH_MISSING:
    r = missing_error ("extents", "can_extents");
    goto out_free;
  case SH_FALSE:
    r = false_error ("extents");
    goto out_free;
  default:
    goto out_free;
  }

  n = split_lines (&out, &lines);
  if (n == -1)
    goto out_free;
  r = 0;
  for (i = 0; r == 0 && i < (size_t) n; ++i)
    r = extent_line_parse (lines[i], extents);
  free (lines);
  if (r == -1) {
    nbdkit_set_error (EIO);
    errno = EIO;
  }

 out_free:
  sh_buf_free (&out);
  return r;
}

int
sh_cache (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  char cbuf[NUMBUF], obuf[NUMBUF];
  const char *args[] = { h_name (handle), cbuf, obuf, NULL };

  snprintf (cbuf, sizeof cbuf, "%" PRIu32, count);
  snprintf (obuf, sizeof obuf, "%" PRIu64, offset);
  switch (call0 ("cache", args, NULL)) {
  case SH_OK:
    return 0;
  case SH_MISSING:
    return 0;
  case SH_FALSE:
    return false_error ("cache");
  default:
    return -1;
  }
}
