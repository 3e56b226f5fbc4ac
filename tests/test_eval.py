import math

import pytest
import torch

import rsparse
from rsparse.eval import perplexity, text_windows, window_nll
from tests.conftest import random_tokens, tiny_model


def _manual_ppl(model, windows, start):
    with torch.no_grad():
        logits = model(windows).logits[:, start - 1 : -1]
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, start:].reshape(-1))
    return math.exp(nll.item())


def test_strict_and_deployment_match_a_full_forward_on_a_dense_model():
    model = tiny_model()
    windows = random_tokens(3, 24, 0)
    assert perplexity(model, windows, batch_size=2) == pytest.approx(_manual_ppl(model, windows, 1), rel=1e-5)
    got = perplexity(model, windows, protocol="deployment", context=10)
    assert got == pytest.approx(_manual_ppl(model, windows, 10), rel=1e-4)


def test_window_nll_is_each_windows_mean_and_averages_to_the_perplexity(calib):
    model = tiny_model()
    rsparse.sparsify(model, 0.5, calibration=calib, show_progress=False)
    windows = random_tokens(3, 20, 5)
    per_window = window_nll(model, windows, batch_size=2)
    assert per_window.shape == (3,) and per_window.dtype == torch.float64
    for i in range(3):  # each window alone, every token sparse, as strict scores it
        assert math.exp(per_window[i].item()) == pytest.approx(perplexity(model, windows[i : i + 1]), rel=1e-6)
    assert math.exp(per_window.mean().item()) == pytest.approx(perplexity(model, windows), rel=1e-6)
    assert len(set(per_window.tolist())) == 3  # windows of different text do not score alike


def test_protocols_differ_once_sparse_and_modes_are_restored(calib):
    model = tiny_model()
    rsparse.sparsify(model, 0.6, calibration=calib, show_progress=False)
    windows = random_tokens(2, 24, 3)
    rsparse.set_mode(model, "dense")
    dense_tail = _manual_ppl(model, windows, 12)
    strict = perplexity(model, windows)
    deployment = perplexity(model, windows, protocol="deployment", context=12)
    modes = {m.mode for m in model.modules() if isinstance(m, rsparse.RSparseLinear)}
    assert modes == {"dense"}  # perplexity restores the modes it changed
    assert deployment != pytest.approx(dense_tail, rel=1e-4)  # the continuation really ran sparse
    # ... and so did every token under strict (on random weights sparse is not always worse, only different)
    assert strict != pytest.approx(_manual_ppl(model, windows, 1), rel=1e-4)


def test_bad_protocol_and_context():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"protocol must be one of \['strict', 'deployment'\]"):
        perplexity(model, random_tokens(1, 8, 0), protocol="lenient")
    with pytest.raises(ValueError, match="deployment protocol needs 0 < context < 8"):
        perplexity(model, random_tokens(1, 8, 0), protocol="deployment", context=8)


def test_text_windows_too_short():
    class Tok:
        eos_token_id = 2

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [5] * len(text)}

    assert text_windows(["abcdef"] * 3, Tok(), 7, 4).shape == (3, 7)
    with pytest.raises(ValueError, match="fewer than one window of 64"):
        text_windows(["abc"], Tok(), 64, 1)


# --- zero-shot multiple choice ---------------------------------------------------------------

import re
import zlib

from rsparse.eval import PROTOCOLS, TASKS, Item, encode_pair, loglikelihoods, multiple_choice, read_task
from tests.conftest import VOCAB


class WordTokenizer:
    """Whitespace-word tokenizer into the tiny vocabulary: a word keeps its leading spaces."""

    bos_token_id, eos_token_id = 1, 2

    def __call__(self, text, add_special_tokens=False):
        pieces = re.findall(r"\s*\S+|\s+$", text)
        return {"input_ids": [3 + zlib.crc32(p.encode()) % (VOCAB - 3) for p in pieces]}


def test_read_task_formats():
    sizes = {"piqa": 1838, "hellaswag": 10042, "arc_easy": 570, "winogrande": 1267, "boolq": 3270}
    for task in TASKS:
        items = read_task(task)
        assert len(items) == sizes[task]
        assert all(0 <= it.gold < len(it.choices) for it in items)
    piqa = read_task("piqa", limit=5)
    assert all(it.context.startswith("Question: ") and it.context.endswith("\nAnswer:") for it in piqa)
    assert all(len(it.choices) == 2 and it.suffix is None for it in piqa)
    assert all(len(it.choices) == 4 and "[" not in it.context for it in read_task("hellaswag", limit=50))
    boolq = read_task("boolq", limit=5)
    assert all(it.choices == ("no", "yes") and it.context.endswith("?\nAnswer:") for it in boolq)
    wino = read_task("winogrande", limit=5)[0]
    (ctx1, cont1), (ctx2, cont2) = wino.requests()
    assert cont1 == cont2 and ctx1 != ctx2 and "_" not in ctx1 + cont1  # partial scoring: options fill the blank
    assert read_task("arc_easy", limit=3)[0].requests()[0][1].startswith(" ")


def test_read_task_subsets_are_seeded_and_nested():
    small, large = read_task("arc_easy", limit=20, seed=3), read_task("arc_easy", limit=60, seed=3)
    assert small == read_task("arc_easy", limit=20, seed=3)
    assert set(small) <= set(large)
    assert small != read_task("arc_easy", limit=20, seed=4)


def test_bad_task_protocol_and_limit():
    with pytest.raises(ValueError, match=r"task must be one of \['piqa', 'hellaswag', 'arc_easy'"):
        read_task("mmlu")
    with pytest.raises(ValueError, match="limit must be a positive int"):
        read_task("piqa", limit=0)
    with pytest.raises(ValueError, match=r"protocol must be one of \['strict', 'deployment'\]"):
        multiple_choice(tiny_model(), WordTokenizer(), "piqa", protocol="lenient", limit=1)
    with pytest.raises(ValueError, match="must both hold tokens"):
        loglikelihoods(tiny_model(), [([5, 6], [])])


def test_encode_pair_moves_trailing_space_and_handles_empty_context():
    tok = WordTokenizer()
    assert encode_pair(tok, "a b ", "c") == encode_pair(tok, "a b", " c")
    ctx, cont = encode_pair(tok, "", "x y")
    assert ctx == [tok.bos_token_id] and cont == tok("x y")["input_ids"]


def _requests(seed):
    g = torch.Generator().manual_seed(seed)
    ctx = torch.randint(3, VOCAB, (12,), generator=g).tolist()
    conts = [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (1, 4, 7)]
    other = torch.randint(3, VOCAB, (10,), generator=g).tolist()
    return [(ctx, c) for c in conts] + [(other, conts[1])]


def _full_forward(model, ctx, cont):
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = model(ids).logits[0, len(ctx) - 1 : -1].float().log_softmax(-1)
    return logp.gather(1, torch.tensor(cont)[:, None]).sum().item()


def _decode_step_by_step(model, ctx, cont):
    """What `generate` does: prefill the context (dense in mode "auto"), then one token per call."""
    rsparse.set_mode(model, "auto")
    with torch.no_grad():
        out = model(torch.tensor([ctx]), use_cache=True)
        total = 0.0
        for t, token in enumerate(cont):
            total += out.logits[0, -1].float().log_softmax(-1)[token].item()
            if t + 1 < len(cont):
                out = model(torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)
    return total


def test_dense_model_gives_identical_protocols():
    model = tiny_model()
    requests = _requests(0)
    strict = loglikelihoods(model, requests, protocol="strict", batch_size=2)
    assert strict == loglikelihoods(model, requests, protocol="deployment", batch_size=2)
    for (ctx, cont), (logp, _) in zip(requests, strict):
        assert logp == pytest.approx(_full_forward(model, ctx, cont), abs=1e-4)
    items = read_task("arc_easy", limit=6)
    tok = WordTokenizer()
    a = multiple_choice(model, tok, "arc_easy", items=items, show_progress=False)
    b = multiple_choice(model, tok, "arc_easy", items=items, protocol="deployment", show_progress=False)
    assert {k: a[k] for k in ("n", "acc", "acc_norm")} == {k: b[k] for k in ("n", "acc", "acc_norm")}
    for hits, acc in ((a["hits"], a["acc"]), (a["hits_norm"], a["acc_norm"])):  # per item, for paired comparisons
        assert len(hits) == a["n"] and set(hits) <= {"0", "1"} and hits.count("1") / a["n"] == acc


def test_sparse_model_protocols_match_brute_force_references(calib):
    model = tiny_model()
    rsparse.sparsify(model, 0.6, calibration=calib, show_progress=False)
    rsparse.set_mode(model, "dense")
    requests = _requests(1)
    strict = loglikelihoods(model, requests, protocol="strict", batch_size=2)
    deployment = loglikelihoods(model, requests, protocol="deployment", batch_size=16)
    assert {m.mode for m in model.modules() if isinstance(m, rsparse.RSparseLinear)} == {"dense"}
    rsparse.set_mode(model, "sparse")
    assert [s for s, _ in strict] == pytest.approx([_full_forward(model, *r) for r in requests], abs=1e-4)
    stepped = [_decode_step_by_step(model, *r) for r in requests]
    assert [d for d, _ in deployment] == pytest.approx(stepped, abs=1e-4)
    # A one-token continuation is predicted by the dense prefill alone under deployment.
    rsparse.set_mode(model, "dense")
    assert deployment[0][0] == pytest.approx(_full_forward(model, *requests[0]), abs=1e-5)
    assert all(abs(s - d) > 1e-3 for (s, _), (d, _) in zip(strict[1:], deployment[1:]))


def test_shared_dense_prefill_store(calib):
    dense, sparse = tiny_model(), tiny_model()
    rsparse.sparsify(sparse, 0.5, calibration=calib, show_progress=False)
    requests = _requests(2)
    store: dict = {}
    first = loglikelihoods(dense, requests, protocol="deployment", dense_prefill=store)
    assert len(store) == 1  # one entry per prefill call: both contexts fit one
    assert first == loglikelihoods(dense, requests, protocol="deployment", dense_prefill=store)
    one_per_call: dict = {}
    unbatched = loglikelihoods(dense, requests, protocol="deployment", dense_prefill=one_per_call, batch_size=1)
    assert [s for s, _ in unbatched] == pytest.approx([s for s, _ in first], abs=1e-4)
    assert len(one_per_call) == 2
    plain = loglikelihoods(sparse, requests, protocol="deployment")
    shared = loglikelihoods(sparse, requests, protocol="deployment", dense_prefill=store)
    assert [s for s, _ in shared] == pytest.approx([p for p, _ in plain], abs=1e-4)
    assert loglikelihoods(sparse, requests, protocol="deployment", dense_prefill=store) == shared  # store unchanged


def test_multiple_choice_accuracy_is_the_argmax_of_loglikelihoods(calib):
    model = tiny_model()
    rsparse.sparsify(model, 0.5, calibration=calib, show_progress=False)
    tok = WordTokenizer()
    items = read_task("piqa", limit=8, seed=1) + [
        Item("the cat sat on the", ("mat", "dog ran far away"), 0),
    ]
    got = multiple_choice(model, tok, "piqa", items=items, protocol="deployment", show_progress=False)
    hits = hits_norm = 0
    for item in items:
        scores = [lp for lp, _ in loglikelihoods(model, [encode_pair(tok, c, x) for c, x in item.requests()],
                                                  protocol="deployment")]
        normed = [s / n for s, n in zip(scores, item.lengths())]
        hits += scores.index(max(scores)) == item.gold
        hits_norm += normed.index(max(normed)) == item.gold
    assert (got["task"], got["protocol"], got["n"]) == ("piqa", "deployment", 9)
    assert got["acc"] == hits / 9 and got["acc_norm"] == hits_norm / 9
    assert got["tokens"] > 0 and 0 <= got["acc_stderr"] < 0.5
    assert set(PROTOCOLS) == {"strict", "deployment"}
