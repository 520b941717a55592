"""The report's "Where the warps stall (SASS)" section, read as a reader reads it: every figure it
prints is checked against the page ncu printed, computed here with the csv module, rounded once
to the precision the table shows.

The step runs whole on the stand-in ncu of ``tests/step_standins.py``; its source page is either
the real fixture (``tests/data/ncu_source_sass_sample.csv``) or a page made here whose counts sit
where a figure rounded twice (once when stored, once when shown) comes out wrong: an opcode at
9.648 % of the samples (9.65 stored, 9.7 shown), a stall reason at 42.51 % of an opcode's samples
(42.5 stored, 42 shown), thirty small opcodes whose shares round to 0.00 each but make 0.12 %
together, and reasons at 0.2 % and 99.8 % of an instruction's samples.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter, defaultdict

import pytest
from step_standins import SASS_SAMPLE, fake_ncu

from sessionkit.profile import REASON_NAMES as NCU_REASON_NAMES
from sessionkit.report import session_report
from sessionkit.runner import run_step
from sessionkit.steps.profile import ProfileStep

SAMPLES = "Warp Stall Sampling (All Samples)"
SHOWN_OPCODES = 12
REASON_NAMES = {"stall_barrier": "barrier", "stall_wait": "wait", "stall_selected": "selected",
                "stall_long_sb": "long_scoreboard"}
COLUMNS = ["Address", "Source", SAMPLES, "Warp Stall Sampling (Not-issued Samples)",
           "Instructions Executed", *REASON_NAMES]


def _page(kernel: str, rows: list[tuple[str, int, dict]]) -> str:
    """A source page in ncu's CSV form: one instruction per (sass, samples, {column: count})."""
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n")
    out.write(f'"Kernel Name","{kernel}",\n')
    writer.writerow(COLUMNS)
    for i, (sass, samples, reasons) in enumerate(rows):
        writer.writerow([f"0x{0x7f0000000000 + 16 * i:x}", f"      {sass}", samples,
                         samples - reasons.get("stall_selected", 0), 100,
                         *(reasons.get(c, 0) for c in REASON_NAMES)])
    return out.getvalue()


def _straddling_page() -> str:
    rows = [("HGMMA.64x128x16.F32.BF16 R24, gdesc[UR8], RZ, !UPT", 30000, {"stall_barrier": 12000}),
            ("MUFU.EX2 R68, R68", 20000,
             {"stall_wait": 8502, "stall_selected": 11400, "stall_long_sb": 98}),
            ("FADD R1, R2, R3", 10000, {"stall_selected": 10000}),
            ("FMNMX R214, R213, R214, !PT", 9648, {"stall_wait": 9648}),
            ("FFMA R1, R2, R3, R4", 8000, {"stall_selected": 8000}),
            ("IMAD R1, R2, R3, R4", 6000, {"stall_wait": 6000}),
            ("@!P0  BRA 0x7f0000000000", 5000, {"stall_long_sb": 4990, "stall_wait": 10}),
            ("LOP3.LUT R1, R2, R3, RZ, 0xc0, !PT", 4000, {"stall_wait": 4000}),
            ("SHF.R.S32.HI R25, RZ, 0x1f, R1", 3000, {"stall_wait": 3000}),
            ("R2UR UR4, R2", 2000, {"stall_wait": 2000}),
            ("F2FP.BF16.F32.PACK_AB R1, R2, R3", 1500, {"stall_selected": 1500}),
            ("VIADD R224, R17, UR14", 732, {"stall_wait": 732})]
    rows += [(f"X{i:02d} R1, R2", 4, {"stall_wait": 4}) for i in range(30)]
    assert sum(r[1] for r in rows) == 100000
    return _page("flash_fwd_sm90_bf16_hdim64_causal", rows)


def _expected(page: str) -> dict:
    """What the section should print, from the page alone."""
    rows = list(csv.reader(io.StringIO(page)))
    header = rows[1]
    data = [dict(zip(header, r)) for r in rows[2:] if len(r) == len(header)]
    reasons = [h for h in header if h.startswith("stall_") and "Not Issued" not in h]
    total = sum(int(d[SAMPLES]) for d in data)
    per_op, per_op_reason = Counter(), defaultdict(Counter)
    for d in data:
        words = d["Source"].split()
        op = (words[1] if words[0].startswith("@") else words[0]).split(".")[0]
        per_op[op] += int(d[SAMPLES])
        for r in reasons:
            per_op_reason[op][r] += int(d[r])
        per_op_reason[op]["unlisted"] += int(d[SAMPLES]) - sum(int(d[r]) for r in reasons)
    ranked = sorted((kv for kv in per_op.items() if kv[1] > 0), key=lambda kv: (-kv[1], kv[0]))
    shown, rest = ranked[:SHOWN_OPCODES], ranked[SHOWN_OPCODES:]
    hottest = sorted(range(len(data)), key=lambda i: (-int(data[i][SAMPLES]), i))[:10]
    return {"total": total, "data": data, "reasons": reasons, "shown": shown, "rest": rest,
            "per_op_reason": per_op_reason, "hottest": [data[i] for i in hottest]}


def _reason(column: str) -> str:
    """``stall_long_sb`` -> ``long_scoreboard``: the names the report uses (ncu's stall metrics)."""
    short = column.removeprefix("stall_")
    return NCU_REASON_NAMES.get(short, short)


def _whole(pct: float) -> str:
    """A share shown whole, as a reader needs it: never 0 for some, nor 100 for less than all."""
    if 0 < pct < 0.5:
        return "<1"
    if 99.5 <= pct < 100:
        return ">99"
    return f"{pct:.0f}"


def _reason_cell(counts: dict[str, int]) -> dict[str, str]:
    total = sum(counts.values())
    return {name: _whole(100 * n / total) for name, n in counts.items() if n > 0}


def _cells(part: str, first: str) -> list[list[str]]:
    """The rows of the Markdown table whose header row starts with ``| first |``."""
    rows = []
    for line in part[part.index(f"| {first} |"):].splitlines()[2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().removeprefix("| ").removesuffix(" |")
                     .split(" | ")])
    return rows


def _parse_reasons(cell: str) -> dict[str, str]:
    out = {}
    for item in filter(None, cell.split(", ")):
        name, pct = item.rsplit(" ", 2)[0], item.rsplit(" ", 2)[1]
        out[name] = pct
    return out


def _section(db, session, tmp_path, monkeypatch, page: str) -> str:
    fake_ncu(tmp_path, monkeypatch, source_text=page)
    row = run_step(db, session, ProfileStep(),
                   {"kernel": "ours", "config": "4,16,4096,4096,64,bf16,1", "source": True})
    assert row["status"] == "passed", row["message"]
    text = session_report(db, session["number"]).text
    return text[text.index("**Where the warps stall (SASS)"):text.index("Suggestions:")]


@pytest.mark.parametrize("which", ["straddling", "fixture"])
def test_every_figure_of_the_section_is_the_pages_rounded_once(db, session, tmp_path,
                                                               monkeypatch, which):
    page = _straddling_page() if which == "straddling" else SASS_SAMPLE.read_text()
    want = _expected(page)
    total = want["total"]
    part = _section(db, session, tmp_path, monkeypatch, page)

    table = _cells(part, "opcode")
    assert len(table) == SHOWN_OPCODES + 1
    for cells, (op, samples) in zip(table, want["shown"]):
        assert cells[0] == f"`{op}`"
        assert cells[1] == f"{100 * samples / total:.1f} %", op
        assert cells[2] == f"{samples:,}"
        counts = {_reason(k): v for k, v in want["per_op_reason"][op].items()}
        got = _parse_reasons(cells[4])
        expected = _reason_cell(counts)
        assert got == {k: f"{expected[k]}" for k in got}, op
    rest_samples = sum(s for _, s in want["rest"])
    assert table[-1][:3] == [f"{len(want['rest'])} other opcodes",
                             f"{100 * rest_samples / total:.1f} %", f"{rest_samples:,}"]

    hot = _cells(part, "offset")
    assert len(hot) == 10
    for cells, d in zip(hot, want["hottest"]):
        samples = int(d[SAMPLES])
        assert cells[1] == f"`{d['Source'].strip()}`"
        assert cells[2] == f"{100 * samples / total:.2f} %"
        counts = {_reason(r): int(d[r]) for r in want["reasons"]}
        counts["unlisted"] = samples - sum(int(d[r]) for r in want["reasons"])
        expected = _reason_cell(counts)
        got = _parse_reasons(cells[4])
        assert got == {k: expected[k] for k in got}, d["Source"]
    if which == "straddling":
        # the figures a second rounding got wrong, as a reader sees them
        assert "| `FMNMX` | 9.6 % | 9,648 |" in part
        assert "wait 43 %" in part and "long_scoreboard <1 %" in part
        assert "| 30 other opcodes | 0.1 % | 120 |" in part
        assert "long_scoreboard >99 %, wait <1 %" in part


def test_no_warp_samples_says_so_and_promises_no_table(db, session, tmp_path, monkeypatch):
    page = _page("flash_fwd_sm90_bf16_hdim64_causal",
                 [("MUFU.EX2 R68, R68", 0, {}), ("@!P0  BRA 0x7f0000000000", 0, {})])
    part = _section(db, session, tmp_path, monkeypatch, page)
    assert part.startswith("**Where the warps stall (SASS).** ncu took no warp samples in "
                           "`flash_fwd_sm90_bf16_hdim64_causal` (2 instructions), so there is no "
                           "breakdown per opcode or instruction.")
    assert "per opcode (mnemonic" not in part and "| opcode |" not in part


def test_a_sass_table_of_another_kernel_than_the_profiled_one_is_named_as_such(
        db, session, tmp_path, monkeypatch):
    """The stand-in's kernel-level page is of a cuDNN kernel, its source page of ours: the
    section says that its figures are of another kernel than the verdict's."""
    part = _section(db, session, tmp_path, monkeypatch, _straddling_page())
    assert re.search(r"`flash_fwd_sm90_bf16_hdim64_causal` is not the kernel of the figures "
                     r"above, `cudnn_generated_fort_native_sdpa_sm90_[^`]+`: ncu's source page has "
                     r"no table of that name, so this is its table with the most samples\.", part)


def test_the_kernel_level_stall_reasons_say_what_they_are_a_share_of(db, session, tmp_path,
                                                                    monkeypatch):
    fake_ncu(tmp_path, monkeypatch)
    run_step(db, session, ProfileStep(), {"kernel": "ours", "source": True})
    text = session_report(db, session["number"]).text
    assert re.search(r"\nTop stall reasons \(whole kernel, % of stalled warp cycles\): "
                     r"\w+ [\d.]+ %", text)
