/* log: one line per event on stderr, as text or JSON.
 *
 * Text lines look like `level msg key=value ...`; when stderr is the
 * systemd journal (JOURNAL_STREAM names it) the level becomes a `<N>` prefix
 * and the timestamp is left to the journal.  JSON lines carry "ts",
 * "level", "msg" and the same fields. */
#ifndef REGISTER_LOG_H
#define REGISTER_LOG_H

typedef enum { LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG } log_level_t;
typedef enum { LOG_TEXT, LOG_JSON } log_format_t;

int log_level_parse(const char *s, log_level_t *out);
int log_format_parse(const char *s, log_format_t *out);
void log_setup(log_level_t level, log_format_t format);
int log_enabled(log_level_t level);
/* Where lines go instead of stderr: fn gets the level, the fields
 * (name/value pairs, NULL-terminated, values may be NULL) and the message,
 * all valid during the call.  The policy worker sends its lines to the
 * daemon this way.  NULL: stderr again.  Process-wide, like the level. */
typedef void (*log_sink_fn)(log_level_t level, const char *const *fields,
                            const char *msg);
void log_set_sink(log_sink_fn fn);

/* fields: NULL, or NULL-terminated name/value pairs; a NULL value skips the
 * pair.  The message is printf-formatted. */
/* The longest message a line carries (bytes; the rest is cut, and the cut
 * said), and the longest value of a field a policy's line carries. */
#define LOG_MSG_MAX 16384
#define LOG_FIELD_MAX 1024

void log_emit(log_level_t level, const char *const *fields, const char *fmt,
              ...) __attribute__((format(printf, 3, 4)));

#define log_error(...) log_emit(LOG_ERROR, NULL, __VA_ARGS__)
#define log_warn(...) log_emit(LOG_WARN, NULL, __VA_ARGS__)
#define log_info(...) log_emit(LOG_INFO, NULL, __VA_ARGS__)
#define log_debug(...)                                                         \
  do {                                                                         \
    if (log_enabled(LOG_DEBUG)) log_emit(LOG_DEBUG, NULL, __VA_ARGS__);        \
  } while (0)

/* With fields: log_fields(LOG_INFO, "registered", "key", k, NULL) */
#define log_fields(level, msg, ...)                                            \
  do {                                                                         \
    const char *const f_[] = {__VA_ARGS__};                                    \
    log_emit(level, f_, "%s", msg);                                            \
  } while (0)

#endif
