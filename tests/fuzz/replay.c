/* A main () for a libFuzzer target built without libFuzzer.
 *
 * The normal build links each tests/fuzz/fuzz-*.c with this file, so a
 * changed signature in the code under test breaks `make`, not the next
 * fuzzing run, and tests/test_fuzz.py replays the committed seeds
 * through the target as a regression test.  `make fuzz` builds the
 * same targets with clang's -fsanitize=fuzzer instead.
 *
 *   fuzz-NAME FILE|DIRECTORY...
 *
 * runs the target once per file (a directory stands for the regular
 * files in it, in name order), each input copied into a buffer of
 * exactly its size so that ASan sees a read past its end.  A crash
 * or an abort is the failure, as under libFuzzer; at the end it prints
 * "replayed N inputs" and exits 0.
 */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);
int LLVMFuzzerInitialize (int *argc, char ***argv) __attribute__ ((weak));

static int
replay_file (const char *path)
{
  FILE *fp;
  struct stat st;
  uint8_t *data;
  int r = -1;

  fp = fopen (path, "rb");
  if (fp == NULL || fstat (fileno (fp), &st) == -1) {
    fprintf (stderr, "replay: %s: %s\n", path, strerror (errno));
    goto out_close;
  }
  /* One byte more than needed so that malloc (0) is never asked for;
   * the target is still told the exact size. */
  data = malloc (st.st_size + 1);
  if (data == NULL) {
    fprintf (stderr, "replay: %s: out of memory\n", path);
    goto out_close;
  }
  if (fread (data, 1, st.st_size, fp) != (size_t) st.st_size) {
    fprintf (stderr, "replay: %s: short read\n", path);
    goto out_free;
  }
  LLVMFuzzerTestOneInput (data, st.st_size);
  r = 0;
 out_free:
  free (data);
 out_close:
  if (fp)
    fclose (fp);
  return r;
}

static int
is_regular (const struct dirent *d)
{
  return d->d_type == DT_REG;
}

/* Replay every regular file in DIR; return how many, or -1. */
static int
replay_dir (const char *dir)
{
  struct dirent **names;
  int n, i, done = 0;

  n = scandir (dir, &names, is_regular, alphasort);
  if (n == -1) {
    fprintf (stderr, "replay: %s: %s\n", dir, strerror (errno));
    return -1;
  }
  for (i = 0; i < n; i++) {
    char *path;

    if (done >= 0 && asprintf (&path, "%s/%s", dir, names[i]->d_name) >= 0) {
      done = replay_file (path) == 0 ? done + 1 : -1;
      free (path);
    }
    else
      done = -1;
    free (names[i]);
  }
  free (names);
  return done;
}

int
main (int argc, char **argv)
{
  int i, total = 0;

  if (argc < 2) {
    fprintf (stderr, "usage: %s FILE|DIRECTORY...\n", argv[0]);
    return 2;
  }
  if (LLVMFuzzerInitialize)
    LLVMFuzzerInitialize (&argc, &argv);
  for (i = 1; i < argc; i++) {
    struct stat st;
    int n;

    if (stat (argv[i], &st) == 0 && S_ISDIR (st.st_mode))
      n = replay_dir (argv[i]);
    else
      n = replay_file (argv[i]) == 0 ? 1 : -1;
    if (n == -1)
      return 1;
    total += n;
  }
  printf ("replayed %d inputs\n", total);
  return 0;
}
