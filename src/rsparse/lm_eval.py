"""An lm-evaluation-harness model backed by an rsparse model, under a named evaluation protocol.

The harness's own Hugging Face backend scores a (context, continuation) pair in one forward
call; an `RSparseLinear` in its default ``"auto"`` mode runs such a call dense, so a sparsified
model would silently score like the dense one. `RSparseLM` scores every request under
``"strict"`` (every token sparse) or ``"deployment"`` (prompt dense, continuation decoded
sparsely), with `rsparse.eval.loglikelihoods`.

Needs the optional extra: ``pip install "rsparse[lm_eval]"``. The harness downloads task data
from the Hugging Face Hub, so evaluating its registered tasks needs network access; offline,
build a task from local data (see ``tests/test_lm_eval.py``) or use `rsparse.eval.multiple_choice`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from rsparse.eval import _check_protocol, _device, _modes_restored, _set_modes, encode_pair, loglikelihoods

try:
    from lm_eval.api.model import LM
except ImportError as err:  # keep the message actionable: the extra is optional
    raise ImportError(
        "rsparse.lm_eval needs lm-evaluation-harness: pip install 'rsparse[lm_eval]' (or pip install lm_eval)"
    ) from err


class RSparseLM(LM):
    """lm-evaluation-harness ``LM`` for a sparsified (or reloaded, or dense) causal LM.

    Args:
        model (`nn.Module`): a causal LM, e.g. after `rsparse.sparsify` or `rsparse.from_pretrained`.
        tokenizer: its tokenizer (a ``transformers`` tokenizer; ``decode`` is needed for generation).
        protocol (`str`, defaults to ``"strict"``): ``"strict"`` or ``"deployment"``; recorded in
            `get_model_info`.
        batch_size (`int`, defaults to 32): most sequences per forward call (see `rsparse.eval.loglikelihoods`).
        max_length (`int`, *optional*): longest token sequence fed to the model; contexts are cut
            from the left to fit. Defaults to the model's ``max_position_embeddings`` (at most 4096).
        max_gen_toks (`int`, defaults to 256): generation length when a request does not set one.
        show_progress (`bool`, defaults to `True`): progress bars.

    Example:

    ```python
    >>> import lm_eval  # doctest: +SKIP
    >>> from rsparse.lm_eval import RSparseLM
    >>> rsparse.sparsify(model, target=0.5)  # doctest: +SKIP
    >>> lm_eval.simple_evaluate(model=RSparseLM(model, tokenizer), tasks=["arc_easy"])  # doctest: +SKIP
    ```
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        protocol: str = "strict",
        batch_size: int = 32,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        show_progress: bool = True,
    ) -> None:
        super().__init__()
        _check_protocol(protocol)
        if max_length is None:
            max_length = min(int(getattr(model.config, "max_position_embeddings", 2048)), 4096)
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {max_length}")
        self.model, self.tokenizer, self.protocol = model.eval(), tokenizer, protocol
        self.batch_size, self.max_length, self.max_gen_toks = batch_size, max_length, max_gen_toks
        self.show_progress = show_progress
        self._device = _device(model)

    def get_model_info(self) -> dict:
        """What the harness records about the model: its class and the protocol."""
        return {"model": type(self.model).__name__, "rsparse_protocol": self.protocol}

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _prefix_token(self) -> int:
        bos = getattr(self.tokenizer, "bos_token_id", None)
        return bos if bos is not None else self.tokenizer.eos_token_id

    def _fit(self, ctx: list[int], cont: list[int]) -> tuple[list[int], list[int]]:
        # The model reads ctx + cont[:-1]: keep the most recent context tokens that fit.
        room = self.max_length + 1 - len(cont)
        if room < 1:
            raise ValueError(f"a continuation of {len(cont)} tokens does not fit max_length={self.max_length}")
        return ctx[-room:], cont

    def _score(self, pairs: list[tuple[list[int], list[int]]], disable_tqdm: bool) -> list[tuple[float, bool]]:
        return loglikelihoods(
            self.model, pairs, protocol=self.protocol, batch_size=self.batch_size,
            show_progress=self.show_progress and not disable_tqdm, desc=f"rsparse [{self.protocol}]",
        )

    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """Log-likelihood of each ``(context, continuation)`` request and whether it is greedy."""
        pairs = [self._fit(*encode_pair(self.tokenizer, *req.args[:2])) for req in requests]
        return self._score(pairs, disable_tqdm)

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of each whole string, scored in disjoint windows of ``max_length`` tokens.

        Each window follows only the token before it (the BOS/EOS token for the first), so every
        token is scored exactly once.
        """
        pairs, owner = [], []
        for k, req in enumerate(requests):
            ids = self._encode(req.args[0])
            for start in range(0, len(ids), self.max_length):
                ctx = [ids[start - 1]] if start else [self._prefix_token()]
                pairs.append((ctx, ids[start : start + self.max_length]))
                owner.append(k)
        totals = [0.0] * len(requests)
        for k, (logp, _) in zip(owner, self._score(pairs, disable_tqdm)):
            totals[k] += logp
        return totals

    @torch.no_grad()
    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        """Greedy generation until a stop string, EOS or ``max_gen_toks``.

        The prompt runs sparse under ``"strict"`` and dense under ``"deployment"``; every generated
        token is decoded sparsely. Sampling is not supported (``do_sample=True`` raises).
        """
        outputs = []
        show = self.show_progress and not disable_tqdm
        for req in tqdm(requests, desc=f"rsparse generate [{self.protocol}]", disable=not show):
            context, kwargs = req.args[0], dict(req.args[1] or {})
            if kwargs.get("do_sample") or kwargs.get("temperature", 0.0) not in (0, 0.0, None):
                raise ValueError(f"generate_until supports greedy decoding only, got {kwargs}")
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.get("max_gen_toks", self.max_gen_toks))
            ctx = self._encode(context) or [self._prefix_token()]
            ctx = ctx[-max(1, self.max_length - max_new) :]
            outputs.append(self._greedy(ctx, until, max_new))
        return outputs

    def _greedy(self, ctx: list[int], until: list[str], max_new: int) -> str:
        eos = getattr(self.tokenizer, "eos_token_id", None)
        generated: list[int] = []
        text = ""
        with _modes_restored(self.model) as modules:
            _set_modes(modules, "sparse" if self.protocol == "strict" else "dense")
            out = self.model(input_ids=torch.tensor([ctx], device=self._device), use_cache=True, logits_to_keep=1)
            _set_modes(modules, "sparse")
            for _ in range(max_new):
                token = int(out.logits[0, -1].argmax())
                if token == eos:
                    break
                generated.append(token)
                text = self.tokenizer.decode(generated)
                if any(stop in text for stop in until):
                    break
                out = self.model(
                    input_ids=torch.tensor([[token]], device=self._device), past_key_values=out.past_key_values,
                    use_cache=True,
                )
        for stop in until:
            text = text.split(stop)[0] if stop else text
        return text
