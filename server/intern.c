/* nbdsrv: nbdkit_*_intern, strings owned by the server.
 *
 * A plugin returns them from callbacks such as .default_export, which
 * return const char *, without leaking or keeping its own bookkeeping.
 * Each string is kept in a set that lives as long as the current
 * connection, or, outside any connection, as long as the plugin.
 */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Provided by threadlocal.c (not yet in internal.h): the address of the
 * current connection's set, or of plugin.interned outside a
 * connection.  The slot may hold NULL until the first string.
 */
struct intern_set **threadlocal_intern_set (void);

struct intern_set {
  char **strs;                  /* owned, and each string owned */
  size_t len, cap;
};

/* Guards every set and the slots that point to them.  Workers of one
 * connection may intern at the same time; interning is rare (open,
 * list_exports), so one lock for all connections costs nothing.
 */
static pthread_mutex_t intern_lock = PTHREAD_MUTEX_INITIALIZER;

/* Appends STR to SET, taking ownership.  Called with intern_lock. */
static int
intern_set_add (struct intern_set **slot, char *str)
{
  struct intern_set *set = *slot;
  char **p;
  size_t cap;

  if (set == NULL) {
    set = calloc (1, sizeof *set);
    if (set == NULL)
      return -1;
    *slot = set;
  }
  if (set->len == set->cap) {
    cap = set->cap ? set->cap * 2 : 8;
    p = reallocarray (set->strs, cap, sizeof *p);
    if (p == NULL)
      return -1;
    set->strs = p;
    set->cap = cap;
  }
  set->strs[set->len++] = str;
  return 0;
}

/* Stores STR (owned; freed on failure) in the current set. */
static const char *
intern_take (char *str)
{
  struct intern_set **slot;
  int r = -1;

  if (str == NULL) {
    nbdkit_error ("cannot copy string for interning: %m");
    return NULL;
  }
  slot = threadlocal_intern_set ();
  if (slot == NULL) {
    nbdkit_error ("cannot intern string: no connection or plugin "
                  "to own it");
    free (str);
    errno = EINVAL;
    return NULL;
  }

  pthread_mutex_lock (&intern_lock);
  r = intern_set_add (slot, str);
  pthread_mutex_unlock (&intern_lock);
  if (r == -1) {
    nbdkit_error ("cannot intern string: %m");
    free (str);
    return NULL;
  }
  return str;
}

const char *
nbdkit_strndup_intern (const char *str, size_t n)
{
  if (str == NULL) {
    nbdkit_error ("nbdkit_strndup_intern: string is NULL");
    errno = EINVAL;
    return NULL;
  }
  return intern_take (strndup (str, n));
}

const char *
nbdkit_strdup_intern (const char *str)
{
  if (str == NULL) {
    nbdkit_error ("nbdkit_strdup_intern: string is NULL");
    errno = EINVAL;
    return NULL;
  }
  return intern_take (strdup (str));
}

const char *
nbdkit_vprintf_intern (const char *fmt, va_list args)
{
  char *str;

  if (vasprintf (&str, fmt, args) == -1)
    str = NULL;
  return intern_take (str);
}

const char *
nbdkit_printf_intern (const char *fmt, ...)
{
  va_list args;
  const char *ret;

  va_start (args, fmt);
  ret = nbdkit_vprintf_intern (fmt, args);
  va_end (args);
  return ret;
}

/* Called when a connection ends or the plugin is unloaded, once no
 * thread can still be using the strings.
 */
void
intern_set_free (struct intern_set **slot)
{
  struct intern_set *set;
  size_t i;

  pthread_mutex_lock (&intern_lock);
  set = *slot;
  *slot = NULL;
  pthread_mutex_unlock (&intern_lock);

  if (set == NULL)
    return;
  for (i = 0; i < set->len; ++i)
    free (set->strs[i]);
  free (set->strs);
  free (set);
}
