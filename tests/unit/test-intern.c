/* nbdsrv unit test: interned strings (server/intern.c).
 *
 * threadlocal_intern_set is the core's; this stub lets the test switch
 * between a "plugin" set and "connection" sets per thread.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

#include "stubs.h"

struct intern_set **threadlocal_intern_set (void);

static struct intern_set *plugin_set;
static __thread struct intern_set **current_slot;

struct intern_set **
threadlocal_intern_set (void)
{
  return current_slot ? current_slot : &plugin_set;
}

static const char *
call_vprintf (const char *fmt, ...)
{
  va_list args;
  const char *r;

  va_start (args, fmt);
  r = nbdkit_vprintf_intern (fmt, args);
  va_end (args);
  return r;
}

static void
test_basic (void)
{
  char buf[16];
  const char *a, *b, *c, *d;

  strcpy (buf, "hello");
  a = nbdkit_strdup_intern (buf);
  strcpy (buf, "XXXXX");
  check (a && strcmp (a, "hello") == 0 && a != buf, "strdup_intern copies");
  check (plugin_set != NULL, "outside a connection the plugin set is used");

  b = nbdkit_strndup_intern ("abcdef", 3);
  check (b && strcmp (b, "abc") == 0, "strndup_intern truncates");
  c = nbdkit_strndup_intern ("ab", 10);
  check (c && strcmp (c, "ab") == 0, "strndup_intern shorter than n");
  d = nbdkit_printf_intern ("%s-%d", "disk", 7);
  check (d && strcmp (d, "disk-7") == 0, "printf_intern");
  d = call_vprintf ("%05u", 42u);
  check (d && strcmp (d, "00042") == 0, "vprintf_intern");
  d = nbdkit_strdup_intern ("");
  check (d && *d == '\0', "empty string");

  stub_reset ();
  check (nbdkit_strdup_intern (NULL) == NULL && stub_error_count == 1,
         "NULL rejected with an error");
  /* Earlier strings are still valid after more were added. */
  check (strcmp (a, "hello") == 0 && strcmp (b, "abc") == 0,
         "strings survive growth");

  intern_set_free (&plugin_set);
  check (plugin_set == NULL, "intern_set_free clears the slot");
  intern_set_free (&plugin_set);
  check (plugin_set == NULL, "freeing an empty slot is harmless");
}

/* Several workers of one connection interning at once. */
#define WORKERS 8
#define PER_WORKER 500

static struct intern_set *conn_set;

static void *
worker (void *arg)
{
  unsigned id = (unsigned) (uintptr_t) arg;
  const char *strs[PER_WORKER];
  char want[32];
  unsigned i, bad = 0;

  current_slot = &conn_set;
  for (i = 0; i < PER_WORKER; ++i)
    strs[i] = nbdkit_printf_intern ("w%u-%u", id, i);
  for (i = 0; i < PER_WORKER; ++i) {
    snprintf (want, sizeof want, "w%u-%u", id, i);
    if (strs[i] == NULL || strcmp (strs[i], want) != 0)
      bad++;
  }
  return (void *) (uintptr_t) bad;
}

static void
test_threads (void)
{
  pthread_t t[WORKERS];
  void *bad;
  unsigned i, total_bad = 0;

  for (i = 0; i < WORKERS; ++i)
    pthread_create (&t[i], NULL, worker, (void *) (uintptr_t) i);
  for (i = 0; i < WORKERS; ++i) {
    pthread_join (t[i], &bad);
    total_bad += (unsigned) (uintptr_t) bad;
  }
  check (total_bad == 0, "concurrent interning: %u bad strings", total_bad);
  check (conn_set != NULL && plugin_set == NULL,
         "connection strings went to the connection set");
  intern_set_free (&conn_set);
  check (conn_set == NULL, "connection set freed");
}

int
main (void)
{
  test_basic ();
  test_threads ();
  return test_summary ();
}
