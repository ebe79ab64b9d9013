/* health: the answers of the status listener (httpd.c): /metrics (the
 * exposition metrics.c renders) and /healthz.  /healthz is 200 when the
 * event stream is up, etcd answered recently and nothing is pending too
 * long, else 503 with the problems; when etcd has been quiet for a while
 * it is probed first and the answer is deferred until the probe ends. */
#ifndef REGISTER_HEALTH_H
#define REGISTER_HEALTH_H

#include "etcd.h"
#include "httpd.h"
#include "metrics.h"

typedef struct health health_t;

/* Fills what /metrics and /healthz read, at the time of the answer. */
typedef void (*health_inputs_cb)(void *ud, metrics_input_t *in);

/* etcd: probed when quiet; NULL under --dry-run.  It must outlive h. */
health_t *health_new(etcd_t *etcd, health_inputs_cb inputs, void *ud);
/* The httpd handler; ud is the health_t. */
void health_handle(void *ud, httpd_req_t *req, const char *method,
                   const char *path);
/* Cancels a running probe and answers the requests waiting for it
 * ("shutting down"), then frees h.  Call before httpd_free(). */
void health_free(health_t *h);

#endif
