/* xc_ref.c: being written (kernels). */
