/* nbdsrv unit test: export lists (server/exports.c). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#include "stubs.h"

static void
test_basic (void)
{
  struct nbdkit_exports *e = nbdkit_exports_new ();
  struct nbdkit_export x;
  char buf[8];

  check (e != NULL, "exports_new");
  check (nbdkit_exports_count (e) == 0, "new list is empty");
  check (!e->use_default, "use_default starts false");

  strcpy (buf, "disk");
  check (nbdkit_add_export (e, buf, "first disk") == 0, "add disk");
  /* The list keeps its own copy. */
  strcpy (buf, "XXXX");
  check (nbdkit_add_export (e, "", NULL) == 0, "add default, no desc");
  check (nbdkit_exports_count (e) == 2, "count is 2");

  x = nbdkit_get_export (e, 0);
  check (strcmp (x.name, "disk") == 0, "name copied: %s", x.name);
  check (x.description && strcmp (x.description, "first disk") == 0,
         "description copied");
  x = nbdkit_get_export (e, 1);
  check (strcmp (x.name, "") == 0 && x.description == NULL,
         "empty name, NULL description");

  check (nbdkit_use_default_export (e) == 0 && e->use_default,
         "use_default_export sets the flag");
  nbdkit_exports_free (e);
  nbdkit_exports_free (NULL);
}

static void
test_limits (void)
{
  struct nbdkit_exports *e = exports_new ();
  char *big = malloc (4098);
  char name[32];
  size_t i;
  int r = 0;

  memset (big, 'a', 4096);
  big[4096] = '\0';
  check (nbdkit_add_export (e, big, big) == 0, "4096-byte name and desc");

  big[4096] = 'a';
  big[4097] = '\0';
  stub_reset ();
  errno = 0;
  check (nbdkit_add_export (e, big, NULL) == -1 && errno == EINVAL,
         "4097-byte name rejected");
  check (error_contains ("4097 bytes") && error_contains ("4096"),
         "message names the length and the limit");
  stub_reset ();
  check (nbdkit_add_export (e, "ok", big) == -1, "4097-byte desc rejected");
  check (error_contains ("description of export \"ok\""),
         "message names the export");
  stub_reset ();
  check (nbdkit_add_export (e, NULL, NULL) == -1 &&
         error_contains ("NULL"), "NULL name rejected");
  check (nbdkit_exports_count (e) == 1, "failed adds leave the list");

  for (i = 1; i < 10000 && r == 0; ++i) {
    snprintf (name, sizeof name, "e%zu", i);
    r = nbdkit_add_export (e, name, NULL);
  }
  check (r == 0 && nbdkit_exports_count (e) == 10000, "10000 exports fit");
  stub_reset ();
  check (nbdkit_add_export (e, "one-more", NULL) == -1,
         "export 10001 rejected");
  check (error_contains ("one-more") && error_contains ("10000"),
         "message names the export and the limit");
  check (nbdkit_exports_count (e) == 10000, "count stays 10000");
  check (strcmp (nbdkit_get_export (e, 9999).name, "e9999") == 0,
         "last entry intact");

  free (big);
  exports_free (e);
}

int
main (void)
{
  test_basic ();
  test_limits ();
  return test_summary ();
}
