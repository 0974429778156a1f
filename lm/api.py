"""The front door: a trained run you can talk to, generate with and evaluate, in a few lines.

    import lm
    run = lm.load("grpo_arith_tiny")            # run dir, checkpoint dir, or experiment name
    run.chat([{"role": "user", "content": "What is 12 * 7?"}])        # -> "12 * 7 = <<12*7=84>>..."
    run.chat("Who are you?")                                           # one user turn
    run.generate(["Once upon a time"], max_new_tokens=40)              # -> [continuation]
    run.evaluate(tasks="arithmetic_easy,bpb", limit=50)                # -> results dict
    cfg = lm.experiment("shakespeare_char_cpu", "train.steps=100")     # a validated Config
    summary = lm.fit(cfg, workdir="/tmp/work")                       # then lm.load(summary["run_dir"])

One convention throughout: the run carries its config (`run.config`), tokenizer and parameters,
so nothing else needs passing around. Sampling is greedy unless `temperature` is given.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import experiments
from lm import conversation, report, runs, stages, train
from lm.config import Config, apply_overrides
from lm.eval import suite
from lm.sampling import Engine

Messages = Union[str, Sequence[dict]]


class Model:
    """A loaded run (`lm.load`): `config`, `tokenizer`, `params`, `step`, and the methods below."""

    def __init__(self, run: runs.Run):
        self.run = run
        self.config, self.tokenizer, self.params, self.step = (run.config, run.tokenizer,
                                                               run.params, run.step)
        self.is_chat = stages.is_chat(run.stage) and run.tokenizer.chat is not None
        self._engine: Optional[Engine] = None

    def __repr__(self) -> str:
        return (f"lm.Model({self.config.name!r}, stage={self.run.stage!r}, step={self.step}, "
                f"run_dir={self.run.run_dir!r})")

    @property
    def engine(self) -> Engine:
        """The sampling engine over this run (tools on for chat runs), made once."""
        if self._engine is None:
            tools = self.tokenizer.chat if self.is_chat else None
            self._engine = Engine(self.params, self.config.model, tokenizer=self.tokenizer,
                                  tools=tools)
        return self._engine

    def chat(self, messages: Messages, *, max_new_tokens: int = 256, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> str:
        """The assistant's reply to a conversation (a list of {"role", "content"} messages, or
        one user message as a string), calculator calls shown as `<<expr=result>>`."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        return conversation.reply_text(self.respond(
            {"messages": list(messages)}, max_new_tokens=max_new_tokens,
            temperature=temperature, top_k=top_k, top_p=top_p, seed=seed))

    def respond(self, conv: dict, *, max_new_tokens: int = 256, temperature: float = 0.0,
                top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                strict_calls: bool = False) -> list[dict]:
        """The assistant's next turn of a conversation (lm.conversation's dict, with `tools` if
        it offers functions) as parts: text, calculator calls and outputs, function calls.
        `strict_calls`: decoded under the offered functions' grammar (`lm.structured`)."""
        if not self.is_chat:
            raise ValueError(f"{self.config.name} is a {self.run.stage} run without the chat "
                             f"format: use generate()")
        prompt = conversation.render_for_completion(conv, self.tokenizer)
        budget = self._budget(len(prompt), max_new_tokens)
        kw = {"response_format": [{"type": "tools", "tools": conv["tools"]}]} \
            if strict_calls and conv.get("tools") else {}
        g = self.engine.generate([prompt], max_new_tokens=budget, temperature=temperature,
                                 top_k=top_k, top_p=top_p, seed=seed,
                                 stop_tokens=list(self.tokenizer.chat.stops), **kw)
        return conversation.parse_reply(g.row(0), self.tokenizer)

    def generate(self, prompts: Union[str, Sequence[str]], *, max_new_tokens: int = 64,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 seed: int = 0) -> list[str]:
        """Continuations of plain-text prompts (no chat format), one per prompt."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        bos = [] if self.tokenizer.bos_id is None else [self.tokenizer.bos_id]
        ids = [bos + self.tokenizer.encode(p) or [0] for p in prompts]
        budget = self._budget(max(map(len, ids)), max_new_tokens)
        stops = bos                                # a new document ends the continuation
        g = self.engine.generate(ids, max_new_tokens=budget, temperature=temperature,
                                 top_k=top_k, top_p=top_p, seed=seed, stop_tokens=stops)
        return [self.tokenizer.decode(g.row(r, strip_stop=True)) for r in range(len(ids))]

    def evaluate(self, tasks: Optional[str] = None, *, limit: int = 0, batch_size: int = 32,
                 progress: bool = False) -> dict:
        """Held-out evaluation (`lm.eval.suite`; default tasks by the run's stage): likelihood
        benchmarks, chat tasks through the engine, bits per byte."""
        names = [n for n in (tasks or suite.default_tasks(self.is_chat)).split(",") if n]
        todo = suite.plan(names, self.is_chat)
        return suite.evaluate(self.run, todo, limit=limit, batch_size=batch_size,
                              progress=progress)

    def _budget(self, prompt_len: int, want: int) -> int:
        room = self.config.model.block_size - prompt_len
        if room < 1:
            raise ValueError(f"the prompt is {prompt_len} tokens; the model's context is "
                             f"{self.config.model.block_size}")
        return max(1, min(want, room))


def load(spec: str, *, step: Optional[int] = None, workdir: Optional[str] = None) -> Model:
    """A trained run by run directory, checkpoint directory or experiment name (its latest run
    under `workdir`, default the current directory)."""
    return Model(runs.load(spec, step=step, workdir=workdir))


def experiment(name: str, *overrides: str) -> Config:
    """A registered experiment's config with `key=value` overrides (validated)."""
    return apply_overrides(experiments.get(name), list(overrides))


def fit(cfg: Union[str, Config], *, workdir: Optional[str] = None, resume: bool = False,
          progress: bool = True) -> dict:
    """Train a config (or an experiment by name) to the end, write its report card, and return
    the summary (its `run_dir` loads with `lm.load`)."""
    cfg = experiment(cfg) if isinstance(cfg, str) else cfg
    summary = train.run(cfg, workdir=workdir, resume=resume, progress=progress)
    if summary["complete"]:
        summary["report"] = report.write(summary["run_dir"])
    return summary
