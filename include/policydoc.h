/* policydoc: the fleet's policy as etcd keeps it at one key (--policy-key
 * KEY), and each host's report under KEY's sibling "status" directory.
 * Pure: parsing, writing, choosing a revision for a host; no I/O.
 *
 * The document at KEY (JSON, written only by `register policy`, always
 * with compare-and-swap):
 *
 *   {"register_policy": 1,
 *    "generation": 7,                      every write adds one
 *    "stable":   REV,                      every host's revision
 *    "previous": REV,                      what rollback returns to (opt.)
 *    "canary":   REV + {"hosts": ["10.0.0.1", ...]} or {"percent": 10}
 *                                          (optional)
 *    "last_revision": 5,                   the highest revision ever
 *                                          written (optional): a rollback
 *                                          drops one, its number is not
 *                                          given again
 *    "write_id": "<32 hex digits>"         random, drawn by each write
 *                                          (optional; hosts ignore it): a
 *                                          command knows its own write
 *                                          again when etcd's answer to it
 *                                          was lost
 *   }
 *   REV = {"revision": 4, "sha256": "<hex of source>", "source": "...",
 *          "signature": "<base64 Ed25519 over source>" (optional),
 *          "name": "policy.lua", "pushed": "2026-12-06T09:00:00Z",
 *          "pushed_by": "alice@ops1"}          (the last three optional)
 *
 * A host takes the canary when it is named in hosts, or when its bucket
 * (policydoc_bucket: FNV-1a of HOST_IP, mod 100) is below percent; every
 * other host takes stable.  Signatures cover the source's bytes only, so
 * that promote and rollback move revisions without the signing key.
 *
 * A host's report (policydoc_status_t) at
 * policydoc_status_key(KEY, HOST_IP) = dirname(KEY) + "/status/" + HOST_IP,
 * on the host's lease (v3) or TTL (v2):
 *
 *   {"host": "10.0.0.1", "key": "/register/policy", "generation": 7,
 *    "revision": 3, "sha256": "...", "offered": 4,
 *    "state": "applied" | "refused" | "waiting", "error": "...",
 *    "keys": 12, "since": 1765011600, "signed": true}
 *
 * revision: in force (0: the host's own --policy or the embedded default,
 * no revision from KEY applied yet); offered: the revision KEY offers this
 * host (0: none, KEY missing); generation: the document's generation the
 * host last read; since: unix time the state was reached.  state:
 *   applied  revision == offered;
 *   refused  offered could not be applied (error says why); revision is
 *            what the host kept;
 *   waiting  a canary is out and this host is not in it (it runs stable;
 *            offered is stable's revision), or the host has not applied
 *            any revision yet (KEY missing or unread). */
#ifndef REGISTER_POLICYDOC_H
#define REGISTER_POLICYDOC_H

#include <stddef.h>
#include <stdint.h>

/* the largest policy source a revision may carry, and the largest
 * document (three revisions and the rest) */
#define POLICYDOC_MAX_SOURCE (256u * 1024u)
#define POLICYDOC_MAX_DOC (1024u * 1024u)
#define POLICYDOC_MAX_HOSTS 4096
/* the largest generation and revision number a document may hold: 2^53-1,
 * exact in every JSON reader (a double); far from INT64_MAX, so that + 1
 * never overflows even in a document edited by hand */
#define POLICYDOC_MAX_NUMBER INT64_C(9007199254740991)

typedef struct {
  int64_t revision; /* >= 1 */
  char *source;     /* owned; not NUL-terminated inside (use source_len) */
  size_t source_len;
  char sha256[65];                 /* hex of source, checked by parse */
  char *signature;                 /* base64, or NULL */
  char *name, *pushed, *pushed_by; /* or NULL */
} policydoc_rev_t;

typedef struct {
  int64_t generation;
  policydoc_rev_t *stable;   /* NULL only in a document being built */
  policydoc_rev_t *previous; /* or NULL */
  policydoc_rev_t *canary;   /* or NULL */
  char **canary_hosts;       /* owned; with canary */
  size_t n_canary_hosts;
  int canary_percent;    /* 0..100; with canary, when no hosts are named */
  int64_t last_revision; /* the highest revision ever written; 0: unknown */
  /* written as "write_id" when not empty: the command that writes the
   * document draws it at random, to know its own write again when etcd's
   * answer to it was lost.  Not read by policydoc_parse() (hosts ignore
   * it). */
  char write_id[33];
} policydoc_t;

/* Parses and validates a document (sizes, fields, sha256 == the source's,
 * revisions in 1..POLICYDOC_MAX_NUMBER and distinct, generation in
 * 1..POLICYDOC_MAX_NUMBER, canary newer than stable).  0, or -1 with
 * one line in err ("not JSON: ...", "stable.sha256 does not match its
 * source", ...). *out is freed by policydoc_free() either way. */
int policydoc_parse(const char *text, size_t len, policydoc_t *out, char *err,
                    size_t errlen);
void policydoc_free(policydoc_t *d);
void policydoc_rev_free(policydoc_rev_t *r);
/* A new revision of source (sha256 computed; the strings copied; sig,
 * name, pushed_by may be NULL; pushed is now). */
policydoc_rev_t *policydoc_rev_new(int64_t revision, const char *source,
                                   size_t len, const char *sig,
                                   const char *name, const char *pushed_by);
/* The document as JSON (malloc'd, NUL-terminated; *len without it). */
char *policydoc_write(const policydoc_t *d, size_t *len);
/* The highest revision number in d (stable, previous, canary, and
 * last_revision: the next push takes policydoc_top() + 1). */
int64_t policydoc_top(const policydoc_t *d);
/* The numbers a document that does not parse may still show (text that is
 * JSON, with generation, last_revision or revisions in range): *generation
 * and *top raised to the highest found, unchanged when none.  For
 * replacing such a document without giving a number again. */
void policydoc_salvage(const char *text, size_t len, int64_t *generation,
                       int64_t *top);
/* Frees the canary (if any) and its selection. */
void policydoc_drop_canary(policydoc_t *d);

/* 0..99, stable for an address. */
unsigned policydoc_bucket(const char *host_ip);
/* 1 when the canary (if any) is this host's. */
int policydoc_in_canary(const policydoc_t *d, const char *host_ip);
/* The revision this host should run: the canary's or stable. */
const policydoc_rev_t *policydoc_for_host(const policydoc_t *d,
                                          const char *host_ip);
/* --canary "IP,IP,..." or "N%" (1..100) into d's canary selection.  0, or
 * -1 with one line (an address named twice, even written another way, is
 * an error: a typo for another host, likely). */
int policydoc_set_canary(policydoc_t *d, const char *spec, char *err,
                         size_t errlen);

typedef enum {
  POLICYDOC_WAITING = 0,
  POLICYDOC_APPLIED,
  POLICYDOC_REFUSED
} policydoc_state_t;
const char *policydoc_state_name(policydoc_state_t s);

typedef struct {
  char host[64];
  char *key;          /* owned */
  int64_t generation; /* of the document last read; 0: none */
  int64_t revision;   /* in force; 0: the host's own policy */
  char sha256[65];    /* of the policy in force, or "" */
  int64_t offered;    /* 0: none */
  policydoc_state_t state;
  char *error; /* owned, or NULL */
  uint64_t keys;
  int64_t since; /* unix seconds */
  int is_signed; /* the revision in force had a verified signature */
} policydoc_status_t;

/* malloc'd JSON (NUL-terminated), *len without the NUL */
char *policydoc_status_write(const policydoc_status_t *s, size_t *len);
/* 0, or -1 with one line; out's strings freed by
 * policydoc_status_free() either way. */
int policydoc_status_parse(const char *text, size_t len,
                           policydoc_status_t *out, char *err, size_t errlen);
void policydoc_status_free(policydoc_status_t *s);
/* dirname(key) + "/status" (malloc'd): where the hosts report */
char *policydoc_status_dir(const char *key);
/* policydoc_status_dir(key) + "/" + host_ip (malloc'd) */
char *policydoc_status_key(const char *key, const char *host_ip);

#endif
