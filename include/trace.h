/* trace: where an event's time goes (--trace-latency).
 *
 * Each container event that register acts on is followed through its
 * stages; when the first etcd write it caused is acknowledged, one info
 * line gives every stage as microseconds after Docker's own time for the
 * event (its timeNano):
 *
 *   latency container=ID docker_ns=N read=U inspect_sent=U
 *     inspect_answered=U policy=U write_sent=U write_acked=U
 *
 * A stage the event did not pass through (a removal is not inspected) is
 * "-".  An event that causes no write (a container without published
 * ports) logs nothing; its trace waits for the container's next event, and
 * past 1,024 open traces all are dropped.  bench/run.py latency reads these
 * lines.  Like log, module state:
 * there is one trace per process.  Off, every call is one branch. */
#ifndef REGISTER_TRACE_H
#define REGISTER_TRACE_H

#include <stdint.h>

typedef enum {
  TRACE_READ,             /* the event read from the stream */
  TRACE_INSPECT_SENT,     /* its inspect handed to curl */
  TRACE_INSPECT_ANSWERED, /* the inspect's answer in hand */
  TRACE_POLICY,           /* the policy has returned the records */
  TRACE_WRITE_SENT,       /* a write or delete handed to etcd */
  TRACE_WRITE_ACKED,      /* etcd acknowledged it */
  TRACE_STAGES
} trace_stage_t;

void trace_setup(int on);
/* A new event for container id (Docker's time, 0 if unknown): the trace
 * starts again at TRACE_READ. */
void trace_event(const char *id, int64_t docker_ns);
/* id passed a stage (the latest pass counts); TRACE_WRITE_ACKED logs the
 * line and ends the trace.  Nothing happens for an id without a trace. */
void trace_mark(const char *id, trace_stage_t stage);
/* Frees what is left (at shutdown). */
void trace_close(void);

#endif
