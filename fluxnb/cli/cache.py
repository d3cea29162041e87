"""`fluxnb cache`: the persistent torch.compile cache: where it is, its size, which GPU and entries it is warm for;
`--clear` deletes it (the next process compiles again)."""

from __future__ import annotations

import argparse
import json

from ..core.units import human_bytes
from ..models import compile_cache


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser("cache", help="show the persistent torch.compile cache (size, keys, warm for which GPU); "
                            "--clear deletes it")
    parser.add_argument("--clear", action="store_true", help="delete the compile cache (every key, or --key's)")
    parser.add_argument("--key", help="only this key's folder (as listed), e.g. this machine's")
    parser.add_argument("--json", action="store_true", help="print the listing as JSON")
    return parser


def render(listing: dict) -> str:
    lines = [f"compile cache: {listing['root']}",
             f"this machine's key: {listing['this_machine_key']} ({'warm' if listing['warm_here'] else 'cold'})"]
    if not listing["folders"]:
        lines.append("  (empty: the first compiled image on this machine will fill it)")
    for folder in listing["folders"]:
        mark = " <- this machine" if folder["this_machine"] else ""
        lines.append(f"  {folder['key']}: {human_bytes(folder['bytes'])}, {folder['entries']} entries{mark}")
        lines += [f"    warm for {label}" for label in folder["warm_for"]]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.clear:
        removed = compile_cache.clear(key=args.key)
        print("removed:\n  " + "\n  ".join(removed) if removed else "nothing to remove")
        return 0
    listing = compile_cache.describe()
    if args.key:
        listing["folders"] = [f for f in listing["folders"] if f["key"] == args.key]
    print(json.dumps(listing, indent=2) if args.json else render(listing))
    return 0
