/* libFuzzer: the SentencePiece model-file reader and tokenizer construction on arbitrary bytes;
 * a model that loads must then encode and decode without trouble. */
#include <stdlib.h>
#include <string.h>

#include "xc_mem.h"
#include "xc_tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    xc_tokenizer *tok = NULL;
    if (xc_tokenizer_create(data, size, &tok) != XC_OK) {
        return 0;
    }
    static const char text[] = "Hello  wörld\n[UNUSED_TOKEN_146]user\n你好 \xff\xe4\xb8 😀";
    xc_tokens ids = {0};
    if (xc_tokenizer_encode(tok, text, sizeof text - 1, &ids) != XC_OK) {
        abort();
    }
    size_t vocab = xc_tokenizer_vocab_size(tok);
    for (size_t i = 0; i < ids.n; i++) {
        if (ids.ids[i] < 0 || (size_t)ids.ids[i] >= vocab) {
            abort();
        }
    }
    char *out = NULL;
    size_t len;
    if (xc_tokenizer_decode(tok, ids.ids, ids.n, &out, &len) != XC_OK) {
        abort();
    }
    xc_free(out);
    xc_tokenizer_tokens_fini(&ids);
    xc_tokenizer_destroy(tok);
    return 0;
}
