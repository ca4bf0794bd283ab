/* Test tool: sends bad frames to a mailbox endpoint: random bytes, a truncated header, a header
 * of protocol version 2, a forward with too few tensor frames, and a well-formed forward whose
 * block ids are past any KV cache. Exits 0 once all are sent. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xc_mem.h"
#include "xc_transport.h"

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: xc_garbage ENDPOINT\n");
        return 2;
    }
    xc_transport *tx = NULL;
    if (xc_transport_open(argv[1], XC_TRANSPORT_SEND, NULL, &tx) != XC_OK) {
        fprintf(stderr, "xc_garbage: %s\n", xc_err_last());
        return 1;
    }
    int rc = 0;
    /* 1: random bytes */
    unsigned char junk[97];
    srand(7);
    for (size_t i = 0; i < sizeof junk; i++) {
        junk[i] = (unsigned char)rand();
    }
    xc_frame f1 = {.data = junk, .len = sizeof junk};
    rc |= xc_transport_send(tx, &f1, 1, 2000) != XC_OK;
    /* 2: a valid forward header, truncated; 3: the same header with version 2 */
    static const uint32_t bt[1] = {999999};
    xc_wire_seq s = {.id = 5, .first_pos = 0, .n_tokens = 2, .n_blocks = 1, .block_table = bt};
    xc_wire_msg m = {.kind = XC_WIRE_KIND_FORWARD,
                     .u.forward = {.microbatch_id = 77,
                                   .kv_block_size = 16,
                                   .n_seqs = 1,
                                   .seqs = &s,
                                   .payload = {.dtype = XC_DTYPE_I32, .rows = 2, .cols = 1}}};
    void *hdr = NULL;
    size_t len = 0;
    if (xc_wire_encode_unchecked(&m, XC_WIRE_VERSION, &hdr, &len) == XC_OK) {
        int32_t ids[2] = {1, 2};
        xc_frame f2[2] = {{.data = hdr, .len = len / 2}, {.data = ids, .len = sizeof ids}};
        rc |= xc_transport_send(tx, f2, 2, 2000) != XC_OK;
        /* 4: the whole header but no payload frame */
        xc_frame f4 = {.data = hdr, .len = len};
        rc |= xc_transport_send(tx, &f4, 1, 2000) != XC_OK;
        xc_free(hdr);
    }
    if (xc_wire_encode_unchecked(&m, 2, &hdr, &len) == XC_OK) {
        int32_t ids[2] = {1, 2};
        xc_frame f3[2] = {{.data = hdr, .len = len}, {.data = ids, .len = sizeof ids}};
        rc |= xc_transport_send(tx, f3, 2, 2000) != XC_OK;
        xc_free(hdr);
    }
    /* 5: well-formed, but block 999999 exists nowhere (a worker must refuse, not crash) */
    int32_t ids[2] = {1, 2};
    xc_frame f5 = {.data = ids, .len = sizeof ids};
    rc |= xc_transport_send_wire(tx, &m, &f5, 1, 2000) != XC_OK;
    xc_transport_close(tx);
    if (rc) {
        fprintf(stderr, "xc_garbage: a send failed: %s\n", xc_err_last());
    }
    return rc;
}
