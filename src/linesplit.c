/* linesplit: newline framing with a line-length cap. */
#include "linesplit.h"

#include <string.h>

void linesplit_init(linesplit_t *ls, size_t max_line) {
  REGISTER_ASSERT(max_line > 0);
  buf_init(&ls->buf);
  ls->max_line = max_line;
  ls->dropping = 0;
  ls->feeding = 0;
}

void linesplit_free(linesplit_t *ls) {
  REGISTER_ASSERT(!ls->feeding); /* not from its own callbacks */
  buf_free(&ls->buf);
}

void linesplit_reset(linesplit_t *ls) {
  REGISTER_ASSERT(!ls->feeding); /* not from its own callbacks */
  buf_free(&ls->buf);
  ls->dropping = 0;
}

size_t linesplit_pending(const linesplit_t *ls) {
  return ls->buf.len + ls->dropping;
}

static void emit(const char *p, size_t n, const linesplit_cbs_t *cbs,
                 void *ud) {
  if (n && p[n - 1] == '\r') n--;
  if (n) cbs->line(ud, p, n);
}

void linesplit_feed(linesplit_t *ls, const char *p, size_t n,
                    const linesplit_cbs_t *cbs, void *ud) {
  REGISTER_ASSERT(cbs->line && !ls->feeding); /* not re-entered */
  ls->feeding = 1;
  while (n) {
    const char *nl = memchr(p, '\n', n);
    size_t chunk = nl ? (size_t)(nl - p) : n;
    if (ls->dropping) {
      ls->dropping += chunk;
      if (nl) {
        if (cbs->too_long) cbs->too_long(ud, ls->dropping);
        ls->dropping = 0;
      }
    } else if (ls->buf.len + chunk > ls->max_line) {
      ls->dropping = ls->buf.len + chunk;
      buf_free(&ls->buf);
      if (nl) {
        if (cbs->too_long) cbs->too_long(ud, ls->dropping);
        ls->dropping = 0;
      }
    } else if (nl && ls->buf.len == 0) {
      emit(p, chunk, cbs, ud); /* whole line in the input: no copy */
    } else {
      buf_append(&ls->buf, p, chunk);
      if (nl) {
        emit(ls->buf.data, ls->buf.len, cbs, ud);
        buf_reset(&ls->buf);
      }
    }
    /* what is held is part of one line within the cap; a line being
     * dropped holds nothing */
    REGISTER_ASSERT(ls->buf.len <= ls->max_line &&
                    (!ls->dropping || !ls->buf.len));
    if (!nl) break;
    p = nl + 1;
    n -= chunk + 1;
  }
  ls->feeding = 0;
  /* don't keep a large allocation around after a big line */
  if (ls->buf.len == 0 && ls->buf.cap > 65536) buf_free(&ls->buf);
}
