"""`dreamlayer-train` / `python train.py`: train a DreamLayer model.

    python train.py --config configs/tiny.py --workdir /tmp/run --set model=/path/to/model
    python train.py --config configs/tiny.py --workdir /tmp/run --resume

Multi-host: pass --coordinator HOST:PORT --num-processes N --process-id I (or set
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) and every process calls
`jax.distributed.initialize` before anything touches a device.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from dreamlayer_jax.cli.common import ArgumentParser, library_output_to_log, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="dreamlayer-train", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="a configs/*.py file defining get_config()")
    p.add_argument("--workdir", required=True, help="checkpoints, logs, samples and export")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config field (repeatable)")
    p.add_argument("--coordinator", default=os.environ.get("JAX_COORDINATOR_ADDRESS"),
                   help="multi-host: the coordinator's HOST:PORT")
    p.add_argument("--num-processes", type=int,
                   default=int(os.environ.get("JAX_NUM_PROCESSES", "0")) or None)
    p.add_argument("--process-id", type=int,
                   default=int(os.environ["JAX_PROCESS_ID"]) if "JAX_PROCESS_ID" in os.environ
                   else None)
    return p


def maybe_initialize_distributed(args: argparse.Namespace) -> None:
    """`jax.distributed.initialize` when a coordinator is given (flags or environment)."""
    if not args.coordinator:
        return
    import jax

    from dreamlayer_jax.errors import ConfigError

    if args.num_processes is None or args.process_id is None:
        raise ConfigError("--coordinator needs --num-processes and --process-id")
    # CPU processes exchange gradients through gloo (GPUs and TPUs use their own fabric)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=args.coordinator,
                               num_processes=args.num_processes, process_id=args.process_id)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from dreamlayer_jax.training.config import load_config_file

    cfg = load_config_file(args.config, args.overrides)  # a bad config fails before jax loads
    maybe_initialize_distributed(args)
    from dreamlayer_jax.training.loop import Trainer

    # library chatter (orbax, absl, XLA) goes to WORKDIR/train.log; errors stay one line
    with library_output_to_log(Path(args.workdir)) as terminal:
        trainer = Trainer(cfg, args.workdir, progress_stream=terminal)
        history = trainer.run(resume=args.resume)
    if history:
        step, loss = history[-1]
        print(f"trained to step {step}, last loss {loss:.4f}; model in {args.workdir}/export")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Errors (bad flags included) are one line on stderr and exit code 2."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
