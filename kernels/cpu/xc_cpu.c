/* xc_cpu.c: being written (kernels). */
