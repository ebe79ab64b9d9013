/* util: allocation that never returns NULL, a growable byte buffer, and the
 * small string helpers every module needs (percent-encoding, base64). */
#ifndef REGISTER_UTIL_H
#define REGISTER_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Contracts, asserted at the entry of the function that relies on them
 * (docs/design.md, "Contracts").  REGISTER_ASSERT stays in every build: a
 * flag or a pointer compared, nothing more.  Costlier checks use assert()
 * and run in Debug builds only (CMake's RelWithDebInfo and Release define
 * NDEBUG). */
#define REGISTER_ASSERT(cond)                                                  \
  ((cond) ? (void)0 : util_assert_failed(#cond, __FILE__, __LINE__, __func__))
_Noreturn void util_assert_failed(const char *expr, const char *file, int line,
                                  const char *func);

/* Out of memory is not something a 2 MB daemon can recover from in a
 * useful way: these log one line and abort(), like redis' zmalloc. */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* A growable buffer, always NUL-terminated after its length.  The buffer
 * owns `data`; buf_detach() hands it to the caller. */
typedef struct {
  char *data;
  size_t len;
  size_t cap;
} buf_t;

void buf_init(buf_t *b);
void buf_free(buf_t *b);
void buf_reset(buf_t *b);
void buf_reserve(buf_t *b, size_t extra);
void buf_append(buf_t *b, const void *p, size_t n);
void buf_puts(buf_t *b, const char *s);
void buf_putc(buf_t *b, char c);
void buf_printf(buf_t *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void buf_vprintf(buf_t *b, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
/* Drops the first n bytes. */
void buf_consume(buf_t *b, size_t n);
char *buf_detach(buf_t *b);

/* Percent-encodes everything but RFC 3986 unreserved characters and the
 * characters in `keep` (e.g. "/" for a path). */
void util_urlencode(buf_t *out, const char *s, size_t n, const char *keep);
/* Standard base64 with padding, and its inverse (returns -1 on bad input). */
void util_base64_encode(buf_t *out, const void *p, size_t n);
int util_base64_decode(buf_t *out, const char *s, size_t n);

/* Text from anywhere (a policy's message, a command's output) made safe to
 * print: C0 controls, DEL and C1 controls (in UTF-8) as \xNN and \u00NN
 * (line breaks kept when keep_lines, for a traceback), bytes that are not
 * UTF-8 as \xNN; at most max bytes of s, the rest cut and counted
 * (" ... (N bytes more)"). */
void util_clean_text(buf_t *out, const char *s, size_t n, size_t max,
                     int keep_lines);
/* The offset of the first byte of s that does not begin a valid UTF-8
 * sequence (overlong forms and surrogates are not valid); n if none. */
size_t util_utf8_bad_at(const char *s, size_t n);
/* 1 when key is dir itself or below it, by whole path segments
 * ("/a/b" holds "/a/b" and "/a/b/c", not "/a/bc"; "/a/" holds "/a/c") */
int util_key_holds(const char *dir, const char *key);
/* The directory of a file's path, malloc'd: "." for a bare name, "/" for
 * a name at the root ("a/b" -> "a", "b" -> ".", "/b" -> "/"). */
char *util_path_dir(const char *path);
/* The last segment of a path (a pointer into path). */
const char *util_path_base(const char *path);

/* Monotonic milliseconds, for intervals that must not jump with the clock. */
uint64_t util_now_ms(void);
/* Appends what f holds (to its end), or the file at path, to out: 0, or
 * -1 with errno (EFBIG past max bytes when max is not 0). */
int util_read_fp(FILE *f, size_t max, buf_t *out);
int util_read_file(const char *path, size_t max, buf_t *out);
/* An input file opened for reading (a descriptor), when it is a regular
 * file of at most max bytes; else -1 with one line in err naming the path
 * and what is wrong ("... is a directory, not a file", "... is a FIFO, not
 * a regular file", "... is too large: N bytes (at most max)", or the
 * system's error) and errno set (EISDIR, EINVAL, EFBIG, or open()'s).  A
 * FIFO does not block the call.  For files an operator names: check's
 * inputs, the policy commands', the fleet's key and cache files. */
int util_open_regular(const char *path, size_t max, char *err, size_t errlen);
/* Its content appended to out: 0, or -1 with one line in err. */
int util_read_regular(const char *path, size_t max, buf_t *out, char *err,
                      size_t errlen);
/* A uniformly distributed value in [0, n): jitter for backoffs. */
uint32_t util_rand(uint32_t n);
/* Parses a whole decimal number in [min, max]; -1 if it is not one. */
int util_parse_long(const char *s, long min, long max, long *out);

#endif
