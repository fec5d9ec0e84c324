/* Test plugin: calls the connection-time API functions in .open and
 * serves what they answered as the disk's first bytes, one "key=value"
 * per line, so a test can compare nbdsrv with nbdkit
 * (tests/integration/test_plugin_api.py).  "-D apiprobe.flag=N" sets
 * apiprobe_debug_flag, reported as flag=N.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

#define NBDKIT_API_VERSION 2
#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
#include <nbdkit-plugin.h>

#define REPORT_SIZE 4096

NBDKIT_DLL_PUBLIC int apiprobe_debug_flag = 0;

struct handle {
  char report[REPORT_SIZE];
};

static void *
apiprobe_open (int readonly)
{
  struct handle *h = calloc (1, sizeof *h);
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  const char *name = nbdkit_export_name ();
  const char *interned;
  int family = -1;

  if (h == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  if (nbdkit_peer_name ((struct sockaddr *) &ss, &len) == 0)
    family = ss.ss_family;
  interned = nbdkit_printf_intern ("%s-%d", name ? name : "?", 42);
  snprintf (h->report, sizeof h->report,
            "export=%s\nreadonly=%d\nis_tls=%d\npeer_family=%d\n"
            "peer_pid=%lld\npeer_uid=%lld\npeer_gid=%lld\n"
            "interned=%s\nflag=%d\n",
            name ? name : "(null)", readonly, nbdkit_is_tls (), family,
            (long long) nbdkit_peer_pid (), (long long) nbdkit_peer_uid (),
            (long long) nbdkit_peer_gid (), interned ? interned : "(null)",
            apiprobe_debug_flag);
  return h;
}

static void
apiprobe_close (void *handle)
{
  free (handle);
}

static int64_t
apiprobe_get_size (void *handle)
{
  return REPORT_SIZE;
}

static int
apiprobe_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
                uint32_t flags)
{
  struct handle *h = handle;

  memcpy (buf, h->report + offset, count);
  return 0;
}

static struct nbdkit_plugin plugin = {
  .name = "apiprobe",
  .open = apiprobe_open,
  .close = apiprobe_close,
  .get_size = apiprobe_get_size,
  .pread = apiprobe_pread,
};

NBDKIT_REGISTER_PLUGIN (plugin)
