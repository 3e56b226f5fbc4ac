import pytest
import torch

from rsparse.calibrate import MIN_CALIBRATION_TOKENS, ScoreHistogram, calibration_batches, self_generated_tokens
from tests.conftest import VOCAB, tiny_model

KW = dict(samples=4, seq_len=32, batch_size=2, seed=0)


@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.5, 0.7, 0.95])
def test_histogram_threshold_matches_exact_quantile(fraction):
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(200_000, generator=g).abs() * torch.rand(200_000, generator=g).exp()
    hist = ScoreHistogram()
    for chunk in scores.split(30_000):  # streamed in pieces
        hist.add(chunk)
    tau = hist.threshold(fraction)
    assert (scores > tau).float().mean().item() == pytest.approx(fraction, abs=2e-3)


def test_histogram_edge_fractions_and_zeros():
    hist = ScoreHistogram()
    hist.add(torch.tensor([0.0, 0.0, 0.0, 1.0]))
    assert hist.threshold(1.0) < 0  # keep everything, zeros included
    assert hist.threshold(0.0) == float("inf")
    assert hist.threshold(0.5) == 0.0  # only the non-zero score can be above
    assert hist.counts.numel() == ScoreHistogram.BINS + 1  # memory does not grow with the data


def test_self_generated_tokens_are_seeded_and_full_length():
    model = tiny_model()
    a = self_generated_tokens(model, 3, 20, seed=5)
    b = self_generated_tokens(model, 3, 20, seed=5)
    c = self_generated_tokens(model, 3, 20, seed=6)
    assert a.shape == (3, 20) and torch.equal(a, b) and not torch.equal(a, c)
    assert (a[:, 0] == model.config.bos_token_id).all()


def test_sources_tensor_iterable_and_text():
    model = tiny_model()
    tokens = torch.randint(0, VOCAB, (5, 20))
    batches, source = calibration_batches(model, tokens, None, **KW)
    assert source == "tokens" and torch.equal(torch.cat(batches), tokens) and len(batches) == 3
    batches, source = calibration_batches(model, [tokens[:2], tokens[2:, :10]], None, **KW)
    assert source == "tokens" and [b.shape for b in batches] == [(2, 20), (3, 10)]

    class CharTokenizer:
        eos_token_id = 2

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [3 + ord(ch) % 100 for ch in text]}

    batches, source = calibration_batches(model, ["some text " * 20] * 3, CharTokenizer(), **KW)
    assert source == "text" and sum(b.shape[0] for b in batches) == 4 and batches[0].shape[1] == 32


@pytest.mark.parametrize(
    "data,match",
    [
        ([], "calibration data is empty"),
        (torch.randint(0, VOCAB, (1, 10)), f"too short: 10 tokens, need at least {MIN_CALIBRATION_TOKENS}"),
        (torch.randn(4, 32), "must hold integer token ids, got dtype torch.float32"),
        (torch.randint(0, VOCAB, (64,)), r"must be a non-empty \[n, seq\] tensor"),
        (torch.full((2, 64), VOCAB), r"token ids in \[128, 128\], the model's vocabulary is \[0, 128\)"),
        (["text"], "no tokenizer was given"),
        ("just one string", "not a single string"),
        ([1, 2, 3], r"got an iterable of \['int'\]"),
    ],
)
def test_bad_calibration_data(data, match):
    with pytest.raises(ValueError, match=match):
        calibration_batches(tiny_model(), data, None, **KW)
