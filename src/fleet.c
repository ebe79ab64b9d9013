/* fleet: the daemon's side of the fleet's policy in etcd (fleet.h). */
#include "fleet.h"
#include "etcd_watch.h"
#include "json.h"
#include "log.h"
#include "sig.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define RETRY_MIN_MS 1000
#define RETRY_MAX_MS 30000
#define BUSY_RETRY_MS 1000
/* the policy key's watch probes its member after this long without news:
 * one GET /version per host and period while the key does not change
 * (50 a second for a fleet of 500), a hung member left within about 12 s */
#define FLEET_PROBE_MS 10000
/* a revision refused for timeouts only is tried again after this, doubling
 * to AGAIN_MAX_MS while it stays the one offered (fleet.h) */
#define AGAIN_MIN_MS 5000
#define AGAIN_MAX_MS 300000
#define REPORT_EVERY_MS 30000 /* the key count in the report */
#define ERROR_MAX 480         /* a report's error, in bytes */

struct fleet {
  fleet_opts_t o;
  char *key, *host_ip, *state_dir, *pubkey, *status_key, *cache_file;
  sig_keys_t *keys; /* NULL without --policy-pubkey */
  etcd_op_t *get;   /* a read of KEY in flight */
  etcd_watch_t *watch;
  int reread;           /* KEY changed while a read or a try ran */
  uint64_t retry_ms;    /* the next failed read waits this long */
  uv_timer_t *retry;    /* reads again (or tries again when busy) */
  uv_timer_t *report;   /* the key count, every REPORT_EVERY_MS */
  uv_timer_t *again;    /* a revision refused for timeouts, tried again */
  uint64_t again_ms;    /* the next such refusal waits this long */
  int refused_timeout;  /* the refusal in refused_rev was for timeouts only */
  int seen;             /* KEY was read once (present or not) */
  int present;          /* KEY held a document at the last read */
  int64_t generation;   /* of the last document read */
  policydoc_rev_t *cur; /* the revision in force, or NULL (own policy) */
  int cur_signed;
  int cur_unverified; /* cur failed its signature check since: said once */
  /* the revision being tried (owned), and the offer behind it */
  policydoc_rev_t *trying;
  int trying_signed;
  int applying; /* inside the owner's apply(): fleet_tried() comes later */
  int64_t offered;
  int in_canary, canary_out;
  /* a refused revision is not tried again before the document changes */
  int64_t refused_rev, refused_gen;
  char refused_sha[65];
  char *refused_why; /* its reason, what the report says while offered */
  policydoc_state_t state;
  char *error;
  int64_t since;
  int64_t since_rev, since_offered; /* what the state was about at since */
  char *cache_error; /* the last cache write failed: why, or NULL */
  char *old_cache;   /* the name an older register gave the cache */
  char *published;   /* the last report handed to publish() */
  uint64_t applied, refused;
  /* the cached revision (fleet_cached) until fleet_started() */
  policydoc_t cache;
  int cache_loaded;
};

static void timer_closed(uv_handle_t *h) {
  free(h);
}

static uv_timer_t *timer_new(fleet_t *f) {
  uv_timer_t *t = xcalloc(1, sizeof *t);
  uv_timer_init(f->o.loop, t);
  t->data = f;
  return t;
}

/* ---- the report ---- */

static void set_state(fleet_t *f, policydoc_state_t st, const char *error) {
  /* "since" is when this host reached what its report says: the same
   * state with another revision in force or offered is news too */
  int64_t rev = f->cur ? f->cur->revision : 0;
  int same = f->state == st && rev == f->since_rev &&
             f->offered == f->since_offered &&
             ((!error && !f->error) ||
              (error && f->error && !strcmp(error, f->error)));
  if (same) return;
  f->since_rev = rev;
  f->since_offered = f->offered;
  f->state = st;
  free(f->error);
  f->error = NULL;
  if (error) { /* at most ERROR_MAX bytes, not cutting a UTF-8 sequence */
    size_t n = strnlen(error, ERROR_MAX);
    if (error[n])
      while (n > 0 && ((unsigned char)error[n] & 0xC0) == 0x80)
        n--;
    f->error = xstrndup(error, n);
  }
  f->since = (int64_t)time(NULL);
}

static void publish(fleet_t *f) {
  policydoc_status_t s;
  memset(&s, 0, sizeof s);
  snprintf(s.host, sizeof s.host, "%s", f->host_ip);
  s.key = f->key;
  s.generation = f->generation;
  s.revision = f->cur ? f->cur->revision : 0;
  if (f->cur) memcpy(s.sha256, f->cur->sha256, sizeof s.sha256);
  s.offered = f->offered;
  s.state = f->state;
  s.error = f->error;
  s.keys = f->o.keys ? f->o.keys(f->o.ud) : 0;
  s.since = f->since;
  s.is_signed = f->cur && f->cur_signed;
  size_t len;
  char *json = policydoc_status_write(&s, &len);
  if (f->published && strcmp(f->published, json) == 0) {
    free(json);
    return;
  }
  free(f->published);
  f->published = json;
  if (f->o.publish) f->o.publish(f->o.ud, f->status_key, json, len);
}

static void report_cb(uv_timer_t *t) {
  publish(t->data);
}

void fleet_synced(fleet_t *f) {
  if (f->published) publish(f); /* the key count, now right */
}

/* ---- the cache in --state-dir ---- */

/* "/register/policy" -> DIR/policy-_2fregister_2fpolicy.json: every byte
 * but [A-Za-z0-9.-] as _XX, so that no two keys share a file (/a/b and
 * /a_b did); a long key's name is cut and ends with a hash of the key,
 * and the cache records its key (a shared name is then not used) */
static char *cache_path(const char *dir, const char *key) {
  buf_t b;
  buf_init(&b);
  for (const unsigned char *p = (const unsigned char *)key; *p; p++) {
    if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
        (*p >= '0' && *p <= '9') || *p == '-' || *p == '.')
      buf_printf(&b, "%c", *p);
    else
      buf_printf(&b, "_%02x", *p);
  }
  char *path;
  if (b.len > 180) {
    uint64_t h = UINT64_C(14695981039346656037);
    for (const unsigned char *p = (const unsigned char *)key; *p; p++)
      h = (h ^ *p) * UINT64_C(1099511628211);
    path = xasprintf("%s/policy-%.160s-%016" PRIx64 ".json", dir, b.data, h);
  } else {
    path = xasprintf("%s/policy-%s.json", dir, b.len ? b.data : "");
  }
  buf_free(&b);
  return path;
}

/* The name before: "/register/policy" -> DIR/policy-_register_policy.json
 * (shared by /register/policy and /register_policy, and no key inside) */
static char *old_cache_path(const char *dir, const char *key) {
  char *name = xstrdup(key);
  for (char *p = name; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
          (*p >= '0' && *p <= '9') || *p == '-' || *p == '.'))
      *p = '_';
  char *path = xasprintf("%s/policy-%s.json", dir, name);
  free(name);
  return path;
}

/* What the cache file begins with: {"cache_key":KEY, (malloc'd), then the
 * document's members */
static char *cache_head(const char *key, size_t *n) {
  buf_t b;
  buf_init(&b);
  buf_printf(&b, "{\"cache_key\":");
  json_escape(&b, key, strlen(key));
  buf_printf(&b, ",");
  *n = b.len;
  return b.data;
}

/* The revision in force, written atomically: a temporary file beside it,
 * fsync, rename, fsync of the directory.  Failures are logged: the
 * daemon runs on without a cache. */
static void cache_write(fleet_t *f) {
  if (!f->cur) return;
  policydoc_t d;
  memset(&d, 0, sizeof d);
  d.generation = 1;
  d.stable = f->cur;
  size_t dlen;
  char *doc = policydoc_write(&d, &dlen);
  /* the document with its key first */
  size_t hlen;
  char *head = cache_head(f->key, &hlen);
  char *json = xasprintf("%s%s", head, doc + 1);
  size_t len = hlen + dlen - 1;
  free(head);
  free(doc);
  char *tmp = xasprintf("%s.tmp", f->cache_file);
  const char *what = "mkdir";
  int ok = 0, fd = -1;
  if (mkdir(f->state_dir, 0700) == 0 || errno == EEXIST) {
    what = "open";
    /* a file of our own, never one found there: a symlink planted at tmp
     * (a state directory others can write) is removed, not followed, and
     * O_EXCL refuses one planted again before the open */
    if (unlink(tmp) != 0 && errno != ENOENT) {
      what = "remove the old";
    } else {
      fd =
          open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    }
  }
  if (fd >= 0) {
    size_t off = 0;
    what = "write";
    while (off < len) {
      ssize_t n = write(fd, json + off, len - off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      off += (size_t)n;
    }
    if (off == len) {
      what = "fsync";
      if (fsync(fd) == 0) {
        what = "rename";
        ok = rename(tmp, f->cache_file) == 0;
      }
    }
    close(fd);
  }
  free(f->cache_error);
  f->cache_error = NULL;
  if (ok) {
    int dfd = open(f->state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      fsync(dfd);
      close(dfd);
    }
  } else {
    f->cache_error = xasprintf(
        "cannot %s %s: %s", what,
        fd >= 0 || strcmp(what, "open") ? tmp : f->state_dir, strerror(errno));
    log_error("policy cache: %s; a restart while etcd is down will start "
              "with the host's own policy",
              f->cache_error);
    unlink(tmp);
  }
  free(tmp);
  free(json);
}

/* the largest --policy-pubkey file read (a PEM public key is 113 bytes) */
#define PUBKEYS_MAX (64u * 1024)

/* ---- checking a revision ---- */

/* 0 when this host may run r (its signature, or unsigned allowed); -1
 * with why.  *is_signed: a signature verified. */
static int check_signature(fleet_t *f, const policydoc_rev_t *r, int *is_signed,
                           char *why, size_t n) {
  *is_signed = 0;
  if (f->keys) {
    if (!r->signature) {
      snprintf(why, n,
               "revision %" PRId64 " is not signed, and this host applies "
               "only policies signed with a key in %s",
               r->revision, f->pubkey);
      return -1;
    }
    char err[300];
    if (sig_verify(f->keys, r->source, r->source_len, r->signature, err,
                   sizeof err) < 0) {
      snprintf(why, n, "revision %" PRId64 ": %s", r->revision, err);
      return -1;
    }
    *is_signed = 1;
    return 0;
  }
  if (!f->o.allow_unsigned) {
    snprintf(why, n,
             "revision %" PRId64 ": policies from etcd are applied only "
             "when signed (--policy-pubkey FILE) or, unsafely, with "
             "--policy-unsigned",
             r->revision);
    return -1;
  }
  return 0;
}

/* 0 when the cache (text) names KEY as its own; -1 with why. */
static int cache_key_is(const fleet_t *f, const char *text, size_t len,
                        char *why, size_t n) {
  char jerr[200];
  json_doc_t *doc = json_parse_max(text, len, 64u << 20, jerr, sizeof jerr);
  if (!doc) {
    snprintf(why, n, "not JSON: %s", jerr);
    return -1;
  }
  const json_value_t *root = json_root(doc);
  const json_value_t *k =
      root->type == JSON_OBJECT ? json_get(root, "cache_key") : NULL;
  int rc = 0;
  if (!k || k->type != JSON_STRING) {
    snprintf(why, n, "it does not say its key");
    rc = -1;
  } else if (k->len != strlen(f->key) || memcmp(k->u.str, f->key, k->len)) {
    snprintf(why, n, "it is the cache of key %.*s, not of %s",
             (int)(k->len > 200 ? 200 : k->len), k->u.str, f->key);
    rc = -1;
  }
  json_free(doc);
  return rc;
}

/* The public key file, checked before sig_keys_load() reads it: 0, or -1
 * with one line in err. */
static int pubkey_file_ok(const char *path, char *err, size_t errlen) {
  int fd = util_open_regular(path, PUBKEYS_MAX, err, errlen);
  if (fd < 0) return -1;
  close(fd);
  return 0;
}

int fleet_cached(fleet_t *f, const char **source, size_t *len,
                 const char **name) {
  buf_t b;
  buf_init(&b);
  char why_not[600];
  int fd = util_open_regular(f->cache_file, POLICYDOC_MAX_DOC + 4096, why_not,
                             sizeof why_not);
  int e = errno, ok = fd >= 0;
  FILE *fp = ok ? fdopen(fd, "rb") : NULL;
  if (ok && (!fp || util_read_fp(fp, POLICYDOC_MAX_DOC + 4096, &b) < 0)) {
    e = errno;
    snprintf(why_not, sizeof why_not, "%s: %s", f->cache_file, strerror(e));
    ok = 0;
  }
  if (fp)
    fclose(fp);
  else if (fd >= 0)
    close(fd);
  errno = e;
  if (!ok) {
    struct stat st;
    if (errno != ENOENT)
      log_warn("policy cache %s: cannot read it (%s); starting with the "
               "host's own policy",
               f->cache_file, why_not);
    else if (stat(f->old_cache, &st) == 0)
      log_warn("policy cache %s: written by an older register, it does not "
               "say its key (another key may share its name): not used; "
               "starting with the host's own policy",
               f->old_cache);
    buf_free(&b);
    return 0;
  }
  char err[300], why[600];
  int signed_ok;
  if (cache_key_is(f, b.data ? b.data : "", b.len, why, sizeof why) < 0) {
    log_warn("policy cache %s: %s: not used; starting with the host's own "
             "policy",
             f->cache_file, why);
    buf_free(&b);
    return 0;
  }
  /* the document without its key (as written, it fits the document's
   * limit again) */
  size_t hlen, off = 0;
  char *head = cache_head(f->key, &hlen);
  if (b.len > hlen && memcmp(b.data, head, hlen) == 0) {
    off = hlen - 1;
    b.data[off] = '{';
  }
  free(head);
  int rc =
      policydoc_parse(b.data + off, b.len - off, &f->cache, err, sizeof err);
  buf_free(&b);
  if (rc < 0) {
    log_error("policy cache %s: %s; starting with the host's own policy",
              f->cache_file, err);
    policydoc_free(&f->cache);
    return 0;
  }
  if (check_signature(f, f->cache.stable, &signed_ok, why, sizeof why) < 0) {
    log_error("policy cache %s: %s; starting with the host's own policy",
              f->cache_file, why);
    policydoc_free(&f->cache);
    return 0;
  }
  f->cache_loaded = 1;
  f->cur_signed = signed_ok;
  static char nm[600];
  snprintf(nm, sizeof nm, "%s@%" PRId64, f->key, f->cache.stable->revision);
  *source = f->cache.stable->source;
  *len = f->cache.stable->source_len;
  *name = nm;
  return 1;
}

void fleet_started(fleet_t *f, int in_force) {
  if (f->cache_loaded && in_force) {
    f->cur = f->cache.stable; /* taken from the cache document */
    f->cache.stable = NULL;
    log_info("policy revision %" PRId64 " of %s from the cache in %s",
             f->cur->revision, f->key, f->state_dir);
  }
  if (f->cache_loaded) policydoc_free(&f->cache);
  f->cache_loaded = 0;
}

/* ---- following KEY ---- */

static void read_key(fleet_t *f);

static void retry_cb(uv_timer_t *t) {
  fleet_t *f = t->data;
  read_key(f);
}

static void retry_later(fleet_t *f, uint64_t ms) {
  uv_timer_start(f->retry, retry_cb, ms, 0);
}

static void watch_cb(void *data, etcd_watch_kind_t kind, int64_t rev,
                     const char *error) {
  fleet_t *f = data;
  REGISTER_ASSERT(f->watch); /* a cancelled watch calls back no more */
  (void)rev;
  if (kind == ETCD_WATCH_FAILED) { /* over (freed by etcd_watch): a new one
                                      after the next read, in a moment */
    f->watch = NULL;
    log_warn("policy key %s: the watch ended: %s; reading it again", f->key,
             error ? error : "?");
    retry_later(f, RETRY_MIN_MS);
    return;
  }
  if (kind == ETCD_WATCH_COMPACTED) f->watch = NULL; /* over */
  read_key(f);
}

/* The revision this host is offered is tried: signature, then apply(). */
static void try_offer(fleet_t *f, const policydoc_rev_t *r) {
  char why[700];
  int is_signed;
  if (check_signature(f, r, &is_signed, why, sizeof why) < 0) {
    f->refused_timeout = 0; /* final: again_cb() leaves it */
    f->refused_rev = r->revision;
    f->refused_gen = f->generation;
    memcpy(f->refused_sha, r->sha256, sizeof f->refused_sha);
    free(f->refused_why);
    f->refused_why = xstrdup(why);
    f->refused++;
    log_error("policy revision %" PRId64 " of %s refused, keeping %s: %s",
              r->revision, f->key,
              f->cur ? "the revision in force"
                     : "the "
                       "host's own policy",
              why);
    set_state(f, POLICYDOC_REFUSED, why);
    publish(f);
    return;
  }
  policydoc_rev_free(f->trying);
  f->trying = policydoc_rev_new(r->revision, r->source, r->source_len,
                                r->signature, r->name, r->pushed_by);
  f->trying_signed = is_signed;
  char name[600], err[600];
  snprintf(name, sizeof name, "%s@%" PRId64, f->key, r->revision);
  fleet_outcome_t outcome = FLEET_REFUSED;
  log_info("policy revision %" PRId64 " of %s offered: trying it on every "
           "running container",
           r->revision, f->key);
  f->applying = 1;
  int rc = f->o.apply(f->o.ud, r->source, r->source_len, name, err, sizeof err,
                      &outcome);
  f->applying = 0;
  if (rc == 0) return;         /* fleet_tried() comes */
  if (outcome == FLEET_BUSY) { /* a SIGHUP reload runs: again in a moment */
    policydoc_rev_free(f->trying);
    f->trying = NULL;
    retry_later(f, BUSY_RETRY_MS);
    return;
  }
  fleet_tried(f, outcome == FLEET_TIMED_OUT ? FLEET_TIMED_OUT : FLEET_REFUSED,
              err);
}

/* A document read from KEY (text, len). */
static void on_document(fleet_t *f, const char *text, size_t len) {
  char err[300], why[700];
  policydoc_t d;
  memset(&d, 0, sizeof d);
  f->present = 1;
  if (len > POLICYDOC_MAX_DOC) {
    snprintf(why, sizeof why,
             "policy key %s holds %zu bytes, more than the %u a policy "
             "document may have",
             f->key, len, POLICYDOC_MAX_DOC);
    goto bad;
  }
  if (policydoc_parse(text, len, &d, err, sizeof err) < 0) {
    snprintf(why, sizeof why, "policy key %s: %s", f->key, err);
    policydoc_free(&d);
    goto bad;
  }
  f->generation = d.generation;
  const policydoc_rev_t *r = policydoc_for_host(&d, f->host_ip);
  f->offered = r->revision;
  f->in_canary = d.canary && policydoc_in_canary(&d, f->host_ip);
  f->canary_out = d.canary != NULL;
  if (f->cur && f->cur->revision == r->revision &&
      strcmp(f->cur->sha256, r->sha256) == 0) {
    /* verified again: the public keys may have changed (SIGHUP) since it
     * was applied.  One that no longer verifies stays in force (the keys
     * under its prefix go only with a revision that replaces it), said in
     * the log and the report; a restart would not start with it. */
    int sig_ok;
    char sigwhy[400], line[600];
    const char *error = NULL;
    if (check_signature(f, f->cur, &sig_ok, sigwhy, sizeof sigwhy) < 0) {
      snprintf(line, sizeof line,
               "the revision in force no longer verifies: %s; it stays in "
               "force until one that verifies is offered (a restart would "
               "not start with it)",
               sigwhy);
      error = line;
      if (f->cur_signed || !f->cur_unverified)
        log_error("policy key %s: %s", f->key, line);
      f->cur_unverified = 1;
    } else {
      f->cur_unverified = 0;
    }
    f->cur_signed = sig_ok;
    set_state(f,
              f->canary_out && !f->in_canary ? POLICYDOC_WAITING
                                             : POLICYDOC_APPLIED,
              error);
    publish(f);
  } else if (f->refused_rev == r->revision && f->refused_gen == d.generation &&
             strcmp(f->refused_sha, r->sha256) == 0) {
    /* refused already: its own reason again (the key may have been
     * deleted or corrupted meanwhile, and that error is over) */
    set_state(f, POLICYDOC_REFUSED, f->refused_why);
    publish(f);
  } else {
    try_offer(f, r);
  }
  policydoc_free(&d);
  return;
bad:
  log_error("%s; keeping %s", why,
            f->cur ? "the revision in force" : "the host's own policy");
  set_state(f, POLICYDOC_REFUSED, why);
  publish(f);
}

static void got_key(void *data, const etcd_result_t *res, const etcd_kv_t *kvs,
                    size_t n, const char *const *dirs, size_t ndirs) {
  (void)dirs;
  (void)ndirs;
  fleet_t *f = data;
  REGISTER_ASSERT(f->get); /* the read this fleet waits for, once */
  f->get = NULL;
  if (res->status != ETCD_OK) {
    log_warn("policy key %s: cannot read it: %s; again in %" PRIu64 " s",
             f->key, res->error ? res->error : etcd_status_name(res->status),
             f->retry_ms / 1000);
    retry_later(f, f->retry_ms);
    f->retry_ms =
        f->retry_ms * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : f->retry_ms * 2;
    return;
  }
  f->retry_ms = RETRY_MIN_MS;
  if (!f->watch) {
    f->watch =
        etcd_watch_key(f->o.etcd, f->key, res->revision + 1, watch_cb, f);
    REGISTER_ASSERT(f->watch); /* never NULL: a failure comes from the loop */
    /* a member that hung (takes connections, never answers) would hold
     * the watch until its renewal (a minute); the daemon's own requests
     * fail over, this watch is left only by a probe */
    etcd_watch_probe_every(f->watch, FLEET_PROBE_MS);
  }
  int first = !f->seen;
  f->seen = 1;
  if (n == 0) {
    if (f->present || first) {
      if (f->present)
        log_error("policy key %s was deleted; keeping %s", f->key,
                  f->cur ? "the revision in force" : "the host's own policy");
      else
        log_info("policy key %s holds no policy yet; running %s", f->key,
                 f->cur ? "the cached revision" : "the host's own policy");
      set_state(f, f->present ? POLICYDOC_REFUSED : POLICYDOC_WAITING,
                f->present ? "the policy key was deleted" : NULL);
      f->offered = 0;
    }
    f->present = 0;
    publish(f);
  } else {
    on_document(f, kvs[0].value, kvs[0].value_len);
  }
  if (f->reread && !f->trying) read_key(f);
}

static void read_key(fleet_t *f) {
  if (f->trying || f->get) { /* read again once it is over */
    f->reread = 1;
    return;
  }
  f->reread = 0;
  f->get = etcd_get(f->o.etcd, f->key, got_key, f);
  REGISTER_ASSERT(f->get); /* never NULL, and never answered inside */
}

void fleet_start(fleet_t *f) {
  REGISTER_ASSERT(!f->seen && !f->get && !f->watch); /* once */
  set_state(f, POLICYDOC_WAITING, NULL);
  uv_timer_start(f->report, report_cb, REPORT_EVERY_MS, REPORT_EVERY_MS);
  read_key(f);
}

/* A revision refused for timeouts only: offered again (the document read
 * again, the refusal forgotten), unless the document changed meanwhile. */
static void again_cb(uv_timer_t *t) {
  fleet_t *f = t->data;
  if (!f->refused_timeout) return; /* refused since for another reason */
  f->refused_rev = 0;
  read_key(f);
}

void fleet_tried(fleet_t *f, fleet_outcome_t outcome, const char *why) {
  /* the answer to the revision being tried, once, from the loop (fleet.h:
   * never inside the apply() that started it) */
  REGISTER_ASSERT(f->trying && !f->applying);
  REGISTER_ASSERT(outcome != FLEET_BUSY); /* those go back to try_offer() */
  policydoc_rev_t *r = f->trying;
  f->trying = NULL;
  uv_timer_stop(f->again);
  if (outcome == FLEET_APPLIED) {
    f->again_ms = AGAIN_MIN_MS;
    policydoc_rev_free(f->cur);
    f->cur = r;
    f->cur_signed = f->trying_signed;
    f->cur_unverified = 0;
    f->refused_rev = 0;
    f->applied++;
    log_info("policy revision %" PRId64 " of %s applied%s", r->revision, f->key,
             f->cur_signed ? " (signature verified)" : " (unsigned)");
    cache_write(f);
    set_state(f,
              f->canary_out && !f->in_canary ? POLICYDOC_WAITING
                                             : POLICYDOC_APPLIED,
              NULL);
  } else {
    /* timeouts only: the policy may hang, or this host may be too loaded
     * to run it within --policy-timeout; a second try settles which */
    char again[120] = "";
    f->refused_timeout = outcome == FLEET_TIMED_OUT;
    if (outcome == FLEET_TIMED_OUT) {
      /* the trial's calls held the loop (seconds, when they timed out):
       * the wait counts from now, not from the loop's last look */
      uv_update_time(f->o.loop);
      uv_timer_start(f->again, again_cb, f->again_ms, 0);
      snprintf(again, sizeof again,
               "; it only timed out: tried again in %" PRIu64 " s",
               f->again_ms / 1000);
      f->again_ms =
          f->again_ms * 2 > AGAIN_MAX_MS ? AGAIN_MAX_MS : f->again_ms * 2;
    } else {
      f->again_ms = AGAIN_MIN_MS;
    }
    char line[700];
    snprintf(line, sizeof line, "revision %" PRId64 " refused: %.500s%s",
             r->revision, why ? why : "?", again);
    log_error("policy revision %" PRId64 " of %s refused, keeping %s: %s%s",
              r->revision, f->key,
              f->cur ? "the revision in force" : "the host's own policy",
              why ? why : "?", again);
    f->refused_rev = r->revision;
    f->refused_gen = f->generation;
    memcpy(f->refused_sha, r->sha256, sizeof f->refused_sha);
    free(f->refused_why);
    f->refused_why = xstrdup(line);
    f->refused++;
    set_state(f, POLICYDOC_REFUSED, line);
    policydoc_rev_free(r);
  }
  publish(f);
  if (f->reread) read_key(f);
}

void fleet_reread(fleet_t *f) {
  if (f->pubkey) {
    char err[600];
    sig_keys_t *k = pubkey_file_ok(f->pubkey, err, sizeof err) < 0
                        ? NULL
                        : sig_keys_load(f->pubkey, err, sizeof err);
    if (!k) {
      log_error("SIGHUP: %s; the public keys in use stay", err);
    } else {
      sig_keys_free(f->keys);
      f->keys = k;
      log_info("SIGHUP: %zu policy public key%s read again from %s",
               sig_keys_count(k), sig_keys_count(k) == 1 ? "" : "s", f->pubkey);
    }
  }
  f->refused_rev = 0; /* tried again */
  read_key(f);
}

int fleet_settled(const fleet_t *f) {
  return f->seen && !f->get && !f->trying && !f->applying && !f->reread &&
         !uv_is_active((const uv_handle_t *)f->retry);
}

void fleet_view(const fleet_t *f, fleet_view_t *v) {
  memset(v, 0, sizeof *v);
  v->key = f->key;
  v->revision = f->cur ? f->cur->revision : 0;
  v->offered = f->offered;
  v->generation = f->generation;
  v->state = policydoc_state_name(f->state);
  v->error = f->error;
  v->allow_unsigned = f->o.allow_unsigned;
  v->applied = f->applied;
  v->refused = f->refused;
  v->cache_error = f->cache_error;
}

fleet_t *fleet_new(const fleet_opts_t *o, char *err, size_t errlen) {
  sig_keys_t *keys = NULL;
  if (o->pubkey && (pubkey_file_ok(o->pubkey, err, errlen) < 0 ||
                    !(keys = sig_keys_load(o->pubkey, err, errlen))))
    return NULL;
  fleet_t *f = xcalloc(1, sizeof *f);
  f->o = *o;
  f->key = xstrdup(o->key);
  f->host_ip = xstrdup(o->host_ip);
  f->state_dir = xstrdup(o->state_dir);
  f->pubkey = o->pubkey ? xstrdup(o->pubkey) : NULL;
  f->o.key = f->key;
  f->o.host_ip = f->host_ip;
  f->o.state_dir = f->state_dir;
  f->o.pubkey = f->pubkey;
  f->keys = keys;
  f->status_key = policydoc_status_key(f->key, f->host_ip);
  f->cache_file = cache_path(f->state_dir, f->key);
  f->old_cache = old_cache_path(f->state_dir, f->key);
  f->retry_ms = RETRY_MIN_MS;
  f->retry = timer_new(f);
  f->report = timer_new(f);
  f->again = timer_new(f);
  f->again_ms = AGAIN_MIN_MS;
  f->since = (int64_t)time(NULL);
  if (o->allow_unsigned)
    log_warn("--policy-unsigned: policies from %s are applied without a "
             "signature: anyone who can write that key runs code on this "
             "host (give --policy-pubkey FILE instead)",
             f->key);
  return f;
}

void fleet_free(fleet_t *f) {
  if (!f) return;
  if (f->get) etcd_cancel(f->get);
  etcd_watch_cancel(f->watch);
  uv_close((uv_handle_t *)f->retry, timer_closed);
  uv_close((uv_handle_t *)f->report, timer_closed);
  uv_close((uv_handle_t *)f->again, timer_closed);
  sig_keys_free(f->keys);
  policydoc_rev_free(f->cur);
  policydoc_rev_free(f->trying);
  if (f->cache_loaded) policydoc_free(&f->cache);
  free(f->cache_error);
  free(f->old_cache);
  free(f->refused_why);
  free(f->error);
  free(f->published);
  free(f->key);
  free(f->host_ip);
  free(f->state_dir);
  free(f->pubkey);
  free(f->status_key);
  free(f->cache_file);
  free(f);
}
