/* Unit test: common/include/size-param.h, with the server's
 * nbdkit_parse_size behind it.
 */
#include <stdint.h>

#define NBDKIT_API_VERSION 2
#include "nbdkit-plugin.h"

#include "size-param.h"
#include "stubs.h"

int
main (void)
{
  int64_t size = 0;

  stub_reset ();
  check (size_param_config ("size", "1M", &size) == 0 && size == 1048576,
         "size=1M is 1048576 bytes");
  check (stub_error_count == 0, "a good size logs nothing");

  check (size_param_config ("size", "0", &size) == 0 && size == 0,
         "size=0 is an empty disk");

  check (size_param_config ("size", "lots", &size) == -1 && size == -1,
         "a bad size fails and leaves -1");
  check (stub_error_count == 1, "a bad size logs one error");

  stub_reset ();
  size = 42;
  check (size_param_config ("colour", "red", &size) == -1 && size == 42,
         "another key fails and leaves the size alone");
  check (error_contains ("unknown parameter 'colour'"),
         "the error names the key");
  return test_summary ();
}
