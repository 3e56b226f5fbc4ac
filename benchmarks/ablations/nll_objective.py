"""Ablation (issue 4): score candidate budgets by the held-out tokens' NLL instead of KL to dense.

    OMP_NUM_THREADS=1 python benchmarks/ablations/nll_objective.py 0.25     # holdout share

The search's refinement scores each candidate allocation by the mean KL(dense ‖ sparse) of
next-token distributions on held-out calibration sequences. The evaluation metric is perplexity,
i.e. the NLL of the true next tokens. This script swaps the refinement's objective for that NLL
(same held-out tokens, every token sparse) and prints the strict held-out perplexity of
SmolLM2-135M at target 0.5 (16 x 256 BoolQ calibration tokens, seed 0; 8 x 512 held-out tokens).
Result: benchmarks/NOTES.md, budget search notes (run at commit 1abb222, before `_Evaluator.install`
was split out of `__call__`; the scoring is the same).
"""
import copy, sys, time, torch
import rsparse
from rsparse import search
from rsparse.eval import boolq_passages, load_offline_model, perplexity, text_windows


def nll_call(self, budgets):
    self.install(budgets)
    total, count = 0.0, 0
    for batch in self.heldout:
        logp = search._logprobs(self.model, batch)[:, :-1]
        total += float(-logp.gather(-1, batch[:, 1:, None]).sum())
        count += batch[:, 1:].numel()
    return total / count


search._Evaluator.__call__ = nll_call
torch.manual_seed(0)
model, tok = load_offline_model()
held = text_windows(boolq_passages("heldout"), tok, 512, 8)
calib = text_windows(boolq_passages("calibration"), tok, 256, 16)
frac = float(sys.argv[1]) if len(sys.argv) > 1 else 0.25
sp = copy.deepcopy(model)
t = time.time()
rsparse.sparsify(sp, 0.5, calibration=calib, seed=0, show_progress=False,
                 config=rsparse.RSparseConfig(search_holdout=frac))
print(sys.argv[1:], "sparsify", round(time.time() - t), "s", flush=True)
print(sys.argv[1:], "ppl", perplexity(sp, held, protocol="strict"), flush=True)
