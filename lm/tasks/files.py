"""Conversations from a JSONL file as a training task (e.g. a teacher's replies written by
`tools.distill`): one conversation dict per line, validated when read. No grader (`kind='open'`)
and no held-out split: evaluate a model trained on it with the tasks the file was made from.

A file is named for a run with `sft.files="name=path,..."` (lm.tasks.register_file), then used in
`sft.mixture` like any task.
"""
from __future__ import annotations

import json
from functools import cached_property

from lm import conversation as chat
from lm.tasks.base import Task, TaskDataError


class ConversationsFile(Task):
    kind = "open"

    def __init__(self, name: str, path: str):
        self.name, self.path = name, path

    @cached_property
    def rows(self) -> list[dict]:
        try:
            with open(self.path, encoding="utf-8") as f:
                lines = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
        except OSError as e:
            raise TaskDataError(f"task {self.name!r}: cannot read {self.path} ({e})") from None
        rows = []
        for n, line in lines:
            try:
                conv = json.loads(line)
                chat.validate(conv, require_reply=True)
            except (json.JSONDecodeError, chat.ConversationError, TypeError) as e:
                raise TaskDataError(f"{self.path}:{n}: not a conversation ({e})") from None
            rows.append(conv)
        if not rows:
            raise TaskDataError(f"task {self.name!r}: {self.path} holds no conversations")
        return rows

    def size(self, split: str) -> int:
        self._check_split(split)
        return len(self.rows) if split == "train" else 0

    def example(self, split: str, i: int) -> dict:
        self._check_split(split)
        if split != "train":
            raise IndexError(f"{self.name}: a conversations file has no {split!r} examples")
        return self.rows[i]

    def evaluate(self, conv: dict, reply: str) -> bool:
        raise NotImplementedError(f"{self.name}: a conversations file has no grader")
