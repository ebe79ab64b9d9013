/* creds: credential files read, checked, watched, read again.  See
 * include/creds.h. */
#include "creds.h"
#include "log.h"
#include "util.h"

#include <errno.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_FILE (1u << 20) /* a credential file larger than this is wrong */

enum { F_PASSWORD, F_CACERT, F_CERT, F_KEY, F_N };
/* a file's index is its bit in the owner's mask (include/creds.h) */
_Static_assert(CREDS_PASSWORD == 1u << F_PASSWORD &&
                   CREDS_CACERT == 1u << F_CACERT &&
                   CREDS_CERT == 1u << F_CERT && CREDS_KEY == 1u << F_KEY,
               "CREDS_* bits follow the file indexes");

static const char *const what_names[F_N] = {"password file", "CA bundle",
                                            "client certificate", "client key"};

typedef struct {
  creds_t *c;
  char *path;        /* NULL: not configured */
  buf_t have;        /* the content in force */
  uint64_t warned;   /* hash of the failure last warned about, or 0 */
  uv_fs_poll_t poll; /* started once creds_new() has read the file */
  uint64_t reloads;  /* for /metrics */
  uint64_t failures; /* warned failures */
  buf_t got;         /* this read's content */
  int read_errno;    /* this read: 0, or why it failed */
} cfile_t;

struct creds {
  uv_loop_t *loop;
  char *name;
  cfile_t f[F_N];
  char *password;             /* the first line of f[F_PASSWORD].have */
  long long cert_nb, cert_na; /* f[F_CERT].have's validity (0: not known) */
  uv_timer_t settle;
  int sighup;       /* the next read is creds_reread()'s */
  int handles_open; /* the polls started and the timer */
  int freeing;
  void (*changed)(void *ud, unsigned what);
  void *ud;
};

/* ---- reading and checking ---- */

static int no_passphrase(char *buf, int size, int rw, void *u) {
  (void)buf, (void)size, (void)rw, (void)u;
  return 0; /* never ask a terminal: an encrypted key is refused */
}

static BIO *mem_bio(const buf_t *b) {
  return BIO_new_mem_buf(b->data ? b->data : "", (int)b->len);
}

/* The PEM certificates in b: how many (0: none), the first in *first
 * (when first is not NULL; the caller frees it). */
static int pem_certs(const buf_t *b, X509 **first) {
  BIO *bio = mem_bio(b);
  X509 *x;
  int n = 0;
  if (first) *first = NULL;
  while (bio && (x = PEM_read_bio_X509(bio, NULL, no_passphrase, NULL))) {
    if (first && !*first)
      *first = x;
    else
      X509_free(x);
    n++;
  }
  ERR_clear_error();
  BIO_free(bio);
  return n;
}

static EVP_PKEY *pem_key(const buf_t *b) {
  BIO *bio = mem_bio(b);
  EVP_PKEY *k =
      bio ? PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL) : NULL;
  ERR_clear_error();
  BIO_free(bio);
  return k;
}

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
  const unsigned char *s = p;
  for (size_t i = 0; i < n; i++)
    h = (h ^ s[i]) * 1099511628211ull;
  return h;
}

static int same(const buf_t *a, const buf_t *b) {
  return a->len == b->len &&
         (a->len == 0 || memcmp(a->data, b->data, a->len) == 0);
}

/* Reads f's file into f->got; read_errno says how it went. */
static void read_one(cfile_t *f) {
  buf_reset(&f->got);
  f->read_errno = 0;
  if (util_read_file(f->path, MAX_FILE, &f->got) < 0) {
    f->read_errno = errno ? errno : EIO;
    buf_reset(&f->got);
  }
}

static void wipe_buf(buf_t *b) {
  if (b->data) memset(b->data, 0, b->cap);
  buf_free(b);
  buf_init(b);
}

/* One warning per distinct failure (the same bad content read again, or
 * the same error, is not repeated): "etcd: client key /k: no PEM private
 * key in it; still using the one read before". */
static void refuse(creds_t *c, int i, const char *why) {
  cfile_t *f = &c->f[i];
  uint64_t h = fnv(1469598103934665603ull, why, strlen(why));
  h = fnv(h, f->got.data ? f->got.data : "", f->got.len);
  if (h == 0) h = 1;
  if (f->warned == h) {
    log_debug("%s: %s %s: %s (again)", c->name, what_names[i], f->path, why);
    return;
  }
  f->warned = h;
  f->failures++;
  log_warn("%s: %s %s: %s; still using %s read before", c->name, what_names[i],
           f->path, why, i == F_PASSWORD ? "the password" : "the one");
}

/* "cannot read it: No such file or directory" */
static const char *read_error(const cfile_t *f, char *buf, size_t n) {
  snprintf(buf, n, "cannot read it: %s",
           f->read_errno == EFBIG ? "larger than 1 MiB"
                                  : strerror(f->read_errno));
  return buf;
}

/* f->got becomes the content in force. */
static void take(creds_t *c, int i, int counted) {
  cfile_t *f = &c->f[i];
  if (i == F_KEY || i == F_PASSWORD)
    wipe_buf(&f->have);
  else
    buf_reset(&f->have);
  buf_append(&f->have, f->got.data ? f->got.data : "", f->got.len);
  f->warned = 0;
  if (counted) f->reloads++;
  if (i == F_PASSWORD) {
    if (c->password) {
      memset(c->password, 0, strlen(c->password));
      free(c->password);
    }
    const char *s = f->have.data ? f->have.data : "";
    size_t n = strcspn(s, "\r\n");
    c->password = xmalloc(n + 1);
    memcpy(c->password, s, n);
    c->password[n] = '\0';
  }
}

/* Whether f->got may replace what f has: the password's first line is not
 * empty; a CA bundle holds a certificate.  NULL, or why not. */
static const char *check_single(creds_t *c, int i, int at_start) {
  cfile_t *f = &c->f[i];
  if (i == F_PASSWORD) {
    const char *s = f->got.data ? f->got.data : "";
    return strcspn(s, "\r\n") == 0 && !at_start ? "its first line is empty"
                                                : NULL;
  }
  return pem_certs(&f->got, NULL) == 0 ? "no PEM certificate in it" : NULL;
}

/* The certificate and key as a pair: NULL, or why not (which file is bad
 * in *bad; the text in why[]). */
static const char *check_pair(creds_t *c, int *bad, char *buf, size_t n) {
  X509 *x = NULL;
  EVP_PKEY *k = NULL;
  const char *why = NULL;
  if (pem_certs(&c->f[F_CERT].got, &x) == 0) {
    *bad = F_CERT;
    why = "no PEM certificate in it";
  } else if (!(k = pem_key(&c->f[F_KEY].got))) {
    *bad = F_KEY;
    why = "no PEM private key in it (an encrypted key cannot be used)";
  } else if (X509_check_private_key(x, k) != 1) {
    *bad = F_CERT;
    snprintf(buf, n,
             "it does not match the client key %s (the two are taken "
             "together, once they match)",
             c->f[F_KEY].path);
    why = buf;
  }
  ERR_clear_error();
  X509_free(x);
  EVP_PKEY_free(k);
  return why;
}

/* Seconds since the epoch of t; 0 when it cannot be read. */
static long long asn1_epoch(const ASN1_TIME *t) {
  ASN1_TIME *epoch = ASN1_TIME_set(NULL, 0);
  int days = 0, secs = 0;
  int ok = epoch && t && ASN1_TIME_diff(&days, &secs, epoch, t);
  ASN1_TIME_free(epoch);
  ERR_clear_error();
  return ok ? (long long)days * 86400 + secs : 0;
}

/* The validity of the client certificate in force (its first one). */
static void cert_validity(creds_t *c) {
  X509 *x = NULL;
  c->cert_nb = c->cert_na = 0;
  if (pem_certs(&c->f[F_CERT].have, &x) > 0) {
    c->cert_nb = asn1_epoch(X509_get0_notBefore(x));
    c->cert_na = asn1_epoch(X509_get0_notAfter(x));
  }
  X509_free(x);
}

/* A client certificate just taken that has expired (or is not valid yet)
 * is used as given, the file being what the operator's tooling wrote, and
 * said: a server refuses connections made with it.  (Refusing it would
 * keep a certificate that is about to expire too, or has, and one not yet
 * valid for a skewed clock would never be taken.) */
static void cert_check(const creds_t *c) {
  http_tls_t t = {.cert = c->f[F_CERT].path,
                  .cert_not_before = c->cert_nb,
                  .cert_not_after = c->cert_na};
  char why[80];
  if (http_tls_cert_invalid(&t, (long long)time(NULL), why, sizeof why))
    log_warn("%s: client certificate %s: %s; in use all the same: "
             "connections made with it are refused until the file holds a "
             "renewed one",
             c->name, c->f[F_CERT].path, why);
}

/* Reads every file and takes what changed and passes its checks.  Returns
 * the CREDS_* bits taken; at start (at_start), a failure is -1 with err. */
static int read_all(creds_t *c, int at_start, char *err, size_t errlen) {
  unsigned taken = 0;
  for (int i = 0; i < F_N; i++)
    if (c->f[i].path) read_one(&c->f[i]);
  /* the password file and the CA bundle: each on its own */
  static const int singles[2] = {F_PASSWORD, F_CACERT};
  for (int s = 0; s < 2; s++) {
    int i = singles[s];
    cfile_t *f = &c->f[i];
    if (!f->path) continue;
    const char *why = NULL;
    char rbuf[300];
    if (f->read_errno) {
      why = read_error(f, rbuf, sizeof rbuf);
    } else if (!at_start && same(&f->got, &f->have)) {
      f->warned = 0; /* back to what is in force */
      continue;
    } else {
      why = check_single(c, i, at_start);
    }
    if (why && at_start) {
      snprintf(err, errlen, "%s: %s %s: %s", c->name, what_names[i], f->path,
               why);
      return -1;
    }
    if (why) {
      refuse(c, i, why);
      continue;
    }
    take(c, i, !at_start);
    taken |= 1u << i;
  }
  /* the certificate and its key: together */
  if (c->f[F_CERT].path) {
    int bad = -1;
    const char *why = NULL;
    char pbuf[600];
    for (int i = F_CERT; i <= F_KEY && bad < 0; i++)
      if (c->f[i].read_errno) bad = i;
    if (bad >= 0) {
      why = read_error(&c->f[bad], pbuf, sizeof pbuf);
      if (at_start) {
        snprintf(err, errlen, "%s: %s %s: %s", c->name, what_names[bad],
                 c->f[bad].path, why);
        return -1;
      }
      refuse(c, bad, why);
    } else if (!at_start && same(&c->f[F_CERT].got, &c->f[F_CERT].have) &&
               same(&c->f[F_KEY].got, &c->f[F_KEY].have)) {
      c->f[F_CERT].warned = c->f[F_KEY].warned = 0;
    } else if ((why = check_pair(c, &bad, pbuf, sizeof pbuf))) {
      if (at_start) {
        snprintf(err, errlen, "%s: %s %s: %s", c->name, what_names[bad],
                 c->f[bad].path, why);
        return -1;
      }
      refuse(c, bad, why);
    } else {
      for (int i = F_CERT; i <= F_KEY; i++) {
        if (!at_start && same(&c->f[i].got, &c->f[i].have)) continue;
        take(c, i, !at_start);
        taken |= 1u << i;
      }
      if (taken & CREDS_CERT) cert_validity(c);
    }
  }
  for (int i = 0; i < F_N; i++)
    if (i == F_KEY || i == F_PASSWORD)
      wipe_buf(&c->f[i].got);
    else
      buf_reset(&c->f[i].got);
  return (int)taken;
}

/* "password file /p, client certificate /c" for the files in mask. */
static void name_files(const creds_t *c, unsigned mask, char *out, size_t n) {
  size_t len = 0;
  out[0] = '\0';
  for (int i = 0; i < F_N; i++) {
    if (!(mask & (1u << i)) || !c->f[i].path) continue;
    int w = snprintf(out + len, n - len, "%s%s %s", len ? ", " : "",
                     what_names[i], c->f[i].path);
    if (w < 0 || (size_t)w >= n - len) break;
    len += (size_t)w;
  }
}

/* ---- watching ---- */

static void settle_cb(uv_timer_t *t) {
  creds_t *c = t->data;
  REGISTER_ASSERT(!c->freeing); /* creds_free() stopped and closed it */
  int sighup = c->sighup;
  c->sighup = 0;
  unsigned taken = (unsigned)read_all(c, 0, NULL, 0);
  char names[1500];
  const char *tail = taken & CREDS_TLS ? " (new connections use them)" : "";
  if (taken) {
    name_files(c, taken, names, sizeof names);
    log_info("%s: credentials read again (%s): %s%s", c->name,
             sighup ? "SIGHUP" : "changed", names, tail);
  } else if (sighup) {
    name_files(c, ~0u, names, sizeof names);
    log_info("%s: credentials read again (SIGHUP): no change in %s", c->name,
             names);
  } else {
    log_debug("%s: credential files touched, nothing new taken", c->name);
  }
  if (taken & CREDS_CERT) cert_check(c);
  if (taken && c->changed) c->changed(c->ud, taken);
}

static void poll_cb(uv_fs_poll_t *p, int status, const uv_stat_t *prev,
                    const uv_stat_t *curr) {
  (void)status, (void)prev, (void)curr;
  cfile_t *f = p->data;
  creds_t *c = f->c;
  if (c->freeing) return;
  /* gone, back, rewritten, replaced: read everything a moment later, so
   * that a certificate and its key replaced one after the other are read
   * as a pair */
  if (!uv_is_active((uv_handle_t *)&c->settle))
    uv_timer_start(&c->settle, settle_cb, CREDS_SETTLE_MS, 0);
}

/* ---- life ---- */

creds_t *creds_new(const creds_opts_t *o, char *err, size_t errlen) {
  creds_t *c = xcalloc(1, sizeof *c);
  c->loop = o->loop;
  c->name = xstrdup(o->name);
  c->changed = o->changed;
  c->ud = o->ud;
  const char *paths[F_N] = {o->password_file, o->cacert, o->cert, o->key};
  for (int i = 0; i < F_N; i++) {
    cfile_t *f = &c->f[i];
    f->c = c;
    f->path = paths[i] ? xstrdup(paths[i]) : NULL;
    buf_init(&f->have);
    buf_init(&f->got);
  }
  if ((c->f[F_CERT].path == NULL) != (c->f[F_KEY].path == NULL)) {
    snprintf(err, errlen, "%s: a client certificate and key go together",
             c->name);
    c->freeing = 1;
    creds_free(c);
    return NULL;
  }
  if (read_all(c, 1, err, errlen) < 0) {
    c->freeing = 1;
    creds_free(c); /* no handle yet: freed here */
    return NULL;
  }
  if (c->f[F_CERT].path) cert_check(c);
  uv_timer_init(c->loop, &c->settle);
  c->settle.data = c;
  c->handles_open = 1;
  for (int i = 0; i < F_N; i++) {
    cfile_t *f = &c->f[i];
    if (!f->path) continue;
    uv_fs_poll_init(c->loop, &f->poll);
    f->poll.data = f;
    c->handles_open++;
    uv_fs_poll_start(&f->poll, poll_cb, f->path, CREDS_POLL_MS);
  }
  return c;
}

void creds_reread(creds_t *c) {
  if (!c || c->freeing) return;
  c->sighup = 1;
  /* from the loop: the callback never runs inside this call */
  uv_timer_start(&c->settle, settle_cb, 0, 0);
}

const char *creds_password(const creds_t *c) {
  return c && c->f[F_PASSWORD].path ? c->password : NULL;
}

int creds_has_tls(const creds_t *c) {
  return c && (c->f[F_CACERT].path || c->f[F_CERT].path);
}

void creds_tls(const creds_t *c, http_tls_t *out) {
  memset(out, 0, sizeof *out);
  const cfile_t *f = c->f;
  out->cacert = f[F_CACERT].path;
  out->cert = f[F_CERT].path;
  out->key = f[F_KEY].path;
  if (f[F_CACERT].path) {
    out->cacert_pem = f[F_CACERT].have.data ? f[F_CACERT].have.data : "";
    out->cacert_len = f[F_CACERT].have.len;
  }
  if (f[F_CERT].path) {
    out->cert_pem = f[F_CERT].have.data ? f[F_CERT].have.data : "";
    out->cert_len = f[F_CERT].have.len;
    out->key_pem = f[F_KEY].have.data ? f[F_KEY].have.data : "";
    out->key_len = f[F_KEY].have.len;
    out->cert_not_before = c->cert_nb;
    out->cert_not_after = c->cert_na;
  }
}

size_t creds_stats(const creds_t *c, creds_stat_t *out, size_t max) {
  size_t n = 0;
  for (int i = 0; c && i < F_N; i++) {
    if (!c->f[i].path) continue;
    if (n < max)
      out[n] = (creds_stat_t){c->f[i].path, c->f[i].reloads, c->f[i].failures};
    n++;
  }
  return n;
}

static void creds_release(creds_t *c) {
  for (int i = 0; i < F_N; i++) {
    free(c->f[i].path);
    wipe_buf(&c->f[i].have);
    wipe_buf(&c->f[i].got);
  }
  if (c->password) {
    memset(c->password, 0, strlen(c->password));
    free(c->password);
  }
  free(c->name);
  free(c);
}

static void closed_cb(uv_handle_t *h) {
  creds_t *c = h->type == UV_TIMER ? h->data : ((cfile_t *)h->data)->c;
  REGISTER_ASSERT(c->handles_open > 0); /* one close callback per handle */
  REGISTER_ASSERT(c->freeing);          /* handles close only in creds_free() */
  if (--c->handles_open == 0) creds_release(c);
}

void creds_free(creds_t *c) {
  if (!c) return;
  if (!c->handles_open) { /* creds_new() failed: no handle was made */
    creds_release(c);
    return;
  }
  c->freeing = 1;
  uv_timer_stop(&c->settle);
  uv_close((uv_handle_t *)&c->settle, closed_cb);
  for (int i = 0; i < F_N; i++) {
    if (!c->f[i].path) continue;
    uv_fs_poll_stop(&c->f[i].poll);
    uv_close((uv_handle_t *)&c->f[i].poll, closed_cb);
  }
}
