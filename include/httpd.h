/* httpd: a very small HTTP/1.1 server in the libuv loop, for /metrics and
 * /healthz.  One request per connection (Connection: close), a 16 KiB cap
 * on the request head, a 10 s limit per connection, at most 32 at once.
 *
 * The handler answers with httpd_respond(), at once or later (a deferred
 * answer, e.g. after probing etcd); a request whose client went away is
 * kept until it is answered, then freed. */
#ifndef REGISTER_HTTPD_H
#define REGISTER_HTTPD_H

#include <stddef.h>
#include <uv.h>

typedef struct httpd httpd_t;
typedef struct httpd_req httpd_req_t;

typedef void (*httpd_handler_t)(void *ud, httpd_req_t *req, const char *method,
                                const char *path);

/* addr: "host:port" or "[v6]:port".  NULL with a reason in err. */
httpd_t *httpd_new(uv_loop_t *loop, const char *addr, httpd_handler_t handler,
                   void *ud, char *err, size_t errlen);
/* Closes the listener and every connection; unanswered requests are
 * dropped.  The memory goes with the close callbacks. */
void httpd_free(httpd_t *h);

void httpd_respond(httpd_req_t *req, int status, const char *content_type,
                   const char *body, size_t len);

/* Splits "host:port" / "[v6]:port" into a socket address. */
int httpd_parse_addr(const char *addr, struct sockaddr_storage *out);

#endif
