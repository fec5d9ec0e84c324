/* nbdsrv: the STARTTLS rules of the handshake (protocol-rules.md §1.3
 * and §1.5): what to do with one option given the TLS mode and whether
 * TLS is running.  A pure function: no I/O, no global state; the
 * handshake does what it says.
 */
#include "config.h"

#include "protocol.h"

enum tls_verdict
option_tls_check (const struct tls_option_state *st, uint32_t option,
                  uint32_t len, uint32_t *reply, const char **why)
{
  *reply = 0;
  *why = NULL;
  if (option == NBD_OPT_STARTTLS) {
    if (len != 0) {                             /* §1.3: must be empty */
      *reply = NBD_REP_ERR_INVALID;
      *why = "NBD_OPT_STARTTLS takes no data";
      return TLS_VERDICT_REPLY;
    }
    if (st->mode != TLS_MODE_ON && st->mode != TLS_MODE_REQUIRE) {
      *reply = NBD_REP_ERR_POLICY;              /* §1.5 --tls=off */
      *why = "TLS is not enabled on this server (--tls=off)";
      return TLS_VERDICT_REPLY;
    }
    if (st->active) {                           /* §1.5: second STARTTLS */
      *reply = NBD_REP_ERR_INVALID;
      *why = "TLS is already running on this connection";
      return TLS_VERDICT_REPLY;
    }
    if (st->pending > 0) {
      /* The TLS handshake starts after our ACK: bytes that came before
       * it are not TLS, and would be fed to the handshake as if they
       * were.
       */
      *why = "client sent data after NBD_OPT_STARTTLS without waiting "
        "for the reply";
      return TLS_VERDICT_DISCONNECT;
    }
    return TLS_VERDICT_START;
  }
  if (st->mode != TLS_MODE_REQUIRE || st->active)
    return TLS_VERDICT_PASS;                    /* H-11 last point */
  switch (option) {                             /* H-11 */
  case NBD_OPT_ABORT:
    return TLS_VERDICT_PASS;
  case NBD_OPT_EXPORT_NAME:
    *why = "client sent NBD_OPT_EXPORT_NAME without TLS, which "
      "--tls=require needs";
    return TLS_VERDICT_DISCONNECT;
  default:
    *reply = NBD_REP_ERR_TLS_REQD;
    *why = "TLS is required on this server: send NBD_OPT_STARTTLS first";
    return TLS_VERDICT_REPLY;
  }
}
