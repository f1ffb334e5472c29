#!/usr/bin/env python
"""Does a trained toy editor share the paper's premise? Cut its target->context attention by sampling
step range and block set, and measure identity kept and edit success (experiments.premise).

Held-out scenes are edited by the stock FluxKontextPipeline with the editor folder's recommended
settings (decontext_toy.json) while the attention of the target queries on the context keys is
blocked (or weakened) in the chosen steps and blocks; the toy reader scores every output. Also
reports the share of target attention on context per step (uncut run).

    python -m bench.premise                                    # data/toy_editor, 30 identities, the default cuts
    python -m bench.premise --identities 8 --cuts smoke        # quick
    python -m bench.premise --cuts none 'steps=first:1/4;blocks=single:0-25/38;factor=0.5'
    python -m bench.premise --out runs/premise/toy.json        # + runs/premise/toy.md
    python -m bench.premise --editor toy-ip2p --cuts goal      # the InstructPix2Pix toy: source input cut by step

Cuts: sets {sets}; named cuts {names}; or a raw specification 'steps=S;blocks=B;factor=F' with
S = all | first:N | last:N | first:A/B | last:A/B | 0-2,5 | each, B = all | a block specification
(e.g. single:0-25/38, double, single.3), F >= 0 (0 blocks, 0.5 halves).
"""

from __future__ import annotations

import argparse
import time

import torch

from experiments import premise

DEFAULT_THREADS = 1  # leave the other core of the 2-core development machine free


def main(argv=None) -> dict:
    doc = __doc__.format(sets=", ".join(premise.CUT_SETS), names=", ".join(premise.NAMED_CUTS))
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--editor",
        default=None,
        help="a toy editor ('toy' = the default, 'toy-v1', ..., 'toy-ip2p') or a trained toy editor folder",
    )
    ap.add_argument(
        "--identities", type=int, default=premise.DEFAULT_IDENTITIES, help="held-out identities (x 6 edits)"
    )
    ap.add_argument("--seed", type=int, default=premise.DEFAULT_SEED, help="sampler noise seed (and bootstrap seed)")
    ap.add_argument("--cuts", nargs="+", default=["default"], help="cut sets, named cuts or raw specifications")
    ap.add_argument(
        "--share-every-cut", action="store_true", help="measure the context share under every cut, not only uncut"
    )
    ap.add_argument("--batch", type=int, default=premise.DEFAULT_BATCH, help="edits per pipeline call")
    ap.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="torch CPU threads")
    ap.add_argument("--out", default=None, help="write the JSON here (.json) and the Markdown table beside it (.md)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    premise.parse_cuts(args.cuts)  # fail on a bad specification before loading anything
    t0 = time.time()
    result = premise.run_premise(
        args.editor,
        args.identities,
        args.seed,
        args.cuts,
        args.share_every_cut,
        args.batch,
        progress=not args.no_progress,
    )
    print(premise.markdown(result))
    print(f"wall time {time.time() - t0:.0f} s")
    if args.out:
        json_path, md_path = premise.write_outputs(result, args.out)
        print(f"wrote {json_path} and {md_path}")
    return result


if __name__ == "__main__":
    main()
