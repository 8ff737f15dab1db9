"""A local Databricks Jobs API 2.1 server for the databricks executor's tests.

    python databricks_mock.py --spec SPEC.yaml --token TOKEN --state DIR

Prints `listening PORT` once it accepts connections. Every request must carry `Authorization: Bearer TOKEN`
(else 401, as Databricks answers) and is validated against the OpenAPI description in SPEC (the published
databricks-jobs-2.1-aws.yaml, copied into tests/fixtures/specs): the operation must exist, query parameters and the
JSON body must match its schema (required fields, types, enums, patterns, maxItems; unknown top-level body
fields are rejected). Invalid requests get 400 and are logged as `INVALID` in DIR/requests.log, where every
request line goes.

runs/submit starts a run that goes PENDING → RUNNING → TERMINATED (result SUCCESS or FAILED). Its tasks run
in `depends_on` order, each like a spark_python_task on a new cluster: the python_file is fetched (s3:// with
boto3, from the S3 server the environment names) and run with this Python, pyspark in local mode
(local[2] with task retries) and the cluster's spark_env_vars. A run with a task that fails ends FAILED and
runs/get-output gives the task's error. If DIR/internal_error exists when a run is submitted, the file is
removed and the run's first task ends INTERNAL_ERROR as when a cluster cannot start. idempotency_token
returns the existing run. runs/cancel stops a run (CANCELED).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import yaml


class Invalid(Exception):
    pass


class Spec:
    def __init__(self, path):
        with open(path, encoding="utf-8") as f:
            self.doc = yaml.safe_load(f)

    def resolve(self, schema):
        while isinstance(schema, dict) and "$ref" in schema:
            ref = schema["$ref"]
            node = self.doc
            for part in ref.lstrip("#/").split("/"):
                node = node[part]
            schema = {**node, **{k: v for k, v in schema.items() if k != "$ref"}}
        return schema

    def operation(self, method, path):
        item = self.doc["paths"].get(path)
        if item is None or method.lower() not in item:
            raise Invalid(f"no operation {method} {path} in the spec")
        return item[method.lower()]

    def properties(self, schema):
        """Properties and required names of a schema, with allOf parts merged."""
        schema = self.resolve(schema)
        props, required = dict(schema.get("properties", {})), schema.get("required", [])
        required = [required] if isinstance(required, str) else list(required)  # the spec has `required: name`
        for part in schema.get("allOf", []):
            p, r = self.properties(part)
            props.update(p)
            required += r
        return props, required

    def check(self, value, schema, where):
        schema = self.resolve(schema)
        if "allOf" in schema or "properties" in schema:
            if not isinstance(value, dict):
                raise Invalid(f"{where}: expected an object, found {type(value).__name__}")
            props, required = self.properties(schema)
            for name in required:
                if name not in value:
                    raise Invalid(f"{where}: `{name}` is required")
            for name, v in value.items():
                if name in props:
                    self.check(v, props[name], f"{where}.{name}")
            return
        kind = schema.get("type")
        types = {"string": str, "integer": int, "boolean": bool, "array": list, "object": dict, "number": (int, float)}
        if kind in types:
            ok = isinstance(value, types[kind]) and not (kind in ("integer", "number") and isinstance(value, bool))
            if not ok:
                raise Invalid(f"{where}: expected {kind}, found {json.dumps(value)[:80]}")
        if "enum" in schema and value not in schema["enum"]:
            raise Invalid(f"{where}: {value!r} is not one of {schema['enum']}")
        if kind == "string":
            if "pattern" in schema and not re.search(schema["pattern"], value):
                raise Invalid(f"{where}: {value!r} does not match {schema['pattern']}")
            if "maxLength" in schema and len(value) > schema["maxLength"]:
                raise Invalid(f"{where}: longer than {schema['maxLength']}")
            if "minLength" in schema and len(value) < schema["minLength"]:
                raise Invalid(f"{where}: shorter than {schema['minLength']}")
        if kind == "array":
            if "maxItems" in schema and len(value) > schema["maxItems"]:
                raise Invalid(f"{where}: more than {schema['maxItems']} items")
            for i, item in enumerate(value):
                self.check(item, schema.get("items", {}), f"{where}[{i}]")

    def check_request(self, method, path, query, body):
        op = self.operation(method, path)
        params = op.get("parameters", [])
        known = {p["name"] for p in params}
        for p in params:
            if p.get("in") == "query" and p.get("required") and p["name"] not in query:
                raise Invalid(f"query parameter `{p['name']}` is required")
        for name, values in query.items():
            if name not in known:
                raise Invalid(f"unknown query parameter `{name}`")
            p = next(p for p in params if p["name"] == name)
            kind = self.resolve(p.get("schema", {})).get("type")
            if kind == "integer" and not re.fullmatch(r"-?\d+", values[0]):
                raise Invalid(f"query parameter `{name}`: expected an integer, found {values[0]!r}")
            if kind == "boolean" and values[0] not in ("true", "false"):
                raise Invalid(f"query parameter `{name}`: expected true or false")
        if "requestBody" in op:
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            if not isinstance(body, dict):
                raise Invalid("the body must be a JSON object")
            props, _ = self.properties(schema)
            unknown = sorted(set(body) - set(props))
            if unknown:
                raise Invalid(f"unknown top-level field(s) {', '.join(unknown)}")
            self.check(body, schema, "body")


class Runs:
    def __init__(self, state_dir, base_url):
        self.lock = threading.Lock()
        self.runs, self.tasks, self.tokens = {}, {}, {}
        self.next_id = 1000
        self.state_dir = state_dir
        self.base_url = base_url

    def new_id(self):
        self.next_id += 1
        return self.next_id

    def submit(self, body):
        with self.lock:
            token = body.get("idempotency_token")
            if token and token in self.tokens:
                return self.tokens[token]
            run_id = self.new_id()
            tasks = []
            for t in body["tasks"]:
                task_run = self.new_id()
                tasks.append({"run_id": task_run, "task_key": t["task_key"], "depends_on": t.get("depends_on", []),
                              "state": {"life_cycle_state": "PENDING", "state_message": ""}, "spec": t})
                self.tasks[task_run] = {"error": None}
            run = {"run_id": run_id, "run_name": body.get("run_name", ""), "run_type": "SUBMIT_RUN",
                   "run_page_url": f"{self.base_url}/#job/runs/{run_id}", "start_time": int(time.time() * 1000),
                   "state": {"life_cycle_state": "PENDING", "state_message": "Waiting for cluster"},
                   "tasks": tasks, "cancel": False, "proc": None}
            self.runs[run_id] = run
            if token:
                self.tokens[token] = run_id
            internal = os.path.join(self.state_dir, "internal_error")
            fail_internal = os.path.exists(internal)
            if fail_internal:
                os.remove(internal)
        threading.Thread(target=self.execute, args=(run, fail_internal), daemon=True).start()
        return run_id

    def execute(self, run, fail_internal):
        time.sleep(0.3)
        run["state"] = {"life_cycle_state": "RUNNING", "state_message": "In run"}
        failed = None
        for task in run["tasks"]:
            if failed or run["cancel"]:
                task["state"] = {"life_cycle_state": "SKIPPED", "state_message": "An upstream task failed."}
                continue
            task["state"] = {"life_cycle_state": "RUNNING", "state_message": ""}
            if fail_internal:
                message = ("Cluster 1127-063000-mock0001 terminated. Reason: AWS Insufficient Instance Capacity "
                           "Failure (CLOUD_FAILURE)")
                task["state"] = {"life_cycle_state": "INTERNAL_ERROR", "state_message": message}
                failed = ("INTERNAL_ERROR", message)
                continue
            code, error = self.run_task(run, task)
            if run["cancel"]:
                task["state"] = {"life_cycle_state": "TERMINATED", "result_state": "CANCELED",
                                 "state_message": "Run cancelled."}
                continue
            if code == 0:
                task["state"] = {"life_cycle_state": "TERMINATED", "result_state": "SUCCESS", "state_message": ""}
            else:
                self.tasks[task["run_id"]]["error"] = error
                task["state"] = {"life_cycle_state": "TERMINATED", "result_state": "FAILED",
                                 "state_message": "Workload failed, see run output for details"}
                failed = ("TERMINATED", "FAILED")
        run["state"] = {"life_cycle_state": "TERMINATING", "state_message": ""}
        time.sleep(0.1)
        if run["cancel"]:
            run["state"] = {"life_cycle_state": "TERMINATED", "result_state": "CANCELED",
                            "state_message": "Run cancelled.", "user_cancelled_or_timedout": True}
        elif failed and failed[0] == "INTERNAL_ERROR":
            run["state"] = {"life_cycle_state": "INTERNAL_ERROR", "state_message": failed[1]}
        elif failed:
            run["state"] = {"life_cycle_state": "TERMINATED", "result_state": "FAILED",
                            "state_message": "1 task failed"}
        else:
            run["state"] = {"life_cycle_state": "TERMINATED", "result_state": "SUCCESS", "state_message": ""}

    def run_task(self, run, task):
        spec = task["spec"]
        python_task = spec["spark_python_task"]
        cluster = spec.get("new_cluster", {})
        env = {**os.environ, **{k: str(v) for k, v in cluster.get("spark_env_vars", {}).items()}}
        work = tempfile.mkdtemp(prefix=f"run-{run['run_id']}-", dir=self.state_dir)
        source = python_task["python_file"]
        local = os.path.join(work, os.path.basename(source))
        if source.startswith("s3://"):
            import boto3

            bucket, _, key = source[len("s3://"):].partition("/")
            boto3.client("s3", endpoint_url=env.get("AWS_ENDPOINT_URL")).download_file(bucket, key, local)
        else:
            local = source
        confs = [f"--conf {k}={v}" for k, v in cluster.get("spark_conf", {}).items()
                 if "resource.gpu" not in k and k != "spark.task.maxFailures"]
        # Local mode takes task retries from the master URL.
        failures = cluster.get("spark_conf", {}).get("spark.task.maxFailures", "4")
        env["PYSPARK_SUBMIT_ARGS"] = " ".join([f"--master local[2,{failures}]", "--conf spark.ui.enabled=false",
                                               *confs, "pyspark-shell"])
        with open(os.path.join(work, "driver.log"), "wb") as log:
            proc = subprocess.Popen([sys.executable, local, *python_task.get("parameters", [])], env=env,
                                    stdout=log, stderr=subprocess.STDOUT, cwd=work, start_new_session=True)
            run["proc"] = proc
            code = proc.wait()
        text = open(os.path.join(work, "driver.log"), encoding="utf-8", errors="replace").read()
        lines = [l for l in text.splitlines() if l.strip() and not l.startswith("{") and "WARN" not in l]
        return code, (lines[-1] if lines else f"exit code {code}")

    def cancel(self, run_id):
        run = self.runs.get(run_id)
        if run is None:
            return False
        run["cancel"] = True
        if run["proc"] and run["proc"].poll() is None:
            os.killpg(run["proc"].pid, 15)
        return True

    def view(self, run_id):
        run = self.runs.get(run_id)
        if run is None:
            return None
        out = {k: v for k, v in run.items() if k not in ("cancel", "proc", "tasks")}
        out["tasks"] = [{"run_id": t["run_id"], "task_key": t["task_key"], "depends_on": t["depends_on"],
                         "state": t["state"]} for t in run["tasks"]]
        return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--state", required=True)
    args = parser.parse_args()
    spec = Spec(args.spec)
    os.makedirs(args.state, exist_ok=True)
    log_lock = threading.Lock()

    def log(line):
        with log_lock, open(os.path.join(args.state, "requests.log"), "a", encoding="utf-8") as f:
            f.write(line + "\n")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def answer(self, status, value):
            data = json.dumps(value).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def handle_any(self, method):
            url = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            path = url.path[len("/api"):] if url.path.startswith("/api/") else url.path
            if self.headers.get("Authorization") != f"Bearer {args.token}":
                log(f"{method} {path} 401")
                return self.answer(401, {"error_code": "PERMISSION_DENIED", "message": "Invalid access token."})
            query = parse_qs(url.query)
            try:
                body = json.loads(raw) if raw else None
                spec.check_request(method, path, query, body)
            except (Invalid, ValueError) as e:
                log(f"INVALID {method} {path}: {e}")
                return self.answer(400, {"error_code": "INVALID_PARAMETER_VALUE", "message": str(e)})
            log(f"{method} {path}")
            if path == "/2.1/jobs/runs/submit":
                with open(os.path.join(args.state, "last_submit.json"), "w", encoding="utf-8") as f:
                    json.dump(body, f, indent=1)
                return self.answer(200, {"run_id": runs.submit(body)})
            if path == "/2.1/jobs/runs/get":
                view = runs.view(int(query["run_id"][0]))
                if view is None:
                    return self.answer(400, {"error_code": "INVALID_PARAMETER_VALUE", "message": "Run not found"})
                return self.answer(200, view)
            if path == "/2.1/jobs/runs/get-output":
                task = runs.tasks.get(int(query["run_id"][0]))
                if task is None:
                    return self.answer(400, {"error_code": "INVALID_PARAMETER_VALUE", "message": "Run not found"})
                out = {"metadata": {"run_id": int(query["run_id"][0])}}
                if task["error"]:
                    out.update({"error": task["error"], "error_trace": task["error"]})
                return self.answer(200, out)
            if path == "/2.1/jobs/runs/cancel":
                if not runs.cancel(body["run_id"]):
                    return self.answer(400, {"error_code": "INVALID_PARAMETER_VALUE", "message": "Run not found"})
                return self.answer(200, {})
            if path == "/2.1/jobs/runs/list":
                return self.answer(200, {"runs": [], "has_more": False})
            return self.answer(404, {"error_code": "ENDPOINT_NOT_FOUND", "message": f"no mock for {path}"})

        def do_GET(self):
            self.handle_any("GET")

        def do_POST(self):
            self.handle_any("POST")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    runs = Runs(args.state, f"http://127.0.0.1:{port}")
    print(f"listening {port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
