/* sig: see include/sig.h */
#include "sig.h"
#include "util.h"

#include <errno.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KEYFILE_MAX (1u << 20)
#define SIG_BYTES 64

struct sig_keys {
  EVP_PKEY **k;
  size_t n;
  char *file;
};

/* The key file's text, or NULL with one line. */
static char *read_keyfile(const char *file, size_t *len, char *err,
                          size_t errlen) {
  buf_t b;
  buf_init(&b);
  buf_reserve(&b, 1); /* data never NULL, even for an empty file */
  if (util_read_file(file, KEYFILE_MAX, &b) < 0) {
    snprintf(err, errlen, "%s: %s", file,
             errno == EFBIG ? "too large for a key file" : strerror(errno));
    buf_free(&b);
    return NULL;
  }
  *len = b.len;
  return buf_detach(&b);
}

/* the PEM password callback: never ask (no terminal prompt) */
static int no_password(char *buf, int size, int rwflag, void *u) {
  (void)buf, (void)size, (void)rwflag, (void)u;
  return -1;
}

static const char *key_type(const EVP_PKEY *k) {
  switch (EVP_PKEY_base_id(k)) {
  case EVP_PKEY_RSA:
    return "an RSA key";
  case EVP_PKEY_EC:
    return "an EC key";
  case EVP_PKEY_ED448:
    return "an Ed448 key";
  case EVP_PKEY_X25519:
    return "an X25519 key";
  default:
    return "a key of another type";
  }
}

sig_keys_t *sig_keys_load(const char *file, char *err, size_t errlen) {
  size_t len;
  char *text = read_keyfile(file, &len, err, errlen);
  if (!text) return NULL;
  if (strstr(text, "PRIVATE KEY-----")) {
    snprintf(err, errlen,
             "%s holds a private key: give the public one (openssl pkey -in "
             "%s -pubout)",
             file, file);
    free(text);
    return NULL;
  }
  if (!strstr(text, "-----BEGIN ")) {
    snprintf(err, errlen,
             "%s: not PEM (an Ed25519 public key as openssl pkey -pubout "
             "writes it)",
             file);
    free(text);
    return NULL;
  }
  sig_keys_t *k = xcalloc(1, sizeof *k);
  k->file = xstrdup(file);
  REGISTER_ASSERT(len <= KEYFILE_MAX); /* read_keyfile()'s cap: fits an int */
  BIO *bio = BIO_new_mem_buf(text, (int)len);
  EVP_PKEY *p;
  int bad = 0;
  while (bio && (p = PEM_read_bio_PUBKEY(bio, NULL, no_password, NULL))) {
    if (EVP_PKEY_base_id(p) != EVP_PKEY_ED25519) {
      snprintf(err, errlen,
               "%s: public key %zu is %s, not Ed25519 (openssl genpkey "
               "-algorithm ed25519)",
               file, k->n + 1, key_type(p));
      EVP_PKEY_free(p);
      bad = 1;
      break;
    }
    k->k = xrealloc(k->k, (k->n + 1) * sizeof *k->k);
    k->k[k->n++] = p;
  }
  ERR_clear_error(); /* the end of the file, or a block that is no key */
  BIO_free(bio);
  free(text);
  if (!bad && k->n == 0) {
    snprintf(err, errlen, "no Ed25519 public key in %s", file);
    bad = 1;
  }
  if (bad) {
    sig_keys_free(k);
    return NULL;
  }
  return k;
}

void sig_keys_free(sig_keys_t *k) {
  if (!k) return;
  for (size_t i = 0; i < k->n; i++)
    EVP_PKEY_free(k->k[i]);
  free(k->k);
  free(k->file);
  free(k);
}

size_t sig_keys_count(const sig_keys_t *k) {
  return k ? k->n : 0;
}

int sig_verify(const sig_keys_t *k, const void *data, size_t len,
               const char *sig_b64, char *err, size_t errlen) {
  buf_t raw;
  buf_init(&raw);
  if (!sig_b64 || util_base64_decode(&raw, sig_b64, strlen(sig_b64)) < 0 ||
      raw.len != SIG_BYTES) {
    snprintf(err, errlen, "not a signature (base64 of %d bytes)", SIG_BYTES);
    buf_free(&raw);
    return -1;
  }
  REGISTER_ASSERT(!k || k->n > 0); /* a loaded key set is never empty */
  int ok = 0;
  for (size_t i = 0; k && i < k->n && !ok; i++) {
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx && EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, k->k[i]) == 1 &&
        EVP_DigestVerify(ctx, (const unsigned char *)raw.data, raw.len,
                         (const unsigned char *)data, len) == 1)
      ok = 1;
    EVP_MD_CTX_free(ctx);
  }
  ERR_clear_error();
  buf_free(&raw);
  if (!ok) {
    snprintf(err, errlen,
             "the signature does not verify: signed with a key not in %s, "
             "or the source was changed after it was signed",
             k ? k->file : "(no keys)");
    return -1;
  }
  return 0;
}

char *sig_sign(const char *keyfile, const void *data, size_t len, char *err,
               size_t errlen) {
  size_t tlen;
  char *text = read_keyfile(keyfile, &tlen, err, errlen);
  if (!text) return NULL;
  EVP_PKEY *p = NULL;
  REGISTER_ASSERT(tlen <= KEYFILE_MAX);
  BIO *bio = BIO_new_mem_buf(text, (int)tlen);
  if (bio) p = PEM_read_bio_PrivateKey(bio, NULL, no_password, NULL);
  BIO_free(bio);
  ERR_clear_error();
  if (!p) {
    if (!strstr(text, "-----BEGIN "))
      snprintf(err, errlen,
               "%s: not PEM (an Ed25519 private key as openssl genpkey "
               "-algorithm ed25519 writes it)",
               keyfile);
    else if (strstr(text, "ENCRYPTED"))
      snprintf(err, errlen,
               "%s: an encrypted private key (give one without a passphrase: "
               "openssl pkey -in %s -out PLAIN)",
               keyfile, keyfile);
    else if (strstr(text, "PUBLIC KEY-----"))
      snprintf(err, errlen,
               "%s holds a public key: signing needs the private one", keyfile);
    else
      snprintf(err, errlen, "%s: no private key in it", keyfile);
    free(text);
    return NULL;
  }
  free(text);
  if (EVP_PKEY_base_id(p) != EVP_PKEY_ED25519) {
    snprintf(err, errlen,
             "%s is %s, not Ed25519 (openssl genpkey -algorithm ed25519)",
             keyfile, key_type(p));
    EVP_PKEY_free(p);
    return NULL;
  }
  unsigned char sig[SIG_BYTES];
  size_t siglen = sizeof sig;
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  int ok = ctx && EVP_DigestSignInit(ctx, NULL, NULL, NULL, p) == 1 &&
           EVP_DigestSign(ctx, sig, &siglen, (const unsigned char *)data,
                          len) == 1 &&
           siglen == SIG_BYTES;
  EVP_MD_CTX_free(ctx);
  EVP_PKEY_free(p);
  if (!ok) {
    unsigned long e = ERR_get_error();
    snprintf(err, errlen, "%s: signing failed: %s", keyfile,
             e && ERR_reason_error_string(e) ? ERR_reason_error_string(e)
                                             : "unknown error");
    ERR_clear_error();
    return NULL;
  }
  buf_t b;
  buf_init(&b);
  util_base64_encode(&b, sig, siglen);
  return buf_detach(&b);
}
