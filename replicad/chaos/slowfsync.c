/* A slow disk for the chaos runs' fsync fault (replicad/chaos/fsyncs.py): preloaded
 * into a replica (LD_PRELOAD), it makes every fsync and fdatasync of the process,
 * SQLite's included, first sleep as many milliseconds as the file named by
 * $SLOWFSYNC_DELAY_FILE says (read at each call; 0, no file or no number: no delay).
 * The sync itself then runs as usual: the data is as durable as without it, later.
 * A file that says "EIO" makes every sync fail instead, with EIO and without syncing,
 * as a failing disk's does (what was written stays in the page cache). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* 0: sync; -1: fail with EIO. */
static int stall(void) {
    const char *path = getenv("SLOWFSYNC_DELAY_FILE");
    if (path == NULL) return 0;
    FILE *f = fopen(path, "r");
    if (f == NULL) return 0;
    char text[32] = {0};
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = 0;
    if (strncmp(text, "EIO", 3) == 0) return -1;
    double ms = strtod(text, NULL);
    if (ms <= 0) return 0;
    struct timespec left;
    left.tv_sec = (time_t)(ms / 1000);
    left.tv_nsec = (long)((ms - 1000.0 * (double)left.tv_sec) * 1e6);
    while (nanosleep(&left, &left) != 0) {}   /* a signal: sleep what is left */
    return 0;
}

/* The real sync, after the stall, or EIO without it. */
static int sync_after_stall(int (*real)(int), int fd) {
    if (stall() < 0) {
        errno = EIO;
        return -1;
    }
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return sync_after_stall(real, fd);
}

int fsync(int fd) {
    static int (*real)(int);
    if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return sync_after_stall(real, fd);
}
