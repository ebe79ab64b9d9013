/* json: an order-preserving strict JSON parser with an arena, and the
 * Ruby-compatible string escaper. */
#include "json.h"

#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ARENA_BLOCK 16384

typedef struct arena_block {
  struct arena_block *next;
  size_t used, cap;
  /* max_align_t keeps every allocation aligned for any type */
  _Alignas(max_align_t) unsigned char data[];
} arena_block_t;

struct json_doc {
  arena_block_t *blocks;
  json_value_t *root;
};

typedef struct {
  const char *s, *p, *end;
  json_doc_t *doc;
  char *err;
  size_t errlen;
  int failed;
  size_t max, used; /* the arena's cap and what its blocks hold */
} parser_t;

static void json_fail(parser_t *ps, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* NULL (and the parse fails) once the document would need more than the
 * cap: a reply's memory is bounded, whatever its shape. */
static void *arena_alloc(parser_t *ps, size_t n) {
  json_doc_t *doc = ps->doc;
  n = (n + _Alignof(max_align_t) - 1) & ~(_Alignof(max_align_t) - 1);
  arena_block_t *b = doc->blocks;
  if (!b || b->cap - b->used < n) {
    size_t cap = n > ARENA_BLOCK ? n : ARENA_BLOCK;
    if (ps->used + cap > ps->max) {
      json_fail(ps, "the document needs more than %zu bytes of memory",
                ps->max);
      return NULL;
    }
    ps->used += cap;
    b = xmalloc(sizeof *b + cap);
    b->used = 0;
    b->cap = cap;
    b->next = doc->blocks;
    doc->blocks = b;
  }
  void *p = b->data + b->used;
  b->used += n;
  return p;
}

static void json_fail(parser_t *ps, const char *fmt, ...) {
  if (ps->failed) return;
  ps->failed = 1;
  if (!ps->err || !ps->errlen) return;
  int n = snprintf(ps->err, ps->errlen,
                   "invalid JSON at byte %zu: ", (size_t)(ps->p - ps->s));
  if (n < 0 || (size_t)n >= ps->errlen) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(ps->err + n, ps->errlen - (size_t)n, fmt, ap);
  va_end(ap);
}

static void skip_ws(parser_t *ps) {
  while (ps->p < ps->end &&
         (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
    ps->p++;
}

static json_value_t *new_value(parser_t *ps, json_type_t t) {
  json_value_t *v = arena_alloc(ps, sizeof *v);
  if (!v) return NULL;
  memset(v, 0, sizeof *v);
  v->type = t;
  return v;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static int read_hex4(parser_t *ps, unsigned *out) {
  if (ps->end - ps->p < 4) return -1;
  unsigned v = 0;
  for (int i = 0; i < 4; i++) {
    int h = hexval(ps->p[i]);
    if (h < 0) return -1;
    v = v << 4 | (unsigned)h;
  }
  ps->p += 4;
  *out = v;
  return 0;
}

static size_t put_utf8(char *o, unsigned cp) {
  if (cp < 0x80) {
    o[0] = (char)cp;
    return 1;
  }
  if (cp < 0x800) {
    o[0] = (char)(0xC0 | cp >> 6);
    o[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    o[0] = (char)(0xE0 | cp >> 12);
    o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
  }
  o[0] = (char)(0xF0 | cp >> 18);
  o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
  o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
  o[3] = (char)(0x80 | (cp & 0x3F));
  return 4;
}

/* Parses a string at ps->p (on the opening quote). */
static const char *parse_string(parser_t *ps, uint32_t *len) {
  ps->p++; /* opening quote */
  const char *start = ps->p;
  /* find the closing quote first: the decoded text is never longer than
   * the source, so one arena allocation of that size suffices */
  const char *q = start;
  while (q < ps->end && *q != '"')
    q += (*q == '\\' && ps->end - q > 1) ? 2 : 1;
  size_t cap = (size_t)(q - start);
  char *out = arena_alloc(ps, cap + 1);
  if (!out) return NULL;
  size_t n = 0;
  while (ps->p < ps->end) {
    unsigned char c = (unsigned char)*ps->p;
    if (c == '"') {
      ps->p++;
      out[n] = '\0';
      if (n > UINT32_MAX) {
        json_fail(ps, "string too long");
        return NULL;
      }
      *len = (uint32_t)n;
      return out;
    }
    if (c < 0x20) {
      json_fail(ps, "control character in string");
      return NULL;
    }
    if (c != '\\') {
      out[n++] = (char)c;
      ps->p++;
      continue;
    }
    ps->p++;
    if (ps->p >= ps->end) break;
    char e = *ps->p++;
    switch (e) {
    case '"':
      out[n++] = '"';
      break;
    case '\\':
      out[n++] = '\\';
      break;
    case '/':
      out[n++] = '/';
      break;
    case 'b':
      out[n++] = '\b';
      break;
    case 'f':
      out[n++] = '\f';
      break;
    case 'n':
      out[n++] = '\n';
      break;
    case 'r':
      out[n++] = '\r';
      break;
    case 't':
      out[n++] = '\t';
      break;
    case 'u': {
      unsigned cp, lo;
      if (read_hex4(ps, &cp) < 0) {
        json_fail(ps, "bad \\u escape");
        return NULL;
      }
      if (cp >= 0xD800 && cp <= 0xDBFF && ps->end - ps->p >= 6 &&
          ps->p[0] == '\\' && ps->p[1] == 'u') {
        const char *save = ps->p;
        ps->p += 2;
        if (read_hex4(ps, &lo) == 0 && lo >= 0xDC00 && lo <= 0xDFFF) {
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        } else {
          ps->p = save;
        }
      }
      /* a lone surrogate becomes U+FFFD, as most decoders do */
      if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xFFFD;
      /* \uXXXX is 6 source bytes and at most 3 output bytes; a surrogate
       * pair is 12 source bytes and 4 output bytes, so `out` is big enough */
      n += put_utf8(out + n, cp);
      break;
    }
    default:
      ps->p--;
      json_fail(ps, "bad escape '\\%c'", e);
      return NULL;
    }
  }
  json_fail(ps, "unterminated string");
  return NULL;
}

static void parse_number(parser_t *ps, json_value_t *v) {
  const char *start = ps->p;
  int is_int = 1;
  if (ps->p < ps->end && *ps->p == '-') ps->p++;
  if (ps->p >= ps->end) goto bad;
  if (*ps->p == '0') {
    ps->p++;
  } else if (*ps->p >= '1' && *ps->p <= '9') {
    while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9')
      ps->p++;
  } else {
    goto bad;
  }
  if (ps->p < ps->end && *ps->p == '.') {
    is_int = 0;
    ps->p++;
    if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') goto bad;
    while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9')
      ps->p++;
  }
  if (ps->p < ps->end && (*ps->p == 'e' || *ps->p == 'E')) {
    is_int = 0;
    ps->p++;
    if (ps->p < ps->end && (*ps->p == '+' || *ps->p == '-')) ps->p++;
    if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') goto bad;
    while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9')
      ps->p++;
  }
  size_t n = (size_t)(ps->p - start);
  char small[64];
  char *tmp = n < sizeof small ? small : xmalloc(n + 1);
  memcpy(tmp, start, n);
  tmp[n] = '\0';
  v->u.num.d = strtod(tmp, NULL);
  if (is_int) {
    char *end;
    errno = 0;
    long long i = strtoll(tmp, &end, 10);
    if (errno == 0 && *end == '\0') {
      v->u.num.i = (int64_t)i;
      v->u.num.is_int = 1;
    }
  }
  if (tmp != small) free(tmp);
  return;
bad:
  json_fail(ps, "bad number");
}

static json_value_t *parse_value(parser_t *ps, int depth);

static json_value_t *parse_container(parser_t *ps, int depth, int is_obj) {
  json_value_t *v = new_value(ps, is_obj ? JSON_OBJECT : JSON_ARRAY);
  if (!v) return NULL;
  json_value_t **tail = &v->u.child;
  char close = is_obj ? '}' : ']';
  ps->p++;
  skip_ws(ps);
  if (ps->p < ps->end && *ps->p == close) {
    ps->p++;
    return v;
  }
  for (;;) {
    const char *key = NULL;
    uint32_t keylen = 0;
    skip_ws(ps);
    if (is_obj) {
      if (ps->p >= ps->end || *ps->p != '"') {
        json_fail(ps, "expected a member name");
        return NULL;
      }
      key = parse_string(ps, &keylen);
      if (!key) return NULL;
      skip_ws(ps);
      if (ps->p >= ps->end || *ps->p != ':') {
        json_fail(ps, "expected ':'");
        return NULL;
      }
      ps->p++;
    }
    json_value_t *c = parse_value(ps, depth + 1);
    if (!c) return NULL;
    c->key = key;
    c->keylen = keylen;
    *tail = c;
    tail = &c->next;
    if (v->len == UINT32_MAX) {
      json_fail(ps, "too many members");
      return NULL;
    }
    v->len++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == ',') {
      ps->p++;
      continue;
    }
    if (ps->p < ps->end && *ps->p == close) {
      ps->p++;
      return v;
    }
    json_fail(ps, is_obj ? "expected ',' or '}'" : "expected ',' or ']'");
    return NULL;
  }
}

static int match_word(parser_t *ps, const char *w) {
  size_t n = strlen(w);
  if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, w, n) != 0) return 0;
  ps->p += n;
  return 1;
}

static json_value_t *parse_value(parser_t *ps, int depth) {
  json_value_t *v;
  if (depth > JSON_MAX_DEPTH) {
    json_fail(ps, "nesting deeper than %d", JSON_MAX_DEPTH);
    return NULL;
  }
  skip_ws(ps);
  if (ps->p >= ps->end) {
    json_fail(ps, "unexpected end of input");
    return NULL;
  }
  switch (*ps->p) {
  case '{':
    return parse_container(ps, depth, 1);
  case '[':
    return parse_container(ps, depth, 0);
  case '"': {
    uint32_t len;
    const char *s = parse_string(ps, &len);
    if (!s) return NULL;
    v = new_value(ps, JSON_STRING);
    if (!v) return NULL;
    v->u.str = s;
    v->len = len;
    return v;
  }
  case 't':
  case 'f':
    v = new_value(ps, JSON_BOOL);
    if (!v) return NULL;
    if (match_word(ps, "true"))
      v->u.boolean = 1;
    else if (!match_word(ps, "false"))
      break;
    return v;
  case 'n':
    if (!match_word(ps, "null")) break;
    return new_value(ps, JSON_NULL);
  default:
    if (*ps->p == '-' || (*ps->p >= '0' && *ps->p <= '9')) {
      v = new_value(ps, JSON_NUMBER);
      if (!v) return NULL;
      parse_number(ps, v);
      return ps->failed ? NULL : v;
    }
  }
  json_fail(ps, "unexpected character '%c'",
            (*ps->p >= 0x20 && *ps->p < 0x7f) ? *ps->p : '?');
  return NULL;
}

json_doc_t *json_parse(const char *s, size_t len, char *err, size_t errlen) {
  return json_parse_max(s, len, JSON_MAX_MEMORY, err, errlen);
}

json_doc_t *json_parse_max(const char *s, size_t len, size_t max, char *err,
                           size_t errlen) {
  parser_t ps = {s, s, s + len, NULL, err, errlen, 0, max, 0};
  ps.doc = xcalloc(1, sizeof *ps.doc);
  ps.doc->root = parse_value(&ps, 0);
  if (ps.doc->root) {
    skip_ws(&ps);
    if (ps.p != ps.end) json_fail(&ps, "trailing data after the value");
  }
  if (ps.failed) {
    json_free(ps.doc);
    return NULL;
  }
  return ps.doc;
}

const json_value_t *json_root(const json_doc_t *doc) {
  return doc->root;
}

void json_free(json_doc_t *doc) {
  if (!doc) return;
  arena_block_t *b = doc->blocks;
  while (b) {
    arena_block_t *next = b->next;
#ifndef NDEBUG
    /* a value read after this has no valid type: json_ok() says so */
    memset(b->data, 0xdb, b->cap);
#endif
    free(b);
    b = next;
  }
  free(doc);
}

/* Debug builds: a value read from a freed document (json_free() poisons
 * it) has no valid type.  A cheap check on every accessor's argument. */
#ifndef NDEBUG
static inline int json_ok(const json_value_t *v) {
  return !v || (unsigned)v->type <= JSON_OBJECT;
}
#endif

const json_value_t *json_get(const json_value_t *obj, const char *key) {
  assert(json_ok(obj)); /* its document is alive */
  if (!obj || obj->type != JSON_OBJECT) return NULL;
  size_t n = strlen(key);
  for (const json_value_t *c = obj->u.child; c; c = c->next)
    if (c->keylen == n && memcmp(c->key, key, n) == 0) return c;
  return NULL;
}

const json_value_t *json_path(const json_value_t *v, const char *const *path) {
  for (; v && *path; path++)
    v = json_get(v, *path);
  return v;
}

const char *json_get_str(const json_value_t *obj, const char *key) {
  const json_value_t *v = json_get(obj, key);
  return v && v->type == JSON_STRING ? v->u.str : NULL;
}

int64_t json_int(const json_value_t *v) {
  if (!v) return 0;
  if (v->type == JSON_NUMBER)
    return v->u.num.is_int ? v->u.num.i : (int64_t)v->u.num.d;
  if (v->type == JSON_STRING) return strtoll(v->u.str, NULL, 10);
  return 0;
}

int json_is(const json_value_t *v, json_type_t t) {
  assert(json_ok(v)); /* its document is alive */
  return v && v->type == t;
}

void json_escape(buf_t *out, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  buf_reserve(out, n + 2);
  buf_putc(out, '"');
  size_t run = 0; /* start of the pending unescaped run */
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    buf_append(out, s + run, i - run);
    run = i + 1;
    switch (c) {
    case '"':
      buf_append(out, "\\\"", 2);
      break;
    case '\\':
      buf_append(out, "\\\\", 2);
      break;
    case '\b':
      buf_append(out, "\\b", 2);
      break;
    case '\f':
      buf_append(out, "\\f", 2);
      break;
    case '\n':
      buf_append(out, "\\n", 2);
      break;
    case '\r':
      buf_append(out, "\\r", 2);
      break;
    case '\t':
      buf_append(out, "\\t", 2);
      break;
    default: {
      char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
      buf_append(out, e, 6);
    }
    }
  }
  buf_append(out, s + run, n - run);
  buf_putc(out, '"');
}

/* ---- writing ---- */

void json_write(buf_t *out, const json_value_t *v) {
  switch (v->type) {
  case JSON_NULL:
    buf_puts(out, "null");
    break;
  case JSON_BOOL:
    buf_puts(out, v->u.boolean ? "true" : "false");
    break;
  case JSON_NUMBER:
    if (v->u.num.is_int)
      buf_printf(out, "%lld", (long long)v->u.num.i);
    else
      buf_printf(out, "%.17g", v->u.num.d);
    break;
  case JSON_STRING:
    json_escape(out, v->u.str, v->len);
    break;
  case JSON_ARRAY:
  case JSON_OBJECT: {
    int obj = v->type == JSON_OBJECT;
    buf_putc(out, obj ? '{' : '[');
    for (const json_value_t *c = v->u.child; c; c = c->next) {
      if (c != v->u.child) buf_putc(out, ',');
      if (obj) {
        json_escape(out, c->key, c->keylen);
        buf_putc(out, ':');
      }
      json_write(out, c);
    }
    buf_putc(out, obj ? '}' : ']');
    break;
  }
  }
}
