/* Test plugin: where do fds 0 and 1 point in each callback?  Each
 * callback adds "CALLBACK=devnull" or "CALLBACK=other" to a report
 * served as the disk's first bytes, so a test can compare nbdsrv with
 * nbdkit (tests/integration/test_stdio.py).  config_complete also
 * reads one line from stdin, when that is safe, and prints it to
 * stdout as KEY=LINE for the last KEY given: the caller's stdin and
 * stdout are the plugin's until the server starts serving.
 */
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#define NBDKIT_API_VERSION 2
#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
#include <nbdkit-plugin.h>

#define REPORT_SIZE 4096

static char report[REPORT_SIZE];
static char key[64] = "input";

static bool
same_file (int fd, const struct stat *want)
{
  struct stat st;

  return fstat (fd, &st) == 0 && st.st_dev == want->st_dev &&
    st.st_ino == want->st_ino;
}

/* Append "WHERE=devnull" when both fds 0 and 1 are /dev/null. */
static void
observe (const char *where)
{
  struct stat null;
  bool devnull = stat ("/dev/null", &null) == 0 &&
    same_file (STDIN_FILENO, &null) && same_file (STDOUT_FILENO, &null);
  size_t len = strlen (report);

  snprintf (report + len, sizeof report - len, "%s=%s\n", where,
            devnull ? "devnull" : "other");
}

static int
stdio_config (const char *k, const char *value)
{
  observe ("config");
  snprintf (key, sizeof key, "%s", k);
  return 0;
}

static int
stdio_config_complete (void)
{
  char *line = NULL;
  size_t cap = 0;

  observe ("config_complete");
  if (nbdkit_stdio_safe () && getline (&line, &cap, stdin) > 0) {
    printf ("%s=%s", key, line);
    fflush (stdout);
  }
  free (line);
  return 0;
}

static int
stdio_get_ready (void)
{
  observe ("get_ready");
  return 0;
}

static int
stdio_after_fork (void)
{
  observe ("after_fork");
  return 0;
}

static void *
stdio_open (int readonly)
{
  observe ("open");
  return NBDKIT_HANDLE_NOT_NEEDED;
}

static int64_t
stdio_get_size (void *handle)
{
  return REPORT_SIZE;
}

static int
stdio_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
             uint32_t flags)
{
  memcpy (buf, report + offset, count);
  return 0;
}

static struct nbdkit_plugin plugin = {
  .name              = "stdio",
  .version           = "1",
  .config            = stdio_config,
  .config_complete   = stdio_config_complete,
  .get_ready         = stdio_get_ready,
  .after_fork        = stdio_after_fork,
  .open              = stdio_open,
  .get_size          = stdio_get_size,
  .pread             = stdio_pread,
};

NBDKIT_REGISTER_PLUGIN (plugin)
