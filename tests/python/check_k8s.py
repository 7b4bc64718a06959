"""Checks the Kubernetes manifests in deploy/k8s without a cluster.

Usage: check_k8s.py [--k8s-version V ...] [--self-test] FILE.yaml [FILE.yaml ...]

Every YAML document of every FILE is validated against the Kubernetes OpenAPI schemas bundled in
the `kubernetes-validate` package (JSON schemas per Kubernetes version, read offline), in strict
mode: an unknown or misspelt field fails, as do wrong types and missing required fields. By
default each document is checked against the oldest version the manifests support (1.29: Indexed
Jobs with backoffLimitPerIndex) and the newest bundled one; --k8s-version replaces that list. A
document whose kind/apiVersion has no schema fails too.

On top of the schemas, the contract of distributed conversion (README: deploy/k8s/README.md):
- a convert Job (container args `convert ... --workers N`) has completionMode Indexed,
  completions == parallelism == N, restartPolicy Never, and no `--worker I/N` of its own (the
  index comes from JOB_COMPLETION_INDEX);
- a finalize Job (any file whose name contains `finalize`) runs `convert --finalize --output OUT`
  once (completions and parallelism 1 or unset), with the same OUT as the convert Job when both
  are checked together;
- every Job's pods take their object-store settings from a Secret (envFrom secretRef) and, when a
  Secret of that name is among the files checked, it is that one; TMPDIR, when set, is a mounted
  volume.

--self-test also breaks copies of the documents in memory (an unknown field in the pod spec, a
misspelt Job field, completions != --workers, a finalize Job without --finalize, ...) and checks
that each broken copy is rejected: the checker is not vacuous.

Prints one line per document; exit status 0 only when everything holds.
"""
import argparse
import copy
import os
import sys

import yaml
from kubernetes_validate import utils as kv

# backoffLimitPerIndex is beta (on by default) from 1.29 and GA from 1.33.
MIN_VERSION = "1.29.0"


class Problem(Exception):
    pass


def load_documents(path):
    with open(path) as f:
        text = f.read()
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as e:
        raise Problem(f"{path}: not YAML: {e}") from e
    # (index in the file, document): empty documents (a trailing `---`) are skipped.
    return [(i, d) for i, d in enumerate(docs) if d is not None]


def schema_errors(doc, versions):
    if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
        return ["not a Kubernetes object (apiVersion and kind are required)"]
    errors = []
    for version in versions:
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as e:
            where = ".".join(str(p) for p in e.path) or "(top level)"
            errors.append(f"Kubernetes {e.version} schema: {where}: {e.message}")
        except kv.SchemaNotFoundError as e:
            errors.append(e.message)
        except kv.VersionNotSupportedError as e:
            errors.append(e.message)
    return errors


def flag_value(args, name):
    """The value of `--name V` or `--name=V` in args, else None."""
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a[len(name) + 1:]
    return None


def has_flag(args, name):
    return any(a == name or a.startswith(name + "=") for a in args)


def pod_spec(job):
    return ((job.get("spec") or {}).get("template") or {}).get("spec") or {}


def containers(job):
    return pod_spec(job).get("containers") or []


def argv(container):
    # The image's ENTRYPOINT is ["quickdraw"]: `args` are its arguments unless `command` is set.
    command = container.get("command")
    if command:
        if os.path.basename(str(command[0])) != "quickdraw":
            return None
        return [str(a) for a in command[1:]] + [str(a) for a in container.get("args") or []]
    return [str(a) for a in container.get("args") or []]


def job_role(path, job):
    if "finalize" in os.path.basename(path):
        return "finalize"
    for c in containers(job):
        a = argv(c)
        if a and a[0] == "convert":
            return "finalize" if "--finalize" in a else "convert"
    return None


def contract_errors(path, doc, context):
    """Job-specific rules; records OUT and secret names in context for the cross-file checks."""
    if doc.get("kind") != "Job":
        if doc.get("kind") == "Secret":
            context["secrets"].add((doc.get("metadata") or {}).get("name"))
        return []
    errors = []
    spec = doc.get("spec") or {}
    role = job_role(path, doc)
    if role is None:
        return ["a Job that runs no `quickdraw convert`"]
    runs = [(c, argv(c)) for c in containers(doc)]
    runs = [(c, a) for c, a in runs if a and a[0] == "convert"]
    if len(runs) != 1:
        return [f"{role} Job: expected one container running `quickdraw convert`, found {len(runs)}"]
    container, args = runs[0]
    if pod_spec(doc).get("restartPolicy") != "Never":
        errors.append(f"{role} Job: template.spec.restartPolicy must be Never")
    out = flag_value(args, "--output") or flag_value(args, "-o")
    if not out:
        errors.append(f"{role} Job: args have no --output")
    context["outputs"].append((path, role, out))

    if role == "convert":
        if "--finalize" in args:
            errors.append("convert Job: args contain --finalize")
        if has_flag(args, "--worker"):
            errors.append("convert Job: args contain --worker (the index comes from JOB_COMPLETION_INDEX: use --workers N)")
        workers = flag_value(args, "--workers")
        try:
            n = int(workers)
        except (TypeError, ValueError):
            n = None
            errors.append(f"convert Job: args need `--workers N`, found {workers!r}")
        if n is not None and n < 1:
            errors.append(f"convert Job: --workers {n} < 1")
        if spec.get("completionMode") != "Indexed":
            errors.append(f"convert Job: completionMode is {spec.get('completionMode')!r}, not 'Indexed'")
        for field in ("completions", "parallelism"):
            if n is not None and spec.get(field) != n:
                errors.append(f"convert Job: spec.{field} is {spec.get(field)!r}, not --workers {n}")
        if not has_flag(args, "--input") and not has_flag(args, "-i"):
            errors.append("convert Job: args have no --input")
    else:
        if "--finalize" not in args:
            errors.append("finalize Job: args lack --finalize")
        if has_flag(args, "--worker") or has_flag(args, "--workers"):
            errors.append("finalize Job: args contain --worker/--workers")
        for field in ("completions", "parallelism"):
            if spec.get(field, 1) != 1:
                errors.append(f"finalize Job: spec.{field} is {spec.get(field)!r}, not 1")

    refs = [e["secretRef"].get("name") for e in container.get("envFrom") or [] if "secretRef" in e]
    if not refs:
        errors.append(f"{role} Job: no envFrom secretRef (object-store credentials)")
    context["secret_refs"].extend((path, role, r) for r in refs)

    tmpdir = next((e.get("value") for e in container.get("env") or [] if e.get("name") == "TMPDIR"), None)
    if tmpdir is not None:
        mounts = [m.get("mountPath", "").rstrip("/") for m in container.get("volumeMounts") or []]
        t = tmpdir.rstrip("/")
        if not any(t == m or t.startswith(m + "/") for m in mounts if m):
            errors.append(f"{role} Job: TMPDIR={tmpdir} is not on a mounted volume")
    return errors


def cross_errors(context):
    errors = []
    outs = {(role, out) for _, role, out in context["outputs"] if out}
    converts = {o for r, o in outs if r == "convert"}
    finals = {o for r, o in outs if r == "finalize"}
    if converts and finals and converts != finals:
        errors.append(f"convert Job --output {sorted(converts)} != finalize Job --output {sorted(finals)}")
    if context["secrets"]:
        for path, role, ref in context["secret_refs"]:
            if ref not in context["secrets"]:
                errors.append(f"{path}: {role} Job reads Secret {ref!r}, not among the Secrets checked {sorted(context['secrets'])}")
    return errors


def check(files, versions, quiet=False):
    """Returns the list of problems (empty when all is well); prints a line per document."""
    problems = []
    context = {"outputs": [], "secrets": set(), "secret_refs": []}
    for path, docs in files:
        if not docs:
            problems.append(f"{path}: no YAML documents")
        for index, doc in docs:
            kind = doc.get("kind") if isinstance(doc, dict) else None
            name = ((doc.get("metadata") or {}).get("name") if isinstance(doc, dict) else None)
            errs = schema_errors(doc, versions)
            if not errs:
                errs = contract_errors(path, doc, context)
            for e in errs:
                problems.append(f"{path}: document {index} ({kind}/{name}): {e}")
            if not quiet:
                status = "FAIL" if errs else "ok"
                print(f"check_k8s: {status}: {path}: document {index}: {kind}/{name} (Kubernetes {', '.join(versions)}, strict)")
    problems.extend(cross_errors(context))
    return problems


def self_test(files, versions):
    """Breaks copies of the documents and checks that each one is rejected."""
    def jobs(fs, role):
        for fi, (path, docs) in enumerate(fs):
            for di, (_, d) in enumerate(docs):
                if isinstance(d, dict) and d.get("kind") == "Job" and job_role(path, d) == role:
                    yield fi, di

    def mutated(fn, role):
        fs = copy.deepcopy(files)
        found = next(jobs(fs, role), None)
        if found is None:
            return None
        fi, di = found
        fn(fs[fi][1][di][1])
        return fs

    def set_arg(name, value):
        def fn(job):
            c = containers(job)[0]
            a = c["args"]
            a[a.index(name) + 1] = value
        return fn

    def drop_arg(name):
        def fn(job):
            c = containers(job)[0]
            c["args"] = [x for x in c["args"] if x != name]
        return fn

    cases = [
        ("unknown field in a container", "convert",
         lambda j: containers(j)[0].__setitem__("imagePullPolicyy", "Always")),
        ("unknown field in the pod spec", "convert",
         lambda j: pod_spec(j).__setitem__("restartPolicyy", "Never")),
        ("misspelt Job field", "convert",
         lambda j: j["spec"].__setitem__("completion", j["spec"].pop("completions"))),
        ("unknown top-level field", "finalize", lambda j: j.__setitem__("specs", {})),
        ("wrong type (completions as a string)", "convert",
         lambda j: j["spec"].__setitem__("completions", "4")),
        ("numeric arg not quoted", "convert", set_arg("--shards", 8)),
        ("completionMode NonIndexed", "convert",
         lambda j: j["spec"].__setitem__("completionMode", "NonIndexed")),
        ("parallelism != --workers", "convert",
         lambda j: j["spec"].__setitem__("parallelism", j["spec"]["parallelism"] + 1)),
        ("--workers != completions", "convert", set_arg("--workers", "3")),
        ("finalize without --finalize", "finalize", drop_arg("--finalize")),
        ("finalize writes elsewhere", "finalize", set_arg("--output", "s3://elsewhere/x")),
        ("restartPolicy OnFailure", "convert",
         lambda j: pod_spec(j).__setitem__("restartPolicy", "OnFailure")),
    ]
    failures = 0
    for label, role, fn in cases:
        fs = mutated(fn, role)
        if fs is None:
            print(f"check_k8s: self-test: skipped ({label}): no {role} Job among the files")
            continue
        problems = check(fs, versions, quiet=True)
        if problems:
            print(f"check_k8s: self-test: rejected as it should ({label}): {problems[0]}")
        else:
            failures += 1
            print(f"check_k8s: self-test: FAIL: accepted a broken copy ({label})", file=sys.stderr)
    return failures


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--k8s-version", action="append", dest="versions", metavar="V",
                   help=f"Kubernetes version to validate against (repeatable; default {MIN_VERSION} and the newest bundled)")
    p.add_argument("--self-test", action="store_true",
                   help="also check that broken copies of the documents are rejected")
    opts = p.parse_args()
    versions = opts.versions or [MIN_VERSION, kv.latest_version()]

    files = []
    problems = []
    for path in opts.files:
        try:
            files.append((path, load_documents(path)))
        except (OSError, Problem) as e:
            problems.append(str(e))
    problems += check(files, versions)
    for pr in problems:
        print(f"check_k8s: FAIL: {pr}", file=sys.stderr)
    failures = self_test(files, versions) if opts.self_test and not problems else 0
    if problems or failures:
        sys.exit(1)
    n = sum(len(d) for _, d in files)
    print(f"check_k8s: {n} documents in {len(files)} files valid"
          + (", every broken copy rejected" if opts.self_test else ""))


if __name__ == "__main__":
    main()
