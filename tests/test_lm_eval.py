"""The lm-evaluation-harness adapter on a tiny sparsified model, with a task built from local data."""

import pytest
import torch

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is an optional extra: pip install 'rsparse[lm_eval]'")

import rsparse  # noqa: E402
from rsparse.eval import encode_pair, loglikelihoods, multiple_choice, read_offline_dataset, read_task  # noqa: E402
from rsparse.lm_eval import RSparseLM  # noqa: E402
from tests.conftest import VOCAB, tiny_model  # noqa: E402
from tests.test_eval import WordTokenizer  # noqa: E402


class CharTokenizer:
    """One token per character (ids 3..VOCAB-1), with decode: enough for generation tests."""

    bos_token_id, eos_token_id = 1, 2

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [3 + ord(ch) % (VOCAB - 3) for ch in text]}

    def decode(self, ids):
        return "".join(chr(i - 3 + 32) if 32 <= i - 3 + 32 < 127 else "?" for i in ids)


def _instance(kind, args, idx=0):
    from lm_eval.api.instance import Instance

    return Instance(request_type=kind, doc={}, arguments=args, idx=idx)


@pytest.fixture
def sparse_model(calib):
    model = tiny_model()
    rsparse.sparsify(model, 0.5, calibration=calib, show_progress=False)
    return model


def test_harness_task_from_local_data_matches_multiple_choice(sparse_model):
    import datasets
    import lm_eval
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks import TaskManager

    rows = read_offline_dataset("ai2_arc", "ARC-Easy")[:12]
    task = ConfigurableTask(config={
        "task": "arc_easy_local",
        "custom_dataset": lambda **_: datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows)}),
        "output_type": "multiple_choice",
        "validation_split": "validation",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_choice": "{{choices.text}}",
        "doc_to_target": "{{choices.label.index(answerKey)}}",
        "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
    })
    tok = WordTokenizer()
    manager = TaskManager(include_defaults=False)  # indexing the harness's own task files takes half a minute
    for protocol in ("strict", "deployment"):
        lm = RSparseLM(sparse_model, tok, protocol=protocol, show_progress=False)
        out = lm_eval.simple_evaluate(model=lm, tasks=[task], bootstrap_iters=0, task_manager=manager)
        got = out["results"]["arc_easy_local"]
        items = read_task("arc_easy")[:12]
        ours = multiple_choice(sparse_model, tok, "arc_easy", items=items, protocol=protocol, show_progress=False)
        assert got["acc,none"] == pytest.approx(ours["acc"])
        assert got["acc_norm,none"] == pytest.approx(ours["acc_norm"])
    assert {m.mode for m in sparse_model.modules() if isinstance(m, rsparse.RSparseLinear)} == {"auto"}


def test_loglikelihood_and_rolling(sparse_model):
    tok = WordTokenizer()
    lm = RSparseLM(sparse_model, tok, protocol="deployment", max_length=8, show_progress=False)
    pair = ("a b c d e f g h i j", " k l m")
    (logp, greedy), = lm.loglikelihood([_instance("loglikelihood", pair)])
    ctx, cont = encode_pair(tok, *pair)
    (expected, _), = loglikelihoods(sparse_model, [(ctx[-(9 - len(cont)):], cont)], protocol="deployment")
    assert logp == pytest.approx(expected) and isinstance(greedy, bool)
    text = " ".join("w%d" % i for i in range(19))
    ids = tok(text)["input_ids"]
    (rolling,) = lm.loglikelihood_rolling([_instance("loglikelihood_rolling", (text,))])
    windows = [([1], ids[:8]), ([ids[7]], ids[8:16]), ([ids[15]], ids[16:])]
    assert rolling == pytest.approx(sum(s for s, _ in loglikelihoods(sparse_model, windows, protocol="deployment")))


def test_generate_until_is_greedy_and_stops(sparse_model):
    tok = CharTokenizer()
    lm = RSparseLM(sparse_model, tok, protocol="strict", show_progress=False)
    (free,) = lm.generate_until([_instance("generate_until", ("hello there", {"max_gen_toks": 6}))])
    rsparse.set_mode(sparse_model, "sparse")
    ids = tok("hello there")["input_ids"]
    with torch.no_grad():
        for _ in range(6):
            ids.append(int(sparse_model(torch.tensor([ids])).logits[0, -1].argmax()))
    rsparse.set_mode(sparse_model, "auto")
    expected = tok.decode(ids[-6:])
    assert free == expected
    (cut,) = lm.generate_until([_instance("generate_until", ("hello there", {"max_gen_toks": 6, "until": [expected[2]]}))])
    assert cut == expected.split(expected[2])[0]
    with pytest.raises(ValueError, match="greedy decoding only"):
        lm.generate_until([_instance("generate_until", ("x", {"do_sample": True}))])


def test_bad_protocol():
    with pytest.raises(ValueError, match="protocol must be one of"):
        RSparseLM(tiny_model(), WordTokenizer(), protocol="lenient")
