"""Folded norms and adds (`rsparse.fuse_norm`) A/B in one process: dense, then each target with the
fold as shipped, with the split-K launches forming the norm in every item (``PRENORM_MAX_ROWS``
unbounded: decode run 29's code), with its inputs loaded two steps ahead (``PRENORM_AHEAD``), and with
the fold off, and with every rsparse launch programmatic-dependent (``pdl``) or not. Same model and harness as `decode.py`
(Llama-3-8B shape, random bf16 weights, compiled static-cache decode, batch 1, prompt 128).

    python benchmarks/ablations/fold_ab.py --targets 0.4 --out $OUT/fold_ab.json
    python benchmarks/ablations/fold_ab.py --targets 0.4 0.5 0.7 --variants shipped "two ahead" "every item, two ahead" off \
        --out $OUT/fold_ab.json
    python benchmarks/ablations/fold_ab.py --inductor-pdl --targets 0.7 0.5 --variants shipped --out $OUT/ipdl.json  # run 34
    python benchmarks/ablations/fold_ab.py --targets 0.7 --variants shipped "no q rotary (bound)" "no rotary (bound)" shipped \
        --out $OUT/rotary_bound.json   # what folding the rotary embedding into the q/k/v launch could save at most
    python benchmarks/ablations/fold_ab.py --targets 0.5 --rho 0.8 --factor-bits 16 --variants shipped "ranked compact" \
        shipped --out $OUT/ranked.json   # kernel run 64's limits in a whole decode step (the norm folds only on compact)

``--inductor-pdl`` turns on programmatic dependent launch for inductor's own kernels for the whole process, dense
included (decode run 34: it helps the dense model, not the sparse one).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from decode import SEED, build_dense, sparsify_copy  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", type=float, nargs="+", default=[0.4])
    p.add_argument("--variants", nargs="+", default=["shipped", "every item", "off"],
                   choices=["shipped", "every item", "two ahead", "every item, two ahead", "off", "pdl", "no pdl",
                            "compact attention", "compact attention, any", "no q rotary (bound)", "no rotary (bound)",
                            "ranked compact", "prewait 0"],
                   help="shipped: as the package sets it; every item: split-K launches fold the norm into items of any "
                        "length; two ahead: the folded norm's inputs loaded two steps ahead (PRENORM_AHEAD); off: no fold; "
                        "pdl / no pdl: shipped, with every rsparse launch programmatic-dependent or not "
                        "(compact_gemv.LAUNCH_PDL); compact attention: q/k/v and o launches through the compact path at up to 35 %% "
                        "active (SMALL_COMPACT_MAX_ACTIVE), or at any fraction (\", any\"); no q rotary / no rotary (bound): shipped, with "
                        "the rotary embedding of q (or of q and k) skipped, wrong outputs: what folding it into the "
                        "q/k/v launch could save at most; ranked compact: wide layers with a rank on the compact path "
                        "wherever their shape allows (RANKED_COMPACT_MAX_ACTIVE before kernel run 64; only layers "
                        "with bf16 factors take the compact path); prewait 0: shipped, with every launch reading "
                        "nothing before its programmatic-dependent wait (sparse_linear.PREWAIT 0, before kernel run 82)")
    p.add_argument("--inductor-pdl", action="store_true",
                   help="programmatic dependent launch for inductor's own kernels too (torch._inductor.config.triton."
                        "enable_pdl), dense and sparse alike")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rho", type=float, default=1.0, help="uniform budgets' share on channels (1: no low-rank path)")
    p.add_argument("--factor-bits", type=int, default=4, choices=[4, 16])
    p.add_argument("--out", required=True)
    p.add_argument("--tiny", action="store_true", help="tiny widths on the CPU: a smoke test of this script")
    args = p.parse_args()
    args.model, args.device, args.dtype, args.shape, args.layers, args.attn = (
        None, "cpu" if args.tiny else "cuda", torch.float32 if args.tiny else torch.bfloat16, "llama3-8b", None, "sdpa")
    import rsparse
    from rsparse.bench import decode_speed
    from rsparse.fuse_norm import set_norm_fusion
    from rsparse.kernels import compact_gemv
    from rsparse.kernels import sparse_linear as kernels

    shipped_rows, shipped_ahead, shipped_pdl = kernels.PRENORM_MAX_ROWS, kernels.PRENORM_AHEAD, compact_gemv.LAUNCH_PDL
    shipped_small, shipped_ranked = kernels.SMALL_COMPACT_MAX_ACTIVE, kernels.RANKED_COMPACT_MAX_ACTIVE
    shipped_prewait = kernels.PREWAIT
    import transformers.models.llama.modeling_llama as llama

    shipped_rotary = llama.apply_rotary_pos_emb

    def k_rotary_only(q, k, cos, sin, *rest, **kw):  # a bound: q leaves unrotated (outputs are wrong)
        return q, shipped_rotary(k, k, cos, sin, *rest, **kw)[1]

    bounds = {"no q rotary (bound)": k_rotary_only, "no rotary (bound)": lambda q, k, *rest, **kw: (q, k)}
    if args.inductor_pdl:
        import torch._inductor.config as inductor_config

        if not hasattr(inductor_config.triton, "enable_pdl"):
            raise ValueError(f"--inductor-pdl needs torch._inductor.config.triton.enable_pdl; torch {torch.__version__} has none")
        inductor_config.triton.enable_pdl = True
    dense = build_dense(args)
    kw = dict(batch_size=1, prompt_len=128, new_tokens=args.new_tokens, compile=True, repeats=args.repeats, seed=SEED)
    out = Path(args.out)
    meta = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "torch": torch.__version__,
            "new_tokens": args.new_tokens, "repeats": args.repeats, "inductor_pdl": args.inductor_pdl, "rho": args.rho,
            "factor_bits": args.factor_bits}

    def save() -> None:  # after every row: a call cut short keeps what it measured
        out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))

    rows = [{"variant": "dense", **decode_speed(dense, **kw)}]
    save()
    print(f"dense {rows[-1]['ms_per_token']:.3f} ms/token", flush=True)
    for target in args.targets:
        model, _ = sparsify_copy(dense, target, args.device, rho=args.rho, factor_bits=args.factor_bits)
        rsparse.set_backend("triton" if args.device == "cuda" else "auto")
        for variant in args.variants:
            kernels.PRENORM_MAX_ROWS = 10**9 if variant in ("every item", "every item, two ahead") else shipped_rows
            kernels.PRENORM_AHEAD = variant in ("two ahead", "every item, two ahead") or (shipped_ahead and variant == "shipped")
            compact_gemv.LAUNCH_PDL = {"pdl": True, "no pdl": False}.get(variant, shipped_pdl)
            kernels.SMALL_COMPACT_MAX_ACTIVE = {"compact attention": 0.35, "compact attention, any": 1.0}.get(
                variant, shipped_small)
            kernels.RANKED_COMPACT_MAX_ACTIVE = ({"pair": 1.0, "single": 1.0} if variant == "ranked compact"
                                                 else shipped_ranked)
            llama.apply_rotary_pos_emb = bounds.get(variant, shipped_rotary)  # read by LlamaAttention.forward at call time
            kernels.PREWAIT = 0 if variant == "prewait 0" else shipped_prewait
            set_norm_fusion(model, variant != "off")
            torch._dynamo.reset()
            rows.append({"variant": variant, "target": target, **decode_speed(model, **kw)})
            save()
            print(f"{target:g} {variant}: {rows[-1]['ms_per_token']:.3f} ms/token", flush=True)
        kernels.PRENORM_MAX_ROWS, kernels.PRENORM_AHEAD = shipped_rows, shipped_ahead
        compact_gemv.LAUNCH_PDL, kernels.SMALL_COMPACT_MAX_ACTIVE = shipped_pdl, shipped_small
        kernels.RANKED_COMPACT_MAX_ACTIVE, kernels.PREWAIT = shipped_ranked, shipped_prewait
        llama.apply_rotary_pos_emb = shipped_rotary
        rsparse.set_backend("auto")
        del model


if __name__ == "__main__":
    main()
