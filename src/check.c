/* check: `register check`, a policy run over saved inspect documents. */
#include "check.h"
#include "config.h"
#include "json.h"
#include "luaio.h"
#include "policy.h"
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *read_all(const char *path, size_t *len, char *err, size_t errlen) {
  FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
  if (!f) {
    snprintf(err, errlen, "%s: %s", path, strerror(errno));
    return NULL;
  }
  buf_t b;
  buf_init(&b);
  char chunk[65536];
  size_t n;
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
    buf_append(&b, chunk, n);
  int bad = ferror(f);
  if (f != stdin) fclose(f);
  if (bad) {
    snprintf(err, errlen, "%s: read error", path);
    buf_free(&b);
    return NULL;
  }
  *len = b.len;
  return buf_detach(&b);
}

/* The checks the policy asks for, all in the assumed state (check cannot
 * reach containers), pointing into pc.  -1 when checks() fails. */
static int assumed_checks(policy_t *p, const char *file,
                          const json_value_t *doc, const char *assume,
                          policy_checks_t *pc, policy_check_state_t *states,
                          policy_check_view_t *view) {
  char err[600];
  view->v = states;
  view->n = 0;
  if (policy_checks(p, doc, pc, err, sizeof err) < 0) {
    fprintf(stderr, "register: %s: %s\n", file, err);
    return -1;
  }
  for (size_t i = 0; i < pc->n && i < POLICY_MAX_CHECKS; i++, view->n++) {
    states[i].port = pc->v[i].port;
    states[i].type = pc->v[i].type == CHECKS_HTTP ? "http" : "tcp";
    states[i].state = assume;
    states[i].reason = "assumed (register check --assume-checks)";
    states[i].target = "";
  }
  return 0;
}

static int check_one(policy_t *p, const char *file, const json_value_t *doc,
                     const char *assume) {
  records_t recs;
  char err[600];
  const char *id = json_get_str(doc, "Id");
  policy_check_state_t states[POLICY_MAX_CHECKS];
  policy_check_view_t view;
  policy_checks_t pc;
  if (assumed_checks(p, file, doc, assume, &pc, states, &view) < 0) return -1;
  int rc = policy_records_checked(p, doc, &view, &recs, err, sizeof err);
  policy_checks_free(&pc);
  if (rc < 0) {
    fprintf(stderr, "register: %s: %s\n", file, err);
    if (*policy_traceback(p)) fprintf(stderr, "%s\n", policy_traceback(p));
    return -1;
  }
  buf_t b;
  buf_init(&b);
  for (size_t i = 0; i < recs.n; i++) {
    buf_reset(&b);
    buf_puts(&b, "{\"container\":");
    json_escape(&b, id ? id : "", id ? strlen(id) : 0);
    buf_puts(&b, ",\"key\":");
    json_escape(&b, recs.v[i].key, strlen(recs.v[i].key));
    buf_puts(&b, ",\"value\":");
    json_escape(&b, recs.v[i].value, recs.v[i].value_len);
    buf_puts(&b, "}\n");
    fwrite(b.data, 1, b.len, stdout);
  }
  buf_free(&b);
  /* what a changed hook would do for these writes (HTTP is printed) */
  for (size_t i = 0; i < recs.n; i++)
    policy_hook_changed(p, "put", recs.v[i].key, recs.v[i].value,
                        recs.v[i].value_len);
  int rejected = recs.rejected > 0;
  records_free(&recs);
  return rejected ? -1 : 0;
}

int check_main(int argc, char **argv) {
  const char *host_ip = getenv("HOST_IP");
  const char *hostname = "localhost";
  long timeout_ms = POLICY_DEFAULT_TIME_LIMIT_MS;
  const char *assume = "passing";
  char err[600];
  int i = 2;
  for (; i < argc && argv[i][0] == '-' && argv[i][1] == '-'; i++) {
    if (strcmp(argv[i], "--host-ip") == 0 && i + 1 < argc)
      host_ip = argv[++i];
    else if (strcmp(argv[i], "--hostname") == 0 && i + 1 < argc)
      hostname = argv[++i];
    else if (strcmp(argv[i], "--policy-timeout") == 0 && i + 1 < argc) {
      if (config_policy_timeout("--policy-timeout", argv[++i], &timeout_ms, err,
                                sizeof err) < 0) {
        fprintf(stderr, "register check: %s\n", err);
        return 2;
      }
    } else if (strcmp(argv[i], "--assume-checks") == 0 && i + 1 < argc) {
      assume = argv[++i];
      if (strcmp(assume, "passing") != 0 && strcmp(assume, "failing") != 0 &&
          strcmp(assume, "pending") != 0) {
        fprintf(stderr,
                "register check: --assume-checks \"%s\" is not passing, "
                "failing or pending\n",
                assume);
        return 2;
      }
    } else {
      fprintf(stderr, "register check: unknown option \"%s\"\n", argv[i]);
      return 2;
    }
  }
  if (i >= argc) {
    fprintf(stderr, "usage: register check [--host-ip IP] [--hostname NAME] "
                    "[--policy-timeout MS] [--assume-checks passing|failing"
                    "|pending] POLICY|default "
                    "[INSPECT.json|- ...]\n");
    return 2;
  }
  if (!host_ip || !*host_ip) host_ip = "127.0.0.1";
  if (!config_valid_ip(host_ip)) {
    fprintf(stderr,
            "register check: host IP \"%s\" is not an IPv4 or IPv6 "
            "address\n",
            host_ip);
    return 2;
  }
  const char *file = argv[i++];
  luaio_t *io = luaio_new(NULL, NULL, 1); /* hooks' HTTP is printed */
  policy_opts_t po = {0};
  po.file = strcmp(file, "default") == 0 ? NULL : file;
  po.host_ip = host_ip;
  po.hostname = hostname;
  po.io = io;
  po.time_limit_ms = (uint64_t)timeout_ms;
  policy_t *p = policy_new(&po, err, sizeof err);
  if (!p) {
    fprintf(stderr, "register: %s\n", err);
    luaio_free(io);
    return 1;
  }
  int rc = 0;
  if (i >= argc)
    fprintf(stderr, "policy %s loads; prefix %s\n", policy_name(p),
            policy_prefix(p) ? policy_prefix(p) : "(none)");
  for (; i < argc; i++) {
    size_t len;
    char *text = read_all(argv[i], &len, err, sizeof err);
    if (!text) {
      fprintf(stderr, "register: %s\n", err);
      rc = 1;
      continue;
    }
    json_doc_t *doc = json_parse(text, len, err, sizeof err);
    free(text);
    if (!doc) {
      fprintf(stderr, "register: %s: %s\n", argv[i], err);
      rc = 1;
      continue;
    }
    const json_value_t *root = json_root(doc);
    if (root->type == JSON_ARRAY) {
      for (const json_value_t *c = root->u.child; c; c = c->next)
        if (check_one(p, argv[i], c, assume) < 0) rc = 1;
    } else if (check_one(p, argv[i], root, assume) < 0) {
      rc = 1;
    }
    json_free(doc);
  }
  if (policy_errors(p)) rc = 1; /* a hook failed */
  policy_free(p);
  luaio_free(io);
  return rc;
}
