"""Reading ncu's SASS source page: warp samples per instruction, per opcode, the hottest ones.

The parser runs on ``tests/data/ncu_source_sass_sample.csv``: every 8th row of the SASS source page
that ncu (CUDA 13.0) wrote for our sm90 kernel (bf16, D=64, causal, short keys) on an H200. The
expected figures are computed here from the file with the csv module, independently of the parser.
The step that uses it (``step profile --source``) is tested in test_profile_source_step.py.
"""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from step_standins import SASS_SAMPLE, SOURCE_FAILURE, write_fake_ncu

from sessionkit import profile
from sessionkit.profile import SourceError, parse_source_csv, pick_kernel

KERNEL = "flash_fwd_sm90_bf16_hdim64_causal_shortkeys"
HEADER = ('"Address","Source","Warp Stall Sampling (All Samples)",'
          '"Warp Stall Sampling (Not-issued Samples)","Instructions Executed",'
          '"stall_long_sb","stall_math","stall_wait","stall_selected",'
          '"stall_long_sb (Not Issued)","stall_math (Not Issued)"')


# ---- the fixture, read independently -------------------------------------------------------------

def _rows() -> tuple[list[str], list[dict]]:
    with open(SASS_SAMPLE, newline="") as fh:
        rows = list(csv.reader(fh))
    header = rows[1]
    return header, [dict(zip(header, r)) for r in rows[2:] if len(r) == len(header)]


def _op(sass: str) -> str:
    words = sass.split()
    if words[0].startswith("@"):
        words = words[1:]
    return words[0].split(".")[0]


def test_fixture_is_the_real_page_format():
    first = SASS_SAMPLE.read_text().splitlines()[0]
    assert first == f'"Kernel Name","{KERNEL}",'
    header, data = _rows()
    assert len(data) == 300
    for column in ("Address", "Source", "Warp Stall Sampling (All Samples)",
                   "Warp Stall Sampling (Not-issued Samples)", "Instructions Executed",
                   "stall_long_sb", "stall_math", "stall_selected", "stall_long_sb (Not Issued)"):
        assert column in header


def test_parser_reads_every_instruction_and_sample_of_the_fixture():
    header, data = _rows()
    total = sum(int(d["Warp Stall Sampling (All Samples)"]) for d in data)
    executed = sum(int(d["Instructions Executed"]) for d in data)
    [prof] = parse_source_csv(SASS_SAMPLE.read_text())
    assert prof.kernel_name == KERNEL
    assert len(prof.instructions) == len(data) == 300
    assert prof.total_samples == total == 1859
    assert sum(i.executed for i in prof.instructions) == executed
    first = prof.instructions[0]
    assert (first.address, first.offset, first.sass, first.opcode) == (
        data[0]["Address"], 0, data[0]["Source"].strip(), "LDC")
    # offsets are bytes from the first instruction: the sample keeps every 8th of 16-byte ones
    assert prof.instructions[1].offset == int(data[1]["Address"], 16) - int(data[0]["Address"], 16)
    # ncu's column names map to the stall metrics' names
    assert set(prof.reason_columns) >= {"long_scoreboard", "math_pipe_throttle", "selected",
                                        "short_scoreboard", "no_instruction", "wait", "barrier"}
    for ins, d in zip(prof.instructions, data):
        assert ins.stalls["long_scoreboard"] == int(d["stall_long_sb"])
        assert ins.stalls["math_pipe_throttle"] == int(d["stall_math"])
        assert ins.not_issued == int(d["Warp Stall Sampling (Not-issued Samples)"])


def test_opcodes_sum_the_fixture_per_mnemonic():
    header, data = _rows()
    reasons = [h for h in header if h.startswith("stall_") and "Not Issued" not in h]
    samples, counts, per_reason = Counter(), Counter(), defaultdict(Counter)
    for d in data:
        op = _op(d["Source"])
        samples[op] += int(d["Warp Stall Sampling (All Samples)"])
        counts[op] += 1
        for r in reasons:
            per_reason[op][r] += int(d[r])
    total = sum(samples.values())
    [prof] = parse_source_csv(SASS_SAMPLE.read_text())
    opcodes = prof.by_opcode()
    assert {o.opcode: o.samples for o in opcodes} == dict(samples)
    assert {o.opcode: o.instructions for o in opcodes} == dict(counts)
    assert sum(o.share_pct for o in opcodes) == pytest.approx(100.0)
    # MUFU (exp2 of the softmax) holds the most samples of this kernel, then HGMMA
    assert [o.opcode for o in opcodes[:2]] == ["MUFU", "HGMMA"]
    mufu = opcodes[0]
    assert mufu.samples == samples["MUFU"] == 342
    assert mufu.share_pct == pytest.approx(100 * 342 / total)
    top_column, top_count = per_reason["MUFU"].most_common(1)[0]
    assert top_column == "stall_wait"
    assert mufu.reasons[0] == ("wait", pytest.approx(100 * top_count / samples["MUFU"]))
    bra = next(o for o in opcodes if o.opcode == "BRA")
    assert bra.reasons[0][0] == "long_scoreboard"
    assert bra.reasons[0][1] == pytest.approx(100 * per_reason["BRA"]["stall_long_sb"]
                                              / samples["BRA"])


def test_hottest_instructions_of_the_fixture():
    _, data = _rows()
    by_samples = sorted(range(len(data)), key=lambda i: (
        -int(data[i]["Warp Stall Sampling (All Samples)"]), i))
    [prof] = parse_source_csv(SASS_SAMPLE.read_text())
    hot = prof.hottest(10)
    assert [h.index for h in hot] == by_samples[:10]
    assert hot[0].sass == data[by_samples[0]]["Source"].strip() and hot[0].opcode == "BRA"
    rows = profile.hottest_rows(prof, 10)
    assert rows[0]["share_pct"] == 100 * hot[0].samples / prof.total_samples  # unrounded
    assert rows[0]["reasons"][0][0] == "long_scoreboard"
    assert all(0 < r["share_pct"] <= 100 for r in rows)


# ---- what the page may hold ----------------------------------------------------------------------

@pytest.mark.parametrize("sass, opcode", [
    ("      MUFU.EX2 R68, R68", "MUFU"),
    ("@!P0  BRA 0x7f444f7ab940", "BRA"),
    ("@UP1 HGMMA.64x128x16.F32.BF16 R24, gdesc[UR8], R24, gsb0", "HGMMA"),
    ("R2UR UR4, R2", "R2UR"),
    ("{ IADD3 R1, R1, 1, RZ ;", "IADD3"),
    ("", "?"),
    ("@P0", "?"),
])
def test_opcode_is_the_mnemonic_without_predicate_or_modifiers(sass, opcode):
    assert profile.opcode_of(sass) == opcode


def test_dashes_thousands_separators_and_short_rows():
    text = "\n".join([
        '"Kernel Name","k",',
        HEADER,
        '"0x100","MUFU.EX2 R1, R2","1,234","1,000","12,000","-","1,200","34","-","-","1,000"',
        '"0x110","FADD R1, R1, R2","-","","-","","","",""',
        '"0x120","@P0 BRA 0x100","7","7"',  # a row cut short: missing cells count 0
    ])
    [prof] = parse_source_csv(text)
    mufu, fadd, bra = prof.instructions
    assert (mufu.samples, mufu.not_issued, mufu.executed) == (1234, 1000, 12000)
    assert mufu.stalls == {"long_scoreboard": 0, "math_pipe_throttle": 1200, "wait": 34,
                           "selected": 0}
    assert (fadd.samples, fadd.executed) == (0, 0)
    assert (bra.samples, bra.opcode, bra.offset) == (7, "BRA", 0x20)
    # samples no reason column holds are 'unlisted'
    assert bra.reasons() == {profile.UNLISTED: 7}
    assert prof.by_opcode()[0].reasons == [("math_pipe_throttle", pytest.approx(100 * 1200 / 1234)),
                                          ("wait", pytest.approx(100 * 34 / 1234))]


def test_missing_columns():
    # no "Instructions Executed": executed is unknown, not 0; no total column: the reasons' sum
    text = '"Address","Source","stall_wait","stall_barrier"\n"0x0","BAR.SYNC 0x0","2","5"\n'
    [prof] = parse_source_csv(text)
    ins = prof.instructions[0]
    assert (ins.samples, ins.executed, ins.opcode) == (7, None, "BAR")
    assert prof.by_opcode()[0].executed is None
    # no sample column at all: the profile was taken without the section
    with pytest.raises(SourceError, match="no warp stall samples.*--section SourceCounters"):
        parse_source_csv('"Address","Source","Instructions Executed"\n"0x0","NOP","3"\n')


def test_a_page_with_only_headers_is_a_clear_error():
    with pytest.raises(SourceError) as err:
        parse_source_csv(f'"Kernel Name","k",\n{HEADER}\n\n')
    assert str(err.value) == "ncu's source page lists no instructions for kernel 'k' (only its header)"


@pytest.mark.parametrize("text, words", [
    ("", "no SASS table in ncu's source page (no \"Address\",\"Source\" header): it is empty"),
    ("==ERROR== The report has no source counters\nmore\n", "it begins '==ERROR== The report"),
    ("\x00\x01garbage\"\n,,,\n", "no SASS table"),
    ('"ID","Kernel Name"\n"0","k"\n', "no SASS table"),
])
def test_not_a_source_page_is_a_one_line_error(text, words):
    with pytest.raises(SourceError) as err:
        parse_source_csv(text)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_each_kernel_table_is_read_and_the_profiled_one_picked():
    page = SASS_SAMPLE.read_text()
    small = f'"Kernel Name","reduce",\n{HEADER}\n"0x0","LDG.E R1, [R2]","3","3","1","3","0","0","0"\n'
    two = parse_source_csv("==PROF== Disconnected\n" + small + page)
    assert [p.kernel_name for p in two] == ["reduce", KERNEL]
    assert pick_kernel(two, KERNEL).kernel_name == KERNEL
    assert pick_kernel(two, "reduce").kernel_name == "reduce"
    # a name ncu's raw page spells otherwise: the table with most samples (the longest launch)
    assert pick_kernel(two, "void other<128>(Params)").kernel_name == KERNEL
    with pytest.raises(SourceError, match="holds no kernel"):
        pick_kernel([], KERNEL)


def test_a_kernel_without_samples_has_no_shares():
    [prof] = parse_source_csv(f'{HEADER}\n"0x0","NOP","0","0","5","0","0","0","0"\n')
    assert prof.total_samples == 0 and prof.hottest() == []
    assert prof.by_opcode()[0].share_pct == 0.0 and profile.opcode_rows(prof) == []


# ---- fuzzing: never a traceback, only SourceError --------------------------------------------------

def _check(text: str) -> None:
    try:
        tables = parse_source_csv(text)
    except SourceError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    for prof in tables:
        assert prof.instructions
        opcodes = prof.by_opcode()
        assert sum(o.samples for o in opcodes) == prof.total_samples
        if prof.total_samples:
            assert sum(o.share_pct for o in opcodes) == pytest.approx(100.0)
        for ins in prof.instructions:
            assert ins.samples >= sum(ins.stalls.values()) >= 0 and 0 <= ins.not_issued <= ins.samples
        for o in opcodes:
            assert all(0 <= pct <= 100 for _, pct in o.reasons)
        json.dumps(profile.opcode_rows(prof) + profile.hottest_rows(prof))


@settings(max_examples=300)
@given(st.text(max_size=400))
def test_fuzz_any_text(text):
    _check(text)


_CELL = st.one_of(st.integers(-5, 10**7).map(str), st.integers(0, 10**7).map("{:,}".format),
                  st.sampled_from(["", "-", "n/a", "1e400", "nan", "0x10", " 3 ", "1,2"]),
                  st.text(alphabet='ab ",\n@.\x00', max_size=8))


@settings(max_examples=300)
@given(st.lists(st.lists(_CELL, max_size=12), max_size=8),
       st.sampled_from([HEADER, '"Address","Source"', '"Source","Address","stall_x","stall_"']))
def test_fuzz_rows_under_a_header(rows, header):
    def quote(cell: str) -> str:
        return '"' + cell.replace('"', '""') + '"'

    _check("\n".join([header] + [",".join(quote(c) for c in row) for row in rows]))


@settings(max_examples=200)
@given(st.data())
def test_fuzz_the_real_page_cut_and_damaged(data):
    page = SASS_SAMPLE.read_text()
    cut = data.draw(st.integers(0, len(page)))
    junk = data.draw(st.text(alphabet='",\n\r\x00x-9', max_size=6))
    at = data.draw(st.integers(0, cut))
    _check(page[:at] + junk + page[at:cut])


# ---- the ncu command -------------------------------------------------------------------------------

def test_ncu_command_has_the_source_section_only_with_source():
    plain = profile.ncu_command("/x/ncu", ["python", "t.py"], Path("/w/p"), [])
    assert "SourceCounters" not in plain and "--import-source" not in plain
    with_source = profile.ncu_command("/x/ncu", ["python", "t.py"], Path("/w/p"), [], source=True)
    joined = " ".join(with_source)
    assert "--section SourceCounters" in joined and "--import-source no" in joined
    for section in profile.SECTIONS:
        assert f"--section {section}" in joined
    assert with_source[-2:] == ["python", "t.py"]
    assert profile.source_command("/x/ncu", Path("/w/p.ncu-rep")) == [
        "/x/ncu", "--import", "/w/p.ncu-rep", "--page", "source", "--csv", "--print-source", "sass"]


def test_export_source_failures_are_one_line(tmp_path):
    missing = tmp_path / "no-such-ncu"
    with pytest.raises(SourceError, match="could not run"):
        profile.export_source(str(missing), tmp_path / "r.ncu-rep", tmp_path / "s.csv")
    ncu = write_fake_ncu(tmp_path, source_fails=True)
    with pytest.raises(SourceError) as err:
        profile.export_source(ncu, tmp_path / "r.ncu-rep", tmp_path / "s.csv")
    assert str(err.value) == f"ncu --page source exited with status 1: {SOURCE_FAILURE}"
    assert SOURCE_FAILURE in (tmp_path / "s.csv").read_text()
    slow = tmp_path / "slow-ncu"
    slow.write_text("#!/bin/sh\nsleep 5\n")
    slow.chmod(0o755)
    with pytest.raises(SourceError, match="did not finish in 1 s"):
        profile.export_source(str(slow), tmp_path / "r.ncu-rep", tmp_path / "s.csv", timeout=1)
