/* xc_cpu_matmul.c: being written (kernels). */
