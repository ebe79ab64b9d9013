/* wire: the policy worker's frames and fields. */
#include "wire.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#define ABSENT 0xffffffffu

size_t wire_begin(buf_t *b, int type) {
  size_t off = b->len;
  uint32_t zero = 0;
  unsigned char t = (unsigned char)type;
  buf_append(b, &zero, sizeof zero);
  buf_append(b, &t, 1);
  return off;
}

void wire_num(buf_t *b, uint64_t v) {
  buf_append(b, &v, sizeof v);
}

void wire_str(buf_t *b, const char *s, size_t n) {
  uint32_t len = s ? (uint32_t)n : ABSENT;
  REGISTER_ASSERT(!s || n < ABSENT);
  buf_append(b, &len, sizeof len);
  if (!s) return;
  buf_append(b, s, n);
  buf_putc(b, '\0');
}

void wire_cstr(buf_t *b, const char *s) {
  wire_str(b, s, s ? strlen(s) : 0);
}

void wire_end(buf_t *b, size_t off) {
  REGISTER_ASSERT(b->len >= off + 5);
  uint32_t len = (uint32_t)(b->len - off - 4);
  memcpy(b->data + off, &len, sizeof len);
}

void wire_rd_init(wire_rd_t *r, const char *frame, size_t len) {
  r->p = frame;
  r->end = frame + len;
  r->bad = 0;
}

int wire_type(wire_rd_t *r) {
  if (r->bad || r->p >= r->end) {
    r->bad = 1;
    return -1;
  }
  return (unsigned char)*r->p++;
}

uint64_t wire_get_num(wire_rd_t *r) {
  uint64_t v = 0;
  if (r->bad || (size_t)(r->end - r->p) < sizeof v) {
    r->bad = 1;
    return 0;
  }
  memcpy(&v, r->p, sizeof v);
  r->p += sizeof v;
  return v;
}

const char *wire_get_str(wire_rd_t *r, size_t *len) {
  uint32_t n;
  if (len) *len = 0;
  if (r->bad || (size_t)(r->end - r->p) < sizeof n) {
    r->bad = 1;
    return NULL;
  }
  memcpy(&n, r->p, sizeof n);
  r->p += sizeof n;
  if (n == ABSENT) return NULL;
  if ((size_t)(r->end - r->p) < (size_t)n + 1 || r->p[n] != '\0') {
    r->bad = 1;
    return NULL;
  }
  const char *s = r->p;
  r->p += (size_t)n + 1;
  if (len) *len = n;
  return s;
}

int wire_frame(const buf_t *in, const char **frame, size_t *len) {
  uint32_t n;
  if (in->len < sizeof n) return 0;
  memcpy(&n, in->data, sizeof n);
  if (n > WIRE_MAX_FRAME || n == 0) return -1;
  if (in->len - sizeof n < n) return 0;
  *frame = in->data + sizeof n;
  *len = n;
  return 1;
}

int wire_write_all(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n) {
    ssize_t w = write(fd, c, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    c += w;
    n -= (size_t)w;
  }
  return 0;
}
