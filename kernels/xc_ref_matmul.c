/* The naive matmul reference: plain loops, products and sums in double, one rounding at the end. */
#include "cpu/xc_cpu_impl.h"
#include "xc_dtype.h"
#include "xc_ref.h"

xc_status xc_ref_matmul(const xc_matmul_args *a) {
    XC_TRY(xc_cpu_matmul_check(a));
    size_t ldx = a->ldx ? (size_t)a->ldx : (size_t)a->k;
    size_t ldy = a->ldy ? (size_t)a->ldy : (size_t)a->n;
    double alpha = a->alpha == 0.0f ? 1.0 : (double)a->alpha;
    for (int i = 0; i < a->m; i++) {
        const float *x = a->x + (size_t)i * ldx;
        float *y = a->y + (size_t)i * ldy;
        for (int j = 0; j < a->n; j++) {
            double s = 0.0;
            for (int kk = 0; kk < a->k; kk++) {
                double w = xc_load_f32(a->w, a->w_dtype, (size_t)j * (size_t)a->k + (size_t)kk);
                s += (double)x[kk] * w;
            }
            double v = alpha * s;
            if (a->bias) {
                v += xc_load_f32(a->bias, a->bias_dtype, (size_t)j);
            }
            if (a->accumulate) {
                v += y[j];
            }
            y[j] = (float)v;
        }
    }
    return XC_OK;
}
