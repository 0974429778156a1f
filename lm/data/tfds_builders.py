"""The project's datasets as TFDS builders, stored as ArrayRecord, built offline from LM_DATA_DIR,
and read back through `tfds.data_source` by lm's pipelines (`data.reader=tfds`).

    import tensorflow_datasets as tfds
    import lm.data.tfds_builders            # registers lm_chat_tasks, lm_text, lm_token_shards
    tfds.data_source("lm_chat_tasks/arithmetic_easy", split="test")[0]   # no TensorFlow needed
    tfds.load("lm_chat_tasks", split="test")          # a tf.data.Dataset (requirements-tfds.txt)

Datasets (each record keeps the order its source gives: nothing is shuffled at build time, so a
reader sees exactly the data the files give):
  lm_chat_tasks/<task>  a chat task's splits (train, test, and rl where the task has one), one
                        record per conversation: `task`, `index` (the task's example index) and
                        `conversation` (JSON of the lm.conversation dict, with the task's grading
                        fields). Fixed datasets are written whole; generated tasks (seeded,
                        without end) their first `train_examples` training and `other_examples`
                        held-out conversations. `lm_chat_tasks/all` (the default) has every task.
  lm_text/<source>      a text source cut as the pipeline cuts it (train = the first
                        `train_split` of its characters, validation = the rest), in records of
                        64 Ki characters.
  lm_token_shards/<id>  token shards (lm.data.shards) as one stream in records of 4,096 tokens;
                        `id` is a digest of the shard files (names, sizes, modification times).

Built datasets live under `lm.paths.tfds_dir()` ($TFDS_DATA_DIR, else <workdir>/runs/tfds).
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
from typing import Iterator, Optional, Sequence

import numpy as np
import tensorflow_datasets as tfds
from array_record.python import array_record_module
from etils import epath
from tensorflow_datasets.core import file_adapters

from lm import paths
from lm import tasks as task_lib
from lm.data import sources
from lm.data.shards import _TokenArray

TEXT_CHUNK = 1 << 16          # characters per lm_text record
TOKEN_CHUNK = 4096            # tokens per lm_token_shards record
GENERATED_TRAIN = 100_000     # a generated task's training conversations in lm_chat_tasks/<task>
GENERATED_OTHER = 2_000       # ... and in each of its held-out splits (test, rl)


class StaleDatasetError(RuntimeError):
    """A built dataset no longer matches what its source gives (the generator changed)."""


class _ArrayRecordBuilder(tfds.core.GeneratorBasedBuilder):
    """Stored as ArrayRecord (random access: tfds.data_source, grain) unless told otherwise;
    TFDS's own default is TFRecord. Abstract, so TFDS does not register it."""

    def __init__(self, *, file_format=None, **kwargs):
        super().__init__(file_format=file_format or "array_record", **kwargs)

    def as_dataset(self, *args, **kwargs):
        """A tf.data.Dataset (tfds.load), which TFDS reads from TFRecord only: the first call
        writes a TFRecord copy beside the ArrayRecord files and reads that."""
        tfrecord = tfds.core.FileFormat.TFRECORD
        if tfrecord not in self.info.available_file_formats():
            self._write_tfrecord_copy()
        # as as_data_source does for its format: the split files are named after info's format
        self.info.set_file_format(tfrecord, override=True, override_if_initialized=True)
        return super().as_dataset(*args, **kwargs)

    def _write_tfrecord_copy(self) -> None:
        """The same serialized records, shard by shard, as TFRecord files (temp names, renamed),
        then listed in dataset_info.json as an alternative format."""
        tfrecord = tfds.core.FileFormat.TFRECORD
        adapter = file_adapters.ADAPTER_FOR_FORMAT[tfrecord]
        for path in sorted(epath.Path(self.data_dir).glob("*.array_record-*")):
            reader = array_record_module.ArrayRecordReader(os.fspath(path))
            records = reader.read_all()
            reader.close()
            out = file_adapters.convert_path_to_file_format(path, tfrecord)
            tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
            adapter.write_examples(tmp, ((None, r) for r in records))
            tmp.rename(out)
        self.info.add_alternative_file_format(tfrecord)
        self.info.write_to_directory(self.data_dir)


def prepared(builder_cls, config, data_dir: Optional[str] = None):
    """A builder of `config` whose dataset is built (under `lm.paths.tfds_dir()` by default);
    a registered config is named, another passed whole (TFDS refuses a copy under a known name)."""
    known = config.name in builder_cls.builder_configs
    root = data_dir or paths.tfds_dir()
    os.makedirs(root, exist_ok=True)
    # one builder at a time per data dir (several processes of one run on a host); the others
    # wait, then find the dataset built
    with open(os.path.join(root, ".lm_build.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        builder = builder_cls(config=config.name if known else config, data_dir=root)
        builder.download_and_prepare()
    return builder


# ---- lm_chat_tasks ------------------------------------------------------------------------------

@dataclasses.dataclass
class ChatTasksConfig(tfds.core.BuilderConfig):
    tasks: tuple = ()
    train_examples: int = GENERATED_TRAIN
    other_examples: int = GENERATED_OTHER


def chat_tasks_config(task: str, train_examples: int = GENERATED_TRAIN,
                      other_examples: int = GENERATED_OTHER) -> ChatTasksConfig:
    """The config of one task (named `<task>`, or `<task>-<train>-<other>` for other sizes)."""
    if task not in task_lib.NAMES:
        raise ValueError(f"unknown task {task!r}; known: {list(task_lib.NAMES)}")
    if train_examples < 1 or other_examples < 1:
        raise ValueError(f"{task}: train_examples and other_examples must be >= 1")
    default = (train_examples, other_examples) == (GENERATED_TRAIN, GENERATED_OTHER)
    name = task if default else f"{task}-{train_examples}-{other_examples}"
    return ChatTasksConfig(name=name, tasks=(task,), train_examples=train_examples,
                           other_examples=other_examples,
                           description=f"the {task} task's splits as conversations")


class LmChatTasks(_ArrayRecordBuilder):
    """lm's chat tasks (lm.tasks) as conversations, with their train and held-out splits."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [ChatTasksConfig(name="all", tasks=tuple(task_lib.NAMES),
                                       train_examples=10_000, other_examples=1_000,
                                       description="every task; generated ones: 10,000 "
                                                   "training and 1,000 held-out conversations")]
    BUILDER_CONFIGS += [chat_tasks_config(n) for n in task_lib.NAMES]
    DEFAULT_CONFIG_NAME = "all"

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, description=__doc__.split("\n")[0],
            features=tfds.features.FeaturesDict({
                "task": tfds.features.Text(), "index": tfds.features.Scalar(np.int64),
                "conversation": tfds.features.Text()}),
            disable_shuffling=True, homepage="https://github.com/")

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        splits = [s for s in ("train", "test", "rl")
                  if any(s in task_lib.get(t).splits for t in cfg.tasks)]
        return {s: self._generate_examples(s) for s in splits}

    def _generate_examples(self, split: str):
        cfg = self.builder_config
        for name in cfg.tasks:
            t = task_lib.get(name)
            if split not in t.splits:
                continue
            n = t.size(split)
            if n is None:
                n = cfg.train_examples if split == "train" else cfg.other_examples
            for i in range(n):
                yield f"{name}/{i}", {"task": name, "index": i,
                                      "conversation": json.dumps(t.example(split, i))}


class ChatTaskExamples:
    """The conversations of one task's split, read from its lm_chat_tasks build (built first if
    absent): `len()`, `[k]` -> conversation dict."""

    def __init__(self, task: str, split: str, *, train_examples: int = GENERATED_TRAIN,
                 other_examples: int = GENERATED_OTHER, data_dir: Optional[str] = None):
        config = chat_tasks_config(task, train_examples, other_examples)   # checks the name
        t = task_lib.get(task)
        if split not in t.splits:
            raise ValueError(f"{task}: unknown split {split!r} (splits: {list(t.splits)})")
        self.task, self.split = task, split
        builder = prepared(LmChatTasks, config, data_dir)
        self.path = str(builder.data_dir)
        self.source = builder.as_data_source(split=split)
        self._check_fresh(t)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, k: int) -> dict:
        if not 0 <= k < len(self.source):
            raise IndexError(
                f"{self.task}/{self.split}: the TFDS build at {self.path} holds "
                f"{len(self.source):,} conversations and example {k:,} was asked for; build "
                f"more (data.tfds_examples, or chat_tasks_config(train_examples=...))")
        return json.loads(self.source[k]["conversation"])

    def _check_fresh(self, task) -> None:
        """The first and last records must be what the task gives today."""
        for k in {0, len(self.source) - 1}:
            rec = self.source[k]
            live = json.loads(json.dumps(task.example(self.split, int(rec["index"]))))
            if json.loads(rec["conversation"]) != live:
                raise StaleDatasetError(
                    f"{self.path}: {self.task}/{self.split} example {int(rec['index'])} differs "
                    f"from what the task generates now (its generator or data changed); delete "
                    f"that folder and it is rebuilt on next use")


class TaskExamples:
    """Where lm.data.sft's mixture reads conversations: the task library itself (reader='files')
    or the tasks' TFDS builds (reader='tfds'); the same conversations either way."""

    def __init__(self, reader: str = "files", *, tfds_examples: int = GENERATED_TRAIN):
        if reader not in ("files", "tfds"):
            raise ValueError(f"data.reader: {reader!r} is not allowed; choose 'files' or 'tfds'")
        self.reader, self.tfds_examples = reader, tfds_examples
        self._sources: dict = {}

    def size(self, name: str, split: str) -> Optional[int]:
        return task_lib.get(name).size(split)

    def example(self, name: str, split: str, k: int) -> dict:
        if self.reader == "files" or name not in task_lib.NAMES:    # a conversations file
            return task_lib.get(name).example(split, k)
        if (name, split) not in self._sources:
            self._sources[name, split] = ChatTaskExamples(name, split,
                                                          train_examples=self.tfds_examples)
        return self._sources[name, split][k]


# ---- lm_text --------------------------------------------------------------------------------------

@dataclasses.dataclass
class TextConfig(tfds.core.BuilderConfig):
    source: str = "tinyshakespeare"
    train_split: float = 0.9


def text_config(source: str, train_split: float = 0.9) -> TextConfig:
    if source not in sources.TEXT_SOURCES:
        raise ValueError(f"unknown text source {source!r}; known: {sorted(sources.TEXT_SOURCES)}")
    name = source if train_split == 0.9 else f"{source}-split{train_split:g}"
    return TextConfig(name=name, source=source, train_split=train_split,
                      description=f"{source}: the first {train_split:g} of its characters for "
                                  f"training, the rest for validation")


class LmText(_ArrayRecordBuilder):
    """A named text source split into train / validation as lm's pipeline splits it."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [text_config(s) for s in sources.TEXT_SOURCES]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, description=__doc__.split("\n")[0],
                                     features=tfds.features.FeaturesDict(
                                         {"text": tfds.features.Text()}),
                                     disable_shuffling=True)

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        text = sources.read_text(cfg.source)
        n = int(len(text) * cfg.train_split)
        return {"train": self._generate_examples(text[:n]),
                "validation": self._generate_examples(text[n:])}

    def _generate_examples(self, text: str):
        for k, start in enumerate(range(0, len(text), TEXT_CHUNK)):
            yield k, {"text": text[start:start + TEXT_CHUNK]}


def text_splits(source: str, train_split: float = 0.9,
                data_dir: Optional[str] = None) -> tuple[str, str]:
    """(training text, validation text) of a text source, read from its lm_text build."""
    builder = prepared(LmText, text_config(source, train_split), data_dir)

    def read(split: str) -> str:
        src = builder.as_data_source(split=split)
        return "".join(src[k]["text"].decode("utf-8") for k in range(len(src)))
    return read("train"), read("validation")


# ---- lm_token_shards --------------------------------------------------------------------------------

@dataclasses.dataclass
class ShardsConfig(tfds.core.BuilderConfig):
    files: tuple = ()
    val_files: tuple = ()


def shards_config(files: Sequence[str], val_files: Sequence[str] = ()) -> ShardsConfig:
    if not files:
        raise FileNotFoundError("lm_token_shards: no shard files given")
    h = hashlib.blake2b(digest_size=6)
    for f in list(files) + ["|"] + list(val_files):
        if f != "|":
            st = os.stat(f)
            f = f"{os.path.abspath(f)}:{st.st_size}:{st.st_mtime_ns}"
        h.update(f.encode() + b"\0")
    return ShardsConfig(name=f"s{h.hexdigest()}", files=tuple(map(os.path.abspath, files)),
                        val_files=tuple(map(os.path.abspath, val_files)),
                        description=f"{len(files)} token shards" +
                                    (f" and {len(val_files)} held-out ones" if val_files else ""))


class LmTokenShards(_ArrayRecordBuilder):
    """Token shards (the web pipeline's or tools.prepare_fineweb's) as one token stream."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = []    # one config per set of shard files: shards_config(files)

    def _info(self) -> tfds.core.DatasetInfo:
        files = self.builder_config.files
        dtype = np.load(files[0], mmap_mode="r").dtype if files else np.uint16
        return tfds.core.DatasetInfo(builder=self, description=__doc__.split("\n")[0],
                                     features=tfds.features.FeaturesDict({
                                         "tokens": tfds.features.Tensor(
                                             shape=(None,), dtype=dtype,
                                             encoding=tfds.features.Encoding.BYTES)}),
                                     disable_shuffling=True)

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        out = {"train": self._generate_examples(cfg.files)}
        if cfg.val_files:
            out["validation"] = self._generate_examples(cfg.val_files)
        return out

    def _generate_examples(self, files: Sequence[str]) -> Iterator:
        """The files' concatenation in records of TOKEN_CHUNK tokens (the last may be shorter)."""
        def chunks():
            buf = np.zeros(0, np.load(files[0], mmap_mode="r").dtype)
            for f in files:
                arr = np.load(f, mmap_mode="r")
                for start in range(0, len(arr), TOKEN_CHUNK):
                    buf = np.concatenate([buf, np.asarray(arr[start:start + TOKEN_CHUNK])])
                    while len(buf) >= TOKEN_CHUNK:
                        yield buf[:TOKEN_CHUNK]
                        buf = buf[TOKEN_CHUNK:]
            if len(buf):
                yield buf
        for k, chunk in enumerate(chunks()):
            yield k, {"tokens": chunk}


class RecordTokenStream(_TokenArray):
    """A token stream stored in records of TOKEN_CHUNK tokens (a tfds data source): len() and
    contiguous slices, reading only the records a slice touches."""

    def __init__(self, source):
        self.source = source
        if not len(source):
            raise ValueError("an empty token stream")
        last = source[len(source) - 1]["tokens"]
        self.dtype = last.dtype
        self.length = (len(source) - 1) * TOKEN_CHUNK + len(last)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            k = int(key) + (self.length if key < 0 else 0)
            if not 0 <= k < self.length:
                raise IndexError(f"index {key} out of range for {self.length} tokens")
            return self.source[k // TOKEN_CHUNK]["tokens"][k % TOKEN_CHUNK]
        if not isinstance(key, slice):
            raise TypeError(f"index must be an int or a slice, got {type(key).__name__}")
        a, b, step = key.indices(self.length)
        if step != 1:
            raise ValueError("RecordTokenStream supports contiguous slices only")
        if b <= a:
            return np.zeros(0, self.dtype)
        parts = [self.source[r]["tokens"] for r in range(a // TOKEN_CHUNK,
                                                          (b - 1) // TOKEN_CHUNK + 1)]
        first = (a // TOKEN_CHUNK) * TOKEN_CHUNK
        return np.concatenate(parts)[a - first:b - first]


def token_shards(files: Sequence[str], val_files: Sequence[str] = (),
                 data_dir: Optional[str] = None):
    """(train stream, validation stream or None) of shard files, read from their lm_token_shards
    build (built first if absent)."""
    builder = prepared(LmTokenShards, shards_config(files, val_files), data_dir)
    train = RecordTokenStream(builder.as_data_source(split="train"))
    val = RecordTokenStream(builder.as_data_source(split="validation")) if val_files else None
    return train, val
