"""dsmake's Spark driver: runs a remote plan's targets as Spark tasks, wave by wave.

    spark-submit [--files dsmake] spark_driver.py --plan PLAN --binary BIN [--task KEY] [--results OUT]

PLAN is the remote plan dsmake wrote (JSON: waves of serialised jobs), BIN the dsmake binary (a name shipped
with --files, a local path, or an s3:// URI fetched once per machine), OUT where per-target results go as JSON
lines (a local path or an s3:// URI). Every result is also printed to stdout as a line starting with
`{"dsmake": "result"`, which `dsmake build --remote` reads while the run goes on.

One Spark task per target; each runs `dsmake worker -` on the executor with the target's job on stdin: the
same code path as a local build. A worker that dies (killed, out of memory, lost executor) raises, and Spark
retries the task up to spark.task.maxFailures times; a target whose work fails (its command exits non-zero)
is reported as failed and not retried. GPU steps run in their own stage with a stage-level resource profile
that asks for one GPU per task. With --task, only the jobs assigned to that task run (Databricks runs one
task per cluster kind). Secrets are never passed here: workers get credentials from their machine.
"""

import argparse
import json
import os
import stat
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

RETRYABLE_EXIT = 75  # `dsmake worker` exits 75 (EX_TEMPFAIL) for transient errors: network, store


def s3_client():
    import boto3  # present on Databricks runtimes; in the tests' venv

    return boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)


def split_s3(uri):
    rest = uri[len("s3://"):]
    bucket, _, key = rest.partition("/")
    return bucket, key


def read_text(location):
    if location.startswith("s3://"):
        bucket, key = split_s3(location)
        return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")
    with open(location, encoding="utf-8") as f:
        return f.read()


def write_text(location, text):
    if location.startswith("s3://"):
        bucket, key = split_s3(location)
        s3_client().put_object(Bucket=bucket, Key=key, Body=text.encode("utf-8"))
    else:
        with open(location, "w", encoding="utf-8") as f:
            f.write(text)


def local_binary(location):
    """An s3:// binary is fetched once per machine, into a folder named by its (content-addressed) key."""
    if not location.startswith("s3://"):
        return location
    bucket, key = split_s3(location)
    dest = os.path.join(tempfile.gettempdir(), "dsmake-bin", key.replace("/", "_"))
    if not os.path.exists(dest):
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        partial = f"{dest}.{os.getpid()}.part"
        s3_client().download_file(bucket, key, partial)
        os.chmod(partial, 0o755)
        os.replace(partial, dest)
    return dest


def make_task(binary, shipped, env):
    """The function each Spark task runs, closed over plain values only (it is pickled to executors)."""

    def run(item):
        import subprocess as sp
        import time as t

        from pyspark import SparkFiles, TaskContext

        # The plan's environment reaches executors here, in the pickled task, not on spark-submit's argv.
        os.environ.update(env)
        path = SparkFiles.get(binary) if shipped else local_binary(binary)
        if not os.access(path, os.X_OK):
            os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        context = TaskContext.get()
        attempt = context.attemptNumber() + 1 if context else 1
        started = t.time()
        proc = sp.run(
            [path, "worker", "-"],
            input=json.dumps(item["job"]).encode("utf-8"),
            stdout=sp.PIPE,
            stderr=sp.PIPE,
            env={**os.environ, **env},
        )
        stderr = proc.stderr.decode("utf-8", "replace").strip()
        if proc.returncode < 0 or proc.returncode == RETRYABLE_EXIT:
            # The worker died or hit a transient error: let Spark retry the task.
            why = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else stderr[-2000:]
            raise RuntimeError(f"dsmake worker for {item['target']} (attempt {attempt}): {why}")
        result = {"target": item["target"], "ok": proc.returncode == 0, "attempts": attempt,
                  "seconds": round(t.time() - started, 3), "bytes": 0}
        if proc.returncode == 0:
            try:
                manifest = json.loads(proc.stdout.decode("utf-8"))
                result["bytes"] = sum(o.get("size", 0) for o in manifest.get("outputs", []))
            except ValueError:
                pass
        else:
            lines = [l for l in stderr.splitlines() if l.strip()]
            result["error"] = "\n".join(lines[-20:]) or f"dsmake worker exited with {proc.returncode}"
        return result

    return run


def gpu_profile():
    from pyspark.resource import ExecutorResourceRequests, ResourceProfileBuilder, TaskResourceRequests

    builder = ResourceProfileBuilder()
    builder.require(TaskResourceRequests().cpus(1).resource("gpu", 1.0))
    builder.require(ExecutorResourceRequests().resource("gpu", 1))
    return builder.build


def emit(result, sink):
    line = json.dumps({"dsmake": "result", **result})
    print(line, flush=True)
    sink.append(line)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", required=True)
    parser.add_argument("--binary", required=True)
    parser.add_argument("--shipped", action="store_true", help="the binary came with --files")
    parser.add_argument("--task", default="")
    parser.add_argument("--results")
    args = parser.parse_args()

    plan = json.loads(read_text(args.plan))
    if plan.get("plan_format") != 1:
        sys.exit(f"plan format {plan.get('plan_format')} is not 1: use the driver of the same dsmake")
    env = dict(plan.get("env", {}))
    os.environ.update(env)
    if args.binary.startswith("s3://"):
        local_binary(args.binary)  # fail early, on the driver, if it cannot be fetched

    from pyspark.sql import SparkSession

    spark = SparkSession.builder.appName(f"dsmake {plan['pipeline']}").getOrCreate()
    sc = spark.sparkContext
    sc.setLogLevel("WARN")
    local_master = sc.master.startswith("local")
    task = make_task(args.binary, args.shipped, env)
    done, failed, results = set(), set(), []
    lock = threading.Lock()

    def run_group(jobs, resource):
        rdd = sc.parallelize(jobs, len(jobs))
        if resource == "gpu" and not local_master:
            rdd = rdd.withResources(gpu_profile())
        try:
            out = rdd.map(task).collect()
        except Exception as e:  # a task failed spark.task.maxFailures times: the stage is aborted
            message = str(e).strip().splitlines()
            out = [{"target": j["target"], "ok": False, "attempts": 0, "seconds": 0, "bytes": 0,
                    "error": f"Spark gave up on the stage: {message[0] if message else e}"} for j in jobs]
        with lock:
            for r in out:
                (done if r["ok"] else failed).add(r["target"])
                emit(r, results)

    for number, wave in enumerate(plan["waves"], 1):
        jobs = [j for j in wave if not args.task or j.get("task", "") in ("", args.task)]
        blocked = [j for j in jobs if any(a in failed for a in j.get("after", []))]
        for j in blocked:
            failed.add(j["target"])
        jobs = [j for j in jobs if j not in blocked]
        if not jobs:
            continue
        print(json.dumps({"dsmake": "wave", "wave": number, "targets": len(jobs)}), flush=True)
        groups = {}
        for j in jobs:
            groups.setdefault("gpu" if j.get("resource") == "gpu" else "cpu", []).append(j)
        # CPU and GPU targets of a wave are independent: their stages run at the same time.
        with ThreadPoolExecutor(max_workers=len(groups)) as pool:
            for f in [pool.submit(run_group, js, r) for r, js in groups.items()]:
                f.result()
        if failed and not plan.get("keep_going"):
            break

    if args.results:
        write_text(args.results, "".join(line + "\n" for line in results))
    spark.stop()
    if failed:
        sys.exit(f"{len(failed)} targets failed: {', '.join(sorted(failed)[:10])}")


if __name__ == "__main__":
    main()
