"""``oserve transfer-plan``: the weight transfer from one deployment to another, against its lower bound
and against reloading from storage."""

from __future__ import annotations

import json

from oserve.cli.common_args import add_cluster_model_args, resolve


def register(sub) -> None:
    p = sub.add_parser("transfer-plan", help="plan moving weights from one deployment to another")
    add_cluster_model_args(p)
    p.add_argument("--from", dest="current", required=True, help="current deployment, e.g. TP8x2")
    p.add_argument("--to", dest="target", required=True, help="target deployment, e.g. TP4x4")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from oserve.switching.transfer_report import render, transfer_report

    cluster, _model, cost = resolve(args)
    doc = transfer_report(args.current, args.target, cluster, cost)
    print(json.dumps(doc, indent=2) if args.json else render(doc))
    return 0
