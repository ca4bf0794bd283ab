/* Transport benchmark: forward-frame throughput of each transport (an xc_wire forward header plus
 * one hidden-state tensor frame, encoded, sent, received and validated per message) against the
 * raw baseline of the same transport moving the same tensor bytes without our framing. */
#pragma once

#include <stddef.h>

#include "xc_status.h"

typedef enum xc_tbench_kind {
    XC_TBENCH_INPROC = 0, /* two threads; raw = libzmq inproc:// PUSH/PULL, zero copy */
    XC_TBENCH_IPC = 1,    /* two processes; raw = libzmq ipc:// PUSH/PULL, zero copy */
    XC_TBENCH_TCP = 2,    /* two processes on 127.0.0.1; raw = libzmq tcp:// PUSH/PULL */
    XC_TBENCH_MPI = 3,    /* ranks 1 -> 0 under mpirun; raw = MPI_Send/MPI_Recv */
} xc_tbench_kind;

/* "inproc", "ipc", "tcp", "mpi". */
const char *xc_tbench_kind_name(xc_tbench_kind kind);

typedef struct xc_tbench_conf {
    size_t frame_bytes; /* tensor frame: rows of 4096 f32, a multiple of 16 KiB */
    int n_msgs;         /* timed messages per run (after one warm-up message) */
    int reps;           /* runs of each (raw, framed), interleaved; the best is kept */
    int hwm;            /* queue depth for both (transport conf hwm, ZMQ_SNDHWM/RCVHWM) */
} xc_tbench_conf;

typedef struct xc_tbench_result {
    double raw_gbps; /* tensor bytes / s, 1e9 */
    double framed_gbps;
    double raw_us; /* microseconds per message */
    double framed_us;
    size_t header_bytes; /* encoded forward header */
    int valid;           /* 0 on ranks other than 0 (MPI): nothing measured there */
} xc_tbench_result;

/* Runs raw and framed for one transport and frame size. IPC and TCP fork a sender process;
 * MPI must run under mpirun with 2 or more ranks (rank 1 sends to rank 0, others idle) and only
 * rank 0 gets valid figures. XC_ERR_UNSUPPORTED for MPI in a build without it, XC_ERR_IO,
 * XC_ERR_NOMEM, XC_ERR_TIMEOUT (a peer stalled for 30 s). */
xc_status xc_tbench_run(xc_tbench_kind kind, const xc_tbench_conf *conf, xc_tbench_result *out);

/* True when this process was started by mpirun (Open MPI's or MPICH's environment is set). */
int xc_tbench_under_mpirun(void);
