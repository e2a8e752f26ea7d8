"""``python -m mematte.data``: check a dataset root, or build a DIM-style test set.

    python -m mematte.data check data=composition1k data.root=/data/dim [more overrides]
    python -m mematte.data compose-test --fg FG --alpha ALPHA --bg VOC/JPEGImages \\
        --fg-names test_fg_names.txt --bg-names test_bg_names.txt [--trimaps TRIMAPS] --out DIR

``check`` composes ``conf/train.yaml`` with the overrides (Hydra compose API), instantiates
every split of ``data`` and prints, per split, the counts and the resolution range, or every
problem by file name. Exit status: 0 usable, 1 problems (no traceback), 2 bad usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# conf/ of a source checkout: src/mematte/data/__main__.py -> repository root
_DEFAULT_CONF = Path(__file__).resolve().parents[3] / "conf"


def _layout_error(err: BaseException) -> Any:
    """The DatasetLayoutError behind an exception (Hydra wraps constructor errors)."""
    from mematte.data.folders import DatasetLayoutError

    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, DatasetLayoutError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _root_cause(err: BaseException) -> BaseException:
    while err.__cause__ is not None:
        err = err.__cause__
    return err


def _describe(dataset: Any) -> str:
    describe = getattr(dataset, "describe", None)
    if callable(describe):
        return describe()
    return f"{len(dataset)} samples ({type(dataset).__name__})"


def check(overrides: Sequence[str], config_dir: Path, config_name: str = "train") -> int:
    """Validate every split of ``cfg.data``; print a report; return the exit status."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    from mematte.data.folders import format_problems

    if not (config_dir / f"{config_name}.yaml").is_file():
        print(
            f"no {config_name}.yaml in {config_dir}: pass --config-dir pointing at the project's conf/",
            file=sys.stderr,
        )
        return 2
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir.resolve()), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    except HydraException as err:
        print(f"cannot compose the config: {err}", file=sys.stderr)
        return 2
    finally:
        GlobalHydra.instance().clear()

    data = cfg.data
    name = cfg.hydra.runtime.choices.get("data", "data")
    try:
        root = OmegaConf.select(data, "root", default=None, throw_on_missing=True)
    except MissingMandatoryValue:
        hint = OmegaConf.select(data, "hint", default="") or ""
        print(f"data={name}: data.root is not set: pass data.root=/path/to/the/dataset ({hint.strip()})")
        return 1
    if root is not None and not Path(str(root)).expanduser().exists():
        hint = (OmegaConf.select(data, "hint", default="") or "").strip()
        print(f"data.root={root} does not exist: {hint}")
        return 1

    print(f"data={name}" + (f"  root={root}" if root is not None else ""))
    failed = 0
    for split in ("train", "val", "test"):
        node = data.get(f"{split}_set")
        if node is None:
            print(f"  {split}: not configured")
            continue
        try:
            dataset = instantiate(node, _convert_="partial")
        except Exception as err:  # report every failure as a problem, never a traceback
            layout = _layout_error(err)
            problems = layout.problems if layout is not None else [str(_root_cause(err))]
            failed += len(problems)
            print("  " + format_problems(split, problems).replace("\n", "\n  "))
            continue
        print(f"  {split}: {_describe(dataset)}")
        if len(dataset) > 0:
            try:  # headers were checked; decode one sample to catch truncated or odd files early
                dataset[0]
            except Exception as err:
                failed += 1
                print(f"    cannot load sample 0: {_root_cause(err)}")
    augment = data.get("augment")
    if augment is not None:
        try:
            print(f"  augment: {instantiate(augment, _convert_='partial')}".replace("\n", " "))
        except Exception as err:
            failed += 1
            print(f"  augment: cannot build: {_root_cause(err)}")
    region = data.get("eval_region")
    if region is not None:
        print(f"  eval_region: {region}")
    if failed:
        print(f"FAILED: {failed} problem{'s' if failed != 1 else ''} (listed above)")
        return 1
    print("OK")
    return 0


def compose_test(args: argparse.Namespace) -> int:
    """Run :func:`mematte.data.folders.compose_test_set` and report."""
    from mematte.data.folders import DatasetLayoutError, compose_test_set

    try:
        written = compose_test_set(
            fg=args.fg,
            alpha=args.alpha,
            bg=args.bg,
            out=args.out,
            fg_names=args.fg_names,
            bg_names=args.bg_names,
            trimaps=args.trimaps,
            num_bgs=args.num_bgs,
            overwrite=args.overwrite,
            workers=args.workers,
            seed=args.seed,
        )
    except (DatasetLayoutError, FileExistsError) as err:
        print(str(err), file=sys.stderr)
        return 1
    trimaps = f"copied from {args.trimaps}" if args.trimaps else f"generated from alpha (seed {args.seed})"
    print(f"wrote {written} composites to {args.out}/{{merged,alpha_copy,trimaps}} (trimaps {trimaps})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mematte.data", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    check_parser = commands.add_parser(
        "check", help="validate a dataset root: counts, resolutions, every problem by file name"
    )
    check_parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data=composition1k data.root=/data/dim")
    check_parser.add_argument("--config-dir", type=Path, default=_DEFAULT_CONF, help="the project's conf/ folder")
    check_parser.add_argument("--config-name", default="train", help="root config to compose (default: train)")

    compose_parser = commands.add_parser(
        "compose-test", help="composite test foregrounds on backgrounds exactly as DIM's test script does"
    )
    compose_parser.add_argument("--fg", required=True, type=Path, help="test foreground folder")
    compose_parser.add_argument("--alpha", required=True, type=Path, help="test alpha folder (same stems)")
    compose_parser.add_argument("--bg", required=True, type=Path, help="background folder (e.g. VOC2012/JPEGImages)")
    compose_parser.add_argument("--out", required=True, type=Path, help="output folder (gets merged/ alpha_copy/ trimaps/)")
    compose_parser.add_argument("--fg-names", type=Path, help="foreground order (test_fg_names.txt); default: sorted")
    compose_parser.add_argument("--bg-names", type=Path, help="background order (test_bg_names.txt); default: sorted")
    compose_parser.add_argument("--trimaps", type=Path, help="per-foreground trimaps to copy; default: generate")
    compose_parser.add_argument("--num-bgs", type=int, default=20, help="backgrounds per foreground (DIM: 20)")
    compose_parser.add_argument("--overwrite", action="store_true", help="replace existing output folders")
    compose_parser.add_argument("--workers", type=int, default=0, help="worker processes (0: this process)")
    compose_parser.add_argument("--seed", type=int, default=0, help="seed of generated trimaps")

    args = parser.parse_args(argv)
    if args.command == "check":
        return check(args.overrides, args.config_dir, args.config_name)
    return compose_test(args)


if __name__ == "__main__":
    raise SystemExit(main())
