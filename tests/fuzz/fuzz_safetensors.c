/* libFuzzer harness: arbitrary bytes as a safetensors file. Every tensor
 * of an accepted file must lie inside the input (ASan checks the first and last byte). */
#include <stddef.h>
#include <stdint.h>

#include "xc_ckpt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    xc_ckpt *ck = NULL;
    if (xc_ckpt_open_mem(data, size, XC_CKPT_FORMAT_SAFETENSORS, &ck) != XC_OK) {
        return 0;
    }
    volatile unsigned char sink = 0;
    for (size_t i = 0; i < xc_ckpt_count(ck); i++) {
        xc_tensor_view v;
        if (xc_ckpt_get(ck, xc_ckpt_name(ck, i), &v) != XC_OK) {
            __builtin_trap(); /* listed tensors must always be gettable */
        }
        if (v.nbytes > 0) {
            const unsigned char *p = v.data;
            if (p < data || p + v.nbytes > data + size) {
                __builtin_trap();
            }
            sink ^= p[0] ^ p[v.nbytes - 1];
        }
    }
    (void)sink;
    xc_ckpt_close(ck);
    return 0;
}
