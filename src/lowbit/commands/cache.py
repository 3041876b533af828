"""``lowbit cache clean``: remove what killed runs left behind (hidden ``.NAME.partial-*`` and
``.NAME.old-*`` temporaries whose owner process is gone), and report the bytes freed."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_cache_clean(args: argparse.Namespace) -> int:
    from lowbit.models.builtins import cache_root
    from lowbit.storage.partials import Cleanup, clean_tree

    folders = [Path(p) for p in args.folders] or [cache_root()]
    result = Cleanup()
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such folder")
        clean_tree(folder, result)
    for line in result.lines():
        print(line)
    print(f"removed {len(result.removed)} leftover(s), freed {result.freed / 1e6:.1f} MB "
          f"({result.freed} bytes); {len(result.kept)} left in place")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cache", help="lowbit's cache and the leftovers of killed runs")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = actions.add_parser("clean", help="remove temporaries of killed runs (owner process gone) "
                                         "under the cache folder or the given folders")
    c.add_argument("folders", nargs="*", metavar="FOLDER",
                   help="folders to scan, at any depth (default: the cache, $LOWBIT_CACHE or "
                        "~/.cache/lowbit)")
    c.set_defaults(handler=cmd_cache_clean)
