"""Our models inside lm-evaluation-harness: a `TemplateLM` registered as model `mhc`.

    lm-eval run --model mhc --model_args checkpoint=RUN_DIR[,device=cuda,batch_size=16] --tasks ...

(or `python -m eval run ...`, which registers the model first). `checkpoint` is a training run directory
(its `model/`), a `model/` directory (model.safetensors + model.json) or a checkpoint directory
(state.safetensors + state.json); the tokenizer is the one the run was trained with (from the sidecar's data
record; `tokenizer=PATH` overrides).

Requests (lm-eval's three types):
- loglikelihood: batched; contexts + continuations are left-truncated to the model's window
  (`max_length` tokens of input, as lm-eval's HF model does), right-padded (causality makes that safe);
- loglikelihood_rolling: lm-eval's disjoint rolling windows over the whole text;
- generate_until: batched greedy decoding with the KV cache; sequences are left-padded to one length and
  padding is masked out of attention (exact: RoPE scores depend on relative positions only); generation
  stops at EOT, at `max_gen_toks` (default 256, as lm-eval's HF model; capped at half the model's window,
  which the positions cannot exceed) or when every sequence contains a stop string, and each output is
  truncated at the first occurrence of any stop string.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import Collator, normalize_gen_kwargs
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from common.devices import auto_device
from corpus import eot_id
from models.transformer import Transformer
from training.checkpoint import load_for_eval


@register_model("mhc")
class MhcLM(TemplateLM):
    def __init__(
        self,
        checkpoint: str | None = None,
        device: str = "cpu",
        batch_size: int | str = 8,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        tokenizer: str | None = None,
        model: Transformer | None = None,
        tokenizer_obj: Any = None,
        **kwargs: Any,
    ):
        super().__init__()
        if str(device).startswith("cuda") and auto_device() == "cpu":
            # lm-eval's CLI passes its default device (cuda) to every model; like its HF model, use the CPU.
            warnings.warn(f"device {device!r} requested but CUDA is not available; using the CPU", stacklevel=2)
            device = "cpu"
        if model is None:
            if checkpoint is None:
                raise ValueError("model_args need checkpoint=DIR (a training run, model or checkpoint directory)")
            model, tokenizer_obj, self.sidecar = load_for_eval(checkpoint, device, tokenizer)
        else:
            self.sidecar = {}
        self.model = model.eval()
        self.tokenizer = tokenizer_obj
        self._device = next(model.parameters()).device
        self.batch_size = 8 if str(batch_size).startswith("auto") else int(batch_size)
        # Default window: the sequence length the model was trained on (positions past it were never trained).
        trained = self.sidecar.get("train_config", {}).get("seq_len")
        self.max_length = int(max_length or trained or model.cfg.max_seq_len)
        self.max_gen_toks = int(max_gen_toks)
        self._eot = eot_id(self.tokenizer)

    # ---- tokenizer ---------------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self._eot

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self.tokenizer.encode(string, add_special_tokens=False).ids

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=False)

    # ---- loglikelihood -----------------------------------------------------------------------------
    @torch.no_grad()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        """requests: ((context, continuation), context_ids, continuation_ids) -> (sum logprob, is_greedy)."""

        def by_length(req):
            toks = req[1] + req[2]
            return -len(toks), tuple(toks)

        collator = Collator(requests, sort_fn=by_length)
        results = []
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="loglikelihood")
        for chunk in collator.get_batched(n=self.batch_size):
            # input = (context + continuation)[:-1], left-truncated to the window; score the continuation part
            inputs = [(ctx + cont)[-(self.max_length + 1) :][:-1] for _, ctx, cont in chunk]
            width = max(len(x) for x in inputs)
            batch = torch.full((len(inputs), width), self.eot_token_id, dtype=torch.long)
            for i, x in enumerate(inputs):
                batch[i, : len(x)] = torch.tensor(x)
            logprobs = F.log_softmax(self.model(batch.to(self._device)).float(), dim=-1)
            for i, (_, _, cont) in enumerate(chunk):
                n = len(inputs[i])
                cont = cont[-n:]  # a continuation longer than the window is scored on its last n tokens
                target = torch.tensor(cont, device=self._device)
                lp = logprobs[i, n - len(cont) : n]
                score = lp.gather(-1, target[:, None]).sum().item()
                results.append((score, bool((lp.argmax(-1) == target).all())))
                bar.update(1)
        bar.close()
        return collator.get_original(results)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for (text,) in tqdm([r.args for r in requests], disable=disable_tqdm, desc="loglikelihood_rolling"):
            windows = get_rolling_token_windows(
                token_list=self.tok_encode(text),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            )
            pieces = [((None, None), ctx, cont) for ctx, cont in map(make_disjoint_window, windows)]
            out.append(sum(score for score, _ in self._loglikelihood_tokens(pieces, disable_tqdm=True)))
        return out

    # ---- generation --------------------------------------------------------------------------------
    @torch.no_grad()
    def greedy(self, contexts: list[list[int]], max_new: int, until: list[str], use_cache: bool = True) -> list[str]:
        """Greedy continuations of a batch of token contexts (left-padded, padding masked out)."""
        B = len(contexts)
        width = max(len(c) for c in contexts)
        total = width + max_new
        tokens = torch.full((B, total), self.eot_token_id, dtype=torch.long, device=self._device)
        valid = torch.zeros(B, total, dtype=torch.bool, device=self._device)
        for i, ctx in enumerate(contexts):
            tokens[i, width - len(ctx) : width] = torch.tensor(ctx, device=self._device)
            valid[i, width - len(ctx) : total] = True
        generated: list[list[int]] = [[] for _ in range(B)]
        done = [False] * B
        cache = self.model.new_cache(B, total) if use_cache else None
        logits = self.model(tokens[:, :width], start_pos=0, cache=cache, key_valid=valid[:, :width])[:, -1]
        for step in range(max_new):
            nxt = logits.argmax(-1)
            pos = width + step
            tokens[:, pos] = nxt
            for i in range(B):
                if not done[i]:
                    generated[i].append(int(nxt[i]))
                    if int(nxt[i]) == self.eot_token_id:
                        done[i] = True
                    elif until and any(s in self.tok_decode(generated[i]) for s in until):
                        done[i] = True
            if all(done) or step == max_new - 1:
                break
            if use_cache:
                logits = self.model(tokens[:, pos : pos + 1], start_pos=pos, cache=cache, key_valid=valid[:, : pos + 1])
            else:
                logits = self.model(tokens[:, : pos + 1], key_valid=valid[:, : pos + 1])
            logits = logits[:, -1]
        texts = []
        for ids in generated:
            if ids and ids[-1] == self.eot_token_id:
                ids = ids[:-1]
            text = self.tok_decode(ids)
            for stop in until:  # truncate at the FIRST occurrence of any stop string
                if stop:
                    text = text.split(stop)[0]
            texts.append(text)
        return texts

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        def by_length(args):
            toks = self.tok_encode(args[0])
            return -len(toks), args[0]

        collator = Collator(
            [r.args for r in requests], sort_fn=by_length, group_by="gen_kwargs", group_fn=lambda x: x[1]
        )
        results = []
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="generate_until")
        for chunk in collator.get_batched(n=self.batch_size):
            kwargs = normalize_gen_kwargs(chunk[0][1], default_max_gen_toks=self.max_gen_toks)
            if kwargs.get("do_sample") and kwargs.get("temperature", 0) > 0:
                raise ValueError("the mhc model implements greedy decoding only (do_sample=False)")
            until = kwargs["until"] if isinstance(kwargs["until"], list) else [kwargs["until"]]
            until = [s for s in until if s]
            # The model cannot see past its window (RoPE table): cap the generation length so that at least half
            # the window stays for the context, then left-truncate the context to what remains.
            max_new = min(int(kwargs["max_gen_toks"]), self.max_length // 2)
            budget = self.max_length - max_new
            contexts = [self.tok_encode(ctx)[-budget:] or [self.prefix_token_id] for ctx, _ in chunk]
            results.extend(self.greedy(contexts, max_new, until))
            bar.update(len(chunk))
        bar.close()
        return collator.get_original(results)
