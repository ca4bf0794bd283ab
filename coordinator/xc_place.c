/* Placement cost model: exact min-max contiguous split by DP, and the choice of P and R. */
#include "xc_place.h"

#include <ctype.h>
#include <float.h>
#include <stdbool.h>
#include <string.h>

#include "xc_mem.h"

static double range_time(const xc_place_model *m, int a, int b) {
    double t = (double)(b - a) * m->layer_time;
    if (a == 0) {
        t += m->first_time;
    }
    if (b == m->n_layers) {
        t += m->last_time;
    }
    return t;
}

static bool split_even(const xc_place_model *m) {
    return m->attn_time == 0 && m->ffn_time == 0;
}

double xc_place_unit_time(const xc_place_model *m, int u) {
    if (split_even(m)) {
        return m->layer_time / 2;
    }
    return u % 2 == 0 ? m->attn_time : m->ffn_time;
}

double xc_place_unit_bytes(const xc_place_model *m, int u) {
    if (m->attn_bytes == 0 && m->ffn_bytes == 0) {
        return m->layer_bytes / 2;
    }
    return u % 2 == 0 ? m->attn_bytes : m->ffn_bytes;
}

int xc_place_attn_units(int ua, int ub) {
    return ub > ua ? (ub + 1) / 2 - (ua + 1) / 2 : 0; /* even u in [ua, ub) */
}

/* Units [a, b): their times summed in order, + the embedding (a == 0) and head (b == all). */
static double unit_range_time(const xc_place_model *m, int a, int b) {
    double t = 0;
    for (int u = a; u < b; u++) {
        t += xc_place_unit_time(m, u);
    }
    if (a == 0) {
        t += m->first_time;
    }
    if (b == 2 * m->n_layers) {
        t += m->last_time;
    }
    return t;
}

/* Exact min-max split of n items into P non-empty contiguous ranges; cost(m, a, b) of a range. */
static xc_status dp_split(const xc_place_model *m, int L, int P,
                          double (*cost)(const xc_place_model *, int, int), int *bounds,
                          double *max_time) {
    /* best[k][j]: least max time of layers [0, j) in k stages; from[k][j]: where stage k-1 starts
     */
    size_t n = (size_t)(P + 1) * (size_t)(L + 1);
    double *best = xc_malloc(n * sizeof(double));
    int *from = xc_malloc(n * sizeof(int));
    if (!best || !from) {
        xc_free(best);
        xc_free(from);
        return XC_ERR_NOMEM;
    }
#define AT(k, j) ((size_t)(k) * (size_t)(L + 1) + (size_t)(j))
    for (size_t i = 0; i < n; i++) {
        best[i] = DBL_MAX;
        from[i] = -1;
    }
    best[AT(0, 0)] = 0;
    for (int k = 1; k <= P; k++) {
        for (int j = k; j <= L - (P - k); j++) {
            for (int i = k - 1; i < j; i++) {
                if (best[AT(k - 1, i)] == DBL_MAX) {
                    continue;
                }
                double t = cost(m, i, j);
                double v = best[AT(k - 1, i)] > t ? best[AT(k - 1, i)] : t;
                if (v < best[AT(k, j)]) {
                    best[AT(k, j)] = v;
                    from[AT(k, j)] = i;
                }
            }
        }
    }
    bounds[P] = L;
    for (int k = P, j = L; k > 0; k--) {
        j = from[AT(k, j)];
        bounds[k - 1] = j;
    }
    if (max_time) {
        *max_time = best[AT(P, L)];
    }
#undef AT
    xc_free(best);
    xc_free(from);
    return XC_OK;
}

xc_status xc_place_split(const xc_place_model *m, int P, int *bounds, double *max_time) {
    int L = m->n_layers;
    if (P < 1 || P > L || P > XC_PLACE_MAX_STAGES) {
        return xc_errf(XC_ERR_ARG, "cannot cut %d layers into %d stages", L, P);
    }
    return dp_split(m, L, P, range_time, bounds, max_time);
}

xc_status xc_place_split_units(const xc_place_model *m, int P, int *ubounds, double *max_time) {
    int U = 2 * m->n_layers;
    if (P < 1 || P > U || P > XC_PLACE_MAX_STAGES) {
        return xc_errf(XC_ERR_ARG, "cannot cut %d layers (%d units) into %d stages", m->n_layers, U,
                       P);
    }
    return dp_split(m, U, P, unit_range_time, ubounds, max_time);
}

double xc_place_unit_stage_bytes(const xc_place_model *m, int ua, int ub, int P, int stage) {
    double by = 0;
    for (int u = ua; u < ub; u++) {
        by += xc_place_unit_bytes(m, u);
    }
    by += xc_place_attn_units(ua, ub) * m->kv_bytes_layer * m->kv_budget_tokens;
    if (stage == 0) {
        by += m->embed_bytes;
    }
    if (stage == P - 1) {
        by += m->head_bytes;
    }
    return by;
}

double xc_place_stage_bytes(const xc_place_model *m, int a, int b, int P, int stage) {
    double by = (double)(b - a) * (m->layer_bytes + m->kv_bytes_layer * m->kv_budget_tokens);
    if (stage == 0) {
        by += m->embed_bytes;
    }
    if (stage == P - 1) {
        by += m->head_bytes;
    }
    return by;
}

static bool fits(const xc_place_model *m, int P, double mem) {
    int b[XC_PLACE_MAX_STAGES + 1];
    if (xc_place_split_units(m, P, b, NULL) != XC_OK) {
        return false;
    }
    for (int k = 0; k < P; k++) {
        if (xc_place_unit_stage_bytes(m, b[k], b[k + 1], P, k) > mem) {
            return false;
        }
    }
    return true;
}

xc_status xc_place_shape(const xc_place_model *m, const uint64_t *mem, int n_workers, int fixed_P,
                         int fixed_R, int *P, int *R) {
    if (n_workers < 1) {
        return xc_errf(XC_ERR_ARG, "placement: no decoder workers");
    }
    double smallest = DBL_MAX;
    for (int i = 0; i < n_workers; i++) {
        smallest = (double)mem[i] < smallest ? (double)mem[i] : smallest;
    }
    int p = fixed_P;
    if (p <= 0) {
        int hi = n_workers < 2 * m->n_layers ? n_workers : 2 * m->n_layers;
        if (fixed_R > 0 && n_workers / fixed_R < hi) {
            hi = n_workers / fixed_R;
        }
        for (p = 1; p <= hi && p <= XC_PLACE_MAX_STAGES; p++) {
            if (fits(m, p, smallest)) {
                break;
            }
        }
        if (p > hi || p > XC_PLACE_MAX_STAGES) {
            return xc_errf(XC_ERR_ARG,
                           "placement: the model does not fit %d workers of %.0f MiB (weights + "
                           "KV budget of %.0f tokens)",
                           n_workers, smallest / 1048576.0, m->kv_budget_tokens);
        }
    } else if (p > 2 * m->n_layers || p > XC_PLACE_MAX_STAGES) {
        return xc_errf(XC_ERR_ARG, "placement: %d stages for %d layers (%d units)", p, m->n_layers,
                       2 * m->n_layers);
    }
    int r = fixed_R > 0 ? fixed_R : n_workers / p;
    if (r < 1 || r * p > n_workers) {
        return xc_errf(XC_ERR_ARG,
                       "placement: %d replicas x %d stages need %d decoder workers, %d "
                       "registered",
                       r < 1 ? 1 : r, p, (r < 1 ? 1 : r) * p, n_workers);
    }
    *P = p;
    *R = r;
    return XC_OK;
}

/* ---- roles ---- */

int xc_place_id_cmp(const char *a, const char *b) {
    const char *a0 = a, *b0 = b;
    while (*a && *b) {
        if (isdigit((unsigned char)*a) && isdigit((unsigned char)*b)) {
            // compare the digit runs as numbers: skip leading zeros, then the longer run is
            // larger, then the first differing digit decides
            while (*a == '0' && isdigit((unsigned char)a[1])) {
                a++;
            }
            while (*b == '0' && isdigit((unsigned char)b[1])) {
                b++;
            }
            size_t na = 0, nb = 0;
            while (isdigit((unsigned char)a[na])) {
                na++;
            }
            while (isdigit((unsigned char)b[nb])) {
                nb++;
            }
            if (na != nb) {
                return na < nb ? -1 : 1;
            }
            int d = memcmp(a, b, na);
            if (d) {
                return d;
            }
            a += na;
            b += nb;
            continue;
        }
        if (*a != *b) {
            return (unsigned char)*a < (unsigned char)*b ? -1 : 1;
        }
        a++;
        b++;
    }
    if (*a || *b) {
        return *a ? 1 : -1;
    }
    return strcmp(a0, b0); /* equal but for leading zeros: still a total order */
}

xc_status xc_place_roles(const xc_place_worker *w, int n, bool need_vision, int *vision, int *order,
                         int *n_dec) {
    if (n < 0) {
        return xc_errf(XC_ERR_ARG, "placement: %d workers", n);
    }
    int v = -1;
    if (need_vision) {
        for (int i = 0; i < n; i++) {
            if (w[i].want == XC_PLACE_VISION && (v < 0 || xc_place_id_cmp(w[i].id, w[v].id) < 0)) {
                v = i;
            }
        }
        for (int i = 0; i < n && (v < 0 || w[v].want == XC_PLACE_ANY); i++) {
            if (w[i].want == XC_PLACE_ANY &&
                (v < 0 || w[i].mem < w[v].mem ||
                 (w[i].mem == w[v].mem && xc_place_id_cmp(w[i].id, w[v].id) < 0))) {
                v = i;
            }
        }
    }
    int k = 0;
    for (int pass = 0; pass < 2; pass++) {
        xc_place_want want = pass == 0 ? XC_PLACE_STAGE : XC_PLACE_ANY;
        int first = k;
        for (int i = 0; i < n; i++) {
            if (w[i].want == want && i != v) {
                order[k++] = i;
            }
        }
        // insertion sort by name: n is at most a few hundred workers
        for (int a = first + 1; a < k; a++) {
            int x = order[a], b = a;
            for (; b > first && xc_place_id_cmp(w[order[b - 1]].id, w[x].id) > 0; b--) {
                order[b] = order[b - 1];
            }
            order[b] = x;
        }
    }
    *vision = v;
    *n_dec = k;
    return XC_OK;
}
