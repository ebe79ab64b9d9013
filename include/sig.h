/* sig: Ed25519 signatures of policies (OpenSSL's libcrypto): keys in PEM
 * as `openssl genpkey -algorithm ed25519` writes them (private) and
 * `openssl pkey -pubout` (public); signatures base64 of the 64 raw bytes,
 * over the signed data's bytes as they are.
 *
 * Knows nothing of etcd or policies. */
#ifndef REGISTER_SIG_H
#define REGISTER_SIG_H

#include <stddef.h>

typedef struct sig_keys sig_keys_t;

/* Every PUBLIC KEY block in file (one or more: a rotation lists the old
 * and the new), each Ed25519.  NULL with one line in err naming the file
 * and what is wrong ("no Ed25519 public key in F", "F: not PEM", "a
 * private key: give the public one (openssl pkey -in F -pubout)"). */
sig_keys_t *sig_keys_load(const char *file, char *err, size_t errlen);
void sig_keys_free(sig_keys_t *k);
size_t sig_keys_count(const sig_keys_t *k);

/* 0 when sig_b64 is a valid signature of data by one of the keys; -1 with
 * one line: "not a signature (base64 of 64 bytes)", "signed with a key
 * not in F" ... */
int sig_verify(const sig_keys_t *k, const void *data, size_t len,
               const char *sig_b64, char *err, size_t errlen);

/* Signs data with the Ed25519 private key in keyfile (PEM): the base64
 * signature (malloc'd), or NULL with one line in err. */
char *sig_sign(const char *keyfile, const void *data, size_t len, char *err,
               size_t errlen);

#endif
