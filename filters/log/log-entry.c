/* nbdsrv log filter: the text of one log entry, in nbdkit 1.32's
 * format, and its two outputs (a line in the log file, a run of the
 * log script).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "log.h"

void
log_entry_init (struct log_entry *e, enum log_type type, const char *act,
                uint64_t connection, uint64_t id)
{
  e->type = type;
  e->act = act;
  e->connection = connection;
  e->id = id;
  e->has_result = 0;
  e->body = e->inline_body;
  e->cap = sizeof e->inline_body;
  e->len = 0;
  e->body[0] = '\0';
}

void
log_entry_free (struct log_entry *e)
{
  if (e->body != e->inline_body)
    free (e->body);
  e->body = e->inline_body;
}

/* Make room for N more bytes and the terminator; false if out of
 * memory, in which case the line is cut short rather than lost.
 */
static int
log_entry_reserve (struct log_entry *e, size_t n)
{
  size_t cap = e->cap;
  char *p;

  if (e->len + n + 1 <= e->cap)
    return 1;
  while (cap < e->len + n + 1)
    cap *= 2;
  if (e->body == e->inline_body) {
    p = malloc (cap);
    if (p)
      memcpy (p, e->body, e->len + 1);
  }
  else
    p = realloc (e->body, cap);
  if (p == NULL)
    return 0;
  e->body = p;
  e->cap = cap;
  return 1;
}

void
log_entry_vadd (struct log_entry *e, const char *fmt, va_list args)
{
  va_list copy;
  int n;

  va_copy (copy, args);
  n = vsnprintf (e->body + e->len, e->cap - e->len, fmt, copy);
  va_end (copy);
  if (n < 0)
    return;
  if ((size_t) n >= e->cap - e->len) {
    if (!log_entry_reserve (e, n))
      return;
    vsnprintf (e->body + e->len, e->cap - e->len, fmt, args);
  }
  e->len += n;
}

void
log_entry_add (struct log_entry *e, const char *fmt, ...)
{
  va_list args;

  va_start (args, fmt);
  log_entry_vadd (e, fmt, args);
  va_end (args);
}

static void
log_entry_putc (struct log_entry *e, char c)
{
  if (!log_entry_reserve (e, 1))
    return;
  e->body[e->len++] = c;
  e->body[e->len] = '\0';
}

/* Shell quoting as nbdkit prints it: a word of safe characters as is,
 * anything else in double quotes with \ before " $ ` and \.
 */
void
log_entry_add_quoted (struct log_entry *e, const char *s)
{
  static const char safe[] =
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    "%+,-./:=@_";

  if (*s != '\0' && strspn (s, safe) == strlen (s)) {
    log_entry_add (e, "%s", s);
    return;
  }
  log_entry_putc (e, '"');
  for (; *s; ++s) {
    if (strchr ("\"$`\\", *s))
      log_entry_putc (e, '\\');
    log_entry_putc (e, *s);
  }
  log_entry_putc (e, '"');
}

void
log_entry_add_exports (struct log_entry *e,
                       const struct nbdkit_exports *exports)
{
  size_t n = nbdkit_exports_count (exports);

  log_entry_add (e, "exports=(");
  for (size_t i = 0; i < n; ++i) {
    if (i > 0)
      log_entry_putc (e, ' ');
    log_entry_add_quoted (e, nbdkit_get_export (exports, i).name);
  }
  log_entry_putc (e, ')');
}

void
log_entry_add_extents (struct log_entry *e,
                       const struct nbdkit_extents *extents)
{
  static const char *const types[] = { "", "hole", "zero", "hole,zero" };
  size_t n = nbdkit_extents_count (extents);
  struct nbdkit_extent x;

  log_entry_add (e, "extents=(");
  for (size_t i = 0; i < n; ++i) {
    x = nbdkit_get_extent (extents, i);
    log_entry_add (e, "%s0x%" PRIx64 " 0x%" PRIx64 " \"%s\"",
                   i > 0 ? " " : "", x.offset, x.length, types[x.type & 3]);
  }
  log_entry_putc (e, ')');
}

void
log_entry_result (struct log_entry *e, int r, int err)
{
  e->has_result = 1;
  e->r = r;
  e->err = err;
}

static const char *
log_errno_name (int err)
{
  const char *name = strerrorname_np (err);

  return name ? name : "EIO";
}

void
log_entry_write_line (struct log_entry *e, FILE *fp)
{
  struct timeval tv;
  struct tm tm;
  char stamp[64];

  gettimeofday (&tv, NULL);
  localtime_r (&tv.tv_sec, &tm);
  strftime (stamp, sizeof stamp, "%F %T", &tm);
  fprintf (fp, "%s.%06ld ", stamp, (long) tv.tv_usec);
  if (e->connection)
    fprintf (fp, "connection=%" PRIu64 " ", e->connection);
  fprintf (fp, "%s%s", e->type == LOG_LEAVE ? "..." : "", e->act);
  if (e->id)
    fprintf (fp, " id=%" PRIu64, e->id);
  if (e->len)
    fprintf (fp, " %s", e->body);
  if (e->type == LOG_ENTER)
    fputs (" ...", fp);
  if (e->has_result) {
    fprintf (fp, " return=%d", e->r);
    if (e->r == -1)
      fprintf (fp, " error=%s", log_errno_name (e->err));
  }
  fputc ('\n', fp);
}

/* Run SCRIPT under bash (the body may hold array assignments) with the
 * entry's fields as shell variables.  Its exit status is ignored: a
 * log script cannot change or stop a request.
 */
void
log_entry_run_script (struct log_entry *e, const char *script)
{
  static const char *const types[] = { "ENTER", "LEAVE", "PRINT" };
  char *text = NULL;
  size_t size = 0;
  FILE *fp = open_memstream (&text, &size);
  pid_t pid;
  int status;

  if (fp == NULL)
    return;
  fprintf (fp, "act=%s\ntype=%s\n", e->act, types[e->type]);
  if (e->connection)
    fprintf (fp, "connection=%" PRIu64 "\n", e->connection);
  if (e->id)
    fprintf (fp, "id=%" PRIu64 "\n", e->id);
  if (e->len)
    fprintf (fp, "%s\n", e->body);
  if (e->has_result) {
    fprintf (fp, "return=%d\n", e->r);
    if (e->r == -1)
      fprintf (fp, "error=%s\n", log_errno_name (e->err));
  }
  fprintf (fp, "%s\n", script);
  if (fclose (fp) != 0) {
    free (text);
    return;
  }
  pid = fork ();
  if (pid == 0) {
    execl ("/bin/bash", "bash", "-c", text, (char *) NULL);
    _exit (127);
  }
  free (text);
  if (pid == -1) {
    nbdkit_error ("log: cannot run logscript: fork: %m");
    return;
  }
  while (waitpid (pid, &status, 0) == -1 && errno == EINTR)
    ;
}
