/* Unit test: the STARTTLS rules of the handshake (protocol-rules.md
 * §1.3, §1.5: H-10's trigger and H-11), option by option and mode by
 * mode.
 */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include "protocol.h"
#include "stubs.h"

#define OFF TLS_MODE_OFF
#define ON TLS_MODE_ON
#define REQ TLS_MODE_REQUIRE
#define PASS TLS_VERDICT_PASS
#define REPLY TLS_VERDICT_REPLY
#define DISC TLS_VERDICT_DISCONNECT
#define START TLS_VERDICT_START

struct tcase {
  const char *rule;
  enum tls_option_mode mode;
  bool active;
  size_t pending;
  uint32_t option, len;
  enum tls_verdict want;
  uint32_t want_reply;
};

static const struct tcase cases[] = {
  { "§1.5 off: STARTTLS is POLICY", OFF, false, 0,
    NBD_OPT_STARTTLS, 0, REPLY, NBD_REP_ERR_POLICY },
  { "§1.3 STARTTLS with data is INVALID (off)", OFF, false, 0,
    NBD_OPT_STARTTLS, 4, REPLY, NBD_REP_ERR_INVALID },
  { "§1.3 STARTTLS with data is INVALID (on)", ON, false, 0,
    NBD_OPT_STARTTLS, 1, REPLY, NBD_REP_ERR_INVALID },
  { "§1.3 STARTTLS with data is INVALID (require)", REQ, false, 0,
    NBD_OPT_STARTTLS, 1, REPLY, NBD_REP_ERR_INVALID },
  { "§1.5 on: STARTTLS starts TLS", ON, false, 0,
    NBD_OPT_STARTTLS, 0, START, 0 },
  { "§1.5 require: STARTTLS starts TLS", REQ, false, 0,
    NBD_OPT_STARTTLS, 0, START, 0 },
  { "§1.5 a second STARTTLS is INVALID (on)", ON, true, 0,
    NBD_OPT_STARTTLS, 0, REPLY, NBD_REP_ERR_INVALID },
  { "§1.5 a second STARTTLS is INVALID (require)", REQ, true, 0,
    NBD_OPT_STARTTLS, 0, REPLY, NBD_REP_ERR_INVALID },
  { "bytes before the ACK disconnect", ON, false, 5,
    NBD_OPT_STARTTLS, 0, DISC, 0 },
  { "bytes pending do not matter once TLS runs", REQ, true, 5,
    NBD_OPT_GO, 0, PASS, 0 },
  { "off: other options pass", OFF, false, 0, NBD_OPT_GO, 0, PASS, 0 },
  { "on: plain GO passes", ON, false, 0, NBD_OPT_GO, 0, PASS, 0 },
  { "on: plain EXPORT_NAME passes", ON, false, 0,
    NBD_OPT_EXPORT_NAME, 0, PASS, 0 },
  { "H-11 ABORT passes", REQ, false, 0, NBD_OPT_ABORT, 0, PASS, 0 },
  { "H-11 EXPORT_NAME disconnects", REQ, false, 0,
    NBD_OPT_EXPORT_NAME, 3, DISC, 0 },
  { "H-11 GO is TLS_REQD", REQ, false, 0,
    NBD_OPT_GO, 6, REPLY, NBD_REP_ERR_TLS_REQD },
  { "H-11 INFO is TLS_REQD", REQ, false, 0,
    NBD_OPT_INFO, 6, REPLY, NBD_REP_ERR_TLS_REQD },
  { "H-11 LIST is TLS_REQD", REQ, false, 0,
    NBD_OPT_LIST, 0, REPLY, NBD_REP_ERR_TLS_REQD },
  { "H-11 STRUCTURED_REPLY is TLS_REQD", REQ, false, 0,
    NBD_OPT_STRUCTURED_REPLY, 0, REPLY, NBD_REP_ERR_TLS_REQD },
  { "H-11 LIST_META_CONTEXT is TLS_REQD", REQ, false, 0,
    NBD_OPT_LIST_META_CONTEXT, 8, REPLY, NBD_REP_ERR_TLS_REQD },
  { "H-11 SET_META_CONTEXT is TLS_REQD", REQ, false, 0,
    NBD_OPT_SET_META_CONTEXT, 8, REPLY, NBD_REP_ERR_TLS_REQD },
  { "H-11 EXTENDED_HEADERS is TLS_REQD", REQ, false, 0,
    NBD_OPT_EXTENDED_HEADERS, 0, REPLY, NBD_REP_ERR_TLS_REQD },
  { "H-11 unknown options are TLS_REQD", REQ, false, 0,
    999, 12, REPLY, NBD_REP_ERR_TLS_REQD },
  { "H-11 under TLS everything passes", REQ, true, 0,
    NBD_OPT_EXPORT_NAME, 0, PASS, 0 },
  { "H-11 TLS_REQD never after TLS", REQ, true, 0,
    NBD_OPT_LIST, 0, PASS, 0 },
};

int
main (void)
{
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const struct tcase *c = &cases[i];
    struct tls_option_state st = { c->mode, c->active, c->pending };
    uint32_t reply = 12345;
    const char *why = "unset";
    enum tls_verdict v = option_tls_check (&st, c->option, c->len,
                                           &reply, &why);

    check (v == c->want, "%s: verdict %d, want %d", c->rule, v, c->want);
    check (reply == c->want_reply, "%s: reply %#x, want %#x", c->rule,
           reply, c->want_reply);
    check ((v == PASS || v == START) == (why == NULL),
           "%s: a refusal explains itself, nothing else does", c->rule);
  }
  return test_summary ();
}
