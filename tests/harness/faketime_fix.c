/* Preloaded before Debian's libfaketime 0.9.10 by `make test-future`.
 *
 * With --exclude-monotonic (needed: when the monotonic clock is faked, glibc's sem_clockwait,
 * which Python's lock timeouts use, waits for a deadline a year away), libfaketime 0.9.10
 * mistranslates clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, ...) into a negative time and
 * the call fails with EINVAL (libfaketime issue #426): Python >= 3.11's time.sleep does exactly
 * that.  The monotonic clocks are not faked, so such calls go to the kernel unchanged; every
 * other clock still goes through libfaketime.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

typedef int (*clock_nanosleep_fn)(clockid_t, int, const struct timespec *, struct timespec *);

int clock_nanosleep(clockid_t clock_id, int flags, const struct timespec *req,
                    struct timespec *rem) {
    if (clock_id == CLOCK_MONOTONIC || clock_id == CLOCK_BOOTTIME) {
        /* clock_nanosleep returns the error number; the raw syscall sets errno. */
        return syscall(SYS_clock_nanosleep, clock_id, flags, req, rem) == -1 ? errno : 0;
    }
    static clock_nanosleep_fn next;
    if (next == NULL) {
        next = (clock_nanosleep_fn)dlsym(RTLD_NEXT, "clock_nanosleep");
        if (next == NULL) {
            return ENOSYS;
        }
    }
    return next(clock_id, flags, req, rem);
}
