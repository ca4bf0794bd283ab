/* Table-driven option parsing (redis static_configs, nginx offsetof slots) over getopt_long. */
#include "xc_conf.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xc_mem.h"

#define CONF_MAX_ENTRIES 128

static xc_status set_value(const xc_conf_entry *e, void *obj, const char *val, const char *src) {
    char *field = (char *)obj + e->offset;
    switch (e->type) {
    case XC_CONF_T_INT:
    case XC_CONF_T_FLOAT: {
        char *end = NULL;
        errno = 0;
        double v = (e->type == XC_CONF_T_INT) ? (double)strtoll(val, &end, 10) : strtod(val, &end);
        if (end == val || *end != '\0' || errno != 0 || isnan(v)) {
            return xc_errf(XC_ERR_ARG, "%s: '%s' is not a valid %s", src, val,
                           e->type == XC_CONF_T_INT ? "integer" : "number");
        }
        if (v < e->lo || v > e->hi) {
            return xc_errf(XC_ERR_ARG, "%s: %s is out of range [%g, %g]", src, val, e->lo, e->hi);
        }
        if (e->type == XC_CONF_T_INT) {
            *(int *)field = (int)v;
        } else {
            *(double *)field = v;
        }
        return XC_OK;
    }
    case XC_CONF_T_STR:
        if (e->choices) {
            size_t n = strlen(val);
            const char *c = e->choices;
            bool ok = false;
            while (*c) {
                const char *bar = strchr(c, '|');
                size_t len = bar ? (size_t)(bar - c) : strlen(c);
                if (len == n && strncmp(c, val, n) == 0) {
                    ok = true;
                    break;
                }
                c += len + (bar ? 1 : 0);
            }
            if (!ok) {
                return xc_errf(XC_ERR_ARG, "%s: '%s' is not one of %s", src, val, e->choices);
            }
        }
        *(const char **)field = val;
        return XC_OK;
    case XC_CONF_T_BOOL:
        if (!strcmp(val, "1") || !strcmp(val, "true") || !strcmp(val, "yes") ||
            !strcmp(val, "on")) {
            *(bool *)field = true;
        } else if (!strcmp(val, "0") || !strcmp(val, "false") || !strcmp(val, "no") ||
                   !strcmp(val, "off") || !strcmp(val, "")) {
            *(bool *)field = false;
        } else {
            return xc_errf(XC_ERR_ARG, "%s: '%s' is not a boolean (1/0/true/false)", src, val);
        }
        return XC_OK;
    case XC_CONF_T_LIST: {
        xc_conf_list *l = (xc_conf_list *)field;
        if (l->n >= XC_CONF_LIST_MAX) {
            return xc_errf(XC_ERR_ARG, "%s: more than %d values", src, XC_CONF_LIST_MAX);
        }
        l->items[l->n++] = val;
        return XC_OK;
    }
    }
    return xc_errf(XC_ERR_ARG, "%s: bad option type", src);
}

static void set_default(const xc_conf_entry *e, void *obj) {
    char *field = (char *)obj + e->offset;
    switch (e->type) {
    case XC_CONF_T_INT:
        *(int *)field = (int)e->num_def;
        break;
    case XC_CONF_T_FLOAT:
        *(double *)field = e->num_def;
        break;
    case XC_CONF_T_STR:
        *(const char **)field = e->str_def;
        break;
    case XC_CONF_T_BOOL:
        *(bool *)field = e->num_def != 0;
        break;
    case XC_CONF_T_LIST:
        memset(field, 0, sizeof(xc_conf_list));
        break;
    }
}

/* Environment lists are split on commas into copies that live as long as the process: the config
 * is immutable and process-lifetime. The copies stay reachable from this registry (a few bytes,
 * never freed), so leak checkers see them as in use rather than lost. */
static char **env_items;
static size_t n_env_items, cap_env_items;

static char *env_item_dup(const char *p, size_t len) {
    if (n_env_items == cap_env_items) {
        size_t cap = cap_env_items ? cap_env_items * 2 : 16;
        char **ni = realloc(env_items, cap * sizeof *ni);
        if (!ni) {
            return NULL;
        }
        env_items = ni;
        cap_env_items = cap;
    }
    char *item = strndup(p, len);
    if (item) {
        env_items[n_env_items++] = item;
    }
    return item;
}

static xc_status set_env_list(const xc_conf_entry *e, void *obj, const char *val) {
    const char *p = val;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (len > 0) {
            char *item = env_item_dup(p, len);
            if (!item) {
                return XC_ERR_NOMEM;
            }
            XC_TRY(set_value(e, obj, item, e->env));
        }
        p += len + (comma ? 1 : 0);
    }
    return XC_OK;
}

void xc_conf_print_help(const xc_conf_spec *spec) {
    printf("usage: %s\n", spec->usage);
    if (spec->summary) {
        printf("\n%s\n", spec->summary);
    }
    printf("\noptions:\n");
    for (size_t i = 0; i < spec->n_entries; i++) {
        const xc_conf_entry *e = &spec->entries[i];
        char flag[64];
        const char *arg = e->type == XC_CONF_T_BOOL    ? ""
                          : e->type == XC_CONF_T_INT   ? " N"
                          : e->type == XC_CONF_T_FLOAT ? " X"
                                                       : " S";
        snprintf(flag, sizeof flag, "--%s%s", e->name, arg);
        printf("  %-28s %s", flag, e->help);
        switch (e->type) {
        case XC_CONF_T_INT:
            printf(" (default %d, range %g..%g)", (int)e->num_def, e->lo, e->hi);
            break;
        case XC_CONF_T_FLOAT:
            printf(" (default %g)", e->num_def);
            break;
        case XC_CONF_T_STR:
            if (e->choices) {
                printf(" (one of %s)", e->choices);
            }
            if (e->str_def) {
                printf(" (default %s)", e->str_def);
            }
            break;
        case XC_CONF_T_LIST:
            printf(" (repeatable)");
            break;
        case XC_CONF_T_BOOL:
            break;
        }
        if (e->env) {
            printf(" [env %s]", e->env);
        }
        printf("\n");
    }
    printf("  %-28s %s\n", "--help", "print this help and exit");
}

xc_status xc_conf_parse(const xc_conf_spec *spec, void *obj, int argc, char **argv,
                        int *first_positional) {
    if (spec->n_entries >= CONF_MAX_ENTRIES) {
        return xc_errf(XC_ERR_ARG, "too many options in table");
    }
    struct option opts[CONF_MAX_ENTRIES + 1];
    for (size_t i = 0; i < spec->n_entries; i++) {
        const xc_conf_entry *e = &spec->entries[i];
        set_default(e, obj);
        opts[i] =
            (struct option){e->name, e->type == XC_CONF_T_BOOL ? no_argument : required_argument,
                            NULL, (int)i + 256};
    }
    opts[spec->n_entries] = (struct option){"help", no_argument, NULL, 'h'};
    opts[spec->n_entries + 1] = (struct option){NULL, 0, NULL, 0};

    for (size_t i = 0; i < spec->n_entries; i++) {
        const xc_conf_entry *e = &spec->entries[i];
        const char *v = e->env ? getenv(e->env) : NULL;
        if (!v) {
            continue;
        }
        xc_status st =
            e->type == XC_CONF_T_LIST ? set_env_list(e, obj, v) : set_value(e, obj, v, e->env);
        if (st != XC_OK) {
            return st;
        }
    }
    bool cleared[CONF_MAX_ENTRIES] = {false};
    optind = 0; /* glibc: full re-initialisation, so subcommands can parse again */
    opterr = 0;
    for (;;) {
        int c = getopt_long(argc, argv, first_positional ? "+h" : "h", opts, NULL);
        if (c == -1) {
            break;
        }
        if (c == 'h') {
            xc_conf_print_help(spec);
            return XC_AGAIN;
        }
        if (c == '?' || c == ':') {
            const char *bad = (optind > 0 && optind <= argc) ? argv[optind - 1] : "?";
            if (optopt >= 256 && optopt - 256 < (int)spec->n_entries) {
                return xc_errf(XC_ERR_ARG, "--%s needs a value", spec->entries[optopt - 256].name);
            }
            return xc_errf(XC_ERR_ARG, "unknown option %s (see --help)", bad);
        }
        const xc_conf_entry *e = &spec->entries[c - 256];
        if (e->type == XC_CONF_T_LIST && !cleared[c - 256]) {
            /* flags replace an environment list rather than append to it */
            memset((char *)obj + e->offset, 0, sizeof(xc_conf_list));
            cleared[c - 256] = true;
        }
        char src[80];
        snprintf(src, sizeof src, "--%s", e->name);
        XC_TRY(set_value(e, obj, e->type == XC_CONF_T_BOOL ? "1" : optarg, src));
    }
    if (first_positional) {
        *first_positional = optind;
    } else if (optind < argc) {
        return xc_errf(XC_ERR_ARG, "unexpected argument '%s' (see --help)", argv[optind]);
    }
    return XC_OK;
}
