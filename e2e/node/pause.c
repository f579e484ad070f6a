/*
 * The pod sandbox's process (what Kubernetes's pause image runs): it holds the pod's namespaces
 * open while the pod's containers come and go. As PID 1 of the sandbox it must reap the orphans
 * re-parented to it, and exit on SIGINT or SIGTERM (PID 1 has no default signal handlers, so
 * without them the runtime would wait out its timeout and SIGKILL it). Built static, so the image
 * is this one file.
 */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int signal_number) {
  (void)signal_number;
  _exit(0);
}

static void on_child(int signal_number) {
  (void)signal_number;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  struct sigaction stop = {.sa_handler = on_stop};
  struct sigaction child = {.sa_handler = on_child, .sa_flags = SA_NOCLDSTOP | SA_RESTART};
  if (sigaction(SIGINT, &stop, NULL) < 0 || sigaction(SIGTERM, &stop, NULL) < 0 ||
      sigaction(SIGCHLD, &child, NULL) < 0) {
    return 1;
  }
  for (;;) {
    pause();
  }
}
