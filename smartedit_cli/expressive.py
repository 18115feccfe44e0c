"""``smartedit expressive``: MGIE's expressive-instruction step (the `expressive-instructions` Prefect flow, run in
this process; no server needed).

    smartedit expressive --input shards/magicbrush --out shards/expressive --llava ckpt/llava-7b-v1-hf \
        --summariser ckpt/flan-t5-xl
"""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    """Add the ``expressive`` subcommand."""
    p = subparsers.add_parser("expressive", help="MGIE expressive instructions for edit-pair shards (sidecar, resumable)")
    p.add_argument("--input", action="append", required=True, help="an edit-pair dataset dir or shardindex.json (repeatable)")
    p.add_argument("--out", required=True, help="sidecar root (pass it to `smartedit train --model mgie --expressive`)")
    p.add_argument("--llava", required=True, help="frozen LLaVA dir (Hugging Face LlavaForConditionalGeneration)")
    p.add_argument("--summariser", required=True, help="local seq2seq summariser dir (e.g. Flan-T5)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--max-new-tokens", type=int, default=1024, help="LLaVA description length (official: 1024)")
    p.set_defaults(func=_expressive)


def _expressive(args: argparse.Namespace) -> int:
    from flows.expressive import expressive_instructions

    summary = expressive_instructions(inputs=args.input, output=args.out, llava_dir=args.llava,
                                      summariser_dir=args.summariser, device=args.device,
                                      max_new_tokens=args.max_new_tokens)
    print(json.dumps({k: v for k, v in summary.items() if k != "shards"}, indent=1))
    return 0
