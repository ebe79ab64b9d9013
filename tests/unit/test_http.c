/* http: a request curl will not take fails from the loop, never inside
 * http_request(), and never as NULL; a client certificate out of its
 * validity is said (http_tls_cert_invalid()).  curl refuses only when it
 * is out of memory, so this test is linked with
 * -Wl,--wrap=curl_multi_add_handle (tests/CMakeLists.txt) and refuses when
 * told to. */
#include <curl/curl.h>
#include <uv.h>

#include "http.h"
#include "test.h"

static int refuse; /* the next curl_multi_add_handle() calls refused */

CURLMcode __real_curl_multi_add_handle(CURLM *m, CURL *e);
CURLMcode __wrap_curl_multi_add_handle(CURLM *m, CURL *e);
CURLMcode __wrap_curl_multi_add_handle(CURLM *m, CURL *e) {
  if (refuse > 0) {
    refuse--;
    return CURLM_OUT_OF_MEMORY;
  }
  return __real_curl_multi_add_handle(m, e);
}

static uv_loop_t loop;
static int done_calls, starting;
static http_resp_t last;
static char last_msg[CURL_ERROR_SIZE + 64];

static void on_done(http_req_t *req, const http_resp_t *resp, void *data) {
  (void)req;
  (void)data;
  ASSERT(!starting); /* never inside http_request() */
  done_calls++;
  last = *resp;
  snprintf(last_msg, sizeof last_msg, "%s", resp->errmsg ? resp->errmsg : "");
}

static http_req_t *start(http_t *h) {
  http_opts_t o = {0};
  o.url = "http://127.0.0.1:9/";
  o.timeout_ms = 1000;
  o.on_done = on_done;
  starting = 1;
  http_req_t *r = http_request(h, &o);
  starting = 0;
  return r;
}

static http_t *setup(void) {
  ASSERT_EQ(curl_global_init(CURL_GLOBAL_DEFAULT), CURLE_OK);
  uv_loop_init(&loop);
  done_calls = 0;
  http_t *h = http_new(&loop, 4, 4);
  ASSERT(h);
  return h;
}

static void teardown(http_t *h) {
  http_free(h);
  uv_run(&loop, UV_RUN_DEFAULT); /* the close callbacks */
  ASSERT_EQ(uv_loop_close(&loop), 0);
  curl_global_cleanup();
}

TEST(a_refused_request_fails_from_the_loop) {
  http_t *h = setup();
  refuse = 1;
  http_req_t *r = start(h);
  ASSERT(r); /* never NULL */
  ASSERT_EQ(done_calls, 0);
  uv_run(&loop, UV_RUN_NOWAIT);
  ASSERT_EQ(done_calls, 1);
  ASSERT_EQ(last.error, HTTP_ERR_OTHER);
  ASSERT_EQ(last.status, 0);
  ASSERT_CONTAINS(last_msg, "cannot start the request");
  /* the next one is taken, and fails as an unreachable port does */
  start(h);
  ASSERT_EQ(done_calls, 1);
  while (done_calls < 2)
    uv_run(&loop, UV_RUN_ONCE);
  ASSERT_EQ(last.error, HTTP_ERR_CONNECT);
  teardown(h);
}

TEST(a_refused_request_cancelled_or_freed_never_calls_back) {
  http_t *h = setup();
  refuse = 1;
  http_cancel(start(h));
  uv_run(&loop, UV_RUN_NOWAIT);
  ASSERT_EQ(done_calls, 0);
  refuse = 1;
  start(h);    /* still waiting for the loop when the client goes */
  teardown(h); /* frees it without its callback (ASan: nothing leaks) */
  ASSERT_EQ(done_calls, 0);
}

/* A client certificate outside its validity is said, with the time; one
 * within it, or of unknown validity, or no certificate, is not. */
TEST(a_client_certificate_outside_its_validity_is_said) {
  char out[80];
  http_tls_t t = {.cert = "/c.pem",
                  .cert_not_before = 1577836800, /* 2020-01-01 */
                  .cert_not_after = 1577923200}; /* 2020-01-02 */
  ASSERT_EQ(http_tls_cert_invalid(&t, 1577923201, out, sizeof out), 1);
  ASSERT_STR_EQ(out, "expired at 2020-01-02T00:00:00Z");
  ASSERT_EQ(http_tls_cert_invalid(&t, 1577836799, out, sizeof out), 1);
  ASSERT_STR_EQ(out, "not valid before 2020-01-01T00:00:00Z");
  ASSERT_EQ(http_tls_cert_invalid(&t, 1577923200, out, sizeof out), 0);
  ASSERT_STR_EQ(out, "");
  http_tls_t copy;
  http_tls_copy(&copy, &t); /* the validity goes with the copy */
  ASSERT_EQ(http_tls_cert_invalid(&copy, 1577923201, out, sizeof out), 1);
  http_tls_free(&copy);
  t.cert_not_after = 0; /* not known */
  ASSERT_EQ(http_tls_cert_invalid(&t, 1577923201, out, sizeof out), 0);
  t = (http_tls_t){.cert_not_after = 1}; /* no certificate */
  ASSERT_EQ(http_tls_cert_invalid(&t, 1577923201, out, sizeof out), 0);
}

int main(int argc, char **argv) {
  static const test_entry_t tests[] = {
      TEST_ENTRY(a_refused_request_fails_from_the_loop),
      TEST_ENTRY(a_refused_request_cancelled_or_freed_never_calls_back),
      TEST_ENTRY(a_client_certificate_outside_its_validity_is_said),
  };
  return test_main(argc, argv, tests, sizeof tests / sizeof tests[0]);
}
