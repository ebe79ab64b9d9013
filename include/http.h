/* http: HTTP requests through one curl multi handle driven by a libuv loop
 * (curl's multi-uv.c pattern): keep-alive connection reuse, unix sockets,
 * TLS, timeouts, buffered or streamed bodies.
 *
 * No user callback ever runs inside a curl callback: curl's write and
 * header callbacks only buffer, and http.c hands the data on after
 * curl_multi_socket_action() returns.  So callbacks may start and cancel
 * requests freely. */
#ifndef REGISTER_HTTP_H
#define REGISTER_HTTP_H

#include <stddef.h>
#include <uv.h>

typedef struct http http_t;
typedef struct http_req http_req_t;

/* Why a request got no usable response (the transport's kind of failure,
 * so that callers need not know curl's codes). */
typedef enum {
  HTTP_ERR_NONE = 0,  /* a response arrived (any status) */
  HTTP_ERR_CONNECT,   /* no connection: refused, unreachable */
  HTTP_ERR_RESOLVE,   /* the host name (or the proxy's) did not resolve */
  HTTP_ERR_TIMEOUT,   /* the request's time limit ran out */
  HTTP_ERR_TLS,       /* the TLS handshake or the peer's certificate */
  HTTP_ERR_DROPPED,   /* the connection broke while sending or receiving */
  HTTP_ERR_EMPTY,     /* the peer closed without a response */
  HTTP_ERR_TOO_LARGE, /* the body passed the request's cap (not read) */
  HTTP_ERR_OTHER
} http_err_t;

typedef struct {
  long status;        /* HTTP status; 0 when no response arrived */
  http_err_t error;   /* HTTP_ERR_NONE (0), or why there is no response */
  const char *errmsg; /* one line when error != 0 */
  const char *body;   /* buffered body (empty for streamed requests) */
  size_t body_len;
  const char *headers; /* raw header block of the final response */
  size_t headers_len;
} http_resp_t;

/* Called once per request, unless it was cancelled. */
typedef void (*http_done_cb)(http_req_t *req, const http_resp_t *resp,
                             void *data);
/* Streaming: body bytes as they arrive.  Return 0 to go on; non-zero
 * cancels the request (no done callback follows). */
typedef int (*http_data_cb)(http_req_t *req, const char *p, size_t n,
                            void *data);
/* Once the status line and headers of the final response are in. */
typedef void (*http_head_cb)(http_req_t *req, const http_resp_t *resp,
                             void *data);

/* TLS material: files that curl reads per connection, or their contents
 * (PEM) read by the caller, which win over the files.  Contents are what a
 * rotation needs: curl copies them into each request and reuses a
 * connection (or resumes a TLS session) only for a request with the same
 * certificate and CA bytes, so new contents never go over a connection
 * made with the old ones; and a CA given as bytes is not held in curl's CA
 * cache (24 h since 7.87). */
typedef struct {
  const char *cacert; /* CA bundle; NULL = system default */
  const char *cert;   /* client certificate, PEM */
  const char *key;    /* client key, PEM */
  const char *cacert_pem, *cert_pem, *key_pem; /* contents, or NULL */
  size_t cacert_len, cert_len, key_len;
  /* the client certificate's validity, seconds since the epoch (0: not
   * known); creds_tls() fills it, for http_tls_cert_invalid() */
  long long cert_not_before, cert_not_after;
} http_tls_t;

/* A deep copy of src into *dst (freed with http_tls_free()). */
void http_tls_copy(http_tls_t *dst, const http_tls_t *src);
/* Frees what http_tls_copy() made (keys wiped) and zeroes *t. */
void http_tls_free(http_tls_t *t);
/* Whether t names a client certificate (a file or contents). */
int http_tls_has_cert(const http_tls_t *t);
/* Whether t's client certificate is outside its validity at now (seconds
 * since the epoch), which a server refuses: 1 with "expired at
 * 2026-12-06T18:32:19Z" or "not valid before ..." in out; 0 (out empty)
 * when it is valid or its validity is not known. */
int http_tls_cert_invalid(const http_tls_t *t, long long now, char *out,
                          size_t n);

typedef struct {
  const char *method; /* NULL = GET */
  const char *url;
  const char *unix_socket;    /* connect here instead of the URL's host */
  const char *const *headers; /* NULL-terminated "Name: value" lines */
  const char *body;           /* copied; may be NULL */
  size_t body_len;
  long timeout_ms;         /* whole request; 0 = none (streams) */
  long connect_timeout_ms; /* 0 = 5 s */
  const http_tls_t *tls;   /* copied */
  const char *userpwd;     /* basic auth "user:password"; copied */
  size_t max_body;         /* buffered body cap; 0 = 32 MiB */
  /* 1: the connection it opens ends with a reset (SO_LINGER 0), so that
   * a request given up on (a timeout, a cut network) is dropped from the
   * kernel's send queue when curl closes it, instead of reaching the
   * server late (a put landing after a later delete of the same key) */
  int reset_at_close;
  http_head_cb on_head;
  http_data_cb on_data; /* set: stream; unset: buffer the body */
  http_done_cb on_done;
  void *data;
} http_opts_t;

/* max_host_conns: connections per host at once; max_idle: idle ones kept
 * for reuse (curl keeps some memory for each). */
http_t *http_new(uv_loop_t *loop, int max_host_conns, int max_idle);
/* Cancels every request without callbacks and closes every handle; the
 * memory goes once the loop has run the close callbacks. */
void http_free(http_t *h);

/* Starts a request; never NULL.  A request curl will not take (no easy
 * handle, the multi handle refused it) fails from the loop, as every other
 * failure does: its done() gets HTTP_ERR_OTHER, never inside this call. */
http_req_t *http_request(http_t *h, const http_opts_t *opts);
/* Stops a request; none of its callbacks runs afterwards. */
void http_cancel(http_req_t *req);
/* With no request running, closes every cached idle connection (and the
 * memory curl keeps for each); the next request connects again.  Returns
 * 0, or -1 when requests are running (nothing is done). */
int http_trim(http_t *h);

/* Finds a response header (case-insensitive name); copies its trimmed value
 * into out.  Returns 0 if found. */
int http_header(const http_resp_t *resp, const char *name, char *out,
                size_t outlen);

#endif
