/* nbdsrv: telling the service manager how the server is doing.
 *
 * Under a systemd unit with Type=notify, systemd starts the units that
 * depend on nbdsrv only once it has said READY=1, which it does once
 * it is listening and the plugin has finished after_fork: a client
 * started right after `systemctl start` can connect at once.  Outside
 * systemd (no $NOTIFY_SOCKET) sd_notify does nothing.  Built without
 * libsystemd, these are no-ops too.
 */
#include "config.h"

#include <string.h>

#ifdef HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "internal.h"

#ifdef HAVE_LIBSYSTEMD
static void
notify_send (const char *state)
{
  int r = sd_notify (0, state);

  /* A lost notification is not worth stopping the server: systemd
   * then reports the unit as failing to start, which says enough.
   */
  if (r < 0)
    server_error ("sd_notify %s: %s", state, strerror (-r));
  else if (r > 0)
    debug ("told the service manager %s", state);
}
#else
static void
notify_send (const char *state)
{
}
#endif

void
notify_ready (void)
{
  notify_send ("READY=1");
}

void
notify_stopping (void)
{
  notify_send ("STOPPING=1");
}
