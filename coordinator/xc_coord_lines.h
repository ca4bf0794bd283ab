/* A line protocol in front of xc_coord for scripts and tests (the HTTP API comes separately):
 * one request per input line, one answer line per request on the output.
 *
 *   NAME key=value ...   keys: ids=1,2,img,3 (img = one image slot), pixels=F1,F2 (raw float32
 *                        (3, S, S) files, one per slot), max=N, greedy=0|1, temp=X, top_p=X,
 *                        top_k=N, rep=X, seed=N, stop=ID,ID
 *   #ready               answers "#ready 1" or "#ready 0"
 *   #wait-ready SECONDS  answers "#ready 1" once ready, or "#ready 0" after SECONDS
 *   #sync                answers "#sync" once every earlier request has ended
 *
 * Answers: "NAME ok T1 T2 ... [stop]" or "NAME error STATUS [retryable] message". */
#pragma once

#include <stdio.h>

#include "xc_coord.h"

/* Reads lines from in until EOF (or #quit), then waits for every request to end. Answers go to
 * out (flushed per line). Returns the number of requests that ended in an error. */
int xc_coord_lines_run(xc_coord *c, FILE *in, FILE *out);
