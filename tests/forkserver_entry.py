"""The step a test fork server runs instead of segbench's CLI (tests/test_forkserver.py):
each argv names one behaviour of a process whose outcome a test can observe."""

import os
import signal
import sys
import threading
import time

# a slow import, as the real server's (torch, mlflow, ...) takes seconds
time.sleep(float(os.environ.get("FORKSERVER_ENTRY_IMPORT_DELAY", "0")))


def run(argv):
    cmd, *args = argv
    if cmd == "echo":
        print(" ".join(args))
        print("to stderr", file=sys.stderr)
        return 0
    if cmd == "where":  # cwd, umask, one variable, the pid and the session
        mask = os.umask(0)
        os.umask(mask)
        print(os.getcwd(), oct(mask), os.environ.get(args[0]), os.getpid(), os.getsid(0), sep="\n")
        return 0
    if cmd == "stdin":
        print(sys.stdin.read().upper(), end="")
        return 0
    if cmd == "exit":
        return int(args[0])
    if cmd == "sysexit":
        sys.exit(args[0])  # a message: printed, status 1
    if cmd == "raise":
        raise ValueError("boom from the job")
    if cmd == "kill":
        sys.stdout.write("partial output\n")
        sys.stdout.flush()
        os.kill(os.getpid(), int(args[0]))
        time.sleep(5)
        return 0
    if cmd == "finish":  # a non-daemon thread and an atexit handler, as at interpreter exit
        import atexit

        def late():
            time.sleep(0.3)
            with open(args[0], "a") as f:
                f.write("thread\n")
        threading.Thread(target=late).start()
        atexit.register(lambda: open(args[0], "a").write("atexit\n"))
        return 0
    if cmd == "wait":  # write the pid (and a grandchild's), then wait for a signal
        grandchild = os.fork()
        if grandchild == 0:
            time.sleep(120)
            os._exit(0)

        def on_term(signum, _frame):
            with open(args[0] + ".signal", "w") as f:
                f.write(str(signum))
            sys.exit(7)
        signal.signal(signal.SIGTERM, on_term)
        with open(args[0] + ".tmp", "w") as f:
            f.write(f"{os.getpid()} {grandchild}")
        os.replace(args[0] + ".tmp", args[0])
        time.sleep(120)
        return 0
    raise SystemExit(f"forkserver_entry: unknown command {cmd!r}")
