/* nbdsrv exitlast filter: shut the server down when the last client
 * disconnects (never before the first one has connected).
 *
 * A connection counts from a successful open to its close, so a
 * client that only lists exports does not count.
 */
#include <stdatomic.h>

#include <nbdkit-filter.h>

static atomic_uint exitlast_connections;

static void *
exitlast_open (nbdkit_next_open *next, nbdkit_context *nxdata,
               int readonly, const char *exportname, int is_tls)
{
  if (next (nxdata, readonly, exportname) == -1)
    return NULL;
  atomic_fetch_add (&exitlast_connections, 1);
  return NBDKIT_HANDLE_NOT_NEEDED;
}

static void
exitlast_close (void *handle)
{
  if (atomic_fetch_sub (&exitlast_connections, 1) == 1) {
    nbdkit_debug ("exitlast: exiting on last client connection");
    nbdkit_shutdown ();
  }
}

static struct nbdkit_filter filter = {
  .name = "exitlast",
  .longname = "nbdsrv exitlast filter",
  .open = exitlast_open,
  .close = exitlast_close,
};

NBDKIT_REGISTER_FILTER (filter)
