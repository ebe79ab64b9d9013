/* creds: the credential files a client presents (an etcd password file, a
 * TLS client certificate and key, a CA bundle), read and checked at start,
 * then watched: a file whose stat changes (content, size, mtime, inode:
 * an in-place rewrite, a `mv` over it, a symlink swapped as Kubernetes
 * does with secrets) is read again CREDS_SETTLE_MS after the change is
 * seen, and so is every file at creds_reread() (SIGHUP).
 *
 * New content is checked before it is used: a password file's first line
 * must not be empty; a certificate file must hold a PEM certificate, a key
 * file a PEM private key (unencrypted) that matches the certificate (the
 * two are read and taken together), a CA bundle at least one PEM
 * certificate.  Content that fails, or a file that cannot be read, is one
 * warning naming the file and why (once per distinct failure), and what
 * was in use stays in use.  What was taken is one info line, then the
 * owner's callback.
 *
 * Knows nothing of etcd or Docker: the owner hands the contents on
 * (etcd_set_password(), etcd_set_tls(), docker_set_tls()). */
#ifndef REGISTER_CREDS_H
#define REGISTER_CREDS_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "http.h"

#define CREDS_POLL_MS 2000  /* each file's stat, this often */
#define CREDS_SETTLE_MS 500 /* after a change is seen, before reading */

typedef struct creds creds_t;

/* The files, as bits of the callback's mask. */
enum {
  CREDS_PASSWORD = 1u << 0,
  CREDS_CACERT = 1u << 1,
  CREDS_CERT = 1u << 2,
  CREDS_KEY = 1u << 3,
  CREDS_TLS = CREDS_CACERT | CREDS_CERT | CREDS_KEY
};

typedef struct {
  uv_loop_t *loop;
  const char *name;          /* "etcd", "docker": in log lines */
  const char *password_file; /* NULL: none */
  const char *cacert;        /* NULL: none (the system's CAs) */
  const char *cert, *key;    /* both or neither */
  /* New content is in force for the files in `what` (CREDS_* bits):
   * creds_password() and creds_tls() give it.  Called from the loop, never
   * inside a creds_*() call. */
  void (*changed)(void *ud, unsigned what);
  void *ud;
} creds_opts_t;

/* Reads and checks every file and starts watching them.  NULL with one
 * line in err when a file cannot be read or is not what it should be
 * (at start nothing can stand in for it); an empty password file is taken
 * at start, as the flags' parsing took it. */
creds_t *creds_new(const creds_opts_t *o, char *err, size_t errlen);
/* Stops watching; the memory goes once the loop has closed the handles. */
void creds_free(creds_t *c);
/* Every file is read again, from the loop (SIGHUP): changes are taken as
 * above, and the info line says what was read even when nothing changed. */
void creds_reread(creds_t *c);

/* The password in force (the password file's first line); NULL without a
 * password file.  Valid until the next callback or creds_free(). */
const char *creds_password(const creds_t *c);
/* Whether there are TLS files. */
int creds_has_tls(const creds_t *c);
/* The TLS material in force, as contents (include/http.h), with the file
 * names beside them; valid until the next callback or creds_free(). */
void creds_tls(const creds_t *c, http_tls_t *out);

/* Per file, for /metrics. */
typedef struct {
  const char *path;
  uint64_t reloads;  /* new content taken */
  uint64_t failures; /* content refused or a file unreadable (warned) */
} creds_stat_t;
/* Fills out[] (at most max); returns how many files there are. */
size_t creds_stats(const creds_t *c, creds_stat_t *out, size_t max);

#endif
