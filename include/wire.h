/* wire: the messages between the daemon and its policy worker (worker.c
 * and worker_main.c), over a socketpair.
 *
 * A frame is a 4-byte length (host order: both ends are one machine) and
 * that many bytes: a type byte, then fields.  A field is a number (8
 * bytes) or a byte string (a 4-byte length, the bytes and a NUL that the
 * length leaves out, so a reader can use it in place; the length
 * 0xffffffff is "absent", read back as NULL).  A reader never trusts a
 * length: every read is checked against the frame, and a short or
 * malformed frame marks the reader bad.
 *
 * The conversation: the daemon sends one request and reads frames until
 * its reply; before the reply the worker may send any number of LOG,
 * PRINT, IO and IO_CANCEL frames, and READ (a module for `require`),
 * which the daemon answers with READ_ANSWER at once. */
#ifndef REGISTER_WIRE_H
#define REGISTER_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

/* Larger frames are refused (a reply's records are capped well below). */
#define WIRE_MAX_FRAME (32u << 20)

typedef enum {
  /* daemon -> worker: requests */
  WIRE_INIT = 1,    /* log level, memory cap, the daemon's pid, the policy
                       (file, source), host, limits, I/O, renderer; reply
                       READY or FAIL */
  WIRE_CHECKS,      /* inspect document, records too, stopping; reply CHECKS_OK
                      or FAIL */
  WIRE_RECORDS,     /* inspect document, check view; reply RECORDS or FAIL */
  WIRE_EVENT,       /* a Docker event for the event hook; reply STEP */
  WIRE_CHANGED,     /* op, key, value for the changed hook; reply STEP */
  WIRE_IO_ANSWER,   /* id, answer; reply STEP */
  WIRE_TICK,        /* end hook calls past their limit; reply STEP */
  WIRE_GC,          /* a full collection; reply STEP */
  WIRE_READ_ANSWER, /* found, text (answers READ) */
  WIRE_RENDER,      /* prefix, revision, api, n, n x (key, value); reply
                       RENDER_OK or FAIL */
  /* worker -> daemon: replies */
  WIRE_READY = 32, /* name, prefix, has_checks, has_event, has_changed */
  WIRE_FAIL,       /* reason, message, traceback */
  WIRE_CHECKS_OK,  /* the specs; then 0, or (records asked for and no
                      check) records() with no checks: 1 and RECORDS_OK's
                      fields, or 2 and FAIL's */
  WIRE_RECORDS_OK, /* rejected, the records */
  WIRE_STEP,       /* hook calls alive */
  WIRE_RENDER_OK,  /* the rendered text */
  /* worker -> daemon: on the way */
  WIRE_LOG = 64,  /* level, fields, message */
  WIRE_PRINT,     /* a line for stdout (print-only HTTP) */
  WIRE_IO,        /* id, an iocall_t */
  WIRE_IO_CANCEL, /* id */
  WIRE_READ       /* module path under the policy's directory */
} wire_type_t;

/* ---- writing: into a buf_t, one frame at a time ---- */
/* Starts a frame of type t at the end of b; returns its offset. */
size_t wire_begin(buf_t *b, int type);
void wire_num(buf_t *b, uint64_t v);
void wire_str(buf_t *b, const char *s, size_t n); /* s NULL: absent */
void wire_cstr(buf_t *b, const char *s);          /* s NULL: absent */
/* Ends the frame started at off (fills its length). */
void wire_end(buf_t *b, size_t off);

/* ---- reading one frame's fields ---- */
typedef struct {
  const char *p, *end;
  int bad; /* a read went past the frame or met a malformed field */
} wire_rd_t;

void wire_rd_init(wire_rd_t *r, const char *frame, size_t len);
int wire_type(wire_rd_t *r);
uint64_t wire_get_num(wire_rd_t *r);
/* NUL-terminated in place; NULL when absent or bad (len then 0). */
const char *wire_get_str(wire_rd_t *r, size_t *len);

/* ---- framing over a byte stream ---- */
/* The next whole frame at the start of in: 1 (frame, len set), 0 (more
 * bytes needed), -1 (a length over WIRE_MAX_FRAME: the stream is bad). */
int wire_frame(const buf_t *in, const char **frame, size_t *len);
/* Writes all of p to a blocking fd (EINTR retried); 0 or -1 (errno). */
int wire_write_all(int fd, const void *p, size_t n);

#endif
