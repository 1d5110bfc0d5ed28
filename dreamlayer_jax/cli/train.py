"""`dreamlayer-train` / `python train.py`: train a DreamLayer model.

    python train.py --config configs/tiny.py --workdir runs/tiny --set model=runs/tiny/init
    python train.py --workdir runs/tiny --resume            # continue it (saved config)
    python train.py --config configs/sd15.py --workdir runs/sd15 \\
        --set model=SD15_FOLDER data_dir=DATASET_DIR num_steps=2000
    python train.py --show-config configs/sd15.py           # every key --set accepts

The run's config (the file's values with every --set applied) is saved as
WORKDIR/config.json: `--resume` starts from it, so the --set pairs need not be repeated
(new ones change it). A workdir holding an earlier run is refused unless --resume
continues it or --overwrite deletes it. Multi-host: pass --coordinator HOST:PORT
--num-processes N --process-id I (or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID) and every process calls `jax.distributed.initialize` first.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from dreamlayer_jax.cli.common import (
    ArgumentParser,
    HelpFormatter,
    library_output_to_log,
    run_cli,
)
from dreamlayer_jax.errors import ConfigError, InputError


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="dreamlayer-train", description=__doc__.split("\n")[0],
                       epilog=__doc__.split("\n\n", 1)[1], formatter_class=HelpFormatter)
    p.add_argument("--config", help="a configs/*.py file defining get_config() (optional "
                                    "with --resume: the workdir's config.json is used)")
    p.add_argument("--workdir", help="the run's folder: checkpoints/, tensorboard/, "
                                     "samples/, export/, config.json, train.log")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --workdir from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the earlier run in --workdir and start over")
    p.add_argument("--set", dest="overrides", action="append", nargs="+", default=[],
                   metavar="KEY=VALUE", help="override config fields: --set a=1 b=2 (repeat "
                   "the flag or give several pairs; values are Python literals or strings; "
                   "--show-config lists the keys)")
    p.add_argument("--show-config", nargs="?", const="", default=None, metavar="CONFIG",
                   help="print every config key with its value and meaning, then exit "
                        "(CONFIG, else --config, else the defaults)")
    p.add_argument("--coordinator", default=os.environ.get("JAX_COORDINATOR_ADDRESS"),
                   help="multi-host: the coordinator's HOST:PORT")
    p.add_argument("--num-processes", type=int,
                   default=int(os.environ.get("JAX_NUM_PROCESSES", "0")) or None,
                   help="multi-host: the number of processes")
    p.add_argument("--process-id", type=int,
                   default=int(os.environ["JAX_PROCESS_ID"]) if "JAX_PROCESS_ID" in os.environ
                   else None, help="multi-host: this process's index")
    return p


def maybe_initialize_distributed(args: argparse.Namespace) -> None:
    """`jax.distributed.initialize` when a coordinator is given (flags or environment)."""
    if not args.coordinator:
        return
    import jax

    if args.num_processes is None or args.process_id is None:
        raise ConfigError("--coordinator needs --num-processes and --process-id")
    # CPU processes exchange gradients through gloo (GPUs and TPUs use their own fabric)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=args.coordinator,
                               num_processes=args.num_processes, process_id=args.process_id)


def _show_config(args: argparse.Namespace) -> int:
    from dreamlayer_jax.training.config import (
        TrainConfig,
        config_from_dict,
        load_config_file,
        parse_overrides,
        show_config,
    )

    path = args.show_config or args.config
    if path:
        cfg = load_config_file(path, args.overrides)
    else:
        cfg = config_from_dict(parse_overrides(args.overrides)) if args.overrides \
            else TrainConfig()
    print(show_config(cfg))
    return 0


def resolve_config(args: argparse.Namespace):
    """The run's config: with --resume the workdir's saved config.json (if any), else
    --config; --set pairs applied on top."""
    from dreamlayer_jax.training.config import RUN_CONFIG, load_config_file, load_run_config

    if args.resume and not args.overwrite:
        saved = load_run_config(args.workdir, args.overrides)
        if saved is not None:
            print(f"resuming with the run's config {Path(args.workdir) / RUN_CONFIG}"
                  + (" (--config ignored)" if args.config else ""))
            return saved
    if not args.config:
        raise ConfigError("--config is required (with --resume too when the workdir has no "
                          "saved config.json)")
    return load_config_file(args.config, args.overrides)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.show_config is not None:
        return _show_config(args)
    if not args.workdir:
        raise InputError("the following arguments are required: --workdir")
    if args.resume and args.overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: pick one")
    cfg = resolve_config(args)  # a bad config fails before jax loads
    from dreamlayer_jax.training.loop import check_workdir

    if not args.overwrite:  # refused before the model loads
        check_workdir(Path(args.workdir), resume=args.resume, overwrite=False)
    maybe_initialize_distributed(args)
    from dreamlayer_jax.training.loop import Trainer

    # library chatter (orbax, absl, XLA) goes to WORKDIR/train.log; errors stay one line
    with library_output_to_log(Path(args.workdir)) as terminal:
        trainer = Trainer(cfg, args.workdir, progress_stream=terminal)
        history = trainer.run(resume=args.resume, overwrite=args.overwrite)
    if history:
        step, loss = history[-1]
        print(f"trained to step {step}, last loss {loss:.4f}; model in {args.workdir}/export")
    else:
        print(f"nothing to train: {args.workdir} is already at step {cfg.num_steps} "
              "(raise num_steps with --set num_steps=N to continue)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Errors (bad flags included) are one line on stderr and exit code 2."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
