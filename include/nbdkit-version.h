/* nbdsrv: the nbdkit version this server's plugin API matches.
 *
 * Plugins read these numbers to decide which API features they may
 * use; nbdsrv implements the API of the release named here.
 */
#ifndef NBDKIT_VERSION_H
#define NBDKIT_VERSION_H

#if !defined (NBDKIT_PLUGIN_H) && !defined (NBDKIT_FILTER_H)
#error "include <nbdkit-plugin.h> or <nbdkit-filter.h>, not this header"
#endif

#define NBDKIT_VERSION_MAJOR 1
#define NBDKIT_VERSION_MINOR 32
#define NBDKIT_VERSION_MICRO 5
#define NBDKIT_VERSION_STRING "1.32.5"

#endif /* NBDKIT_VERSION_H */
