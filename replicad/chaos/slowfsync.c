/* A slow disk for the chaos runs' fsync fault (replicad/chaos/fsyncs.py): preloaded
 * into a replica (LD_PRELOAD), it makes every fsync and fdatasync of the process,
 * SQLite's included, first sleep as many milliseconds as the file named by
 * $SLOWFSYNC_DELAY_FILE says (read at each call; 0, no file or no number: no delay).
 * The sync itself then runs as usual: the data is as durable as without it, later. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static void stall(void) {
    const char *path = getenv("SLOWFSYNC_DELAY_FILE");
    if (path == NULL) return;
    FILE *f = fopen(path, "r");
    if (f == NULL) return;
    double ms = 0;
    if (fscanf(f, "%lf", &ms) != 1) ms = 0;
    fclose(f);
    if (ms <= 0) return;
    struct timespec left;
    left.tv_sec = (time_t)(ms / 1000);
    left.tv_nsec = (long)((ms - 1000.0 * (double)left.tv_sec) * 1e6);
    while (nanosleep(&left, &left) != 0) {}   /* a signal: sleep what is left */
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    stall();
    return real(fd);
}

int fsync(int fd) {
    static int (*real)(int);
    if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    stall();
    return real(fd);
}
