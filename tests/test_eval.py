import math

import pytest
import torch

import rsparse
from rsparse.eval import perplexity, text_windows
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
    assert strict > _manual_ppl(model, windows, 1)  # and so did every token under strict


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
