"""The house rules that keep lm readable, checked on the source (no code is run):

- no import cycle among lm's modules (their top-level imports);
- an import inside a function only with an allow-list entry that says why (a few, for optional
  heavy dependencies);
- no function in lm/ longer than 100 lines;
- the stage name is read only in lm/stages (the loop, the CLIs and the server ask the stage);
- no duck-typed probes of a tokenizer (it has one interface), no pmap forks outside parallel.py.
"""
import ast
import os
import re


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LM = os.path.join(ROOT, "lm")

# (file, imported module) -> why it is imported inside a function
ALLOWED_INNER_IMPORTS = {
    ("lm/__init__.py", "lm"): "the front door (lm.api) loads the training stack on first use, so "
                              "`import lm.config` pays only for what it imports",
    ("lm/eval/parity.py", "lm_eval"): "lm-evaluation-harness is the reference harness, installed "
                                      "by requirements-eval.txt for parity runs only",
    ("lm/eval/parity.py", "lm_eval.tasks"): "the harness's task registry (requirements-eval.txt)",
    ("lm/interop/gguf.py", "llama_cpp"): "llama-cpp-python (requirements-gguf.txt) loads "
                                         "llama.cpp's shared library: `check` only",
    ("lm/agent.py", "openai"): "the official client (requirements-serve.txt) drives a remote "
                               "server: OpenAIModel only; the engine path needs none",
    ("lm/structured.py", "llguidance.tiktoken"): "llguidance (requirements-serve.txt) compiles "
                                                 "response_format grammars: serving only",
    ("lm/tasks/vision.py", "sklearn.datasets"): "scikit-learn (~1 s to import) holds the bundled "
                                                "digits: the vision tasks only",
    ("lm/tasks/vision.py", "sklearn.linear_model"): "the pixel baseline's logistic regression "
                                                    "(scikit-learn): reports only",
    ("lm/audio.py", "librosa"): "librosa (numba) takes seconds to import: speech features only",
    ("lm/tasks/speech.py", "scipy.signal"): "resampling espeak-ng's clips: making speech data only",
    ("lm/search.py", "bm25s"): "bm25s imports scipy (1.2 s): paid when the first search index is "
                               "built, not by every process that builds an engine",
    ("lm/data/web/recipe.py", "ray"): "Ray takes seconds to import and serves --executor ray only",
    ("lm/data/web/recipe.py", "datatrove.executor.ray"): "datatrove's Ray executor imports Ray: "
                                                         "--executor ray only",
}
MAX_INNER_IMPORTS = 20
MAX_FUNCTION_LINES = 100


def sources():
    for folder, _, files in os.walk(LM):
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                yield os.path.relpath(path, ROOT).replace(os.sep, "/"), path


def module_name(rel: str) -> str:
    parts = rel[:-3].split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(rel): path for rel, path in sources()}


def top_level_imports(path: str, me: str) -> set[str]:
    """The lm modules `me` imports when it is imported (statements outside functions)."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    out: set[str] = set()

    def visit(node):
        for ch in ast.iter_child_nodes(node):
            if isinstance(ch, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(ch, ast.Import):
                out.update(a.name for a in ch.names)
            elif isinstance(ch, ast.ImportFrom) and ch.module and ch.level == 0:
                for a in ch.names:
                    sub = f"{ch.module}.{a.name}"
                    out.add(sub if sub in MODULES else ch.module)
            visit(ch)
    visit(tree)
    ancestors = {".".join(me.split(".")[:k]) for k in range(1, me.count(".") + 1)}
    return {m for m in out if m in MODULES and m != me and m not in ancestors}


def find_cycle(graph: dict[str, set[str]]):
    """A cycle of `graph` (module -> the modules it imports) as a path, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = walk(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None
    for m in sorted(graph):
        if m not in state:
            found = walk(m)
            if found:
                return found
    return None


def test_no_import_cycle():
    graph = {m: top_level_imports(p, m) for m, p in MODULES.items()}
    assert len(graph) > 50 and sum(map(len, graph.values())) > 100      # it read the imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def inner_imports():
    for rel, path in sources():
        tree = ast.parse(open(path, encoding="utf-8").read())

        def visit(node, infunc):
            for ch in ast.iter_child_nodes(node):
                f = infunc or isinstance(ch, (ast.FunctionDef, ast.AsyncFunctionDef))
                if infunc and isinstance(ch, (ast.Import, ast.ImportFrom)):
                    names = [a.name for a in ch.names] if isinstance(ch, ast.Import) \
                        else [ch.module or "."]
                    for n in names:
                        yield rel, n, ch.lineno
                yield from visit(ch, f)
        yield from visit(tree, False)


def test_imports_are_at_the_top_unless_allowed_with_a_reason():
    assert len(ALLOWED_INNER_IMPORTS) <= MAX_INNER_IMPORTS
    assert all(len(why) > 10 for why in ALLOWED_INNER_IMPORTS.values())
    found = list(inner_imports())
    bad = [f"{rel}:{line} imports {mod} inside a function" for rel, mod, line in found
           if (rel, mod) not in ALLOWED_INNER_IMPORTS]
    assert not bad, "\n".join(bad)
    used = {(rel, mod) for rel, mod, _ in found}
    stale = set(ALLOWED_INNER_IMPORTS) - used
    assert not stale, f"allow-list entries nobody needs: {sorted(stale)}"


def test_no_function_is_longer_than_a_hundred_lines():
    long = []
    for rel, path in sources():
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{rel}:{node.lineno} {node.name} ({n} lines)")
    assert not long, long


def grep(pattern: str, *, outside: tuple = ()) -> list[str]:
    rx = re.compile(pattern)
    hits = []
    for rel, path in sources():
        if rel.startswith(outside):
            continue
        for i, line in enumerate(open(path, encoding="utf-8"), 1):
            if rx.search(line):
                hits.append(f"{rel}:{i}: {line.strip()}")
    return hits


STAGE_NAMES = r"""["'](pretrain|sft|grpo)["']"""


STAGE_TEST = rf"(==|!=)\s*{STAGE_NAMES}|{STAGE_NAMES}\s*(==|!=)|\bstage\s+in\s*\("


def test_the_stage_name_is_read_only_in_the_stages():
    for leak in ('if cfg.stage == "sft":', "run.stage in ('sft', 'grpo')", '"pretrain" != s'):
        assert re.search(STAGE_TEST, leak), leak
    hits = grep(STAGE_TEST, outside=("lm/stages/",))
    assert not hits, hits


PROBE = r"(getattr|hasattr)\(\s*(self\.)?(tok|tokenizer)\b"


def test_no_duck_typed_tokenizer_probes():
    assert re.search(PROBE, 'bos = getattr(tok, "bos_id", None)')
    assert not grep(PROBE)


def test_pmap_forks_only_in_parallel():
    assert not grep(r"""==\s*["']pmap["']""", outside=("lm/parallel.py",))
