/*
 * attune-init: pid 1 of every sandbox (bwrap --as-pid-1 runs it as the sandbox's init).
 *
 * Why it exists: bwrap's own init runs as the action's uid in the action's user
 * namespace and is dumpable, so an action could open /proc/1/mem read-write and run
 * code there. This init makes itself non-dumpable before anything of the action runs:
 * its /proc/1/{mem,environ,fd,...} then belong to the host's root and the action can
 * neither read nor write them; signals from inside the pid namespace to its init are
 * dropped by the kernel unless a handler is installed, and none is.
 *
 * What it does, and nothing else: PR_SET_DUMPABLE 0, fork, exec the command (argv[1..])
 * in the child, reap every process reparented to it, and exit as soon as the command's
 * own process ends: with its exit code, or 128 + N when signal N killed it (bwrap's
 * convention). Its exit tears the pid namespace down, so daemons the action left
 * behind die with it. It inherits the run's rlimits, seccomp filter and parent-death
 * signal from the spawn chain. A parked sandbox (warm pool) would run it unchanged: the
 * command is then a wrapper that blocks on a pipe until its action arrives.
 *
 * Built by scripts/setup; dynamically linked against the libc the sandbox binds from /usr
 * (a few KiB, copied into each sandbox by bwrap).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#define FAILED 127

int main(int argc, char **argv)
{
    pid_t child, pid;
    int status;

    if (argc < 2) {
        fputs("attune-init: no command\n", stderr);
        return FAILED;
    }
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) {
        perror("attune-init: PR_SET_DUMPABLE");
        return FAILED;
    }
    child = fork();
    if (child < 0) {
        perror("attune-init: fork");
        return FAILED;
    }
    if (child == 0) {
        /* execve makes the command dumpable again: the action's own tree stays its own. */
        execvp(argv[1], argv + 1);
        fprintf(stderr, "attune-init: cannot run %s: %s\n", argv[1], strerror(errno));
        _exit(FAILED);
    }
    for (;;) {
        pid = wait(&status);
        if (pid < 0) {
            if (errno == EINTR)
                continue;
            return FAILED;
        }
        if (pid != child)
            continue; /* an orphan reparented to us: reaped, nothing more */
        if (WIFEXITED(status))
            return WEXITSTATUS(status);
        if (WIFSIGNALED(status))
            return 128 + WTERMSIG(status);
    }
}
