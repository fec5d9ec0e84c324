/* A filter that claims to be built for another nbdkit release: the
 * server must refuse it with one line and exit status 1.
 */
#include <nbdkit-filter.h>

static struct nbdkit_filter filter = {
  .name = "badversion",
};

struct nbdkit_filter *filter_init (void) NBDKIT_DLL_PUBLIC;

struct nbdkit_filter *
filter_init (void)
{
  filter._api_version = NBDKIT_FILTER_API_VERSION;
  filter._version = "1.30.0";
  return &filter;
}
