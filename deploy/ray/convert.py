"""Ray driver for distributed `quickdraw convert`: N workers as Ray tasks, then finalize.

Usage:
  python deploy/ray/convert.py --workers N [--binary PATH] [--num-cpus K] [--task-cpus C]
      [--retries R] [--timeout S] -- <convert args without --worker/--workers>

  python deploy/ray/convert.py --workers 4 --num-cpus 4 -- \\
      --input s3://quickdraw-raw/simplified --output s3://quickdraw-datasets/zoo --shards 8

Runs N Ray tasks; task i runs `BINARY convert ARGS --worker i/N` in a subprocess and captures its
output (a failing task raises with its exit status and stderr). A failed task is run again up to
R more times (default 2): re-running a worker is safe, it rewrites the same shards and writes its
partial manifest last. When every worker has succeeded, the driver runs
`BINARY convert --finalize --output OUT` here, prints its output and exits with its status; when
a worker still fails after its retries, it names the worker and exits 1 without finalizing.

Ray: with RAY_ADDRESS set, the driver joins that cluster (`ray.init(address=...)`; --num-cpus is
then the cluster's business); otherwise it starts a local instance with --num-cpus CPUs (default:
all). Each task reserves --task-cpus CPUs (default 1) and runs the converter with as many threads
(RAYON_NUM_THREADS). On a cluster, BINARY must exist at the same path on every node, and relative
--input/--output paths resolve against the driver's working directory when a node has it: prefer
absolute paths or object-store URLs there. The object-store settings (AWS_*, GOOGLE_*, AZURE_*)
that are set in the driver's environment are passed on to the tasks (as task arguments).
Ray 2.60 enables token authentication by default: to join a cluster started with `ray start`,
give the driver the cluster's token (RAY_AUTH_TOKEN, or ~/.ray/auth_token) and RAY_AUTH_MODE=token.
"""
import argparse
import logging
import os
import shutil
import subprocess
import sys
import time

import ray

# Object-store settings forwarded to the tasks (a remote node does not inherit the driver's
# environment).
FORWARD_PREFIXES = ("AWS_", "GOOGLE_", "AZURE_", "RUST_LOG", "RUST_BACKTRACE")
TAIL_LINES = 20


class WorkerFailed(RuntimeError):
    """`quickdraw convert --worker i/N` exited non-zero (or could not be started)."""


def tail(text, lines=TAIL_LINES):
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


@ray.remote(max_retries=0)
def convert_worker(binary, args, index, workers, cwd, env, timeout):
    """Runs worker index/workers; returns its captured output, raises WorkerFailed on failure."""
    cmd = [binary, "convert", *args, "--worker", f"{index}/{workers}"]
    run_env = dict(os.environ)
    run_env.update(env)
    run_env.pop("JOB_COMPLETION_INDEX", None)
    start = time.monotonic()
    try:
        proc = subprocess.run(
            cmd,
            cwd=cwd if cwd and os.path.isdir(cwd) else None,
            env=run_env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        raise WorkerFailed(f"worker {index}/{workers}: timed out after {timeout} s: {' '.join(cmd)}\n"
                           f"{tail(e.stderr or '') if isinstance(e.stderr, str) else ''}") from None
    except OSError as e:
        raise WorkerFailed(f"worker {index}/{workers}: cannot run {binary}: {e}") from None
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise WorkerFailed(f"worker {index}/{workers}: exit status {proc.returncode} after {seconds:.1f} s: "
                           f"{' '.join(cmd)}\n--- stderr ---\n{tail(proc.stderr, 200)}")
    return {"index": index, "seconds": seconds, "stdout": proc.stdout, "stderr": proc.stderr,
            "node": ray.util.get_node_ip_address()}


def output_of(args):
    """OUT of `--output OUT`, `--output=OUT`, `-o OUT` or `-oOUT` (the last one given)."""
    out = None
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("--output", "-o") and i + 1 < len(args):
            out = args[i + 1]
            i += 1
        elif a.startswith("--output="):
            out = a[len("--output="):]
        elif a.startswith("-o") and len(a) > 2 and not a.startswith("--"):
            out = a[2:]
        i += 1
    return out


def resolve_binary(binary):
    if os.sep in binary:
        return os.path.abspath(binary)
    found = shutil.which(binary)
    if found:
        return found
    # A checkout's release build, when the binary is not on PATH.
    here = os.path.dirname(os.path.abspath(__file__))
    built = os.path.join(here, "..", "..", "target", "release", binary)
    return os.path.abspath(built) if os.path.isfile(built) else binary


def parse(argv):
    if "--" in argv:
        cut = argv.index("--")
        ours, convert_args = argv[:cut], argv[cut + 1:]
    else:
        ours, convert_args = argv, []
    p = argparse.ArgumentParser(
        prog="convert.py",
        description="Distributed `quickdraw convert` on Ray: N worker tasks, then finalize.",
        usage="%(prog)s --workers N [options] -- <convert args without --worker/--workers>")
    p.add_argument("--workers", type=int, required=True, help="number of workers N (Ray tasks)")
    p.add_argument("--binary", default="quickdraw",
                   help="the quickdraw binary (default: quickdraw on PATH, else target/release/quickdraw)")
    p.add_argument("--num-cpus", type=int, default=None,
                   help="CPUs of the local Ray instance (default: all; ignored with RAY_ADDRESS)")
    p.add_argument("--task-cpus", type=float, default=1,
                   help="CPUs reserved by each worker task, and its converter threads (default 1)")
    p.add_argument("--retries", type=int, default=2, help="re-runs of a failed worker (default 2)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per worker attempt (default: none)")
    opts = p.parse_args(ours)
    if opts.workers < 1:
        p.error("--workers must be >= 1")
    if opts.retries < 0:
        p.error("--retries must be >= 0")
    if convert_args and convert_args[0] == "convert":
        convert_args = convert_args[1:]
    if not convert_args:
        p.error("give the convert arguments after `--`")
    for a in convert_args:
        name = a.split("=", 1)[0]
        if name in ("--worker", "--workers", "--finalize"):
            p.error(f"{name} is the driver's to set: leave it out of the convert arguments")
    opts.out = output_of(convert_args)
    if not opts.out:
        p.error("the convert arguments need --output OUT")
    opts.convert_args = convert_args
    return opts


def init_ray(num_cpus):
    kwargs = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    address = os.environ.get("RAY_ADDRESS")
    start = time.monotonic()
    if address:
        ray.init(address=address, **kwargs)
        where = f"cluster at {address}"
    else:
        ray.init(num_cpus=num_cpus, **kwargs)
        where = "local instance"
    cpus = ray.cluster_resources().get("CPU", 0)
    print(f"ray: {where}, {cpus:g} CPUs, ray.init took {time.monotonic() - start:.2f} s", flush=True)


def run_workers(opts, binary):
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARD_PREFIXES)}
    env["RAYON_NUM_THREADS"] = str(max(1, int(opts.task_cpus)))
    task = convert_worker.options(num_cpus=opts.task_cpus)
    cwd = os.getcwd()
    n = opts.workers

    def submit(i):
        return task.remote(binary, opts.convert_args, i, n, cwd, env, opts.timeout)

    pending = {submit(i): i for i in range(n)}
    attempts = {i: 1 for i in range(n)}
    failed = {}
    while pending:
        [ref], _ = ray.wait(list(pending), num_returns=1)
        i = pending.pop(ref)
        try:
            result = ray.get(ref)
        except Exception as e:  # WorkerFailed, or a Ray error (node or worker process died).
            cause = getattr(e, "cause", None) or e
            message = str(cause).strip()
            if attempts[i] <= opts.retries:
                print(f"worker {i}/{n}: attempt {attempts[i]} failed, retrying: {message.splitlines()[0]}",
                      flush=True)
                attempts[i] += 1
                pending[submit(i)] = i
            else:
                print(f"worker {i}/{n}: FAILED after {attempts[i]} attempts:\n{message}", file=sys.stderr, flush=True)
                failed[i] = message
            continue
        print(f"worker {i}/{n}: done in {result['seconds']:.1f} s on {result['node']}"
              + (f" (attempt {attempts[i]})" if attempts[i] > 1 else ""), flush=True)
        for line in tail(result["stdout"]).splitlines():
            print(f"  [{i}/{n}] {line}", flush=True)
    return failed


def main(argv=None):
    opts = parse(sys.argv[1:] if argv is None else argv)
    binary = resolve_binary(opts.binary)
    # Finalize runs here, so the binary must be here too (on a cluster, also on every node).
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        print(f"convert: no executable quickdraw binary at {binary} (give --binary PATH)", file=sys.stderr)
        return 2
    init_ray(opts.num_cpus)
    try:
        start = time.monotonic()
        failed = run_workers(opts, binary)
        if failed:
            names = ", ".join(f"{i}/{opts.workers}" for i in sorted(failed))
            print(f"convert: worker(s) {names} failed; not finalizing (re-running is safe)", file=sys.stderr)
            return 1
        print(f"convert: {opts.workers} workers done in {time.monotonic() - start:.1f} s; finalizing {opts.out}",
              flush=True)
    finally:
        ray.shutdown()
    cmd = [binary, "convert", "--finalize", "--output", opts.out]
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace")
    except OSError as e:
        print(f"convert: cannot run {binary}: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        print(f"convert: finalize exited {proc.returncode}: {' '.join(cmd)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
