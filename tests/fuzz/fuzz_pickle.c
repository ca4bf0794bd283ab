/* libFuzzer harness: arbitrary bytes through the restricted unpickler alone (no zip around it),
 * so the fuzzer spends its time on opcodes. Results must be well-formed tensor records. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "xc_pickle.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    xc_arena *a = NULL;
    if (xc_arena_create(1 << 12, &a) != XC_OK) {
        return 0;
    }
    xc_pickle_tensor *ts = NULL;
    size_t n = 0;
    if (xc_pickle_load_state_dict(data, size, a, &ts, &n) == XC_OK) {
        for (size_t i = 0; i < n; i++) {
            if (!ts[i].name || !ts[i].storage_key || ts[i].ndim < 0 ||
                ts[i].ndim > XC_CKPT_MAX_DIMS || xc_dtype_size(ts[i].dtype) == 0 ||
                ts[i].storage_numel < 0 || ts[i].offset < 0) {
                __builtin_trap();
            }
            (void)strlen(ts[i].name);
            (void)strlen(ts[i].storage_key);
        }
    }
    xc_arena_destroy(a);
    return 0;
}
