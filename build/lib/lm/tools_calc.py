"""The safe calculator behind the engine's tool calls (`<|python_start|>expr<|python_end|>`).

`calculate(expr) -> str` never raises and never runs Python: the expression is parsed with `ast`
and *interpreted* node by node against an allow-list:

- literals: int, float, str (no bytes, complex, f-strings, containers);
- arithmetic `+ - * / // %` and unary `+ -`; `**` only with a small exponent and a result that
  stays under the size limit; string `+` and `str * int` within the size limit;
- calls: `len(s)`, `abs`, `round`, `min`, `max` over numbers, and `s.count(sub)` on strings
  (the "how many r in strawberry" tool) — no other names, attributes, subscripts or keywords.

Limits: expression length, AST node count, integer size (bits), string size, and a deadline in
the calling thread's CPU time checked at every node (each single operation is bounded by the size
limits, so the deadline cannot be overshot by much). CPU time, not wall-clock time: a loaded or
descheduled machine must not turn `12+5` into an error. Anything else — a disallowed construct, a limit, a division
by zero — gives an `"Error: ..."` string, which the engine writes back as the tool output.
Commas used as thousands separators (`1,234 * 5`) are accepted, as in nanochat's calculator.
`compute(expr)` is the same calculator for generated training data: no deadline, and a refused
expression raises `CalculatorError` (a bug in the generator, never a number in the data).
Results are written as a person writes them: a whole float as an integer (`48/2` -> `24`), other
floats to 12 significant digits (`0.1+0.2` -> `0.3`).
"""
from __future__ import annotations

import ast
import math
import operator
import re
import time
from dataclasses import dataclass

__all__ = ["Limits", "DATA_LIMITS", "calculate", "compute", "CalculatorError"]


@dataclass(frozen=True)
class Limits:
    max_expr_chars: int = 1000
    max_nodes: int = 200
    max_int_bits: int = 4096          # ~1233 decimal digits
    max_str_len: int = 10_000
    max_pow_exponent: int = 10_000
    max_output_chars: int = 200
    timeout_s: float = 0.1


DEFAULT_LIMITS = Limits()
DATA_LIMITS = Limits(timeout_s=math.inf)     # generated data: the same answer on any machine


class CalculatorError(Exception):
    """A refused or failing expression (turned into an "Error: ..." result, never raised out)."""


_ARITH = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
          ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
          ast.Pow: operator.pow}
_FUNCS = {"len", "abs", "round", "min", "max"}
_THOUSANDS = re.compile(r",(?=\d{3}(?!\d))")     # at a comma: three digits, then no digit


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


class _Interpreter:
    def __init__(self, limits: Limits):
        self.lim = limits
        self.deadline = time.thread_time() + limits.timeout_s

    def check_value(self, v):
        if isinstance(v, bool):
            raise CalculatorError("booleans are not supported")
        if isinstance(v, int) and v.bit_length() > self.lim.max_int_bits:
            raise CalculatorError("number too large")
        if isinstance(v, float) and not math.isfinite(v):
            raise CalculatorError("result is not a finite number")
        if isinstance(v, str) and len(v) > self.lim.max_str_len:
            raise CalculatorError("string too long")
        if not isinstance(v, (int, float, str)):
            raise CalculatorError(f"unsupported value of type {type(v).__name__}")
        return v

    def eval(self, node):
        if time.thread_time() >= self.deadline:
            raise CalculatorError("time limit exceeded")
        meth = getattr(self, f"_{type(node).__name__}", None)
        if meth is None:
            raise CalculatorError(f"{type(node).__name__} is not allowed")
        return self.check_value(meth(node))

    def _Expression(self, node):
        return self.eval(node.body)

    def _Constant(self, node):
        v = node.value
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            raise CalculatorError(f"literal {v!r} is not allowed")
        return v

    def _UnaryOp(self, node):
        v = self.eval(node.operand)
        if not _is_num(v):
            raise CalculatorError("unary operator on a non-number")
        if isinstance(node.op, ast.USub):
            return -v
        if isinstance(node.op, ast.UAdd):
            return +v
        raise CalculatorError(f"operator {type(node.op).__name__} is not allowed")

    def _BinOp(self, node):
        op = type(node.op)
        if op not in _ARITH:
            raise CalculatorError(f"operator {op.__name__} is not allowed")
        a, b = self.eval(node.left), self.eval(node.right)
        lim = self.lim
        if _is_num(a) and _is_num(b):
            if op is ast.Pow:
                self._check_pow(a, b)
            elif op is ast.Mult and isinstance(a, int) and isinstance(b, int):
                if a.bit_length() + b.bit_length() > lim.max_int_bits + 1:
                    raise CalculatorError("number too large")
            elif op in (ast.Div, ast.FloorDiv, ast.Mod) and b == 0:
                raise CalculatorError("division by zero")
            try:
                return _ARITH[op](a, b)
            except (OverflowError, ZeroDivisionError, ValueError) as e:
                raise CalculatorError(str(e) or type(e).__name__) from None
        if isinstance(a, str) and isinstance(b, str) and op is ast.Add:
            if len(a) + len(b) > lim.max_str_len:
                raise CalculatorError("string too long")
            return a + b
        if op is ast.Mult and {type(a), type(b)} == {str, int}:
            s, n = (a, b) if isinstance(a, str) else (b, a)
            if len(s) * max(n, 0) > lim.max_str_len:
                raise CalculatorError("string too long")
            return s * n
        raise CalculatorError(f"unsupported operand types for {op.__name__}: "
                              f"{type(a).__name__} and {type(b).__name__}")

    def _check_pow(self, a, b):
        if isinstance(b, float) or isinstance(a, float):
            if abs(b) > self.lim.max_pow_exponent:
                raise CalculatorError("exponent too large")
            if a == 0 and b < 0:
                raise CalculatorError("division by zero")
            return
        if b < 0:
            if a == 0:
                raise CalculatorError("division by zero")
            if -b > self.lim.max_pow_exponent:
                raise CalculatorError("exponent too large")
            return
        if b > self.lim.max_pow_exponent and abs(a) > 1:
            raise CalculatorError("exponent too large")
        if abs(a) > 1 and (abs(a).bit_length() - 1) * b > self.lim.max_int_bits:
            raise CalculatorError("number too large")

    def _Call(self, node):
        if node.keywords:
            raise CalculatorError("keyword arguments are not allowed")
        if any(isinstance(a, ast.Starred) for a in node.args):
            raise CalculatorError("starred arguments are not allowed")
        f = node.func
        if isinstance(f, ast.Attribute):
            if f.attr != "count":
                raise CalculatorError(f"method .{f.attr}() is not allowed (only str.count)")
            s = self.eval(f.value)
            args = [self.eval(a) for a in node.args]
            if not isinstance(s, str) or len(args) != 1 or not isinstance(args[0], str):
                raise CalculatorError("count() needs a string receiver and one string argument")
            return s.count(args[0])
        if not isinstance(f, ast.Name) or f.id not in _FUNCS:
            name = f.id if isinstance(f, ast.Name) else type(f).__name__
            raise CalculatorError(f"call of {name} is not allowed")
        args = [self.eval(a) for a in node.args]
        if f.id == "len":
            if len(args) != 1 or not isinstance(args[0], str):
                raise CalculatorError("len() takes one string")
            return len(args[0])
        if not args or not all(_is_num(a) for a in args):
            raise CalculatorError(f"{f.id}() takes numbers")
        if f.id == "abs":
            if len(args) != 1:
                raise CalculatorError("abs() takes one number")
            return abs(args[0])
        if f.id == "round":
            if len(args) not in (1, 2) or (len(args) == 2 and not isinstance(args[1], int)):
                raise CalculatorError("round() takes a number and optional integer digits")
            if len(args) == 2 and abs(args[1]) > 100:
                raise CalculatorError("round(): too many digits")
            try:
                return round(*args)
            except (OverflowError, ValueError) as e:
                raise CalculatorError(str(e)) from None
        return (min if f.id == "min" else max)(args)


def _format(v, limits: Limits) -> str:
    if isinstance(v, float):
        v = float(f"{v:.12g}")   # 0.1+0.2 -> 0.3, not 0.30000000000000004
        if v.is_integer() and abs(v) < 1e15:
            v = int(v)           # 48/2 -> "24", as a person (and GSM8K's annotations) writes it
    out = str(v)
    if len(out) > limits.max_output_chars:
        raise CalculatorError("result too long")
    return out


def strip_thousands(text: str) -> str:
    """Commas between digits read as thousands separators ("1,234" -> "1234"), except where they
    separate a call's arguments (`max(5,100)` stays two arguments)."""
    out, calls = [], []             # calls: per open bracket, whether it is a call's
    for i, ch in enumerate(text):
        if ch in "([":
            before = text[:i].rstrip()
            calls.append(ch == "(" and bool(before) and (before[-1].isalnum() or
                                                          before[-1] == "_"))
        elif ch in ")]" and calls:
            calls.pop()
        if ch == "," and not (calls and calls[-1]) and _THOUSANDS.match(text, i) and \
                i > 0 and text[i - 1].isdigit():
            continue
        out.append(ch)
    return "".join(out)


def calculate(expr: str, limits: Limits = DEFAULT_LIMITS) -> str:
    """Evaluate a calculator expression; the result as a string, or "Error: <reason>"."""
    try:
        if not isinstance(expr, str):
            raise CalculatorError("expression must be a string")
        if len(expr) > limits.max_expr_chars:
            raise CalculatorError("expression too long")
        text = expr.strip()
        if not text:
            raise CalculatorError("empty expression")
        if "'" not in text and '"' not in text:
            text = strip_thousands(text)  # "1,234 * 5" -> 1234 * 5 (no string literals)
        tree = ast.parse(text, mode="eval")
        if sum(1 for _ in ast.walk(tree)) > limits.max_nodes:
            raise CalculatorError("expression too complex")
        return _format(_Interpreter(limits).eval(tree), limits)
    except CalculatorError as e:
        return f"Error: {e}"
    except SyntaxError:
        return "Error: invalid syntax"
    except (RecursionError, MemoryError):
        return "Error: expression too complex"
    except Exception as e:  # noqa: BLE001 - the engine must never see an exception from a tool
        return f"Error: {type(e).__name__}"


def compute(expr: str) -> str:
    """The calculator's result for generated training data (what `calculate` gives, with no
    deadline); raises CalculatorError for an expression the calculator refuses."""
    out = calculate(expr, DATA_LIMITS)
    if out.startswith("Error"):
        raise CalculatorError(f"{expr!r}: {out}")
    return out
