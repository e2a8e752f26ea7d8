"""Checkpoints written by another mematte version: upgrade what changed, or say what to do.

Every mematte checkpoint records the package version that wrote it
(``ckpt["mematte"]["versions"]["mematte"]``). :func:`upgrade_checkpoint` runs on every load
(``eval.py``, ``predict.py``, ``init_from=``, teacher, resuming a run):

1. **Renamed weights** (:data:`KEY_RENAMES`): a key renamed in a later version is renamed in
   checkpoints written before it, so they load as they are (a log line lists the renames).
2. **Same version**: nothing else to check.
3. **Another version** (older, newer, or not recorded): the stored net config is built (on the
   ``meta`` device: no memory, no init cost) and its weights compared with the checkpoint's. If
   the config no longer builds, or keys or shapes differ, :class:`CheckpointVersionError` names
   the version that wrote the file, this version, what differs, and the fix: upgrade mematte
   (newer file) or export it with the version that wrote it to the official layout, which does
   not depend on mematte's versions (older file).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointVersionError", "KEY_RENAMES", "KeyRename", "checkpoint_version", "upgrade_checkpoint"]

log = logging.getLogger("mematte")

_LIST_LIMIT = 6


class CheckpointVersionError(ValueError):
    """A checkpoint from another mematte version does not fit this version's net."""


@dataclass(frozen=True)
class KeyRename:
    """A net weight renamed in mematte ``version``: files written before it say ``old``.

    Attributes:
        version: the first mematte version with the new name.
        old: regular expression matching the old key (of the net, without ``net.``).
        new: replacement (``re.sub`` syntax: ``\\1`` for groups).
    """

    version: str
    old: str
    new: str


# Renames of net weights across mematte versions, oldest first. None so far: 0.1.0 is the first
# released layout. A change that renames a parameter adds its entry here (and a stored old file
# under tests/fixtures/), so that earlier checkpoints keep loading.
KEY_RENAMES: tuple[KeyRename, ...] = ()


def _current_version() -> str:
    import mematte

    return mematte.__version__


def checkpoint_version(ckpt: Mapping[str, Any]) -> str | None:
    """The mematte version that wrote a checkpoint (None: not recorded)."""
    versions = (ckpt.get("mematte") or {}).get("versions") or {}
    version = versions.get("mematte") if isinstance(versions, Mapping) else None
    return str(version) if version else None


def _older(version: str | None, than: str) -> bool:
    """True when ``version`` precedes ``than`` (an unrecorded version counts as older)."""
    if version is None:
        return True
    from packaging.version import InvalidVersion, Version

    try:
        return Version(version) < Version(than)
    except InvalidVersion:
        return True


def _rename_keys(ckpt: dict[str, Any], version: str | None) -> list[str]:
    """Apply :data:`KEY_RENAMES` due for ``version`` to ``ckpt["state_dict"]`` in place."""
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        return []
    done = []
    for rename in KEY_RENAMES:
        if not _older(version, rename.version):
            continue
        pattern = re.compile(rename.old)
        for key in [k for k in state if k.startswith("net.")]:
            new = "net." + pattern.sub(rename.new, key[len("net."):])
            if new != key and new not in state:
                state[new] = state.pop(key)
                done.append(f"{key[len('net.'):]} → {new[len('net.'):]}")
    return done


def _fit_problems(ckpt: Mapping[str, Any]) -> list[str]:
    """How the checkpoint's weights differ from the net its config builds (empty: they fit)."""
    from mematte.checkpoints import build_net

    net_config = (ckpt.get("mematte") or {}).get("net_config")
    if not net_config:
        return ["it stores no net config"]
    try:
        try:
            with torch.device("meta"):
                net = build_net(net_config)
        except Exception:  # a module that computes with values while it is built: build for real
            net = build_net(net_config)
    except Exception as err:  # an argument or class this version does not have
        return [f"its net config does not build here ({type(err).__name__}: {err})"]
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    stored = {k[len("net."):]: tuple(v.shape) for k, v in ckpt.get("state_dict", {}).items()
              if k.startswith("net.") and isinstance(v, torch.Tensor)}
    problems = []
    for title, keys in (("missing weights", sorted(set(expected) - set(stored))),
                        ("unexpected weights", sorted(set(stored) - set(expected)))):
        if keys:
            more = f" and {len(keys) - _LIST_LIMIT} more" if len(keys) > _LIST_LIMIT else ""
            problems.append(f"{title}: {', '.join(keys[:_LIST_LIMIT])}{more}")
    shapes = [f"{k} {stored[k]} here {expected[k]}" for k in sorted(set(stored) & set(expected))
              if stored[k] != expected[k]]
    if shapes:
        problems.append("other shapes: " + "; ".join(shapes[:_LIST_LIMIT]))
    return problems


def _fix(path: Path, version: str | None, current: str) -> str:
    if version is not None and not _older(version, current):
        return f"Fix: upgrade mematte to {version} or later (pip install -U 'mematte>={version}')"
    install = f"pip install 'mematte=={version}'" if version else "the mematte version that wrote it"
    return (
        f"Fix: with {install}, export the net to the official layout, which every version reads "
        f"(python -m mematte.convert --from {path} --to net.pth --to-format official), then read "
        "net.pth here (ckpt_path=net.pth, init_from=net.pth, or python -m mematte.convert --from "
        "net.pth --to net.ckpt); or retrain with this version"
    )


def upgrade_checkpoint(ckpt: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """Make a mematte checkpoint written by any version loadable here, or raise why not.

    Args:
        ckpt: a loaded mematte checkpoint (``state_dict`` + ``mematte`` entries); changed in place.
        path: where it was read from (for messages).

    Returns:
        ``ckpt``, with renamed weights (:data:`KEY_RENAMES`) under their current names.

    Raises:
        CheckpointVersionError: written by another version and its net does not fit this one;
            the message names both versions, what differs and the fix.
    """
    path = Path(str(path))
    version, current = checkpoint_version(ckpt), _current_version()
    renamed = _rename_keys(ckpt, version)
    if renamed:
        log.info("%s (mematte %s): renamed %d weight(s) to this version's names: %s", path,
                 version or "version not recorded", len(renamed), "; ".join(renamed[:_LIST_LIMIT]))
    if version == current:
        return ckpt
    problems = _fit_problems(ckpt)
    if problems:
        writer = f"mematte {version}" if version else "a mematte version that did not record itself"
        raise CheckpointVersionError(
            f"{path} was written by {writer} (this is mematte {current}) and does not fit this "
            f"version's net: {'; '.join(problems)}. {_fix(path, version, current)}"
        )
    return ckpt
