"""`fluxnb workers --ray ADDRESS`: the warm Ray actors a `fluxnb generate --keep-warm` left on a cluster (what each
holds, where, how long idle); `--stop` ends them now instead of at their idle timeout."""

from __future__ import annotations

import argparse
import json

from ..runs.raybatch import list_warm_workers, stop_warm_workers


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser("workers", help="list the warm Ray actors (generate --keep-warm) on a cluster; --stop "
                            "ends them")
    parser.add_argument("--ray", metavar="ADDRESS", required=True, help="the cluster: auto (this node's), "
                        "HOST:6379 or ray://HEAD:10001")
    parser.add_argument("--stop", action="store_true", help="end every warm actor now (frees their memory and GPUs)")
    parser.add_argument("--json", action="store_true", help="print the listing as JSON")
    return parser


def render(workers: list[dict]) -> str:
    if not workers:
        return "no warm workers (fluxnb generate --ray ADDRESS --keep-warm SECONDS leaves some)"
    lines = [f"{len(workers)} warm worker(s):"]
    for w in workers:
        lines.append(f"  {w['name']}: {w['model']} on {w['host']} {w['device_name']} (pid {w['pid']}), "
                     f"{w['images_made']} image(s) made, idle {w['idle_seconds']:.0f} of {w['keep_warm']:.0f} s")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.stop:
        names = stop_warm_workers(args.ray)
        print(f"stopped {len(names)} warm worker(s)" + "".join(f"\n  {name}" for name in names))
        return 0
    workers = list_warm_workers(args.ray)
    print(json.dumps(workers, indent=2) if args.json else render(workers))
    return 0
