/* nbdsrv: the config callback of a plugin whose only parameter is
 * size= (null, full, pattern).  Include after <nbdkit-plugin.h>.
 */
#ifndef NBDSRV_SIZE_PARAM_H
#define NBDSRV_SIZE_PARAM_H

#ifndef NBDKIT_PLUGIN_H
#error "include <nbdkit-plugin.h> before size-param.h"
#endif

#include <stdint.h>
#include <string.h>

/* Parse KEY=VALUE into *SIZE.  Returns 0, or -1 with the error logged
 * and *SIZE set to -1 (nbdkit_parse_size's failure value), which a
 * plugin with a required size= can treat as "not given".
 */
static inline int
size_param_config (const char *key, const char *value, int64_t *size)
{
  if (strcmp (key, "size") == 0) {
    *size = nbdkit_parse_size (value);
    return *size == -1 ? -1 : 0;
  }
  nbdkit_error ("unknown parameter '%s'", key);
  return -1;
}

#endif /* NBDSRV_SIZE_PARAM_H */
