/* nbdsrv rbd plugin: serve Ceph RBD images through librbd.
 *
 * One export per image of the pool (or of the namespace= in it): the
 * client's export name picks the image, "NAME@SNAP" a snapshot of it
 * (read-only), and the empty name the image= parameter.  One cluster
 * connection serves every client; it is made at get_ready, so a wrong
 * pool, image, snapshot, keyring or monitor address fails at start-up
 * with one line naming it.  docs/nbdkit-rbd-plugin.md is the manual.
 */

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NBDKIT_API_VERSION 2
#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
#include <nbdkit-plugin.h>

#include "rbd.h"

/* How long librados waits for a monitor or an OSD before the request
 * fails with ETIMEDOUT (EIO to the client).  librados's own default is
 * to wait for ever, which turns a dead OSD into hung clients; 30 s is
 * long enough to ride out an OSD restart or a monitor election.
 */
#define RBD_TIMEOUT_DEFAULT 30

/* Parameters: owned copies, freed at unload. */
static char *pool;                      /* pool=, default "rbd" */
static char *image;                     /* image=, the default export */
static char *namespace;                 /* namespace=, or NULL */
static char *snap;                      /* snap=, or NULL */
static char *conf;                      /* conf=, or librados's search */
static char *user;                      /* id= or user=, or "admin" */
static char *keyring;                   /* keyring=, or from ceph.conf */
static char *mon_host;                  /* mon_host=, or from ceph.conf */
static unsigned timeout = RBD_TIMEOUT_DEFAULT;
static char **rados_options;            /* rados-option=KEY=VALUE each */
static size_t nr_rados_options;

static char entity[256];                /* "client.ID", config_complete */
static rados_t cluster;
static pid_t cluster_pid;               /* process that connected */
rados_ioctx_t rbdsrv_ioctx;
const char *rbdsrv_pool_name = "rbd";

static void
rbdsrv_unload (void)
{
  if (rbdsrv_ioctx != NULL)
    rados_ioctx_destroy (rbdsrv_ioctx);
  if (cluster != NULL)
    rados_shutdown (cluster);
  free (pool);
  free (image);
  free (namespace);
  free (snap);
  free (conf);
  free (user);
  free (keyring);
  free (mon_host);
  for (size_t i = 0; i < nr_rados_options; i++)
    free (rados_options[i]);
  free (rados_options);
}

static int
rbdsrv_config_string (const char *key, const char *value, char **slot)
{
  char *copy = strdup (value);

  if (copy == NULL) {
    nbdkit_error ("%s: strdup: %m", key);
    return -1;
  }
  free (*slot);
  *slot = copy;
  return 0;
}

static int
rbdsrv_config_rados_option (const char *value)
{
  char **list;
  char *copy;

  if (strchr (value, '=') == NULL || *value == '=') {
    nbdkit_error ("rados-option=%s: expected rados-option=KEY=VALUE, "
                  "for example rados-option=rbd_cache=false", value);
    return -1;
  }
  list = reallocarray (rados_options, nr_rados_options + 1, sizeof *list);
  if (list == NULL) {
    nbdkit_error ("rados-option: %m");
    return -1;
  }
  rados_options = list;
  copy = strdup (value);
  if (copy == NULL) {
    nbdkit_error ("rados-option: %m");
    return -1;
  }
  rados_options[nr_rados_options++] = copy;
  return 0;
}

static int
rbdsrv_config (const char *key, const char *value)
{
  if (strcmp (key, "pool") == 0)
    return rbdsrv_config_string (key, value, &pool);
  if (strcmp (key, "image") == 0)
    return rbdsrv_config_string (key, value, &image);
  if (strcmp (key, "namespace") == 0)
    return rbdsrv_config_string (key, value, &namespace);
  if (strcmp (key, "snap") == 0)
    return rbdsrv_config_string (key, value, &snap);
  if (strcmp (key, "conf") == 0)
    return rbdsrv_config_string (key, value, &conf);
  if (strcmp (key, "id") == 0 || strcmp (key, "user") == 0)
    return rbdsrv_config_string (key, value, &user);
  if (strcmp (key, "keyring") == 0)
    return rbdsrv_config_string (key, value, &keyring);
  if (strcmp (key, "mon_host") == 0 || strcmp (key, "mon-host") == 0)
    return rbdsrv_config_string (key, value, &mon_host);
  if (strcmp (key, "timeout") == 0)
    return nbdkit_parse_unsigned ("timeout", value, &timeout);
  if (strcmp (key, "rados-option") == 0 || strcmp (key, "rados_option") == 0)
    return rbdsrv_config_rados_option (value);
  nbdkit_error ("unknown parameter '%s': expected pool=, image=, "
                "namespace=, snap=, conf=, id=, keyring=, mon_host=, "
                "timeout= or rados-option=", key);
  return -1;
}

/* Files named on the command line are checked now, so that a typo
 * fails before any connection attempt with the path in the message.
 */
static int
rbdsrv_config_complete (void)
{
  const char *id = user ? user : "admin";

  if (pool != NULL)
    rbdsrv_pool_name = pool;
  /* id= may be given with or without the "client." that Ceph puts in
   * front of a user's name.
   */
  if (strncmp (id, "client.", 7) == 0)
    id += 7;
  if (snprintf (entity, sizeof entity, "client.%s", id) >=
      (int) sizeof entity) {
    nbdkit_error ("id=%s: too long for a Ceph user name", id);
    return -1;
  }
  if (image != NULL && strchr (image, '@') != NULL) {
    nbdkit_error ("image=%s: give the snapshot with snap=, not after '@'",
                  image);
    return -1;
  }
  if (conf != NULL && access (conf, R_OK) == -1) {
    nbdkit_error ("conf=%s: %m", conf);
    return -1;
  }
  if (keyring != NULL && access (keyring, R_OK) == -1) {
    nbdkit_error ("keyring=%s: %m", keyring);
    return -1;
  }
  return 0;
}

#define rbdsrv_config_help \
  "pool=<POOL>          Pool of the images (default rbd).\n" \
  "image=<NAME>         Image served to clients that name no export.\n" \
  "namespace=<NS>       Namespace inside the pool.\n" \
  "snap=<SNAP>          Serve this snapshot, read-only.\n" \
  "conf=<CEPH.CONF>     Ceph configuration file (default: librados's).\n" \
  "id=<ID>              Ceph user, without 'client.' (default admin).\n" \
  "keyring=<FILE>       Keyring holding the user's key.\n" \
  "mon_host=<ADDRS>     Monitor addresses, overriding ceph.conf.\n" \
  "timeout=<SECS>       Fail requests after this long (default 30).\n" \
  "rados-option=<K>=<V> Any other librados setting (repeatable)."

static void
rbdsrv_dump_plugin (void)
{
  int major, minor, extra;

  rbd_version (&major, &minor, &extra);
  printf ("rbd_librbd_version=%d.%d.%d\n", major, minor, extra);
}

/* Set one librados option, naming it in the error. */
static int
rbdsrv_cluster_set (rados_t c, const char *key, const char *value,
                 const char *param)
{
  int r = rados_conf_set (c, key, value);

  if (r == -ENOENT) {
    nbdkit_error ("%s: librados has no option '%s': list them with "
                  "'ceph config ls'", param, key);
    return -1;
  }
  if (r < 0) {
    errno = -r;
    nbdkit_error ("%s: cannot set librados option %s=%s: %m", param, key,
                  value);
    return -1;
  }
  return 0;
}

/* ceph.conf, then CEPH_ARGS, then our parameters, then rados-option
 * last so that it can override any of them.
 */
static int
rbdsrv_cluster_configure (rados_t c)
{
  char secs[16];
  int r;

  r = rados_conf_read_file (c, conf);
  if (r < 0 && (conf != NULL || r != -ENOENT)) {
    errno = -r;
    nbdkit_error ("cannot read the Ceph configuration %s: %m",
                  conf ? conf : "(librados's default search)");
    return -1;
  }
  rados_conf_parse_env (c, NULL);
  snprintf (secs, sizeof secs, "%u", timeout);
  if ((keyring && rbdsrv_cluster_set (c, "keyring", keyring, "keyring") == -1)
      || (mon_host &&
          rbdsrv_cluster_set (c, "mon_host", mon_host, "mon_host") == -1)
      || rbdsrv_cluster_set (c, "rados_osd_op_timeout", secs, "timeout") == -1
      || rbdsrv_cluster_set (c, "rados_mon_op_timeout", secs, "timeout") == -1
      || rbdsrv_cluster_set (c, "client_mount_timeout", secs, "timeout") == -1)
    return -1;
  for (size_t i = 0; i < nr_rados_options; i++) {
    char *eq = strchr (rados_options[i], '=');

    *eq = '\0';
    r = rbdsrv_cluster_set (c, rados_options[i], eq + 1, "rados-option");
    *eq = '=';
    if (r == -1)
      return -1;
  }
  return 0;
}

static void
rbdsrv_cluster_connect_error (int r)
{
  errno = -r;
  if (r == -ETIMEDOUT)
    nbdkit_error ("cannot reach the Ceph monitors within %u s: check "
                  "mon_host= or conf=, and that the cluster is up", timeout);
  else if (r == -ENOENT)
    nbdkit_error ("no key for %s: give keyring= (a file holding "
                  "that user's key) or set keyring in ceph.conf", entity);
  else if (r == -EACCES || r == -EPERM)
    nbdkit_error ("the cluster refused %s: check id= and that "
                  "keyring= holds its key", entity);
  else
    nbdkit_error ("cannot connect to the Ceph cluster as %s: %m", entity);
}

/* The pool, then the namespace in it. */
static int
rbdsrv_cluster_open_pool (rados_t c, rados_ioctx_t *ioctx)
{
  bool exists;
  int r;

  r = rados_ioctx_create (c, rbdsrv_pool_name, ioctx);
  if (r < 0) {
    errno = -r;
    if (r == -ENOENT)
      nbdkit_error ("pool '%s' does not exist: list the pools with "
                    "'ceph osd pool ls'", rbdsrv_pool_name);
    else
      nbdkit_error ("cannot open pool '%s': %m", rbdsrv_pool_name);
    return -1;
  }
  if (namespace == NULL)
    return 0;
  r = rbd_namespace_exists (*ioctx, namespace, &exists);
  if (r == 0 && !exists)
    r = -ENOENT;
  if (r < 0) {
    errno = -r;
    if (r == -ENOENT)
      nbdkit_error ("namespace '%s' not found in pool '%s': list them "
                    "with 'rbd namespace ls %s'", namespace, rbdsrv_pool_name,
                    rbdsrv_pool_name);
    else
      nbdkit_error ("cannot look up namespace '%s': %m", namespace);
    rados_ioctx_destroy (*ioctx);
    *ioctx = NULL;
    return -1;
  }
  rados_ioctx_set_namespace (*ioctx, namespace);
  return 0;
}

static int
rbdsrv_cluster_connect (void)
{
  rados_t c;
  int r;

  r = rados_create2 (&c, "ceph", entity, 0);
  if (r < 0) {
    errno = -r;
    nbdkit_error ("rados_create2 %s: %m", entity);
    return -1;
  }
  if (rbdsrv_cluster_configure (c) == -1)
    goto out_shutdown;
  r = rados_connect (c);
  if (r < 0) {
    rbdsrv_cluster_connect_error (r);
    goto out_shutdown;
  }
  if (rbdsrv_cluster_open_pool (c, &rbdsrv_ioctx) == -1)
    goto out_shutdown;
  cluster = c;
  cluster_pid = getpid ();
  return 0;

 out_shutdown:
  rados_shutdown (c);
  return -1;
}

/* Connect, and check the image and snapshot given on the command line
 * exist, so that a typo fails now and not at the first client.
 */
static int
rbdsrv_get_ready (void)
{
  if (rbdsrv_cluster_connect () == -1)
    return -1;
  if (image != NULL && rbdsrv_export_check (image, snap) == -1)
    return -1;
  return 0;
}

/* librados's threads do not survive fork: a server that went into the
 * background after get_ready connects again from the child.  The
 * parent's handle is abandoned, not shut down, since shutting down
 * would wait for threads that do not exist here; it stays reachable
 * from here so that a leak checker does not report it.
 */
static rados_t forked_cluster;
static rados_ioctx_t forked_ioctx;

static int
rbdsrv_after_fork (void)
{
  if (cluster_pid == getpid ())
    return 0;
  forked_cluster = cluster;
  forked_ioctx = rbdsrv_ioctx;
  cluster = NULL;
  rbdsrv_ioctx = NULL;
  return rbdsrv_cluster_connect ();
}

/* Every image in the pool (namespace), by name. */
static int
rbdsrv_list_exports (int readonly, int is_tls, struct nbdkit_exports *exports)
{
  rbd_image_spec_t *specs = NULL;
  size_t n = 64;
  int r;

  for (;;) {
    rbd_image_spec_t *more = reallocarray (specs, n, sizeof *specs);

    if (more == NULL) {
      nbdkit_error ("listing pool '%s': %m", rbdsrv_pool_name);
      free (specs);
      return -1;
    }
    specs = more;
    r = rbd_list2 (rbdsrv_ioctx, specs, &n);
    if (r != -ERANGE)
      break;
  }
  if (r < 0) {
    errno = -r;
    nbdkit_error ("cannot list the images of pool '%s': %m", rbdsrv_pool_name);
    free (specs);
    return -1;
  }
  r = 0;
  for (size_t i = 0; r == 0 && i < n; i++)
    r = nbdkit_add_export (exports, specs[i].name, NULL);
  rbd_image_spec_list_cleanup (specs, n);
  free (specs);
  return r;
}

static const char *
rbdsrv_default_export (int readonly, int is_tls)
{
  return image ? image : "";
}

/* The export name is "NAME" or "NAME@SNAP"; an empty one means the
 * image= parameter.  A snapshot is always read-only.
 */
static void *
rbdsrv_open (int readonly)
{
  const char *name = nbdkit_export_name ();
  const char *at;
  char *copy;
  struct rbdsrv_export *exp;

  if (name == NULL || *name == '\0')
    name = image;
  if (name == NULL) {
    nbdkit_error ("no image named: connect with the image's name as the "
                  "export name, or start the server with image=");
    return NULL;
  }
  at = strchr (name, '@');
  if (at == NULL)
    return rbdsrv_export_get (name, snap, readonly || snap != NULL);
  copy = strndup (name, at - name);
  if (copy == NULL) {
    nbdkit_error ("strndup: %m");
    return NULL;
  }
  exp = rbdsrv_export_get (copy, at + 1, true);
  free (copy);
  return exp;
}

static void
rbdsrv_close (void *handle)
{
  rbdsrv_export_put (handle);
}

static int64_t
rbdsrv_get_size (void *handle)
{
  struct rbdsrv_export *exp = handle;
  uint64_t size;
  int r;

  r = rbd_get_size (exp->image, &size);
  if (r < 0) {
    errno = -r;
    nbdkit_error ("rbd: size of image '%s': %m", exp->name);
    return -1;
  }
  return size;
}

static int
rbdsrv_can_write (void *handle)
{
  struct rbdsrv_export *exp = handle;

  return !exp->readonly;
}

static int
rbdsrv_can_true (void *handle)
{
  return 1;
}

static int
rbdsrv_can_fua (void *handle)
{
  return NBDKIT_FUA_EMULATE;
}

/* Safe because connections of this process share one librbd handle
 * per image (images.c): a flush on one flushes the writes of all.
 */
static int
rbdsrv_can_multi_conn (void *handle)
{
  return 1;
}

static struct nbdkit_plugin plugin = {
  .name              = "rbd",
  .longname          = "nbdsrv Ceph RBD plugin",
  .unload            = rbdsrv_unload,
  .config            = rbdsrv_config,
  .config_complete   = rbdsrv_config_complete,
  .config_help       = rbdsrv_config_help,
  .dump_plugin       = rbdsrv_dump_plugin,
  .get_ready         = rbdsrv_get_ready,
  .after_fork        = rbdsrv_after_fork,
  .list_exports      = rbdsrv_list_exports,
  .default_export    = rbdsrv_default_export,
  .open              = rbdsrv_open,
  .close             = rbdsrv_close,
  .get_size          = rbdsrv_get_size,
  .can_write         = rbdsrv_can_write,
  .can_flush         = rbdsrv_can_true,
  .can_trim          = rbdsrv_can_true,
  .can_zero          = rbdsrv_can_true,
  .can_fast_zero     = rbdsrv_can_true,
  .can_extents       = rbdsrv_can_true,
  .can_fua           = rbdsrv_can_fua,
  .can_multi_conn    = rbdsrv_can_multi_conn,
  .pread             = rbdsrv_io_pread,
  .pwrite            = rbdsrv_io_pwrite,
  .flush             = rbdsrv_io_flush,
  .trim              = rbdsrv_io_trim,
  .zero              = rbdsrv_io_zero,
  .extents           = rbdsrv_io_extents,
  .errno_is_preserved = 1,
};

NBDKIT_REGISTER_PLUGIN (plugin)
