/*
 * attune-init: pid 1 of every sandbox (bwrap --as-pid-1 runs it as the sandbox's init).
 *
 *     /attune-init [--result-fd=N --result-max=BYTES --] command [args...]
 *
 * Why it exists: bwrap's own init runs as the action's uid in the action's user
 * namespace and is dumpable, so an action could open /proc/1/mem read-write and run
 * code there. This init makes itself non-dumpable before anything of the action runs:
 * its /proc/1/{mem,environ,fd,...} then belong to the host's root and the action can
 * neither read nor write them; signals from inside the pid namespace to its init are
 * dropped by the kernel unless a handler is installed, and none is.
 *
 * What it does: PR_SET_DUMPABLE 0, fork, exec the command in the child, reap every
 * process reparented to it, and exit as soon as the command's own process ends: with
 * its exit code, or 128 + N when signal N killed it (bwrap's convention). Its exit tears
 * the pid namespace down, so daemons the action left behind die with it. It inherits
 * the run's rlimits, seccomp filter and parent-death signal from the spawn chain. A
 * parked sandbox (warm pool) would run it unchanged: the command is then a wrapper that
 * blocks on a pipe until its action arrives.
 *
 * The result channel (`--result-fd`, runs whose action defines run()): N is the write
 * end of a pipe the worker made for this run, passed down the spawn chain; the worker
 * reads the other end (attune/runner/resultpipe.py). It is marked close-on-exec before
 * the fork, so no process of the action ever holds it: the action has fds 0, 1 and 2
 * only, and /proc/1/fd is closed to it (non-dumpable). When the command's process has
 * ended, everything else in the namespace is SIGKILLed and reaped, so nothing can still
 * change /attune/out; then /attune/out/result.json (a file on the run's own sized tmpfs,
 * where the wrapper wrote the report) is opened without following a symlink or
 * blocking, and forwarded only if it is a regular file, at most BYTES + 1 bytes (one
 * more than the worker keeps, so it can tell "too large"). A symlink, FIFO, directory,
 * device or a missing file forwards nothing. The fd number and the limit are the only
 * things on this command line (/proc/1/cmdline is readable by the action).
 *
 * Built by scripts/setup; dynamically linked against the libc the sandbox binds from /usr
 * (a few KiB, copied into each sandbox by bwrap).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define FAILED 127
#define RESULT_PATH "/attune/out/result.json"
#define FD_OPT "--result-fd="
#define MAX_OPT "--result-max="

static long long number(const char *text, long long max)
{
    char *end;
    long long value;

    errno = 0;
    value = strtoll(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || value < 0 || value > max)
        return -1;
    return value;
}

/* Write all of it; 0 on success, -1 once the reader is gone (EPIPE) or on any error. */
static int write_all(int fd, const char *data, size_t size)
{
    struct pollfd ready = {.fd = fd, .events = POLLOUT};
    ssize_t n;

    while (size > 0) {
        n = write(fd, data, size);
        if (n > 0) {
            data += n;
            size -= (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && errno == EAGAIN) {
            if (poll(&ready, 1, -1) < 0 && errno != EINTR)
                return -1;
        } else {
            return -1;
        }
    }
    return 0;
}

/* Copy at most `limit` bytes of the report file to `out`, if it is a regular file. */
static void forward_result(int out, long long limit)
{
    static char buf[64 * 1024];
    struct stat st;
    ssize_t n;
    int fd;

    fd = open(RESULT_PATH, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
        while (limit > 0) {
            n = read(fd, buf, limit < (long long)sizeof buf ? (size_t)limit : sizeof buf);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0 || write_all(out, buf, (size_t)n) != 0)
                break;
            limit -= n;
        }
    }
    close(fd);
}

int main(int argc, char **argv)
{
    pid_t child, pid;
    int status, code, first = 1, result_fd = -1;
    long long result_max = -1;

    for (; first < argc; first++) {
        if (strncmp(argv[first], FD_OPT, strlen(FD_OPT)) == 0) {
            result_fd = (int)number(argv[first] + strlen(FD_OPT), INT_MAX);
            if (result_fd < 0)
                break;
        } else if (strncmp(argv[first], MAX_OPT, strlen(MAX_OPT)) == 0) {
            result_max = number(argv[first] + strlen(MAX_OPT), LLONG_MAX - 1);
            if (result_max < 0)
                break;
        } else {
            if (strcmp(argv[first], "--") == 0)
                first++;
            break;
        }
    }
    if (first < argc && strncmp(argv[first], "--result-", 9) == 0) {
        fprintf(stderr, "attune-init: bad option %s\n", argv[first]);
        return FAILED;
    }
    if ((result_fd < 0) != (result_max < 0)) {
        fputs("attune-init: --result-fd and --result-max go together\n", stderr);
        return FAILED;
    }
    if (first >= argc) {
        fputs("attune-init: no command\n", stderr);
        return FAILED;
    }
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) {
        perror("attune-init: PR_SET_DUMPABLE");
        return FAILED;
    }
    /* The action's tree never inherits the channel: close-on-exec before the fork. */
    if (result_fd >= 0 && fcntl(result_fd, F_SETFD, FD_CLOEXEC) != 0) {
        perror("attune-init: --result-fd");
        return FAILED;
    }
    child = fork();
    if (child < 0) {
        perror("attune-init: fork");
        return FAILED;
    }
    if (child == 0) {
        /* execve makes the command dumpable again: the action's own tree stays its own. */
        execvp(argv[first], argv + first);
        fprintf(stderr, "attune-init: cannot run %s: %s\n", argv[first], strerror(errno));
        _exit(FAILED);
    }
    /* A worker that stopped reading makes write() fail with EPIPE, never kill us. Set
     * after the fork: an ignored disposition would survive the action's execve. */
    signal(SIGPIPE, SIG_IGN);
    for (;;) {
        pid = wait(&status);
        if (pid < 0) {
            if (errno == EINTR)
                continue;
            return FAILED;
        }
        if (pid != child)
            continue; /* an orphan reparented to us: reaped, nothing more */
        if (WIFEXITED(status)) {
            code = WEXITSTATUS(status);
            break;
        }
        if (WIFSIGNALED(status)) {
            code = 128 + WTERMSIG(status);
            break;
        }
    }
    if (result_fd >= 0) {
        /* Nothing may write /attune/out while it is read: kill the rest and reap it all
         * (every process of the namespace is our descendant; ECHILD means none is left).
         * Only as pid 1 of a pid namespace: anywhere else kill(-1) would reach far more
         * than the sandbox. */
        if (getpid() == 1) {
            kill(-1, SIGKILL);
            while (wait(NULL) >= 0 || errno == EINTR)
                ;
        }
        forward_result(result_fd, result_max + 1);
        close(result_fd);
    }
    return code;
}
