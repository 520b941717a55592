"""What the profiled numbers mean: the ceilings they are measured against, the facts the decision tree
tests, and the tree itself (``patterns/profile-tree.toml``: verdicts, thresholds and next moves, each
move naming the pattern it comes from).
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from ..attention import DTYPES, AttentionConfig, tflops
from ..errors import ConfigError
from .ncu import KernelNumbers, parse_number

TREE_FILE = "profile-tree.toml"

# Copy bandwidth measured on an H100 SXM (torch 2.11, CUDA 13.0): the DRAM ceiling used when nothing
# in the database measured one. It is reported as a default, never as a measurement of this card.
H100_COPY_TBS = 2.96
H100_COPY_SOURCE = "default: 2.96 TB/s copy bandwidth measured on an H100, not measured in this session"


# ---------------------------------------------------------------------------------------------------
# Ceilings


@dataclass
class Ceilings:
    tflops: float | None = None
    tflops_source: str = "not measured: run 'sessionkit step bench'"
    tbs: float | None = None
    tbs_source: str = "not known for this GPU"


def find_ceilings(db, session: dict, gpu_name: str | None) -> Ceilings:
    """The bf16 matmul ceiling the bench step measured (this session first, then this host's newest),
    and the DRAM ceiling: the H100's measured copy bandwidth as a labelled default.
    """
    out = Ceilings()
    row = db.execute(
        "SELECT m.value, s.number, st.seq, st.session_id = ? AS here FROM metrics m "
        "JOIN steps st ON st.id = m.step_id JOIN sessions s ON s.id = st.session_id "
        "WHERE m.key = 'matmul_bf16_tflops' AND m.subject = 'ceiling' AND m.value > 0 "
        "AND (st.session_id = ? OR st.host = ?) "
        "ORDER BY here DESC, st.started_at DESC LIMIT 1",
        [session["id"], session["id"], socket.gethostname()]).fetchone()
    if row:
        out.tflops = float(row[0])
        where = "this session" if row[3] else f"session {row[1]}"
        out.tflops_source = f"bf16 matmul measured by bench ({where}, step {row[2]})"
    if gpu_name and "H100" in gpu_name:
        out.tbs, out.tbs_source = H100_COPY_TBS, H100_COPY_SOURCE
    return out



# ---------------------------------------------------------------------------------------------------
# The decision tree (patterns/profile-tree.toml)

FACT_TYPES = {
    "sm_pct": "number", "tensor_pct": "number", "dram_pct": "number", "onchip_pct": "number",
    "compute_pct": "number", "memory_pct": "number", "mma_pct": "number",
    "tflops": "number", "tflops_pct": "number", "bandwidth_tbs": "number", "bandwidth_pct": "number",
    "traffic_ratio": "number", "occupancy_pct": "number", "theoretical_occupancy_pct": "number",
    "registers": "number", "smem_bytes": "number", "l2_hit_pct": "number", "duration_ms": "number",
    "waves": "number", "block_threads": "number", "head_dim": "number",
    "verdict": "text", "kernel": "text", "dtype": "text", "causal": "number",
    "top_stall": "text", "top_stalls": "list", "occupancy_limiters": "list",
}
_COND = re.compile(r"\s*([a-z_][a-z0-9_]*(?:\.[a-z0-9_]+)?)\s*(>=|<=|==|!=|>|<|has_any|has)\s*(.+?)\s*")
_NUMERIC_OPS = {">=", "<=", ">", "<"}


@dataclass(frozen=True)
class Condition:
    fact: str
    op: str
    value: object  # float, str literal, list of str, or ("ref", name)

    def holds(self, facts: dict, thresholds: dict) -> bool:
        left = _fact(facts, self.fact)
        right = self.value
        if isinstance(right, tuple):
            name = right[1]
            right = thresholds[name] if name in thresholds else _fact(facts, name)
        if left is None or right is None:
            return False  # a number ncu did not give never triggers a move
        if self.op in _NUMERIC_OPS:
            if not (_is_num(left) and _is_num(right)):
                return False
            return {">=": left >= right, "<=": left <= right, ">": left > right,
                    "<": left < right}[self.op]
        if self.op == "==":
            return left == right
        if self.op == "!=":
            return left != right
        if self.op == "has":
            return right in left
        return any(item in left for item in right)  # has_any


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _fact(facts: dict, name: str):
    if name.startswith("stall."):
        stalls = facts.get("stalls")
        return None if not stalls else stalls.get(name[6:], 0.0)
    return facts.get(name)


def parse_condition(text: str, thresholds: dict, where: str) -> Condition:
    match = _COND.fullmatch(text) if isinstance(text, str) else None
    if not match:
        raise ConfigError(f"{where}: cannot read condition {text!r}; write e.g. \"tensor_pct >= 60\"")
    fact, op, raw = match.groups()
    kind = "number" if fact.startswith("stall.") else FACT_TYPES.get(fact)
    if kind is None:
        raise ConfigError(f"{where}: unknown fact {fact!r} in {text!r}; known: {', '.join(FACT_TYPES)}")
    value = _parse_value(raw, thresholds, where, text)
    if op in _NUMERIC_OPS and kind != "number":
        raise ConfigError(f"{where}: {fact!r} is not a number, {op} cannot compare it ({text!r})")
    if op in ("has", "has_any") and kind != "list":
        raise ConfigError(f"{where}: {fact!r} is not a list, {op} cannot test it ({text!r})")
    if op == "has_any" and not isinstance(value, list):
        raise ConfigError(f"{where}: has_any needs a list like ['barrier', 'wait'] ({text!r})")
    return Condition(fact, op, value)


def _parse_value(raw: str, thresholds: dict, where: str, text: str):
    number = parse_number(raw)
    if number is not None:
        return number
    if re.fullmatch(r"'[^']*'|\"[^\"]*\"", raw):
        return raw[1:-1]
    if raw.startswith("[") and raw.endswith("]"):
        items = [i.strip() for i in raw[1:-1].split(",") if i.strip()]
        if all(re.fullmatch(r"'[^']*'|\"[^\"]*\"", i) for i in items) and items:
            return [i[1:-1] for i in items]
    elif raw in thresholds or raw in FACT_TYPES or re.fullmatch(r"stall\.[a-z0-9_]+", raw):
        return ("ref", raw)
    raise ConfigError(f"{where}: cannot read the value {raw!r} in {text!r}; use a number, a 'text', "
                      f"a ['list'], a threshold or a fact")


@dataclass
class Verdict:
    name: str
    summary: str
    when: list[Condition]


@dataclass
class Leaf:
    id: str
    text: str
    pattern: str
    when: list[Condition]


@dataclass
class Tree:
    thresholds: dict[str, float]
    verdicts: list[Verdict]
    leaves: list[Leaf]
    fallback: Leaf
    path: str = ""


_SLUG = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")


def tree_path() -> Path | None:
    """The decision tree: the checkout's patterns/, else the installed ``sessionkit.patterns``."""
    here = Path(__file__).resolve().parents[2] / "patterns" / TREE_FILE
    if here.is_file():
        return here
    try:
        import importlib.resources

        found = importlib.resources.files("sessionkit.patterns") / TREE_FILE
        if found.is_file():
            return Path(str(found))
    except (ModuleNotFoundError, TypeError):
        pass
    return None


def load_tree(path: str | os.PathLike | None = None) -> Tree:
    """Read and check the decision tree; ConfigError names the file and the entry at fault."""
    import tomllib

    path = Path(path) if path else tree_path()
    if path is None or not path.is_file():
        raise ConfigError(f"the profile decision tree {TREE_FILE} is missing from patterns/")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    thresholds = data.get("thresholds", {})
    if not isinstance(thresholds, dict) or not all(_is_num(v) for v in thresholds.values()):
        raise ConfigError(f"{path}: [thresholds] must map names to numbers")
    thresholds = {k: float(v) for k, v in thresholds.items()}
    clash = set(thresholds) & set(FACT_TYPES)
    if clash:
        raise ConfigError(f"{path}: thresholds {sorted(clash)} have the names of facts")

    def conditions(entry: dict, where: str) -> list[Condition]:
        when = entry.get("when", [])
        if not isinstance(when, list):
            raise ConfigError(f"{where}: 'when' must be a list of conditions")
        return [parse_condition(c, thresholds, where) for c in when]

    verdicts = []
    for i, entry in enumerate(data.get("verdicts", [])):
        where = f"{path} verdicts[{i}]"
        if not entry.get("name") or not entry.get("summary"):
            raise ConfigError(f"{where}: a verdict needs a name and a summary")
        verdicts.append(Verdict(entry["name"], entry["summary"], conditions(entry, where)))
    if not verdicts or verdicts[-1].when:
        raise ConfigError(f"{path}: the last verdict must have no conditions, so one always applies")
    names = [v.name for v in verdicts]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: verdict names repeat: {names}")

    def leaf(entry: dict, where: str) -> Leaf:
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be a table")
        for key in ("id", "text", "pattern"):
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                raise ConfigError(f"{where}: needs a non-empty {key!r}")
        if not _SLUG.fullmatch(entry["pattern"]):
            raise ConfigError(f"{where}: pattern {entry['pattern']!r} is not a pattern id (a slug)")
        made = Leaf(entry["id"], " ".join(entry["text"].split()), entry["pattern"],
                    conditions(entry, where))
        for cond in made.when:
            if cond.fact == "verdict" and isinstance(cond.value, str) and cond.value not in names:
                raise ConfigError(f"{where}: no verdict named {cond.value!r}")
        return made

    leaves = [leaf(e, f"{path} leaves[{i}]") for i, e in enumerate(data.get("leaves", []))]
    ids = [x.id for x in leaves]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{path}: leaf ids repeat")
    if "fallback" not in data:
        raise ConfigError(f"{path}: needs a [fallback] move for when no leaf applies")
    fallback = leaf(data["fallback"], f"{path} fallback")
    return Tree(thresholds, verdicts, leaves, fallback, str(path))


@dataclass
class Classification:
    verdict: str
    summary: str
    suggestions: list[dict]  # {"text", "pattern", "leaf"}
    facts: dict


def make_facts(numbers: KernelNumbers, cfg: AttentionConfig, kernel: str, ceilings: Ceilings) -> dict:
    """The facts the tree's conditions test; absent numbers stay absent (None)."""
    facts: dict = {
        "sm_pct": numbers.sm_throughput_pct, "tensor_pct": numbers.tensor_pipe_pct,
        "dram_pct": numbers.dram_throughput_pct, "onchip_pct": numbers.memory_throughput_pct,
        "occupancy_pct": numbers.achieved_occupancy_pct,
        "theoretical_occupancy_pct": numbers.theoretical_occupancy_pct,
        "registers": numbers.registers_per_thread, "smem_bytes": numbers.smem_per_block_bytes,
        "l2_hit_pct": numbers.l2_hit_rate_pct, "duration_ms": numbers.duration_ms,
        "waves": numbers.waves_per_sm, "block_threads": numbers.block_threads,
        "head_dim": float(cfg.head_dim), "kernel": kernel, "dtype": cfg.dtype,
        "causal": float(cfg.causal), "occupancy_limiters": list(numbers.occupancy_limiters),
        "stalls": dict(numbers.stalls),
    }
    top = numbers.top_stalls(3)
    facts["top_stalls"] = [name for name, _ in top] if top else None
    facts["top_stall"] = top[0][0] if top else None
    facts["tflops"] = tflops(cfg.flops, numbers.duration_ms)
    facts["tflops_pct"] = None
    # the ceiling is a bf16 matmul: it bounds calls on 16-bit inputs only
    if facts["tflops"] is not None and ceilings.tflops and DTYPES[cfg.dtype].itemsize == 2:
        facts["tflops_pct"] = 100.0 * facts["tflops"] / ceilings.tflops
    seconds = numbers.duration_ms / 1e3 if numbers.duration_ms else None
    facts["bandwidth_tbs"] = numbers.dram_bytes / seconds / 1e12 if (
        seconds and numbers.dram_bytes is not None) else None
    facts["bandwidth_pct"] = (100.0 * facts["bandwidth_tbs"] / ceilings.tbs
                              if facts["bandwidth_tbs"] is not None and ceilings.tbs else None)
    facts["traffic_ratio"] = (numbers.dram_bytes / cfg.min_bytes
                              if numbers.dram_bytes is not None else None)

    def best(*keys):
        vals = [facts[k] for k in keys if facts.get(k) is not None]
        return max(vals) if vals else None

    facts["mma_pct"] = best("tensor_pct", "tflops_pct")
    facts["compute_pct"] = best("sm_pct", "tensor_pct", "tflops_pct")
    facts["memory_pct"] = best("dram_pct", "bandwidth_pct", "onchip_pct")
    return facts


def classify(facts: dict, tree: Tree) -> Classification:
    """The first verdict whose conditions hold, then every leaf that holds (the fallback if none)."""
    facts = dict(facts)
    th = tree.thresholds
    chosen = next(v for v in tree.verdicts if all(c.holds(facts, th) for c in v.when))
    facts["verdict"] = chosen.name
    moves, seen = [], set()
    for leaf in tree.leaves:
        if all(c.holds(facts, th) for c in leaf.when) and leaf.text not in seen:
            seen.add(leaf.text)
            moves.append({"text": leaf.text, "pattern": leaf.pattern, "leaf": leaf.id})
    if not moves:
        fb = tree.fallback
        moves.append({"text": fb.text, "pattern": fb.pattern, "leaf": fb.id})
    return Classification(chosen.name, chosen.summary, moves, facts)


def fmt_value(value, unit="", digits=1) -> str:
    """``1,234.5 ms``: a number with thousands separators and its unit, or ``n/a`` for None."""
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}{(' ' + unit) if unit else ''}"


def numbers_table(numbers: KernelNumbers, facts: dict, ceilings: Ceilings) -> list[str]:
    theo = (f" (theoretical {fmt_value(numbers.theoretical_occupancy_pct, '%')})"
            if numbers.theoretical_occupancy_pct is not None else "")
    limit = (f", limited by {'/'.join(numbers.occupancy_limiters)}"
             if numbers.occupancy_limiters else "")
    tflops = f"{fmt_value(facts['tflops'], 'TFLOP/s', 0)}"
    if facts.get("tflops_pct") is not None:
        tflops += f" = {facts['tflops_pct']:.0f} % of {ceilings.tflops:.0f} ({ceilings.tflops_source})"
    else:
        tflops += f" (matmul ceiling {ceilings.tflops_source})"
    bw = f"{fmt_value(facts['bandwidth_tbs'], 'TB/s', 2)}"
    if facts.get("bandwidth_pct") is not None:
        bw += f" = {facts['bandwidth_pct']:.0f} % of {ceilings.tbs:.2f} TB/s ({ceilings.tbs_source})"
    if facts.get("traffic_ratio") is not None:
        bw += f"; {facts['traffic_ratio']:.2f}x the least traffic"
    stalls = ", ".join(f"{n} {p:.0f} %" for n, p in numbers.top_stalls(3)) or "n/a"
    rows = [
        ("duration", fmt_value(numbers.duration_ms, "ms", 3)),
        ("SM throughput", fmt_value(numbers.sm_throughput_pct, "%")),
        ("tensor pipe", fmt_value(numbers.tensor_pipe_pct, "%")),
        ("DRAM throughput", fmt_value(numbers.dram_throughput_pct, "%")),
        ("busiest memory unit", fmt_value(numbers.memory_throughput_pct, "%")),
        ("L2 hit rate", fmt_value(numbers.l2_hit_rate_pct, "%")),
        ("achieved occupancy", fmt_value(numbers.achieved_occupancy_pct, "%") + theo + limit),
        ("registers/thread", fmt_value(numbers.registers_per_thread, "", 0)),
        ("smem/block", fmt_value(numbers.smem_per_block_bytes, "B", 0)),
        ("achieved", tflops),
        ("DRAM traffic", bw),
        ("top stalls", stalls),
    ]
    return [f"{k:<20} {v}" for k, v in rows]
