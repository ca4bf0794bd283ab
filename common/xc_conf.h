/* Config as data: one table per process or subcommand; default < XC_* env var < --flag. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "xc_status.h"

typedef enum xc_conf_type {
    XC_CONF_T_INT,   /* int field; --flag N */
    XC_CONF_T_FLOAT, /* double field; --flag X */
    XC_CONF_T_STR,   /* const char * field (points into argv/environ/default); --flag S */
    XC_CONF_T_BOOL,  /* bool field; --flag (no value) sets true; env accepts 1/0/true/false */
    XC_CONF_T_LIST,  /* xc_conf_list field; --flag S may repeat; env is comma-separated */
} xc_conf_type;

#define XC_CONF_LIST_MAX 64

/* A repeatable string option. Items point into argv or a copy owned by the parse. */
typedef struct xc_conf_list {
    const char *items[XC_CONF_LIST_MAX];
    int n;
} xc_conf_list;

typedef struct xc_conf_entry {
    xc_conf_type type;
    const char *name; /* long flag without dashes: "port" -> --port */
    const char *env;  /* environment variable or NULL */
    size_t offset;    /* offsetof the field in the target struct */
    double num_def;   /* default for INT/FLOAT/BOOL */
    double lo, hi;    /* inclusive range for INT/FLOAT */
    const char *str_def; /* default for STR (may be NULL) */
    const char *choices; /* for STR: "a|b|c" or NULL for any */
    const char *help;
} xc_conf_entry;

#define XC_CONF_INT(name, env, type, field, def, lo, hi, help)                                     \
    {XC_CONF_T_INT, name, env, offsetof(type, field), def, lo, hi, NULL, NULL, help}
#define XC_CONF_FLOAT(name, env, type, field, def, lo, hi, help)                                   \
    {XC_CONF_T_FLOAT, name, env, offsetof(type, field), def, lo, hi, NULL, NULL, help}
#define XC_CONF_STR(name, env, type, field, def, choices, help)                                    \
    {XC_CONF_T_STR, name, env, offsetof(type, field), 0, 0, 0, def, choices, help}
#define XC_CONF_BOOL(name, env, type, field, def, help)                                            \
    {XC_CONF_T_BOOL, name, env, offsetof(type, field), def, 0, 1, NULL, NULL, help}
#define XC_CONF_LIST(name, env, type, field, help)                                                 \
    {XC_CONF_T_LIST, name, env, offsetof(type, field), 0, 0, 0, NULL, NULL, help}

typedef struct xc_conf_spec {
    const char *usage;   /* first help line: "xcpipe generate --model DIR [options]" */
    const char *summary; /* one paragraph, or NULL */
    const xc_conf_entry *entries;
    size_t n_entries;
} xc_conf_spec;

/* Fills obj from defaults, then environment, then argv (argv[0] is the program or subcommand
 * name). --help prints generated help to stdout and returns XC_AGAIN (exit 0). A bad value or
 * unknown flag returns XC_ERR_ARG with a one-line message in xc_err_last() (exit 2).
 * *first_positional (if not NULL) receives the index of the first non-option argument;
 * without it, positional arguments are an error. */
xc_status xc_conf_parse(const xc_conf_spec *spec, void *obj, int argc, char **argv,
                        int *first_positional);

/* Prints the generated help to stdout. */
void xc_conf_print_help(const xc_conf_spec *spec);
