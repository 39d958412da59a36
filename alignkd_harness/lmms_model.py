"""lmms-eval's model class for alignkd's MobileVLM checkpoints (teacher, students, releases).

    lmms-eval --model alignkd --model_args pretrained=DIR[,tokenizer=DIR,batch_size=32,device=cpu,dtype=float32] \
        --tasks mme,gqa,... --output_path OUT --log_samples

Registered by the entry point `lmms_eval.models: alignkd` in pyproject.toml (lmms_plugin.py), so an
install of alignkd next to lmms-eval is all it takes. Only `generate_until` is implemented (every
one of the paper's six benchmarks is a generation task in lmms-eval); answers come from
answer.Answerer, the generation path of `alignkd eval`.
"""

from __future__ import annotations

from lmms_eval.api.model import lmms

from alignkd_harness.answer import Answerer, Request


class AlignKDMobileVLM(lmms):
    is_simple = True  # requests carry (context, gen_kwargs, doc_to_visual, doc_id, task, split)

    def __init__(self, pretrained: str, tokenizer: str | None = None, template: str = "v1", batch_size: int | str = 1,
                 max_new_tokens: int | str = 16, device: str | None = None, dtype: str = "float32",
                 max_batch_size: int | None = None, **kwargs) -> None:
        # batch_size, max_batch_size and device come from lmms-eval's own --batch_size / --device
        # (give them there, not in --model_args: lmms-eval passes both and Python refuses the pair)
        super().__init__()
        if kwargs:
            raise ValueError(f"--model_args: unknown key(s) {sorted(kwargs)}; known: pretrained, tokenizer, template, "
                             "max_new_tokens, dtype (batch size and device: --batch_size, --device)")
        size = 32 if str(batch_size).startswith("auto") else int(batch_size)  # "auto": no memory probe here
        self.answerer = Answerer(pretrained, tokenizer, template, size, int(max_new_tokens), device, dtype)
        self.batch_size_per_gpu = size

    def generate_until(self, requests) -> list[str]:
        asked = []
        for req in requests:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args[:6]
            doc = self.task_dict[task][split][doc_id]
            visuals = [v for v in (doc_to_visual(doc) or []) if v is not None]
            asked.append(Request(context, visuals, dict(gen_kwargs or {}), f"{task}/{split}/{doc_id}"))
        answers = self.answerer.answer(asked, progress=self.rank == 0)
        for req, a in zip(requests, answers):
            self.cache_hook.add_partial("generate_until", req.args, a)
        return answers

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        raise NotImplementedError("alignkd's lmms-eval model answers generation tasks only "
                                  "(output_type: generate_until)")

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("alignkd's lmms-eval model answers single-round generation tasks only")
