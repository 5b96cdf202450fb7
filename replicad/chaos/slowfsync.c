/* A slow disk for the chaos runs' fsync fault (replicad/chaos/fsyncs.py): preloaded
 * into a replica (LD_PRELOAD), it makes every fsync and fdatasync of the process,
 * SQLite's included, first sleep as many milliseconds as the file named by
 * $SLOWFSYNC_DELAY_FILE says (read at each call; 0, no file or no number: no delay).
 * The sync itself then runs as usual: the data is as durable as without it, later.
 * A file that says "EIO" makes every sync fail instead, with EIO and without syncing,
 * as a failing disk's does (what was written stays in the page cache).  One that says
 * "EIOREAD" makes every pread fail with EIO instead (SQLite reads its pages with
 * pread64: a page not in its cache is then a bad sector), and syncs run as usual. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>

enum setting { AS_USUAL, FAIL_SYNCS, FAIL_READS };

/* What the setting file says; a delay is written to *ms (0: none). */
static enum setting read_setting(double *ms) {
    *ms = 0;
    const char *path = getenv("SLOWFSYNC_DELAY_FILE");
    if (path == NULL) return AS_USUAL;
    FILE *f = fopen(path, "r");
    if (f == NULL) return AS_USUAL;
    char text[32] = {0};
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = 0;
    text[strcspn(text, " \t\r\n")] = 0;
    if (strcmp(text, "EIO") == 0) return FAIL_SYNCS;
    if (strcmp(text, "EIOREAD") == 0) return FAIL_READS;
    *ms = strtod(text, NULL);
    return AS_USUAL;
}

/* 0: sync; -1: fail with EIO. */
static int stall(void) {
    double ms;
    if (read_setting(&ms) == FAIL_SYNCS) return -1;
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

/* 1: this read fails with EIO. */
static int read_fails(void) {
    double ms;
    return read_setting(&ms) == FAIL_READS;
}

ssize_t pread64(int fd, void *buf, size_t count, off_t offset) {
    static ssize_t (*real)(int, void *, size_t, off_t);
    if (real == NULL) real = (ssize_t (*)(int, void *, size_t, off_t))dlsym(RTLD_NEXT, "pread64");
    if (read_fails()) {
        errno = EIO;
        return -1;
    }
    return real(fd, buf, count, offset);
}

ssize_t pread(int fd, void *buf, size_t count, off_t offset) {
    return pread64(fd, buf, count, offset);
}
