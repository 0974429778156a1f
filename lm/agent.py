"""An agent loop: a conversation with Python functions as tools, until the model answers (a reply
without calls) or a step or time limit is hit. The model is a run (through its engine) or any
OpenAI-compatible server (through the official `openai` client), so the same loop drives ours and
anyone's.

    from lm import agent
    def get_weather(city: str) -> dict:
        "The weather now in a city."
        return {"temp_c": 4, "sky": "rainy"}
    result = agent.run(agent.EngineModel(lm.load("chat_tiny_sft")), [get_weather],
                       "What's the weather in Oslo?", trace="trace.jsonl")
    result.answer, result.stopped, result.messages

    python -m lm.agent --run chat_tiny_sft --tools calculator,lookup_price "What do eggs cost?"
    python -m lm.agent --url http://127.0.0.1:8000/v1 --model chat_tiny_sft --tools calculator ...
    python -m lm.agent --run chat_tiny_sft --task agent_steps --limit 200 --json   # accuracy

Every step is one JSONL line in `trace` (the model's text and calls, each call's arguments,
result or error, and seconds). A call to an unknown function, arguments that are not an object,
or a function that raises are answered with an error result the model sees (`{"error": ...}`);
the loop goes on. Limits: `max_steps` model turns, `time_limit_s` seconds (checked before each
turn); `stopped` says which ended it ("answer", "max_steps", "time_limit").
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import sys
import time
from typing import Any, Callable, Optional, Sequence

from lm import api
from lm import conversation as chat
from lm import tasks
from lm.tasks.function_calling import same_args
from lm.tools_calc import compute

JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array",
              dict: "object"}


@dataclasses.dataclass
class Tool:
    name: str
    fn: Callable[..., Any]
    description: str = ""
    parameters: dict = dataclasses.field(default_factory=lambda: {"type": "object",
                                                                  "properties": {}})

    def definition(self) -> dict:
        """OpenAI's shape of this tool."""
        return {"type": "function", "function": {"name": self.name,
                                                 "description": self.description,
                                                 "parameters": self.parameters}}


def tool(fn: Callable, name: Optional[str] = None) -> Tool:
    """A Tool from a Python function: its name, docstring's first line, and a JSON Schema of its
    parameters from their annotations (str, int, float, bool, list, dict; others: string)."""
    if isinstance(fn, Tool):
        return fn
    props, required = {}, []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        props[p.name] = {"type": JSON_TYPES.get(p.annotation, "string")}
        if p.default is inspect.Parameter.empty:
            required.append(p.name)
    doc = (inspect.getdoc(fn) or "").strip().splitlines()
    return Tool(name or fn.__name__, fn, doc[0] if doc else "",
                {"type": "object", "properties": props, "required": required})


# ---- models ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class Turn:
    text: str
    calls: list[dict]           # {"id", "name", "arguments" (dict)} or with "error"


class EngineModel:
    """A loaded run (lm.load) answering through its own engine (`strict`: calls decoded under
    the offered functions' grammar, as for OpenAI's strict functions)."""

    def __init__(self, model, *, max_new_tokens: int = 256, temperature: float = 0.0,
                 seed: int = 0, strict: bool = False):
        self.model, self.max_new_tokens = model, max_new_tokens
        self.temperature, self.seed, self.strict = temperature, seed, strict

    def turn(self, messages: list[dict], tools: list[dict], step: int) -> Turn:
        parts = self.model.respond({"messages": _lm_messages(messages), "tools": tools},
                                   max_new_tokens=self.max_new_tokens,
                                   temperature=self.temperature, seed=self.seed + step,
                                   strict_calls=self.strict)
        text = chat.answer_text(parts)
        calls = [dict(c, id=f"call_{step}_{k}") for k, c in enumerate(chat.tool_calls(parts))]
        return Turn(text, calls)


class OpenAIModel:
    """Any OpenAI-compatible chat endpoint, through the official client."""

    def __init__(self, base_url: str, model: str, *, api_key: str = "unused",
                 max_tokens: int = 256, temperature: float = 0.0, timeout: float = 120.0):
        import openai
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout)
        self.model, self.max_tokens, self.temperature = model, max_tokens, temperature

    def turn(self, messages: list[dict], tools: list[dict], step: int) -> Turn:
        kw = {"tools": tools} if tools else {}
        r = self.client.chat.completions.create(model=self.model, messages=messages,
                                                temperature=self.temperature,
                                                max_tokens=self.max_tokens, **kw)
        m = r.choices[0].message
        calls = []
        for c in m.tool_calls or []:
            call = {"id": c.id, "name": c.function.name, "text": c.function.arguments}
            try:
                args = json.loads(c.function.arguments or "{}")
            except json.JSONDecodeError as e:
                args, call["error"] = None, f"arguments are not JSON ({e.msg})"
            if isinstance(args, dict):
                call["arguments"] = args
            elif "error" not in call:
                call["error"] = "arguments are not a JSON object"
            calls.append(call)
        return Turn(m.content or "", calls)


def _lm_messages(messages: list[dict]) -> list[dict]:
    """OpenAI-shaped messages (assistant tool_calls, role tool) as lm's conversation turns."""
    out = []
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            parts = ([{"type": "text", "text": m["content"]}] if m.get("content") else []) + [
                {"type": "tool_call", "id": c["id"], "name": c["function"]["name"],
                 "arguments": c["function"]["arguments"]} for c in m["tool_calls"]]
            out.append({"role": "assistant", "content": parts})
        elif m["role"] == "tool":
            out.append({"role": "tool", "tool_call_id": m["tool_call_id"],
                        "content": m["content"]})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    return out


# ---- the loop -------------------------------------------------------------------------------------

@dataclasses.dataclass
class Result:
    answer: Optional[str]
    stopped: str                 # 'answer' | 'max_steps' | 'time_limit'
    steps: int
    messages: list[dict]


def call_tool(tools: dict[str, Tool], call: dict) -> tuple[str, bool]:
    """(the result message's content, ok): the function's return value as JSON, or an error."""
    if "error" in call:
        return json.dumps({"error": f"malformed call: {call['error']}"}), False
    t = tools.get(call["name"])
    if t is None:
        return json.dumps({"error": f"unknown function {call['name']!r}; available: "
                                    f"{sorted(tools)}"}), False
    try:
        value = t.fn(**call["arguments"])
    except Exception as e:  # noqa: BLE001 - the model sees the error; the loop goes on
        return json.dumps({"error": f"{type(e).__name__}: {e}"}), False
    try:
        return (value if isinstance(value, str) else json.dumps(value)), True
    except (TypeError, ValueError):
        return json.dumps({"result": str(value)}), True


def run(model, functions: Sequence, prompt, *, max_steps: int = 6, time_limit_s: float = 120.0,
        trace: Optional[str] = None, system: Optional[str] = None) -> Result:
    """Talk until the model answers or a limit ends it (see the module docstring). `prompt`: the
    user's message, or a list of messages to continue."""
    if max_steps < 1 or time_limit_s <= 0:
        raise ValueError("max_steps must be >= 1 and time_limit_s > 0")
    tools = {t.name: t for t in map(tool, functions)}
    if len(tools) != len(functions):
        raise ValueError("two tools have the same name")
    defs = [t.definition() for t in tools.values()]
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system:
        messages = [{"role": "system", "content": system}] + messages
    log = open(trace, "a", encoding="utf-8") if trace else None
    t0 = time.monotonic()
    try:
        for step in range(max_steps):
            if time.monotonic() - t0 > time_limit_s:
                return Result(None, "time_limit", step, messages)
            t = time.monotonic()
            turn = model.turn(messages, defs, step)
            record = {"step": step, "text": turn.text, "calls": [], "model_s": time.monotonic() - t}
            if not turn.calls:
                messages.append({"role": "assistant", "content": turn.text})
                _write(log, record)
                return Result(turn.text, "answer", step + 1, messages)
            messages.append({"role": "assistant", "content": turn.text or None, "tool_calls": [
                {"id": c["id"], "type": "function",
                 "function": {"name": c.get("name", ""),
                              "arguments": json.dumps(c["arguments"]) if "arguments" in c
                              else c.get("text", "")}} for c in turn.calls]})
            for c in turn.calls:
                t = time.monotonic()
                content, ok = call_tool(tools, c)
                messages.append({"role": "tool", "tool_call_id": c["id"], "content": content})
                record["calls"].append({"name": c.get("name"), "arguments": c.get("arguments"),
                                        "result": content, "ok": ok,
                                        "tool_s": time.monotonic() - t})
            _write(log, record)
        return Result(None, "max_steps", max_steps, messages)
    finally:
        if log:
            log.close()


def _write(log, record: dict) -> None:
    if log:
        log.write(json.dumps(record) + "\n")
        log.flush()


# ---- a task's multi-step items, end to end ---------------------------------------------------------

def simulated_tools(item: dict) -> list[Tool]:
    """The item's offered functions as tools that answer its expected calls with the recorded
    results (matching arguments as the grader does) and raise for anything else."""
    out = []
    for d in item["tools"]:
        f = d["function"]
        steps = [s for s in item["steps"] if s["name"] == f["name"]]

        def fn(_steps=steps, _name=f["name"], **kwargs):
            for s in _steps:
                if same_args(kwargs, s["arguments"]):
                    return s["result"]
            raise LookupError(f"{_name}: no record for {json.dumps(kwargs)}")
        out.append(Tool(f["name"], fn, f.get("description", ""), f.get("parameters", {})))
    return out


def evaluate(model, task_name: str = "agent_steps", limit: int = 100, max_steps: int = 4,
             split: str = "test") -> dict:
    """The whole loop on `limit` items of a multi-step task: the user's request, the item's
    simulated tools; right when every expected call was made in order with the expected
    arguments and the answer quotes the last result."""
    task = tasks.get(task_name)
    rows = []
    for i in range(limit):
        item = task.example(split, i)
        try:
            res = run(model, simulated_tools(item), item["messages"][0]["content"],
                      max_steps=max_steps)
        except ValueError as e:      # e.g. the conversation outgrew the model's context
            rows.append({"chain": item["chain"], "calls": [False] * len(item["steps"]),
                         "answer": False, "ok": False, "steps": 0, "error": str(e)})
            continue
        made = [c for m in res.messages if m.get("tool_calls") for c in m["tool_calls"]]
        got = []
        for c in made:
            try:
                got.append((c["function"]["name"], json.loads(c["function"]["arguments"])))
            except ValueError:
                got.append((c["function"]["name"], None))
        want = [(s["name"], s["arguments"]) for s in item["steps"]]
        right = [k < len(got) and got[k][0] == w[0] and isinstance(got[k][1], dict)
                 and same_args(got[k][1], w[1]) for k, w in enumerate(want)]
        answered = res.stopped == "answer" and item["answer"] in (res.answer or "")
        rows.append({"chain": item["chain"], "calls": right, "answer": answered,
                     "ok": all(right) and len(got) == len(want) and answered,
                     "steps": res.steps})
    n = max(1, len(rows))
    return {"task": task_name, "items": len(rows),
            "accuracy": sum(r["ok"] for r in rows) / n,
            "first_call": sum(r["calls"][0] for r in rows) / n,
            "second_call": sum(len(r["calls"]) > 1 and r["calls"][1] for r in rows) / n,
            "answer": sum(r["answer"] for r in rows) / n,
            "mean_model_turns": sum(r["steps"] for r in rows) / n,
            "errors": sum("error" in r for r in rows)}


# ---- built-in demo tools ----------------------------------------------------------------------------

PRICES = {"apples": 2.5, "bread": 3.1, "coffee": 8.9, "eggs": 4.2, "rice": 1.8, "tea": 5.0}


def calculator(expression: str) -> dict:
    """Evaluate an arithmetic expression."""
    return {"result": compute(expression)}


def lookup_price(item: str) -> dict:
    """The price of an item in the shop's price table."""
    key = item.strip().lower()
    if key not in PRICES:
        raise KeyError(f"no item {item!r}; the table has {sorted(PRICES)}")
    return {"price": PRICES[key], "currency": "EUR"}


BUILTIN = {"calculator": calculator, "lookup_price": lookup_price}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lm.agent", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="a chat run (run dir, checkpoint dir or experiment name)")
    src.add_argument("--url", help="an OpenAI-compatible base URL (…/v1)")
    p.add_argument("--model", default="default", help="the model name at --url")
    p.add_argument("--api_key", default="unused")
    p.add_argument("--tools", default="calculator,lookup_price",
                   help=f"comma list of built-in tools: {sorted(BUILTIN)}")
    p.add_argument("--max_steps", type=int, default=6)
    p.add_argument("--time_limit_s", type=float, default=120.0)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--strict", action="store_true",
                   help="--run only: calls decoded under the functions' grammar (llguidance)")
    p.add_argument("--trace", default=None, help="append each step as a JSON line here")
    p.add_argument("--workdir", default=None)
    p.add_argument("--task", default=None, help="instead of a prompt: run a multi-step task's "
                                                "held-out items end to end (agent_steps)")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.add_argument("prompt", nargs="?")
    a = p.parse_args(argv)
    if (a.prompt is None) == (a.task is None):
        p.error("give a prompt or --task")
    unknown = [t for t in a.tools.split(",") if t and t not in BUILTIN]
    if unknown:
        print(f"error: unknown tools {unknown}; built in: {sorted(BUILTIN)}", file=sys.stderr)
        return 2
    fns = [BUILTIN[t] for t in a.tools.split(",") if t]
    try:
        if a.run:
            model = EngineModel(api.load(a.run, workdir=a.workdir), temperature=a.temperature,
                                strict=a.strict)
        else:
            model = OpenAIModel(a.url, a.model, api_key=a.api_key, temperature=a.temperature)
        if a.task:
            if a.task not in tasks.NAMES:
                p.error(f"--task: unknown task {a.task!r}")
            out = evaluate(model, a.task, a.limit, max_steps=a.max_steps)
            print(json.dumps(out) if a.json else "\n".join(f"{k}: {v}" for k, v in out.items()))
            return 0
        res = run(model, fns, a.prompt, max_steps=a.max_steps, time_limit_s=a.time_limit_s,
                  trace=a.trace)
    except (ValueError, chat.ConversationError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for m in res.messages:
        if m["role"] == "tool":
            print(f"  tool -> {m['content']}")
        elif m.get("tool_calls"):
            for c in m["tool_calls"]:
                print(f"  call {c['function']['name']}({c['function']['arguments']})")
    print(res.answer if res.answer is not None else f"(stopped: {res.stopped})")
    return 0 if res.stopped == "answer" else 1


if __name__ == "__main__":
    sys.exit(main())
