/* One-line-per-event logging to stderr: time, role, level, file:line, message. */
#pragma once

typedef enum xc_log_level {
    XC_LOG_LEVEL_DEBUG = 0,
    XC_LOG_LEVEL_INFO = 1,
    XC_LOG_LEVEL_WARN = 2,
    XC_LOG_LEVEL_ERROR = 3,
    XC_LOG_LEVEL_OFF = 4,
} xc_log_level;

/* Current threshold; initialised from XC_LOG_LEVEL (debug|info|warn|error|off) on first use. */
xc_log_level xc_log_get_level(void);

/* Overrides the threshold (e.g. from a --log-level flag). */
void xc_log_set_level(xc_log_level lvl);

/* Parses "debug", "info", "warn", "error" or "off"; returns -1 if unknown. */
int xc_log_parse_level(const char *s);

/* Sets the role tag printed on each line ("C", "W3", "cli"); the string is copied. */
void xc_log_set_role(const char *role);

/* Writes one line; use the XC_LOG_* macros instead. */
void xc_log_write(xc_log_level lvl, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The level is checked before the arguments are evaluated. */
#define XC_LOG_AT(lvl, ...)                                                                        \
    do {                                                                                           \
        if ((lvl) >= xc_log_get_level()) {                                                         \
            xc_log_write((lvl), __FILE__, __LINE__, __VA_ARGS__);                                  \
        }                                                                                          \
    } while (0)

#define XC_LOG_DEBUG(...) XC_LOG_AT(XC_LOG_LEVEL_DEBUG, __VA_ARGS__)
#define XC_LOG_INFO(...)  XC_LOG_AT(XC_LOG_LEVEL_INFO, __VA_ARGS__)
#define XC_LOG_WARN(...)  XC_LOG_AT(XC_LOG_LEVEL_WARN, __VA_ARGS__)
#define XC_LOG_ERROR(...) XC_LOG_AT(XC_LOG_LEVEL_ERROR, __VA_ARGS__)
