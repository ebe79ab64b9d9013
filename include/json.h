/* json: a small strict JSON parser that keeps object members in the order
 * they were sent (Docker's port order matters), and a writer that escapes
 * strings exactly as Ruby's JSON#to_json does.
 *
 * A document owns every value and string in one arena: json_free() releases
 * them all; pointers into a document die with it. */
#ifndef REGISTER_JSON_H
#define REGISTER_JSON_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

typedef enum {
  JSON_NULL,
  JSON_BOOL,
  JSON_NUMBER,
  JSON_STRING,
  JSON_ARRAY,
  JSON_OBJECT
} json_type_t;

typedef struct json_value json_value_t;
struct json_value {
  json_type_t type;
  uint32_t len;    /* string bytes, or number of children */
  const char *key; /* member name inside an object, else NULL */
  uint32_t keylen;
  json_value_t *next; /* next sibling in the parent, in document order */
  union {
    int boolean;
    struct {
      double d;
      int64_t i;
      int is_int; /* an integer that fits int64: use i, not d */
    } num;
    const char *str;     /* decoded, NUL-terminated (may hold NULs: use len) */
    json_value_t *child; /* first child of an array or object */
  } u;
};

typedef struct json_doc json_doc_t;

#define JSON_MAX_DEPTH 200
/* The memory one document may take (its arena: values and strings), about
 * 20 times its text for Docker's JSON and up to 32 times for the worst
 * shapes.  Past it the parse fails with a clear error. */
#define JSON_MAX_MEMORY (512u << 20)

/* Parses exactly one JSON text (surrounding whitespace allowed).  On error
 * returns NULL and writes a one-line reason naming the byte offset.  The
 * document may take up to JSON_MAX_MEMORY bytes; json_parse_max sets
 * another cap. */
json_doc_t *json_parse(const char *s, size_t len, char *err, size_t errlen);
json_doc_t *json_parse_max(const char *s, size_t len, size_t max, char *err,
                           size_t errlen);
const json_value_t *json_root(const json_doc_t *doc);
void json_free(json_doc_t *doc);

/* Member lookup (first match); NULL when `obj` is not an object or lacks
 * the key.  The typed getters return NULL/default on a type mismatch. */
const json_value_t *json_get(const json_value_t *obj, const char *key);
const json_value_t *json_path(const json_value_t *v, const char *const *path);
const char *json_get_str(const json_value_t *obj, const char *key);
int json_is(const json_value_t *v, json_type_t t);
/* A number, or a string of digits (etcd's gateway quotes its 64-bit
 * integers), as an int64_t; 0 for anything else or NULL. */
int64_t json_int(const json_value_t *v);

/* Appends `s` as a quoted JSON string: `"` `\` and control characters are
 * escaped (\b \f \n \r \t, else \u00xx); `/` and non-ASCII pass as is. */
void json_escape(buf_t *out, const char *s, size_t n);
/* Appends v as JSON text that json_parse() reads back as the same value
 * (member order kept; integers exact, other numbers to 17 digits).  The
 * recursion is bounded by JSON_MAX_DEPTH, as the parser's. */
void json_write(buf_t *out, const json_value_t *v);

#endif
