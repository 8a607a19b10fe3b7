"""Compile the pipeline to pipelines/autointerp_pipeline.yaml (committed; a test checks it).

python pipelines/compile.py                       # the committed YAML (shared vLLM server)
python pipelines/compile.py --serve-in-step -o in_step.yaml
python pipelines/compile.py --cpu-image REG/runtime-cpu:TAG --gpu-image REG/runtime-gpu:TAG
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

DEFAULT_OUTPUT = ROOT / "pipelines" / "autointerp_pipeline.yaml"


def compile_pipeline(output: Path = DEFAULT_OUTPUT, **options: object) -> Path:
    """Write the compiled pipeline spec to `output`; `options` are BuildOptions fields."""
    from kfp import compiler

    from pipelines.pipeline import BuildOptions, build_pipeline

    pipeline = build_pipeline(BuildOptions(**options))  # type: ignore[arg-type]
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline, str(output))
    return output


def main(argv: list[str] | None = None) -> int:
    from pipelines.pipeline import BuildOptions

    defaults = BuildOptions()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--cpu-image", default=defaults.cpu_image)
    parser.add_argument("--gpu-image", default=defaults.gpu_image)
    parser.add_argument(
        "--serve-in-step",
        action="store_true",
        help="explain/score start their own vLLM server on a GPU instead of the shared one",
    )
    parser.add_argument("--max-parallel", type=int, default=defaults.max_parallel)
    parser.add_argument("--gpus-per-step", type=int, default=defaults.gpus_per_step)
    args = parser.parse_args(argv)
    for name in ("max_parallel", "gpus_per_step"):
        if getattr(args, name) < 1:
            parser.error(f"argument --{name.replace('_', '-')}: must be >= 1")
    out = compile_pipeline(
        args.output,
        cpu_image=args.cpu_image,
        gpu_image=args.gpu_image,
        serve_in_step=args.serve_in_step,
        max_parallel=args.max_parallel,
        gpus_per_step=args.gpus_per_step,
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
