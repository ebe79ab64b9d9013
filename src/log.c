/* log: levelled, journald-friendly text or JSON lines on stderr. */
#include "log.h"
#include "json.h"
#include "util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static log_level_t log_level = LOG_INFO;
static log_format_t log_format = LOG_TEXT;
static int log_journal = -1; /* unknown until first use */
static log_sink_fn log_sink; /* NULL: stderr */

static const char *const level_names[] = {"error", "warn", "info", "debug"};
static const int journal_prio[] = {3, 4, 6, 7};

int log_level_parse(const char *s, log_level_t *out) {
  for (int i = 0; i < (int)ARRAY_SIZE(level_names); i++) {
    if (strcmp(s, level_names[i]) == 0) {
      *out = (log_level_t)i;
      return 0;
    }
  }
  if (strcmp(s, "warning") == 0) {
    *out = LOG_WARN;
    return 0;
  }
  return -1;
}

int log_format_parse(const char *s, log_format_t *out) {
  if (strcmp(s, "text") == 0)
    *out = LOG_TEXT;
  else if (strcmp(s, "json") == 0)
    *out = LOG_JSON;
  else
    return -1;
  return 0;
}

void log_setup(log_level_t level, log_format_t format) {
  REGISTER_ASSERT((unsigned)level <= LOG_DEBUG && (unsigned)format <= LOG_JSON);
  log_level = level;
  log_format = format;
}

void log_set_sink(log_sink_fn fn) {
  log_sink = fn;
}

int log_enabled(log_level_t level) {
  return level <= log_level;
}

/* systemd sets JOURNAL_STREAM=dev:ino for the stream it connected to
 * stderr; compare, so a redirected stderr still gets timestamps. */
static int stderr_is_journal(void) {
  const char *js = getenv("JOURNAL_STREAM");
  struct stat st;
  unsigned long long dev, ino;
  if (!js || sscanf(js, "%llu:%llu", &dev, &ino) != 2) return 0;
  if (fstat(STDERR_FILENO, &st) < 0) return 0;
  return (unsigned long long)st.st_dev == dev &&
         (unsigned long long)st.st_ino == ino;
}

/* Text values are quoted when they would be ambiguous to a reader. */
static void text_value(buf_t *b, const char *v) {
  int plain = *v != '\0';
  for (const char *p = v; *p; p++) {
    if (*p == ' ' || *p == '"' || *p == '=' || (unsigned char)*p < 0x20) {
      plain = 0;
      break;
    }
  }
  if (plain)
    buf_puts(b, v);
  else
    json_escape(b, v, strlen(v));
}

/* A message (text format) is on one line: control characters escaped
 * (util_clean_text), so that no text, whoever wrote it (a policy's error,
 * a command's output), starts a line of its own or drives the terminal;
 * past LOG_MSG_MAX bytes it is cut. */

void log_emit(log_level_t level, const char *const *fields, const char *fmt,
              ...) {
  if (!log_enabled(level)) return;
  /* a level of the enum (worker.c checks the worker's before relaying) */
  REGISTER_ASSERT((unsigned)level <= LOG_DEBUG);
  buf_t msg, line;
  buf_init(&msg);
  buf_init(&line);
  va_list ap;
  va_start(ap, fmt);
  buf_vprintf(&msg, fmt, ap);
  va_end(ap);
  if (log_sink) {
    log_sink(level, fields, msg.data ? msg.data : "");
    buf_free(&msg);
    return;
  }

  char ts[40] = "";
  if (log_journal < 0) log_journal = stderr_is_journal();
  if (log_format == LOG_JSON || !log_journal) {
    struct timespec now;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    size_t n = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof ts - n, ".%03ldZ", now.tv_nsec / 1000000);
  }

  if (log_format == LOG_JSON) {
    buf_puts(&line, "{\"ts\":\"");
    buf_puts(&line, ts);
    buf_puts(&line, "\",\"level\":\"");
    buf_puts(&line, level_names[level]);
    buf_puts(&line, "\",\"msg\":");
    const char *m = msg.data ? msg.data : "";
    if (msg.len > LOG_MSG_MAX || util_utf8_bad_at(m, msg.len) < msg.len) {
      /* JSON is UTF-8: bytes that are not, escaped (and the length cut) */
      buf_t clean;
      buf_init(&clean);
      util_clean_text(&clean, m, msg.len, LOG_MSG_MAX, 1);
      json_escape(&line, clean.data ? clean.data : "", clean.len);
      buf_free(&clean);
    } else {
      json_escape(&line, m, msg.len);
    }
    for (const char *const *f = fields; f && f[0]; f += 2) {
      if (!f[1]) continue;
      buf_putc(&line, ',');
      json_escape(&line, f[0], strlen(f[0]));
      buf_putc(&line, ':');
      json_escape(&line, f[1], strlen(f[1]));
    }
    buf_puts(&line, "}\n");
  } else {
    if (log_journal) {
      buf_printf(&line, "<%d>", journal_prio[level]);
    } else {
      buf_printf(&line, "%s %-5s ", ts, level_names[level]);
    }
    util_clean_text(&line, msg.data ? msg.data : "", msg.len, LOG_MSG_MAX, 0);
    for (const char *const *f = fields; f && f[0]; f += 2) {
      if (!f[1]) continue;
      buf_printf(&line, " %s=", f[0]);
      text_value(&line, f[1]);
    }
    buf_putc(&line, '\n');
  }
  /* One write(2) per line, so lines from concurrent writers never mix. */
  size_t off = 0;
  while (off < line.len) {
    ssize_t w = write(STDERR_FILENO, line.data + off, line.len - off);
    if (w <= 0) break;
    off += (size_t)w;
  }
  buf_free(&msg);
  buf_free(&line);
}
