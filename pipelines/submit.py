"""Submit the compiled pipeline to a Kubeflow Pipelines endpoint: one run, or a recurring run.

    export KFP_HOST=https://kfp.example.com/pipeline KFP_NAMESPACE=autointerp KFP_TOKEN=...
    python pipelines/submit.py run --param model=meta-llama/Llama-3.1-8B \\
        --param 'hookpoints=["layers.16"]' --param max_latents=200 --wait
    python pipelines/submit.py schedule --cron "0 0 3 * * *" --job-name nightly \\
        --param 'hookpoints=["layers.16"]'

The bearer token is read from $KFP_TOKEN only (never a flag, never logged). Parameter values
are parsed as JSON when they parse, else taken as strings. The S3 pipeline root and its
credentials come from the cluster's kfp-launcher ConfigMap, not from here.
"""

from __future__ import annotations

import argparse
import json
import os
import string
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PACKAGE = ROOT / "pipelines" / "autointerp_pipeline.yaml"
DEFAULT_EXPERIMENT = "autointerp"
DEFAULT_SERVICE_ACCOUNT = "autointerp-pipeline-runner"
SECRET_PARAMS = ("hf_token",)


class SubmitError(Exception):
    """A bad flag or a failed run, reported as one line."""


def parse_params(pairs: list[str], allowed: set[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise SubmitError(f"--param: expected NAME=VALUE (got {pair!r})")
        if name in SECRET_PARAMS:
            raise SubmitError(f"--param {name}: secrets come from Kubernetes Secrets, not params")
        if name not in allowed:
            choices = ", ".join(sorted(allowed))
            raise SubmitError(f"--param {name}: not a pipeline parameter (choose from {choices})")
        try:
            params[name] = json.loads(raw)
        except json.JSONDecodeError:
            params[name] = raw
    return params


def validate_cron(expression: str) -> str:
    """KFP's cron has six fields, seconds first: `0 0 3 * * *` is 03:00:00 every day."""
    fields = expression.split()
    if len(fields) != 6:
        raise SubmitError(
            f"--cron: expected 6 fields (second minute hour day-of-month month day-of-week), "
            f"got {len(fields)} in {expression!r}; e.g. '0 0 3 * * *'"
        )
    allowed = set("0123456789*/,-?#") | set(string.ascii_letters)  # names like MON, JAN
    for field in fields:
        if not set(field) <= allowed:
            raise SubmitError(f"--cron: invalid field {field!r} in {expression!r}")
    return " ".join(fields)


def pipeline_parameters(package: Path) -> set[str]:
    import yaml

    if not package.exists():
        raise SubmitError(f"--package: {package} not found (run `make pipeline`)")
    spec = next(yaml.safe_load_all(package.read_text()))
    return set(spec["root"]["inputDefinitions"]["parameters"])


def make_client(host: str, namespace: str) -> Any:
    import kfp

    # The token never appears on a command line or in logs.
    return kfp.Client(host=host, namespace=namespace, existing_token=os.environ.get("KFP_TOKEN"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="submit.py", description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--host", default=os.environ.get("KFP_HOST"), help="KFP API ($KFP_HOST)")
    common.add_argument(
        "--namespace", default=os.environ.get("KFP_NAMESPACE"), help="($KFP_NAMESPACE)"
    )
    common.add_argument("--package", type=Path, default=DEFAULT_PACKAGE)
    common.add_argument("--experiment", default=DEFAULT_EXPERIMENT)
    common.add_argument("--service-account", default=DEFAULT_SERVICE_ACCOUNT)
    common.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    common.add_argument(
        "--caching", choices=("default", "on", "off"), default="default",
        help="override every task's caching choice",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", parents=[common], help="start one run")
    run.add_argument("--run-name", default=None)
    run.add_argument("--wait", action="store_true", help="wait; exit 1 unless it SUCCEEDED")
    run.add_argument("--timeout", type=int, default=24 * 3600, help="seconds to wait")
    schedule = sub.add_parser("schedule", parents=[common], help="create a recurring run")
    schedule.add_argument("--cron", required=True, help="six fields, seconds first")
    schedule.add_argument("--job-name", required=True)
    schedule.add_argument("--max-concurrency", type=int, default=1)
    schedule.add_argument("--catchup", action="store_true", help="run missed intervals too")
    return parser


def main(
    argv: list[str] | None = None, client_factory: Callable[[str, str], Any] = make_client
) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _submit(args, client_factory)
    except SubmitError as exc:
        print(f"submit.py: error: {exc}", file=sys.stderr)
        return 2


def _submit(args: argparse.Namespace, client_factory: Callable[[str, str], Any]) -> int:
    if not args.host:
        raise SubmitError("--host: give the KFP API URL (or set $KFP_HOST)")
    if not args.namespace:
        raise SubmitError("--namespace: give the namespace to run in (or set $KFP_NAMESPACE)")
    params = parse_params(args.param, pipeline_parameters(args.package))
    caching = {"default": None, "on": True, "off": False}[args.caching]
    cron = validate_cron(args.cron) if args.command == "schedule" else None
    client = client_factory(args.host, args.namespace)

    if args.command == "schedule":
        experiment = client.create_experiment(name=args.experiment, namespace=args.namespace)
        job = client.create_recurring_run(
            experiment_id=experiment.experiment_id,
            job_name=args.job_name,
            cron_expression=cron,
            max_concurrency=args.max_concurrency,
            no_catchup=not args.catchup,
            params=params,
            pipeline_package_path=str(args.package),
            enable_caching=caching,
            service_account=args.service_account,
        )
        print(f"recurring run {job.recurring_run_id} created: {cron}")
        return 0

    result = client.create_run_from_pipeline_package(
        str(args.package),
        arguments=params,
        run_name=args.run_name,
        experiment_name=args.experiment,
        namespace=args.namespace,
        enable_caching=caching,
        service_account=args.service_account,
    )
    print(f"run {result.run_id} submitted")
    if not args.wait:
        return 0
    run = client.wait_for_run_completion(result.run_id, timeout=args.timeout)
    state = str(getattr(run, "state", "UNKNOWN"))
    print(f"run {result.run_id} finished: {state}")
    return 0 if state == "SUCCEEDED" else 1


if __name__ == "__main__":
    sys.exit(main())
