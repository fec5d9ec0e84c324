/* nbdsrv: --run and URIs (run.c). */
#ifndef NBDSRV_RUN_H
#define NBDSRV_RUN_H

struct listeners;

char *uri_new (const struct listeners *l);      /* caller frees */
int run_start (const struct listeners *l, const char *uri);
int run_wait (void);               /* the command's exit status */

#endif /* NBDSRV_RUN_H */
