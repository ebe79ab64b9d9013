/* sig: Ed25519 keys made with openssl at test time */
#include "sig.h"
#include "test.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static char dir[] = "/tmp/register-test-sig-XXXXXX";
static char err[400];

/* runs cmd (owned) */
static void sh(char *cmd) {
  if (system(cmd) != 0) FAIL("failed: %s", cmd);
  free(cmd);
}

/* NAME.key and NAME.pub (Ed25519) in dir */
static void keypair(const char *name) {
  sh(xasprintf("openssl genpkey -algorithm ed25519 -out %s/%s.key "
               "2>/dev/null",
               dir, name));
  sh(xasprintf("openssl pkey -in %s/%s.key -pubout -out %s/%s.pub", dir, name,
               dir, name));
}

static char *path(const char *name) {
  return xasprintf("%s/%s", dir, name);
}

static void write_file(const char *name, const char *text) {
  char *p = path(name);
  FILE *f = fopen(p, "w");
  ASSERT(f);
  fputs(text, f);
  fclose(f);
  free(p);
}

static void setup(void) {
  ASSERT(mkdtemp(dir));
  keypair("a");
  keypair("b");
}

static void teardown(void) {
  char *cmd = xasprintf("rm -rf %s", dir);
  if (system(cmd) != 0) FAIL("rm failed");
  free(cmd);
}

static const char src[] = "return {records = function() return {} end}\n";

TEST(sign_verify) {
  setup();
  char *ka = path("a.key"), *pa = path("a.pub"), *pb = path("b.pub");
  char *s = sig_sign(ka, src, sizeof src - 1, err, sizeof err);
  if (!s) FAIL("%s", err);
  buf_t raw;
  buf_init(&raw);
  ASSERT_EQ(util_base64_decode(&raw, s, strlen(s)), 0);
  ASSERT_EQ(raw.len, 64);
  buf_free(&raw);
  sig_keys_t *k = sig_keys_load(pa, err, sizeof err);
  if (!k) FAIL("%s", err);
  ASSERT_EQ(sig_keys_count(k), 1);
  ASSERT_EQ(sig_verify(k, src, sizeof src - 1, s, err, sizeof err), 0);
  /* a tampered source */
  char bad[sizeof src];
  memcpy(bad, src, sizeof src);
  bad[3] ^= 1;
  ASSERT_EQ(sig_verify(k, bad, sizeof src - 1, s, err, sizeof err), -1);
  ASSERT_CONTAINS(err, "signed with a key not in");
  ASSERT_CONTAINS(err, pa);
  /* one byte shorter */
  ASSERT_EQ(sig_verify(k, src, sizeof src - 2, s, err, sizeof err), -1);
  /* a tampered signature */
  char *s2 = xstrdup(s);
  s2[5] = s2[5] == 'A' ? 'B' : 'A';
  ASSERT_EQ(sig_verify(k, src, sizeof src - 1, s2, err, sizeof err), -1);
  free(s2);
  /* not a signature */
  const char *const junk[] = {"", "!!!", "c2ln", "AAAA"};
  for (size_t i = 0; i < 4; i++) {
    ASSERT_EQ(sig_verify(k, src, sizeof src - 1, junk[i], err, sizeof err), -1);
    ASSERT_CONTAINS(err, "not a signature (base64 of 64 bytes)");
  }
  ASSERT_EQ(sig_verify(k, src, sizeof src - 1, NULL, err, sizeof err), -1);
  sig_keys_free(k);
  /* by another key */
  k = sig_keys_load(pb, err, sizeof err);
  if (!k) FAIL("%s", err);
  ASSERT_EQ(sig_verify(k, src, sizeof src - 1, s, err, sizeof err), -1);
  ASSERT_CONTAINS(err, "signed with a key not in");
  sig_keys_free(k);
  free(s);
  free(ka);
  free(pa);
  free(pb);
  teardown();
}

TEST(several_keys) {
  setup();
  char *cmd = xasprintf("cat %s/b.pub %s/a.pub > %s/both.pub", dir, dir, dir);
  ASSERT_EQ(system(cmd), 0);
  free(cmd);
  char *both = path("both.pub"), *ka = path("a.key"), *kb = path("b.key");
  sig_keys_t *k = sig_keys_load(both, err, sizeof err);
  if (!k) FAIL("%s", err);
  ASSERT_EQ(sig_keys_count(k), 2);
  char *sa = sig_sign(ka, src, sizeof src - 1, err, sizeof err);
  char *sb = sig_sign(kb, src, sizeof src - 1, err, sizeof err);
  ASSERT(sa && sb);
  ASSERT(strcmp(sa, sb) != 0);
  ASSERT_EQ(sig_verify(k, src, sizeof src - 1, sa, err, sizeof err), 0);
  ASSERT_EQ(sig_verify(k, src, sizeof src - 1, sb, err, sizeof err), 0);
  sig_keys_free(k);
  free(sa);
  free(sb);
  free(both);
  free(ka);
  free(kb);
  teardown();
}

TEST(bad_files) {
  setup();
  char *missing = path("missing.pub"), *ka = path("a.key"), *pa = path("a.pub");
  ASSERT(!sig_keys_load(missing, err, sizeof err));
  ASSERT_CONTAINS(err, "No such file");
  ASSERT_CONTAINS(err, missing);
  ASSERT(!sig_sign(missing, src, 3, err, sizeof err));
  ASSERT_CONTAINS(err, "No such file");
  write_file("junk", "hello\n");
  char *junk = path("junk");
  ASSERT(!sig_keys_load(junk, err, sizeof err));
  ASSERT_CONTAINS(err, "not PEM");
  ASSERT(!sig_sign(junk, src, 3, err, sizeof err));
  ASSERT_CONTAINS(err, "not PEM");
  write_file("empty", "");
  char *empty = path("empty");
  ASSERT(!sig_keys_load(empty, err, sizeof err));
  ASSERT_CONTAINS(err, "not PEM");
  /* a private key where a public one is expected, and the reverse */
  ASSERT(!sig_keys_load(ka, err, sizeof err));
  ASSERT_CONTAINS(err, "private key: give the public one");
  ASSERT(!sig_sign(pa, src, 3, err, sizeof err));
  ASSERT_CONTAINS(err, "public key");
  /* other algorithms */
  sh(xasprintf("openssl genpkey -algorithm ec -pkeyopt "
               "ec_paramgen_curve:P-256 -out %s/ec.key 2>/dev/null",
               dir));
  sh(xasprintf("openssl pkey -in %s/ec.key -pubout -out %s/ec.pub", dir, dir));
  char *eck = path("ec.key"), *ecp = path("ec.pub");
  ASSERT(!sig_keys_load(ecp, err, sizeof err));
  ASSERT_CONTAINS(err, "not Ed25519");
  ASSERT(!sig_sign(eck, src, 3, err, sizeof err));
  ASSERT_CONTAINS(err, "not Ed25519");
  /* PEM with no key in it */
  write_file("cert", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END "
                     "CERTIFICATE-----\n");
  char *cert = path("cert");
  ASSERT(!sig_keys_load(cert, err, sizeof err));
  ASSERT_CONTAINS(err, "no Ed25519 public key in");
  ASSERT(!strchr(err, '\n'));
  free(missing);
  free(ka);
  free(pa);
  free(junk);
  free(empty);
  free(eck);
  free(ecp);
  free(cert);
  teardown();
}

TEST_MAIN(TEST_ENTRY(sign_verify), TEST_ENTRY(several_keys),
          TEST_ENTRY(bad_files))
