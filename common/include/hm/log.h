/*
 * hm/log.h - structured logs: one JSON object per line on stderr
 * {"ts","level","daemon","msg", "request_id","trace_id","span_id", ...fields}.
 *
 * Each line is written with a single write(2), so lines from different threads never
 * interleave. The request/trace context of the call a thread is serving is kept in a
 * thread-local set by the runtime, so every line logged inside a handler carries it.
 */
#ifndef HM_LOG_H
#define HM_LOG_H

typedef enum hm_log_level {
    HM_LOG_DEBUG = 0,
    HM_LOG_INFO = 1,
    HM_LOG_WARN = 2,
    HM_LOG_ERROR = 3,
} hm_log_level_t;

/* Identity of the call a thread is serving; strings owned by the caller, NULL when unknown. */
typedef struct hm_log_ctx {
    const char *request_id;
    const char *trace_id;
    const char *span_id;
} hm_log_ctx_t;

/* Process-wide level; lines below it cost one comparison. */
extern int hm__log_level;

/* Sets the daemon name and the level (call once at start, before threads). `daemon` must
 * outlive all logging (a string literal). */
void hm_log_init(const char *daemon, hm_log_level_t level);

/* "debug"|"info"|"warn"|"error" -> level; 0 or HM_EINVAL. */
int hm_log_level_parse(const char *s, hm_log_level_t *out);

/* Sets (or with NULL clears) this thread's call context. The pointer is kept, not copied:
 * clear it before the strings die. */
void hm_log_set_ctx(const hm_log_ctx_t *ctx);
const hm_log_ctx_t *hm_log_get_ctx(void);

/* Writes one line. `fields` is NULL or a pre-rendered JSON fragment of extra members without
 * braces ("\"method\":\"/a.B/C\",\"code\":0"), appended as is. The message is JSON-escaped. */
void hm_log_write(hm_log_level_t level, const char *fields, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Appends `s` to `dst` (capacity `cap`, current length *len) JSON-escaped, without quotes;
 * truncates safely. Returns the new length. Used to render `fields`. */
unsigned hm_json_escape(char *dst, unsigned cap, unsigned len, const char *s);

#define HM_LOG(lvl, ...)                                                                           \
    do {                                                                                           \
        if ((int)(lvl) >= hm__log_level)                                                           \
            hm_log_write((lvl), NULL, __VA_ARGS__);                                                \
    } while (0)
#define HM_DEBUG(...) HM_LOG(HM_LOG_DEBUG, __VA_ARGS__)
#define HM_INFO(...)  HM_LOG(HM_LOG_INFO, __VA_ARGS__)
#define HM_WARN(...)  HM_LOG(HM_LOG_WARN, __VA_ARGS__)
#define HM_ERROR(...) HM_LOG(HM_LOG_ERROR, __VA_ARGS__)

#endif
