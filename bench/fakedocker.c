/* bench/fakedocker: a fast fake Docker API for the start-up benchmark, so
 * that the rig, not register, is not what the numbers measure.  Serves a
 * fixed set of containers from a file with one `docker inspect` document
 * per line: GET /_ping, /vX/containers/json, /vX/containers/ID/json, and
 * /vX/events (kept open, silent).  HTTP/1.1 keep-alive on a unix socket.
 *
 *   fakedocker SOCKET INSPECT_LINES_FILE */
#include "map.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

typedef struct {
  char *id;
  char *doc;
  size_t len;
} cont_t;

static map_t *conts;
static buf_t list_json;

typedef struct {
  uv_pipe_t pipe;
  buf_t in;
  int streaming;
} conn_t;

typedef struct {
  uv_write_t wr;
  char head[256];
} wreq_t;

static void write_done(uv_write_t *w, int status) {
  (void)status;
  free(w);
}

static void respond(conn_t *c, int status, const char *body, size_t len) {
  wreq_t *w = xmalloc(sizeof *w);
  int n = snprintf(w->head, sizeof w->head,
                   "HTTP/1.1 %d %s\r\nApi-Version: 1.41\r\nContent-Type: "
                   "application/json\r\nContent-Length: %zu\r\n\r\n",
                   status, status == 200 ? "OK" : "Not Found", len);
  uv_buf_t b[2] = {uv_buf_init(w->head, (unsigned)n),
                   uv_buf_init((char *)(uintptr_t)body, (unsigned)len)};
  uv_write(&w->wr, (uv_stream_t *)&c->pipe, b, 2, write_done);
}

static void closed(uv_handle_t *h) {
  conn_t *c = h->data;
  buf_free(&c->in);
  free(c);
}

static void alloc_cb(uv_handle_t *h, size_t s, uv_buf_t *b) {
  (void)s;
  conn_t *c = h->data;
  buf_reserve(&c->in, 65536);
  *b = uv_buf_init(c->in.data + c->in.len, 65536);
}

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  (void)b;
  conn_t *c = s->data;
  if (n < 0) {
    uv_close((uv_handle_t *)s, closed);
    return;
  }
  c->in.len += (size_t)n;
  c->in.data[c->in.len] = '\0';
  char *end;
  while (!c->streaming && (end = strstr(c->in.data, "\r\n\r\n"))) {
    char method[8], path[512];
    if (sscanf(c->in.data, "%7s %511s", method, path) != 2) {
      uv_close((uv_handle_t *)s, closed);
      return;
    }
    buf_consume(&c->in, (size_t)(end + 4 - c->in.data));
    char *q = strchr(path, '?');
    if (q) *q = '\0';
    const char *rest = path;
    if (strncmp(path, "/v", 2) == 0) rest = strchr(path + 1, '/');
    if (!rest) rest = "";
    if (strcmp(path, "/_ping") == 0) {
      respond(c, 200, "OK", 2);
    } else if (strcmp(rest, "/containers/json") == 0) {
      respond(c, 200, list_json.data, list_json.len);
    } else if (strcmp(rest, "/events") == 0) {
      /* a chunked stream that never sends a chunk: the daemon is quiet */
      static char head[] = "HTTP/1.1 200 OK\r\nContent-Type: "
                           "application/json\r\nTransfer-Encoding: "
                           "chunked\r\n\r\n";
      uv_write_t *w = xmalloc(sizeof *w);
      uv_buf_t hb = uv_buf_init(head, sizeof head - 1);
      uv_write(w, (uv_stream_t *)&c->pipe, &hb, 1, write_done);
      c->streaming = 1;
    } else if (strncmp(rest, "/containers/", 12) == 0) {
      char id[80];
      snprintf(id, sizeof id, "%.*s", (int)strcspn(rest + 12, "/"), rest + 12);
      cont_t *ct = map_get(conts, id);
      if (ct)
        respond(c, 200, ct->doc, ct->len);
      else
        respond(c, 404, "{\"message\":\"No such container\"}", 32);
    } else {
      respond(c, 404, "{\"message\":\"page not found\"}", 28);
    }
  }
}

static void on_conn(uv_stream_t *server, int status) {
  if (status < 0) return;
  conn_t *c = xcalloc(1, sizeof *c);
  buf_init(&c->in);
  uv_pipe_init(server->loop, &c->pipe, 0);
  c->pipe.data = c;
  if (uv_accept(server, (uv_stream_t *)&c->pipe) == 0)
    uv_read_start((uv_stream_t *)&c->pipe, alloc_cb, read_cb);
  else
    uv_close((uv_handle_t *)&c->pipe, closed);
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: fakedocker SOCKET INSPECT_LINES_FILE\n");
    return 2;
  }
  FILE *f = fopen(argv[2], "r");
  if (!f) return 2;
  conts = map_new();
  buf_init(&list_json);
  buf_putc(&list_json, '[');
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
    map_put(conts, c->id, c);
    buf_printf(&list_json, "%s{\"Id\":\"%s\",\"State\":\"running\"}",
               list_json.len > 1 ? "," : "", c->id);
  }
  buf_putc(&list_json, ']');
  free(line);
  fclose(f);
  uv_loop_t *loop = uv_default_loop();
  uv_pipe_t server;
  uv_pipe_init(loop, &server, 0);
  remove(argv[1]);
  if (uv_pipe_bind(&server, argv[1]) < 0 ||
      uv_listen((uv_stream_t *)&server, 128, on_conn) < 0) {
    fprintf(stderr, "fakedocker: cannot listen on %s\n", argv[1]);
    return 1;
  }
  fprintf(stderr, "fakedocker: %zu containers on %s\n", map_size(conts),
          argv[1]);
  return uv_run(loop, UV_RUN_DEFAULT);
}
