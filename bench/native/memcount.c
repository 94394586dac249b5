/* Counts the bytes a process copies in user space: every memcpy/memmove of BIG bytes or more
 * (and their _chk forms), into a file the bench reads while the process runs.
 * Loaded with LD_PRELOAD by bench/copies.py; MEMCOUNT_DIR names the folder of the counters,
 * one file per process, <pid>.count: two 64-bit counters, bytes and calls. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define BIG 4096

static void *(*real_memcpy)(void *, const void *, size_t);
static void *(*real_memmove)(void *, const void *, size_t);
static uint64_t fallback[2];
static uint64_t *counters = fallback;

static void *slow_copy(void *dst, const void *src, size_t n) {
    volatile unsigned char *d = dst;
    const volatile unsigned char *s = src;
    if (d < s) { for (size_t i = 0; i < n; i++) d[i] = s[i]; }
    else { for (size_t i = n; i > 0; i--) d[i - 1] = s[i - 1]; }
    return dst;
}

__attribute__((constructor)) static void memcount_start(void) {
    real_memcpy = dlsym(RTLD_NEXT, "memcpy");
    real_memmove = dlsym(RTLD_NEXT, "memmove");
    const char *dir = getenv("MEMCOUNT_DIR");
    if (!dir) return;
    char path[4096];
    snprintf(path, sizeof path, "%s/%d.count", dir, (int)getpid());
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || ftruncate(fd, 16) != 0) return;
    void *shared = mmap(NULL, 16, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (shared != MAP_FAILED) counters = shared;
}

static inline void count(size_t n) {
    if (n >= BIG) {
        __atomic_fetch_add(&counters[0], n, __ATOMIC_RELAXED);
        __atomic_fetch_add(&counters[1], 1, __ATOMIC_RELAXED);
    }
}

void *memcpy(void *dst, const void *src, size_t n) {
    count(n);
    return real_memcpy ? real_memcpy(dst, src, n) : slow_copy(dst, src, n);
}

void *memmove(void *dst, const void *src, size_t n) {
    count(n);
    return real_memmove ? real_memmove(dst, src, n) : slow_copy(dst, src, n);
}

void *__memcpy_chk(void *dst, const void *src, size_t n, size_t size) {
    (void)size;
    return memcpy(dst, src, n);
}

void *__memmove_chk(void *dst, const void *src, size_t n, size_t size) {
    (void)size;
    return memmove(dst, src, n);
}
