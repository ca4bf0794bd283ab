/* xc_ref_matmul.c: being written (kernels). */
