/* notify: sd_notify over a unix datagram socket, and the watchdog timer. */
#include "notify.h"
#include "log.h"
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

struct notify {
  int fd;
  struct sockaddr_un addr;
  socklen_t addrlen;
  uv_timer_t watchdog;
  int ready;
  char status[400]; /* the last STATUS= (a longer one is cut) */
};

static void send_msg(notify_t *n, const char *msg) {
  REGISTER_ASSERT(n->fd >= 0); /* no message after notify_free() */
  ssize_t w = sendto(n->fd, msg, strlen(msg), MSG_NOSIGNAL,
                     (const struct sockaddr *)&n->addr, n->addrlen);
  if (w < 0) log_debug("notify: %s", strerror(errno));
}

static void watchdog_cb(uv_timer_t *t) {
  send_msg(t->data, "WATCHDOG=1");
}

notify_t *notify_new(uv_loop_t *loop) {
  const char *path = getenv("NOTIFY_SOCKET");
  if (!path || !*path || (path[0] != '/' && path[0] != '@')) return NULL;
  size_t len = strlen(path);
  notify_t *n = xcalloc(1, sizeof *n);
  if (len >= sizeof n->addr.sun_path) {
    log_warn("notify: NOTIFY_SOCKET path is too long");
    free(n);
    return NULL;
  }
  n->addr.sun_family = AF_UNIX;
  memcpy(n->addr.sun_path, path, len);
  if (path[0] == '@') n->addr.sun_path[0] = '\0'; /* abstract namespace */
  n->addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
  n->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (n->fd < 0) {
    log_warn("notify: socket: %s", strerror(errno));
    free(n);
    return NULL;
  }
  uv_timer_init(loop, &n->watchdog);
  n->watchdog.data = n;
  /* WATCHDOG_USEC, for us (WATCHDOG_PID unset or ours): ping at half */
  const char *usec = getenv("WATCHDOG_USEC"), *pid = getenv("WATCHDOG_PID");
  long us;
  if (usec && util_parse_long(usec, 1, 86400L * 1000000, &us) == 0 &&
      (!pid || atol(pid) == (long)getpid())) {
    uint64_t every = (uint64_t)us / 2000;
    if (every < 1) every = 1;
    uv_timer_start(&n->watchdog, watchdog_cb, every, every);
    send_msg(n, "WATCHDOG=1");
  }
  return n;
}

void notify_ready(notify_t *n, const char *status) {
  if (!n) return;
  char msg[500];
  snprintf(msg, sizeof msg, "%sSTATUS=%s", n->ready ? "" : "READY=1\n", status);
  n->ready = 1;
  snprintf(n->status, sizeof n->status, "%s", status);
  send_msg(n, msg);
}

void notify_status(notify_t *n, const char *status) {
  if (!n) return;
  char cut[sizeof n->status]; /* compared as it would be kept */
  snprintf(cut, sizeof cut, "%s", status);
  if (strcmp(n->status, cut) == 0) return;
  memcpy(n->status, cut, sizeof cut);
  char msg[500];
  snprintf(msg, sizeof msg, "STATUS=%s", cut);
  send_msg(n, msg);
}

void notify_stopping(notify_t *n) {
  if (!n) return;
  send_msg(n, "STOPPING=1\nSTATUS=stopping");
}

static void closed(uv_handle_t *h) {
  free(h->data);
}

void notify_free(notify_t *n) {
  if (!n) return;
  close(n->fd);
  n->fd = -1;
  uv_timer_stop(&n->watchdog);
  uv_close((uv_handle_t *)&n->watchdog, closed);
}
