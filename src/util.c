/* util: allocation, buffers and string helpers shared by every module. */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* The last line before abort(): formatted on the stack and written to
 * stderr in one write(2), without the log room (which allocates, and sits
 * above this one) and without malloc (it may be what failed). */
__attribute__((format(printf, 1, 2), noreturn)) static void
fatal(const char *fmt, ...) {
  char line[512];
  int n = snprintf(line, sizeof line, "register: error: ");
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
  va_end(ap);
  size_t len = (size_t)n + (m < 0 ? 0
                            : (size_t)m >= sizeof line - (size_t)n - 1
                                ? sizeof line - (size_t)n - 2
                                : (size_t)m);
  line[len++] = '\n';
  (void)!write(2, line, len);
  abort();
}

static void oom(size_t n) {
  fatal("out of memory allocating %zu bytes", n);
}

void util_assert_failed(const char *expr, const char *file, int line,
                        const char *func) {
  fatal("%s:%d: %s: contract broken: %s", file, line, func, expr);
}

void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) oom(n);
  return p;
}

void *xcalloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size ? size : 1);
  if (!p) oom(n * size);
  return p;
}

void *xrealloc(void *p, size_t n) {
  void *q = realloc(p, n ? n : 1);
  if (!q) oom(n);
  return q;
}

char *xstrdup(const char *s) {
  return xstrndup(s, strlen(s));
}

char *xstrndup(const char *s, size_t n) {
  char *p = xmalloc(n + 1);
  memcpy(p, s, n);
  p[n] = '\0';
  return p;
}

char *xasprintf(const char *fmt, ...) {
  buf_t b;
  va_list ap;
  buf_init(&b);
  va_start(ap, fmt);
  buf_vprintf(&b, fmt, ap);
  va_end(ap);
  return buf_detach(&b);
}

void buf_init(buf_t *b) {
  b->data = NULL;
  b->len = 0;
  b->cap = 0;
}

void buf_free(buf_t *b) {
  free(b->data);
  buf_init(b);
}

void buf_reset(buf_t *b) {
  b->len = 0;
  if (b->data) b->data[0] = '\0';
}

void buf_reserve(buf_t *b, size_t extra) {
  /* NUL-terminated after its length (util.h): room for it, or nothing */
  REGISTER_ASSERT(b->cap ? b->data && b->len < b->cap : !b->data && !b->len);
  size_t need = b->len + extra + 1;
  if (need <= b->cap) return;
  size_t cap = b->cap ? b->cap : 64;
  while (cap < need)
    cap *= 2;
  b->data = xrealloc(b->data, cap);
  b->cap = cap;
  b->data[b->len] = '\0'; /* always a valid C string */
}

void buf_append(buf_t *b, const void *p, size_t n) {
  REGISTER_ASSERT(p || !n);
  buf_reserve(b, n);
  if (n) memcpy(b->data + b->len, p, n);
  b->len += n;
  b->data[b->len] = '\0';
}

void buf_puts(buf_t *b, const char *s) {
  buf_append(b, s, strlen(s));
}

void buf_putc(buf_t *b, char c) {
  buf_reserve(b, 1);
  b->data[b->len++] = c;
  b->data[b->len] = '\0';
}

void buf_vprintf(buf_t *b, const char *fmt, va_list ap) {
  va_list cp;
  va_copy(cp, ap);
  int n = vsnprintf(NULL, 0, fmt, cp);
  va_end(cp);
  if (n < 0) return;
  buf_reserve(b, (size_t)n);
  vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
  b->len += (size_t)n;
}

void buf_printf(buf_t *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  buf_vprintf(b, fmt, ap);
  va_end(ap);
}

void buf_consume(buf_t *b, size_t n) {
  if (n >= b->len) {
    buf_reset(b);
    return;
  }
  memmove(b->data, b->data + n, b->len - n);
  b->len -= n;
  b->data[b->len] = '\0';
}

char *buf_detach(buf_t *b) {
  char *p = b->data ? b->data : xstrdup("");
  buf_init(b);
  return p;
}

void util_urlencode(buf_t *out, const char *s, size_t n, const char *keep) {
  static const char hex[] = "0123456789ABCDEF";
  buf_reserve(out, n);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
        (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
        c == '~' || (c && keep && strchr(keep, c))) {
      buf_putc(out, (char)c);
    } else {
      char e[3] = {'%', hex[c >> 4], hex[c & 15]};
      buf_append(out, e, 3);
    }
  }
}

size_t util_utf8_bad_at(const char *str, size_t len) {
  const unsigned char *s = (const unsigned char *)str;
  size_t i = 0;
  while (i < len) {
    unsigned char c = s[i];
    if (c < 0x80) {
      i++;
      continue;
    }
    size_t n;
    unsigned char lo = 0x80, hi = 0xbf; /* the second byte's range */
    if (c >= 0xc2 && c <= 0xdf)
      n = 2;
    else if (c >= 0xe0 && c <= 0xef) {
      n = 3;
      if (c == 0xe0) lo = 0xa0; /* overlong */
      if (c == 0xed) hi = 0x9f; /* surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
      n = 4;
      if (c == 0xf0) lo = 0x90; /* overlong */
      if (c == 0xf4) hi = 0x8f; /* past U+10FFFF */
    } else {
      return i; /* a continuation byte, C0, C1 or F5..FF */
    }
    if (len - i < n || s[i + 1] < lo || s[i + 1] > hi) return i;
    for (size_t k = 2; k < n; k++)
      if (s[i + k] < 0x80 || s[i + k] > 0xbf) return i;
    i += n;
  }
  return len;
}

int util_key_holds(const char *dir, const char *key) {
  size_t n = strlen(dir);
  if (strncmp(dir, key, n) != 0) return 0;
  return key[n] == '\0' || key[n] == '/' || (n > 0 && dir[n - 1] == '/');
}

char *util_path_dir(const char *path) {
  const char *slash = strrchr(path, '/');
  if (!slash) return xstrdup(".");
  if (slash == path) return xstrdup("/");
  return xstrndup(path, (size_t)(slash - path));
}

const char *util_path_base(const char *path) {
  const char *slash = strrchr(path, '/');
  return slash ? slash + 1 : path;
}

void util_clean_text(buf_t *out, const char *s, size_t n, size_t max,
                     int keep_lines) {
  size_t keep = n > max ? max : n;
  size_t i = 0;
  while (i < keep) {
    unsigned char c = (unsigned char)s[i];
    if (c >= 0x20 && c < 0x7f) { /* the common case: a run of ASCII */
      size_t j = i + 1;
      while (j < keep && (unsigned char)s[j] >= 0x20 &&
             (unsigned char)s[j] < 0x7f)
        j++;
      buf_append(out, s + i, j - i);
      i = j;
    } else if (c == '\n' && keep_lines) {
      buf_putc(out, '\n');
      i++;
    } else if (c < 0x80) { /* C0 or DEL */
      buf_printf(out, "\\x%02x", c);
      i++;
    } else if (util_utf8_bad_at(s + i, keep - i < 4 ? keep - i : 4) == 0) {
      buf_printf(out, "\\x%02x", c); /* not UTF-8 (or cut by max) */
      i++;
    } else if (c == 0xc2 && (unsigned char)s[i + 1] <= 0x9f) {
      buf_printf(out, "\\u00%02x", (unsigned char)s[i + 1]); /* C1 */
      i += 2;
    } else if (c == 0xe2 && (((unsigned char)s[i + 1] == 0x80 &&
                              (unsigned char)s[i + 2] >= 0xa8 &&
                              (unsigned char)s[i + 2] <= 0xae) ||
                             ((unsigned char)s[i + 1] == 0x81 &&
                              (unsigned char)s[i + 2] >= 0xa6 &&
                              (unsigned char)s[i + 2] <= 0xa9))) {
      /* the line and paragraph separators (U+2028, U+2029: a new line to
       * some readers), the bidi embeddings, overrides and isolates
       * (U+202A-202E, U+2066-2069): they reorder what a terminal shows
       * after them */
      buf_printf(out, "\\u%04x",
                 (((unsigned char)s[i + 1] & 0x3f) << 6 |
                  ((unsigned char)s[i + 2] & 0x3f)) |
                     0x2000);
      i += 3;
    } else { /* one valid sequence */
      size_t len = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
      buf_append(out, s + i, len);
      i += len;
    }
  }
  if (keep < n) buf_printf(out, " ... (%zu bytes more)", n - keep);
}

static const char b64[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

void util_base64_encode(buf_t *out, const void *p, size_t n) {
  const unsigned char *s = p;
  buf_reserve(out, (n + 2) / 3 * 4);
  for (size_t i = 0; i < n; i += 3) {
    uint32_t v = (uint32_t)s[i] << 16;
    if (i + 1 < n) v |= (uint32_t)s[i + 1] << 8;
    if (i + 2 < n) v |= s[i + 2];
    char q[4] = {b64[(v >> 18) & 63], b64[(v >> 12) & 63],
                 i + 1 < n ? b64[(v >> 6) & 63] : '=',
                 i + 2 < n ? b64[v & 63] : '='};
    buf_append(out, q, 4);
  }
}

static int b64val(char c) {
  const char *p = c ? strchr(b64, c) : NULL;
  return p ? (int)(p - b64) : -1;
}

int util_base64_decode(buf_t *out, const char *s, size_t n) {
  uint32_t acc = 0;
  int bits = 0;
  size_t i = 0;
  for (; i < n && s[i] != '='; i++) {
    int v = b64val(s[i]);
    if (v < 0) return -1;
    acc = (acc << 6) | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      buf_putc(out, (char)((acc >> bits) & 0xff));
    }
  }
  for (; i < n; i++)
    if (s[i] != '=') return -1;
  return 0;
}

uint64_t util_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

uint32_t util_rand(uint32_t n) {
  static int seeded;
  if (!seeded) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    srandom((unsigned)(ts.tv_nsec ^ ts.tv_sec));
    seeded = 1;
  }
  return n ? (uint32_t)random() % n : 0;
}

int util_parse_long(const char *s, long min, long max, long *out) {
  char *end;
  if (!s || !*s) return -1;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || *end || v < min || v > max) return -1;
  *out = v;
  return 0;
}

int util_read_fp(FILE *f, size_t max, buf_t *out) {
  char chunk[65536];
  size_t n, start = out->len;
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
    buf_append(out, chunk, n);
    if (max && out->len - start > max) {
      errno = EFBIG;
      return -1;
    }
  }
  if (ferror(f)) {
    errno = EIO;
    return -1;
  }
  return 0;
}

int util_read_file(const char *path, size_t max, buf_t *out) {
  FILE *f = fopen(path, "rb");
  if (!f) return -1;
  int rc = util_read_fp(f, max, out), e = errno;
  fclose(f);
  errno = e;
  return rc;
}

static const char *file_type(mode_t m) {
  return S_ISFIFO(m)   ? "a FIFO"
         : S_ISCHR(m)  ? "a character device"
         : S_ISBLK(m)  ? "a block device"
         : S_ISSOCK(m) ? "a socket"
                       : "something else";
}

int util_open_regular(const char *path, size_t max, char *err, size_t errlen) {
  /* O_NONBLOCK: opening a FIFO waits for a writer otherwise */
  int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    int e = errno;
    snprintf(err, errlen, "%s: %s", path, strerror(e));
    errno = e;
    return -1;
  }
  struct stat st;
  int e = 0;
  if (fstat(fd, &st) != 0) {
    e = errno;
    snprintf(err, errlen, "%s: %s", path, strerror(e));
  } else if (S_ISDIR(st.st_mode)) {
    e = EISDIR;
    snprintf(err, errlen, "%s is a directory, not a file", path);
  } else if (!S_ISREG(st.st_mode)) {
    e = EINVAL;
    snprintf(err, errlen, "%s is %s, not a regular file", path,
             file_type(st.st_mode));
  } else if ((uintmax_t)st.st_size > max) {
    e = EFBIG;
    snprintf(err, errlen, "%s is too large: %jd bytes (at most %zu)", path,
             (intmax_t)st.st_size, max);
  }
  if (e) {
    close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

int util_read_regular(const char *path, size_t max, buf_t *out, char *err,
                      size_t errlen) {
  int fd = util_open_regular(path, max, err, errlen);
  if (fd < 0) return -1;
  size_t start = out->len;
  char chunk[65536];
  for (;;) {
    ssize_t n = read(fd, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int e = errno;
      snprintf(err, errlen, "%s: %s", path, strerror(e));
      close(fd);
      errno = e;
      return -1;
    }
    if (n == 0) break;
    buf_append(out, chunk, (size_t)n);
    if (out->len - start > max) { /* it grew since fstat() */
      snprintf(err, errlen, "%s is too large: more than %zu bytes", path, max);
      close(fd);
      errno = EFBIG;
      return -1;
    }
  }
  close(fd);
  return 0;
}
