/* bench/fakedocker: a fast fake Docker API for the benchmarks, so that the
 * rig, not register, is not what the numbers measure.  HTTP/1.1 keep-alive
 * on unix sockets: GET /_ping, /vX/containers/json, /vX/containers/ID/json
 * and /vX/events (a chunked stream kept open).
 *
 *   fakedocker SOCKET INSPECT_LINES_FILE
 *       one host, a fixed set of containers from a file with one `docker
 *       inspect` document per line; the event stream stays silent.
 *
 *   fakedocker --fleet DIR N
 *       N hosts in one process, host H on DIR/hH.sock, no containers at
 *       first.  Commands on stdin, one a line:
 *         a H ID IMAGE PORT   add a running container to host H publishing
 *                             80/tcp on 0.0.0.0:PORT; emit "start"
 *         d H ID              remove it; emit "die"
 *         p TOKEN             answer "p TOKEN" on stdout once every command
 *                             before it is done (a barrier)
 *         x H                 close host H's event streams (Docker's stream
 *                             cut: the client must reconnect and list again)
 *       Event streams get each event as one chunk.  Small buffers: 500
 *       hosts fit in a few MB. */
#include "map.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

typedef struct {
  char *id;
  char *image;
  char *doc;
  size_t len;
} cont_t;

typedef struct conn conn_t;

/* One simulated Docker daemon: its containers and open event streams. */
typedef struct {
  map_t *conts;    /* id -> cont_t (owned) */
  buf_t list_json; /* static mode only: the fixed list */
  conn_t *streams; /* connections streaming events */
  uv_pipe_t server;
  int fleet;
} host_t;

struct conn {
  uv_pipe_t pipe;
  host_t *host;
  buf_t in;
  int streaming;
  conn_t *snext, *sprev;
};

typedef struct {
  uv_write_t wr;
  char *owned; /* freed with the request, or NULL */
  char head[256];
} wreq_t;

static host_t *hosts;
static int nhosts;
static size_t read_size = 65536;
static unsigned long event_seq;

static void write_done(uv_write_t *w, int status) {
  (void)status;
  wreq_t *r = (wreq_t *)w;
  free(r->owned);
  free(r);
}

static void respond(conn_t *c, int status, const char *body, size_t len,
                    char *owned) {
  wreq_t *w = xcalloc(1, sizeof *w);
  w->owned = owned;
  int n = snprintf(w->head, sizeof w->head,
                   "HTTP/1.1 %d %s\r\nApi-Version: 1.41\r\nContent-Type: "
                   "application/json\r\nContent-Length: %zu\r\n\r\n",
                   status, status == 200 ? "OK" : "Not Found", len);
  uv_buf_t b[2] = {uv_buf_init(w->head, (unsigned)n),
                   uv_buf_init((char *)(uintptr_t)body, (unsigned)len)};
  uv_write(&w->wr, (uv_stream_t *)&c->pipe, b, 2, write_done);
}

static void stream_unlink(conn_t *c) {
  if (!c->streaming) return;
  if (c->sprev)
    c->sprev->snext = c->snext;
  else
    c->host->streams = c->snext;
  if (c->snext) c->snext->sprev = c->sprev;
  c->streaming = 0;
}

static void closed(uv_handle_t *h) {
  conn_t *c = h->data;
  buf_free(&c->in);
  free(c);
}

static void conn_close(conn_t *c) {
  stream_unlink(c);
  uv_close((uv_handle_t *)&c->pipe, closed);
}

static void alloc_cb(uv_handle_t *h, size_t s, uv_buf_t *b) {
  (void)s;
  conn_t *c = h->data;
  buf_reserve(&c->in, read_size);
  *b = uv_buf_init(c->in.data + c->in.len, (unsigned)read_size);
}

static void list_containers(conn_t *c) {
  host_t *h = c->host;
  if (!h->fleet) {
    respond(c, 200, h->list_json.data, h->list_json.len, NULL);
    return;
  }
  buf_t b;
  buf_init(&b);
  buf_putc(&b, '[');
  map_iter_t it;
  const char *k;
  void *v;
  map_iter_init(&it, h->conts);
  while (map_iter_next(&it, &k, &v)) {
    cont_t *ct = v;
    buf_printf(&b, "%s{\"Id\":\"%s\",\"Image\":\"%s\",\"State\":\"running\"}",
               b.len > 1 ? "," : "", ct->id, ct->image);
  }
  buf_putc(&b, ']');
  size_t len = b.len;
  char *body = buf_detach(&b);
  respond(c, 200, body, len, body);
}

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  (void)b;
  conn_t *c = s->data;
  if (n < 0) {
    conn_close(c);
    return;
  }
  c->in.len += (size_t)n;
  c->in.data[c->in.len] = '\0';
  char *end;
  while (!c->streaming && (end = strstr(c->in.data, "\r\n\r\n"))) {
    char method[8], path[512];
    if (sscanf(c->in.data, "%7s %511s", method, path) != 2) {
      conn_close(c);
      return;
    }
    buf_consume(&c->in, (size_t)(end + 4 - c->in.data));
    char *q = strchr(path, '?');
    if (q) *q = '\0';
    const char *rest = path;
    if (strncmp(path, "/v", 2) == 0) rest = strchr(path + 1, '/');
    if (!rest) rest = "";
    if (strcmp(path, "/_ping") == 0) {
      respond(c, 200, "OK", 2, NULL);
    } else if (strcmp(rest, "/containers/json") == 0) {
      list_containers(c);
    } else if (strcmp(rest, "/events") == 0) {
      static char head[] = "HTTP/1.1 200 OK\r\nContent-Type: "
                           "application/json\r\nTransfer-Encoding: "
                           "chunked\r\n\r\n";
      wreq_t *w = xcalloc(1, sizeof *w);
      uv_buf_t hb = uv_buf_init(head, sizeof head - 1);
      uv_write(&w->wr, (uv_stream_t *)&c->pipe, &hb, 1, write_done);
      c->streaming = 1;
      c->sprev = NULL;
      c->snext = c->host->streams;
      if (c->snext) c->snext->sprev = c;
      c->host->streams = c;
    } else if (strncmp(rest, "/containers/", 12) == 0) {
      char id[80];
      snprintf(id, sizeof id, "%.*s", (int)strcspn(rest + 12, "/"), rest + 12);
      cont_t *ct = map_get(c->host->conts, id);
      if (ct)
        respond(c, 200, ct->doc, ct->len, NULL);
      else
        respond(c, 404, "{\"message\":\"No such container\"}", 32, NULL);
    } else {
      respond(c, 404, "{\"message\":\"page not found\"}", 28, NULL);
    }
  }
  if (c->streaming) buf_reset(&c->in);
}

static void on_conn(uv_stream_t *server, int status) {
  if (status < 0) return;
  conn_t *c = xcalloc(1, sizeof *c);
  buf_init(&c->in);
  c->host = server->data;
  uv_pipe_init(server->loop, &c->pipe, 0);
  c->pipe.data = c;
  if (uv_accept(server, (uv_stream_t *)&c->pipe) == 0)
    uv_read_start((uv_stream_t *)&c->pipe, alloc_cb, read_cb);
  else
    uv_close((uv_handle_t *)&c->pipe, closed);
}

static int listen_on(uv_loop_t *loop, host_t *h, const char *path) {
  uv_pipe_init(loop, &h->server, 0);
  h->server.data = h;
  remove(path);
  if (uv_pipe_bind(&h->server, path) < 0 ||
      uv_listen((uv_stream_t *)&h->server, 128, on_conn) < 0) {
    fprintf(stderr, "fakedocker: cannot listen on %s\n", path);
    return -1;
  }
  return 0;
}

/* ---- fleet mode ---- */

static void emit(host_t *h, const char *action, const cont_t *ct) {
  uv_timeval64_t tv;
  uv_gettimeofday(&tv);
  long long ns = (long long)tv.tv_sec * 1000000000LL + tv.tv_usec * 1000LL;
  char ev[700];
  int n = snprintf(
      ev, sizeof ev,
      "{\"status\":\"%s\",\"id\":\"%s\",\"from\":\"%s\",\"Type\":\"container\","
      "\"Action\":\"%s\",\"Actor\":{\"ID\":\"%s\",\"Attributes\":{\"image\":"
      "\"%s\",\"name\":\"c%lu\"}},\"scope\":\"local\",\"time\":%lld,"
      "\"timeNano\":%lld}\n",
      action, ct->id, ct->image, action, ct->id, ct->image, ++event_seq,
      ns / 1000000000LL, ns);
  for (conn_t *c = h->streams; c; c = c->snext) {
    wreq_t *w = xcalloc(1, sizeof *w);
    w->owned = xasprintf("%x\r\n%.*s\r\n", n, n, ev);
    uv_buf_t b = uv_buf_init(w->owned, (unsigned)strlen(w->owned));
    uv_write(&w->wr, (uv_stream_t *)&c->pipe, &b, 1, write_done);
  }
}

static void cont_free(cont_t *ct) {
  free(ct->id);
  free(ct->image);
  free(ct->doc);
  free(ct);
}

static void cmd_add(int hi, const char *id, const char *image, int port) {
  host_t *h = &hosts[hi];
  cont_t *ct = xcalloc(1, sizeof *ct);
  ct->id = xstrdup(id);
  ct->image = xstrdup(image);
  ct->doc = xasprintf(
      "{\"Id\":\"%s\",\"Created\":\"2026-11-25T00:00:00Z\",\"Path\":\"/bin/"
      "sleep\",\"State\":{\"Status\":\"running\",\"Running\":true,\"Paused\":"
      "false,\"Restarting\":false,\"Pid\":%d,\"StartedAt\":\"2026-11-25T00:"
      "00:01Z\"},\"Image\":\"sha256:%s\",\"Name\":\"/c%d\",\"HostConfig\":{"
      "\"NetworkMode\":\"default\"},\"Config\":{\"Hostname\":\"%.12s\","
      "\"Env\":[\"PATH=/bin\"],\"Image\":\"%s\",\"Labels\":{},"
      "\"ExposedPorts\":{\"80/tcp\":{}}},\"NetworkSettings\":{\"Ports\":{"
      "\"80/tcp\":[{\"HostIp\":\"0.0.0.0\",\"HostPort\":\"%d\"}]},"
      "\"Networks\":{\"bridge\":{\"IPAddress\":\"172.31.%d.%d\",\"Gateway\":"
      "\"172.31.0.1\",\"GlobalIPv6Address\":\"\",\"MacAddress\":\"02:42:ac:"
      "1f:fe:02\",\"NetworkID\":\"n1\"}}}}",
      id, 1000 + port % 30000, id, port, id, image, port, (port >> 8) & 255,
      port & 255);
  ct->len = strlen(ct->doc);
  cont_t *old = map_put(h->conts, ct->id, ct);
  if (old) cont_free(old);
  emit(h, "start", ct);
}

static void cmd_del(int hi, const char *id) {
  host_t *h = &hosts[hi];
  cont_t *ct = map_del(h->conts, id);
  if (!ct) return;
  emit(h, "die", ct);
  cont_free(ct);
}

static buf_t cmdbuf;

static void cmd_line(char *line) {
  char id[100], image[200], tok[100];
  int hi, port;
  if (sscanf(line, "a %d %99s %199s %d", &hi, id, image, &port) == 4 &&
      hi >= 0 && hi < nhosts) {
    cmd_add(hi, id, image, port);
  } else if (sscanf(line, "d %d %99s", &hi, id) == 2 && hi >= 0 &&
             hi < nhosts) {
    cmd_del(hi, id);
  } else if (sscanf(line, "x %d", &hi) == 1 && hi >= 0 && hi < nhosts) {
    while (hosts[hi].streams) conn_close(hosts[hi].streams);
  } else if (sscanf(line, "p %99s", tok) == 1) {
    printf("p %s\n", tok);
    fflush(stdout);
  } else if (line[0]) {
    fprintf(stderr, "fakedocker: bad command: %s\n", line);
  }
}

static void stdin_alloc(uv_handle_t *h, size_t s, uv_buf_t *b) {
  (void)h;
  (void)s;
  buf_reserve(&cmdbuf, 65536);
  *b = uv_buf_init(cmdbuf.data + cmdbuf.len, 65536);
}

static void stdin_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  (void)b;
  if (n < 0) { /* the driver is gone: so are we */
    uv_stop(s->loop);
    return;
  }
  cmdbuf.len += (size_t)n;
  char *nl;
  while ((nl = memchr(cmdbuf.data, '\n', cmdbuf.len))) {
    *nl = '\0';
    cmd_line(cmdbuf.data);
    buf_consume(&cmdbuf, (size_t)(nl + 1 - cmdbuf.data));
  }
}

static int fleet_main(const char *dir, int n) {
  uv_loop_t *loop = uv_default_loop();
  nhosts = n;
  read_size = 4096;
  hosts = xcalloc((size_t)n, sizeof *hosts);
  for (int i = 0; i < n; i++) {
    hosts[i].conts = map_new();
    hosts[i].fleet = 1;
    char path[4096];
    snprintf(path, sizeof path, "%s/h%d.sock", dir, i);
    if (listen_on(loop, &hosts[i], path) < 0) return 1;
  }
  buf_init(&cmdbuf);
  uv_pipe_t in;
  uv_pipe_init(loop, &in, 0);
  if (uv_pipe_open(&in, 0) < 0) {
    fprintf(stderr, "fakedocker: stdin is not a pipe\n");
    return 1;
  }
  uv_read_start((uv_stream_t *)&in, stdin_alloc, stdin_read);
  fprintf(stderr, "fakedocker: %d hosts in %s\n", n, dir);
  printf("ready\n");
  fflush(stdout);
  uv_run(loop, UV_RUN_DEFAULT);
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 4 && strcmp(argv[1], "--fleet") == 0)
    return fleet_main(argv[2], atoi(argv[3]));
  if (argc != 3) {
    fprintf(stderr, "usage: fakedocker SOCKET INSPECT_LINES_FILE\n"
                    "       fakedocker --fleet DIR NHOSTS\n");
    return 2;
  }
  FILE *f = fopen(argv[2], "r");
  if (!f) return 2;
  nhosts = 1;
  hosts = xcalloc(1, sizeof *hosts);
  host_t *h = &hosts[0];
  h->conts = map_new();
  buf_init(&h->list_json);
  buf_putc(&h->list_json, '[');
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  while ((len = getline(&line, &cap, f)) > 0) {
    while (len && (line[len - 1] == '\n' || line[len - 1] == '\r'))
      len--;
    const char *p = strstr(line, "\"Id\": \"");
    size_t skip = 7;
    if (!p) p = strstr(line, "\"Id\":\""), skip = 6;
    if (!p) continue;
    cont_t *c = xcalloc(1, sizeof *c);
    c->id = xstrndup(p + skip, strcspn(p + skip, "\""));
    c->doc = xstrndup(line, (size_t)len);
    c->len = (size_t)len;
    map_put(h->conts, c->id, c);
    buf_printf(&h->list_json, "%s{\"Id\":\"%s\",\"State\":\"running\"}",
               h->list_json.len > 1 ? "," : "", c->id);
  }
  buf_putc(&h->list_json, ']');
  free(line);
  fclose(f);
  uv_loop_t *loop = uv_default_loop();
  if (listen_on(loop, h, argv[1]) < 0) return 1;
  fprintf(stderr, "fakedocker: %zu containers on %s\n", map_size(h->conts),
          argv[1]);
  return uv_run(loop, UV_RUN_DEFAULT);
}
