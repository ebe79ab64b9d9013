/* bench/limit: the limit for register's start-up sync.  Issues the same
 * etcd PUTs register would (the key/value pairs come from a file: a line
 * "key\tvalue"), one request per key, with keep-alive connections and a
 * fixed number in flight, through curl's multi interface, with no Docker
 * and no Lua.  v2: PUT /v2/keys/KEY value=...; v3: POST /v3/kv/put.
 * Prints the wall time in seconds.
 *
 *   limit ENDPOINT PAIRS_FILE CONCURRENCY [v2|v3] */
#include "util.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
  char *key, *body;
} put_t;

static size_t discard(char *p, size_t s, size_t n, void *ud) {
  (void)p;
  (void)ud;
  return s * n;
}

static char *escape_path(CURL *c, const char *key) {
  /* keep '/' and ':' as register does */
  size_t n = strlen(key), o = 0;
  char *out = malloc(n * 3 + 1);
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)key[i];
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
        (ch >= '0' && ch <= '9') || strchr("-._~/:", ch)) {
      out[o++] = (char)ch;
    } else {
      o += (size_t)sprintf(out + o, "%%%02X", ch);
    }
  }
  out[o] = '\0';
  (void)c;
  return out;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  if (argc != 4 && argc != 5) {
    fprintf(stderr, "usage: limit ENDPOINT PAIRS_FILE CONCURRENCY [v2|v3]\n");
    return 2;
  }
  int v3 = argc == 5 && strcmp(argv[4], "v3") == 0;
  const char *ep = argv[1];
  int conc = atoi(argv[3]);
  FILE *f = fopen(argv[2], "r");
  if (!f || conc < 1) return 2;
  curl_global_init(CURL_GLOBAL_DEFAULT);
  CURL *esc = curl_easy_init();
  put_t *puts_ = NULL;
  size_t n = 0, cap = 0;
  char *line = NULL;
  size_t lcap = 0;
  ssize_t len;
  while ((len = getline(&line, &lcap, f)) > 0) {
    if (line[len - 1] == '\n') line[--len] = '\0';
    char *tab = strchr(line, '\t');
    if (!tab) continue;
    *tab = '\0';
    if (n == cap)
      puts_ = realloc(puts_, (cap = cap ? cap * 2 : 1024) * sizeof *puts_);
    if (v3) {
      puts_[n].key = malloc(strlen(ep) + 16);
      sprintf(puts_[n].key, "%s/v3/kv/put", ep);
      buf_t b;
      buf_init(&b);
      buf_puts(&b, "{\"key\":\"");
      util_base64_encode(&b, line, strlen(line));
      buf_puts(&b, "\",\"value\":\"");
      util_base64_encode(&b, tab + 1, strlen(tab + 1));
      buf_puts(&b, "\"}");
      puts_[n].body = buf_detach(&b);
    } else {
      char *path = escape_path(esc, line);
      puts_[n].key = malloc(strlen(ep) + strlen(path) + 16);
      sprintf(puts_[n].key, "%s/v2/keys%s", ep, path);
      free(path);
      char *v = curl_easy_escape(esc, tab + 1, 0);
      puts_[n].body = malloc(strlen(v) + 8);
      sprintf(puts_[n].body, "value=%s", v);
      curl_free(v);
    }
    n++;
  }
  free(line);
  fclose(f);

  CURLM *m = curl_multi_init();
  curl_multi_setopt(m, CURLMOPT_MAX_HOST_CONNECTIONS, (long)conc);
  curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, (long)conc);
  struct curl_slist *hdrs = curl_slist_append(NULL, "Expect:");
  size_t next = 0, done = 0, failed = 0;
  int running = 0;
  double t0 = now();
  CURL **pool = calloc((size_t)conc, sizeof *pool);
  for (int i = 0; i < conc; i++)
    pool[i] = curl_easy_init();
  int free_n = conc;
  while (done < n) {
    while (next < n && free_n > 0) {
      CURL *e = pool[--free_n];
      curl_easy_reset(e);
      curl_easy_setopt(e, CURLOPT_URL, puts_[next].key);
      curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, v3 ? "POST" : "PUT");
      curl_easy_setopt(e, CURLOPT_POSTFIELDS, puts_[next].body);
      curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdrs);
      curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard);
      curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
      curl_multi_add_handle(m, e);
      next++;
    }
    curl_multi_perform(m, &running);
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(m, &left))) {
      if (msg->msg != CURLMSG_DONE) continue;
      long code = 0;
      curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &code);
      if (msg->data.result != CURLE_OK || code >= 300) failed++;
      CURL *e = msg->easy_handle;
      curl_multi_remove_handle(m, e);
      pool[free_n++] = e;
      done++;
    }
    if (done < n) curl_multi_poll(m, NULL, 0, 100, NULL);
  }
  double secs = now() - t0;
  printf("%.4f %zu %zu\n", secs, n, failed);
  for (int i = 0; i < conc; i++)
    curl_easy_cleanup(pool[i]);
  free(pool);
  curl_slist_free_all(hdrs);
  curl_multi_cleanup(m);
  curl_easy_cleanup(esc);
  for (size_t i = 0; i < n; i++) {
    free(puts_[i].key);
    free(puts_[i].body);
  }
  free(puts_);
  curl_global_cleanup();
  return failed ? 1 : 0;
}
