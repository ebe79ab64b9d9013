/* policydoc: see include/policydoc.h */
#include "policydoc.h"
#include "json.h"
#include "util.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* the parser's arena for one document: far above what POLICYDOC_MAX_DOC
 * of JSON can need */
#define DOC_MEMORY (64u << 20)

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t errlen, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  if (err && errlen) vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
  return -1;
}

static void sha256_hex(const void *p, size_t n, char out[65]) {
  unsigned char md[32];
  unsigned int mdlen = 0;
  EVP_Digest(p, n, md, &mdlen, EVP_sha256(), NULL);
  for (unsigned i = 0; i < 32; i++)
    snprintf(out + 2 * i, 3, "%02x", md[i]);
  out[64] = '\0';
}

/* 16 bytes of an IPv4 (as ::ffff:a.b.c.d) or IPv6 address; -1 if none */
static int ip_bytes(const char *s, unsigned char out[16]) {
  unsigned char v4[4];
  if (inet_pton(AF_INET, s, v4) == 1) {
    memset(out, 0, 10);
    out[10] = out[11] = 0xff;
    memcpy(out + 12, v4, 4);
    return 0;
  }
  return inet_pton(AF_INET6, s, out) == 1 ? 0 : -1;
}

/* ---- revisions ---- */

void policydoc_rev_free(policydoc_rev_t *r) {
  if (!r) return;
  free(r->source);
  free(r->signature);
  free(r->name);
  free(r->pushed);
  free(r->pushed_by);
  free(r);
}

static char *dup_or_null(const char *s) {
  return s ? xstrdup(s) : NULL;
}

policydoc_rev_t *policydoc_rev_new(int64_t revision, const char *source,
                                   size_t len, const char *sig,
                                   const char *name, const char *pushed_by) {
  REGISTER_ASSERT(revision >= 1 && (source || !len)); /* policydoc_rev_t */
  policydoc_rev_t *r = xcalloc(1, sizeof *r);
  r->revision = revision;
  r->source = xmalloc(len + 1);
  memcpy(r->source, source, len);
  r->source[len] = '\0';
  r->source_len = len;
  sha256_hex(source, len, r->sha256);
  r->signature = dup_or_null(sig);
  r->name = dup_or_null(name);
  r->pushed_by = dup_or_null(pushed_by);
  char when[32];
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
  r->pushed = xstrdup(when);
  return r;
}

void policydoc_free(policydoc_t *d) {
  if (!d) return;
  policydoc_rev_free(d->stable);
  policydoc_rev_free(d->previous);
  policydoc_rev_free(d->canary);
  for (size_t i = 0; i < d->n_canary_hosts; i++)
    free(d->canary_hosts[i]);
  free(d->canary_hosts);
  memset(d, 0, sizeof *d);
}

/* ---- parsing ---- */

/* An integer member: 1 with *out, 0 when absent (or null), -1 when it is
 * there and not an integer. */
static int get_int(const json_value_t *obj, const char *name, int64_t *out) {
  const json_value_t *v = json_get(obj, name);
  if (!v || v->type == JSON_NULL) return 0;
  if (v->type != JSON_NUMBER || !v->u.num.is_int) return -1;
  *out = v->u.num.i;
  return 1;
}

/* An optional string member (no NULs): 0 with *out (NULL when absent),
 * -1 when it has another type. */
static int get_opt_str(const json_value_t *obj, const char *name, char **out) {
  const json_value_t *v = json_get(obj, name);
  *out = NULL;
  if (!v || v->type == JSON_NULL) return 0;
  if (v->type != JSON_STRING || strlen(v->u.str) != v->len) return -1;
  *out = xstrndup(v->u.str, v->len);
  return 0;
}

static int is_hex64(const char *s, size_t n) {
  if (n != 64) return 0;
  for (size_t i = 0; i < n; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
      return 0;
  return 1;
}

static int parse_rev(const json_value_t *v, const char *what,
                     policydoc_rev_t **out, char *err, size_t errlen) {
  *out = NULL;
  if (v->type != JSON_OBJECT)
    return fail(err, errlen, "%s is not an object", what);
  policydoc_rev_t *r = xcalloc(1, sizeof *r);
  *out = r;
  int got = get_int(v, "revision", &r->revision);
  if (got == 0) return fail(err, errlen, "%s.revision is missing", what);
  if (got < 0 || r->revision < 1 || r->revision > POLICYDOC_MAX_NUMBER)
    return fail(err, errlen, "%s.revision is not an integer in 1..%" PRId64,
                what, POLICYDOC_MAX_NUMBER);
  const json_value_t *src = json_get(v, "source");
  if (!src) return fail(err, errlen, "%s.source is missing", what);
  if (src->type != JSON_STRING)
    return fail(err, errlen, "%s.source is not a string", what);
  if (src->len > POLICYDOC_MAX_SOURCE)
    return fail(err, errlen, "%s.source is too large: %u bytes (at most %u)",
                what, (unsigned)src->len, POLICYDOC_MAX_SOURCE);
  r->source = xmalloc((size_t)src->len + 1);
  memcpy(r->source, src->u.str, src->len);
  r->source[src->len] = '\0';
  r->source_len = src->len;
  const json_value_t *sha = json_get(v, "sha256");
  if (!sha) return fail(err, errlen, "%s.sha256 is missing", what);
  if (sha->type != JSON_STRING || !is_hex64(sha->u.str, sha->len))
    return fail(err, errlen, "%s.sha256 is not 64 lowercase hex digits", what);
  char want[65];
  sha256_hex(r->source, r->source_len, want);
  if (memcmp(want, sha->u.str, 64) != 0)
    return fail(err, errlen, "%s.sha256 does not match its source", what);
  memcpy(r->sha256, want, sizeof want);
  static const char *const names[] = {"signature", "name", "pushed",
                                      "pushed_by"};
  char **fields[] = {&r->signature, &r->name, &r->pushed, &r->pushed_by};
  for (size_t i = 0; i < 4; i++)
    if (get_opt_str(v, names[i], fields[i]) < 0)
      return fail(err, errlen, "%s.%s is not a string", what, names[i]);
  return 0;
}

/* the canary's selection: hosts or percent, exactly one */
static int parse_selection(const json_value_t *c, policydoc_t *d, char *err,
                           size_t errlen) {
  const json_value_t *hosts = json_get(c, "hosts");
  int64_t pct = 0;
  int has_pct = get_int(c, "percent", &pct);
  if (hosts && hosts->type == JSON_NULL) hosts = NULL;
  if (hosts && has_pct)
    return fail(err, errlen, "canary has both hosts and percent");
  if (has_pct < 0 || (has_pct && (pct < 1 || pct > 100)))
    return fail(err, errlen, "canary.percent is not an integer in 1..100");
  if (has_pct) {
    d->canary_percent = (int)pct;
    return 0;
  }
  if (!hosts) return fail(err, errlen, "canary has neither hosts nor percent");
  if (hosts->type != JSON_ARRAY || hosts->len == 0)
    return fail(err, errlen,
                "canary.hosts is not a non-empty array of addresses");
  if (hosts->len > POLICYDOC_MAX_HOSTS)
    return fail(err, errlen, "canary.hosts names %u hosts (at most %u)",
                (unsigned)hosts->len, POLICYDOC_MAX_HOSTS);
  d->canary_hosts = xcalloc(hosts->len, sizeof *d->canary_hosts);
  for (const json_value_t *h = hosts->u.child; h; h = h->next) {
    unsigned char ip[16];
    if (h->type != JSON_STRING || strlen(h->u.str) != h->len ||
        ip_bytes(h->u.str, ip) < 0)
      return fail(err, errlen, "canary.hosts[%zu] is not an IP address",
                  d->n_canary_hosts);
    d->canary_hosts[d->n_canary_hosts++] = xstrndup(h->u.str, h->len);
  }
  return 0;
}

int policydoc_parse(const char *text, size_t len, policydoc_t *out, char *err,
                    size_t errlen) {
  memset(out, 0, sizeof *out);
  if (len > POLICYDOC_MAX_DOC)
    return fail(err, errlen,
                "the document is too large: %zu bytes (at most %u)", len,
                POLICYDOC_MAX_DOC);
  char jerr[200];
  json_doc_t *doc = json_parse_max(text, len, DOC_MEMORY, jerr, sizeof jerr);
  if (!doc) return fail(err, errlen, "not JSON: %s", jerr);
  const json_value_t *root = json_root(doc);
  int rc = -1;
  int64_t version = 0;
  int got;
  const json_value_t *v;
  if (root->type != JSON_OBJECT) {
    fail(err, errlen, "not a policy document: not a JSON object");
    goto out;
  }
  got = get_int(root, "register_policy", &version);
  if (got == 0) {
    fail(err, errlen, "not a policy document: no register_policy");
    goto out;
  }
  if (got < 0 || version != 1) {
    fail(err, errlen,
         "register_policy is not 1 (a document of another version of "
         "register?)");
    goto out;
  }
  /* bounded, so that the next write's + 1 stays in range however the
   * document was edited */
  got = get_int(root, "generation", &out->generation);
  if (got == 0) {
    fail(err, errlen, "generation is missing");
    goto out;
  }
  if (got < 0 || out->generation < 1 ||
      out->generation > POLICYDOC_MAX_NUMBER) {
    fail(err, errlen, "generation is not an integer in 1..%" PRId64,
         POLICYDOC_MAX_NUMBER);
    goto out;
  }
  got = get_int(root, "last_revision", &out->last_revision);
  if (got < 0 || out->last_revision < 0 ||
      out->last_revision > POLICYDOC_MAX_NUMBER) {
    fail(err, errlen, "last_revision is not an integer in 0..%" PRId64,
         POLICYDOC_MAX_NUMBER);
    goto out;
  }
  v = json_get(root, "stable");
  if (!v || v->type == JSON_NULL) {
    fail(err, errlen, "stable is missing");
    goto out;
  }
  if (parse_rev(v, "stable", &out->stable, err, errlen) < 0) goto out;
  v = json_get(root, "previous");
  if (v && v->type != JSON_NULL &&
      parse_rev(v, "previous", &out->previous, err, errlen) < 0)
    goto out;
  v = json_get(root, "canary");
  if (v && v->type != JSON_NULL) {
    if (parse_rev(v, "canary", &out->canary, err, errlen) < 0 ||
        parse_selection(v, out, err, errlen) < 0)
      goto out;
    if (out->canary->revision <= out->stable->revision) {
      fail(err, errlen,
           "canary.revision %lld is not newer than stable.revision %lld",
           (long long)out->canary->revision, (long long)out->stable->revision);
      goto out;
    }
  }
  if ((out->previous &&
       (out->previous->revision == out->stable->revision ||
        (out->canary && out->previous->revision == out->canary->revision)))) {
    fail(err, errlen, "two revisions have the number %lld",
         (long long)out->previous->revision);
    goto out;
  }
  rc = 0;
out:
  json_free(doc);
  return rc;
}

/* ---- writing ---- */

static void put_str(buf_t *b, const char *name, const char *s) {
  if (!s) return;
  buf_printf(b, ",\"%s\":", name);
  json_escape(b, s, strlen(s));
}

static void write_rev(buf_t *b, const policydoc_rev_t *r) {
  REGISTER_ASSERT(r->revision >= 1 && r->source); /* policydoc_rev_t */
  buf_printf(b, "{\"revision\":%lld,\"sha256\":\"%s\",\"source\":",
             (long long)r->revision, r->sha256);
  json_escape(b, r->source, r->source_len);
  put_str(b, "signature", r->signature);
  put_str(b, "name", r->name);
  put_str(b, "pushed", r->pushed);
  put_str(b, "pushed_by", r->pushed_by);
}

char *policydoc_write(const policydoc_t *d, size_t *len) {
  /* a canary's selection goes with a canary, and percent is 0..100 */
  REGISTER_ASSERT(!d->n_canary_hosts || d->canary);
  REGISTER_ASSERT(d->canary_percent >= 0 && d->canary_percent <= 100);
  buf_t b;
  buf_init(&b);
  buf_printf(&b, "{\"register_policy\":1,\"generation\":%lld",
             (long long)d->generation);
  if (d->last_revision > 0)
    buf_printf(&b, ",\"last_revision\":%lld", (long long)d->last_revision);
  if (d->write_id[0]) buf_printf(&b, ",\"write_id\":\"%s\"", d->write_id);
  if (d->stable) {
    buf_puts(&b, ",\"stable\":");
    write_rev(&b, d->stable);
    buf_putc(&b, '}');
  }
  if (d->previous) {
    buf_puts(&b, ",\"previous\":");
    write_rev(&b, d->previous);
    buf_putc(&b, '}');
  }
  if (d->canary) {
    buf_puts(&b, ",\"canary\":");
    write_rev(&b, d->canary);
    if (d->n_canary_hosts) {
      buf_puts(&b, ",\"hosts\":[");
      for (size_t i = 0; i < d->n_canary_hosts; i++) {
        if (i) buf_putc(&b, ',');
        json_escape(&b, d->canary_hosts[i], strlen(d->canary_hosts[i]));
      }
      buf_putc(&b, ']');
    } else {
      buf_printf(&b, ",\"percent\":%d", d->canary_percent);
    }
    buf_putc(&b, '}');
  }
  buf_putc(&b, '}');
  if (len) *len = b.len;
  return buf_detach(&b);
}

int64_t policydoc_top(const policydoc_t *d) {
  int64_t top = d->last_revision;
  const policydoc_rev_t *r[] = {d->stable, d->previous, d->canary};
  for (size_t i = 0; i < 3; i++)
    if (r[i] && r[i]->revision > top) top = r[i]->revision;
  return top;
}

/* a number of the document's, if it is one in range */
static void salvage_int(const json_value_t *obj, const char *name,
                        int64_t *max) {
  int64_t v;
  if (obj && obj->type == JSON_OBJECT && get_int(obj, name, &v) == 1 &&
      v >= 1 && v <= POLICYDOC_MAX_NUMBER && v > *max)
    *max = v;
}

void policydoc_salvage(const char *text, size_t len, int64_t *generation,
                       int64_t *top) {
  if (len > POLICYDOC_MAX_DOC) return;
  char jerr[200];
  json_doc_t *doc = json_parse_max(text, len, DOC_MEMORY, jerr, sizeof jerr);
  if (!doc) return;
  const json_value_t *root = json_root(doc);
  salvage_int(root, "generation", generation);
  salvage_int(root, "last_revision", top);
  static const char *const revs[] = {"stable", "previous", "canary"};
  for (size_t i = 0; i < 3; i++)
    if (root->type == JSON_OBJECT)
      salvage_int(json_get(root, revs[i]), "revision", top);
  json_free(doc);
}

void policydoc_drop_canary(policydoc_t *d) {
  policydoc_rev_free(d->canary);
  d->canary = NULL;
  for (size_t i = 0; i < d->n_canary_hosts; i++)
    free(d->canary_hosts[i]);
  free(d->canary_hosts);
  d->canary_hosts = NULL;
  d->n_canary_hosts = 0;
  d->canary_percent = 0;
}

/* ---- a host's revision ---- */

unsigned policydoc_bucket(const char *host_ip) {
  uint32_t h = 2166136261u; /* FNV-1a, 32 bits */
  for (const unsigned char *p = (const unsigned char *)host_ip; *p; p++) {
    h ^= *p;
    h *= 16777619u;
  }
  return h % 100u;
}

int policydoc_in_canary(const policydoc_t *d, const char *host_ip) {
  if (!d->canary || !host_ip) return 0;
  if (d->n_canary_hosts) {
    unsigned char me[16], them[16];
    int mine = ip_bytes(host_ip, me) == 0;
    for (size_t i = 0; i < d->n_canary_hosts; i++) {
      if (strcmp(d->canary_hosts[i], host_ip) == 0) return 1;
      /* the same address written another way (IPv6) */
      if (mine && ip_bytes(d->canary_hosts[i], them) == 0 &&
          memcmp(me, them, 16) == 0)
        return 1;
    }
    return 0;
  }
  return (int)policydoc_bucket(host_ip) < d->canary_percent;
}

const policydoc_rev_t *policydoc_for_host(const policydoc_t *d,
                                          const char *host_ip) {
  return policydoc_in_canary(d, host_ip) ? d->canary : d->stable;
}

int policydoc_set_canary(policydoc_t *d, const char *spec, char *err,
                         size_t errlen) {
  size_t n = spec ? strlen(spec) : 0;
  if (n == 0)
    return fail(err, errlen,
                "--canary: empty (IP,IP,... or N%% with N in 1..100)");
  if (spec[n - 1] == '%') {
    char num[16];
    long pct;
    if (n - 1 >= sizeof num)
      return fail(err, errlen, "--canary \"%s\": N%% needs N in 1..100", spec);
    memcpy(num, spec, n - 1);
    num[n - 1] = '\0';
    /* digits only, as written: no sign, space or leading zero */
    int plain = num[0] >= '1' && num[0] <= '9';
    for (const char *q = num; plain && *q; q++)
      plain = *q >= '0' && *q <= '9';
    if (!plain || util_parse_long(num, 1, 100, &pct) < 0)
      return fail(err, errlen, "--canary \"%s\": N%% needs N in 1..100", spec);
    for (size_t i = 0; i < d->n_canary_hosts; i++)
      free(d->canary_hosts[i]);
    free(d->canary_hosts);
    d->canary_hosts = NULL;
    d->n_canary_hosts = 0;
    d->canary_percent = (int)pct;
    return 0;
  }
  char **hosts = NULL;
  size_t nh = 0, cap = 0;
  const char *p = spec;
  int rc = 0;
  for (;;) {
    const char *end = strchr(p, ',');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    char ip[INET6_ADDRSTRLEN + 1];
    unsigned char bytes[16];
    if (len == 0 || len >= sizeof ip) {
      rc = fail(err, errlen,
                len ? "--canary: \"%.*s\" is not an IP address"
                    : "--canary: an empty address in \"%.*s\"",
                (int)(len ? len : n), len ? p : spec);
      break;
    }
    memcpy(ip, p, len);
    ip[len] = '\0';
    if (ip_bytes(ip, bytes) < 0) {
      rc = fail(err, errlen, "--canary: \"%s\" is not an IP address", ip);
      break;
    }
    for (size_t i = 0; i < nh && rc == 0; i++) {
      unsigned char other[16];
      if (ip_bytes(hosts[i], other) < 0 || memcmp(other, bytes, 16) != 0)
        continue;
      if (strcmp(hosts[i], ip) == 0)
        rc = fail(err, errlen, "--canary: %s is named twice", ip);
      else
        rc = fail(err, errlen, "--canary: %s is named twice (also as %s)", ip,
                  hosts[i]);
    }
    if (rc < 0) break;
    if (nh == POLICYDOC_MAX_HOSTS) {
      rc = fail(err, errlen, "--canary: more than %u hosts (use N%%)",
                POLICYDOC_MAX_HOSTS);
      break;
    }
    if (nh == cap) {
      cap = cap ? cap * 2 : 8;
      hosts = xrealloc(hosts, cap * sizeof *hosts);
    }
    hosts[nh++] = xstrdup(ip);
    if (!end) break;
    p = end + 1;
  }
  if (rc < 0) {
    for (size_t i = 0; i < nh; i++)
      free(hosts[i]);
    free(hosts);
    return -1;
  }
  for (size_t i = 0; i < d->n_canary_hosts; i++)
    free(d->canary_hosts[i]);
  free(d->canary_hosts);
  d->canary_hosts = hosts;
  d->n_canary_hosts = nh;
  d->canary_percent = 0;
  return 0;
}

/* ---- a host's report ---- */

const char *policydoc_state_name(policydoc_state_t s) {
  switch (s) {
  case POLICYDOC_APPLIED:
    return "applied";
  case POLICYDOC_REFUSED:
    return "refused";
  case POLICYDOC_WAITING:
    return "waiting";
  }
  return "waiting";
}

char *policydoc_status_write(const policydoc_status_t *s, size_t *len) {
  buf_t b;
  buf_init(&b);
  buf_puts(&b, "{\"host\":");
  json_escape(&b, s->host, strlen(s->host));
  buf_puts(&b, ",\"key\":");
  json_escape(&b, s->key ? s->key : "", s->key ? strlen(s->key) : 0);
  buf_printf(&b,
             ",\"generation\":%lld,\"revision\":%lld,\"sha256\":\"%s\","
             "\"offered\":%lld,\"state\":\"%s\"",
             (long long)s->generation, (long long)s->revision, s->sha256,
             (long long)s->offered, policydoc_state_name(s->state));
  if (s->error) {
    buf_puts(&b, ",\"error\":");
    json_escape(&b, s->error, strlen(s->error));
  }
  buf_printf(&b, ",\"keys\":%llu,\"since\":%lld,\"signed\":%s}",
             (unsigned long long)s->keys, (long long)s->since,
             s->is_signed ? "true" : "false");
  if (len) *len = b.len;
  return buf_detach(&b);
}

void policydoc_status_free(policydoc_status_t *s) {
  if (!s) return;
  free(s->key);
  free(s->error);
  s->key = s->error = NULL;
}

int policydoc_status_parse(const char *text, size_t len,
                           policydoc_status_t *out, char *err, size_t errlen) {
  memset(out, 0, sizeof *out);
  if (len > 64 * 1024)
    return fail(err, errlen, "a host's report is too large: %zu bytes", len);
  char jerr[200];
  json_doc_t *doc = json_parse_max(text, len, 4u << 20, jerr, sizeof jerr);
  if (!doc) return fail(err, errlen, "not JSON: %s", jerr);
  const json_value_t *root = json_root(doc);
  int rc = -1;
  const json_value_t *v;
  char *tmp = NULL;
  static const char *const ints[] = {"generation", "revision", "offered",
                                     "keys", "since"};
  int64_t vals[5] = {0};
  if (root->type != JSON_OBJECT) {
    fail(err, errlen, "a host's report is not a JSON object");
    goto out;
  }
  v = json_get(root, "host");
  if (!v || v->type != JSON_STRING || v->len == 0 ||
      v->len >= sizeof out->host || strlen(v->u.str) != v->len) {
    fail(err, errlen, "host is missing or not an address");
    goto out;
  }
  memcpy(out->host, v->u.str, v->len + 1);
  if (get_opt_str(root, "key", &out->key) < 0 || !out->key) {
    fail(err, errlen, "key is missing or not a string");
    goto out;
  }
  for (size_t i = 0; i < 5; i++)
    if (get_int(root, ints[i], &vals[i]) < 0 || vals[i] < 0) {
      fail(err, errlen, "%s is not an integer >= 0", ints[i]);
      goto out;
    }
  out->generation = vals[0];
  out->revision = vals[1];
  out->offered = vals[2];
  out->keys = (uint64_t)vals[3];
  out->since = vals[4];
  if (get_opt_str(root, "sha256", &tmp) < 0 ||
      (tmp && *tmp && !is_hex64(tmp, strlen(tmp)))) {
    fail(err, errlen, "sha256 is not 64 lowercase hex digits");
    goto out;
  }
  if (tmp) memcpy(out->sha256, tmp, strlen(tmp) + 1);
  v = json_get(root, "state");
  if (!v || v->type != JSON_STRING) {
    fail(err, errlen, "state is missing");
    goto out;
  }
  if (strcmp(v->u.str, "applied") == 0)
    out->state = POLICYDOC_APPLIED;
  else if (strcmp(v->u.str, "refused") == 0)
    out->state = POLICYDOC_REFUSED;
  else if (strcmp(v->u.str, "waiting") == 0)
    out->state = POLICYDOC_WAITING;
  else {
    fail(err, errlen, "state \"%s\" is not applied, refused or waiting",
         v->u.str);
    goto out;
  }
  if (get_opt_str(root, "error", &out->error) < 0) {
    fail(err, errlen, "error is not a string");
    goto out;
  }
  v = json_get(root, "signed");
  if (v && v->type != JSON_BOOL && v->type != JSON_NULL) {
    fail(err, errlen, "signed is not true or false");
    goto out;
  }
  out->is_signed = v && v->type == JSON_BOOL && v->u.boolean;
  rc = 0;
out:
  free(tmp);
  json_free(doc);
  return rc;
}

char *policydoc_status_dir(const char *key) {
  const char *slash = strrchr(key, '/');
  size_t n = slash ? (size_t)(slash - key) : 0;
  return xasprintf("%.*s/status", (int)n, key);
}

char *policydoc_status_key(const char *key, const char *host_ip) {
  char *dir = policydoc_status_dir(key);
  char *k = xasprintf("%s/%s", dir, host_ip);
  free(dir);
  return k;
}
