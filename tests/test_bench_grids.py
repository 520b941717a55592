"""Grids: built-in ones, ``--config`` selection and ``[tool.sessionkit.grids]`` loading (parsing the
config text itself is tested in test_attention.py)."""

from __future__ import annotations

import pytest

from sessionkit.attention import AttentionConfig
from sessionkit.bench import grids
from sessionkit.bench.grids import load_grid, select_configs
from sessionkit.errors import UsageError


def test_standard_grid_is_the_documented_48():
    configs = load_grid("standard")
    assert len(configs) == len(set(configs)) == 48
    for c in configs:
        assert c.batch_size * c.seq_len_q == 16384 and c.seq_len_q == c.seq_len_k
        assert c.num_heads * c.head_dim == 2048
    assert {c.dtype for c in configs} == {"fp16", "bf16"}
    assert {c.head_dim for c in configs} == {64, 128}
    assert {c.causal for c in configs} == {True, False}
    assert {c.seq_len_q for c in configs} == {512, 1024, 2048, 4096, 8192, 16384}


def test_seeds_and_quick():
    seeds = load_grid("seeds")
    assert [c.seq_len_q for c in seeds] == [32, 64, 128, 256, 512]
    assert all((c.batch_size, c.num_heads, c.head_dim, c.dtype) == (1, 8, 64, "fp16")
               for c in seeds)
    quick = load_grid("quick")
    assert len(quick) == 8
    # a spread: tiny to over a TFLOP of work, both masks, Sq != Sk present
    flops = sorted(c.flops for c in quick)
    assert flops[0] < 1e9 < 1e12 < flops[-1]
    assert any(c.causal for c in quick) and any(not c.causal for c in quick)
    assert any(c.seq_len_q != c.seq_len_k for c in quick)


def test_select_configs():
    assert select_configs(None)[0] == "quick"
    label, configs = select_configs(None, ["1,8,512,512,64,fp16,0", "1,8,512,512,64,fp16,0"])
    assert label == "custom" and len(configs) == 1
    label, configs = select_configs("seeds", ["1,8,1024,1024,64,fp16,0"])
    assert label == "seeds+custom" and len(configs) == 6


def _pyproject(tmp_path, body: str):
    (tmp_path / "pyproject.toml").write_text("[tool.sessionkit]\nplan = []\n\n" + body)


def test_project_grids_list_and_table(tmp_path):
    _pyproject(tmp_path, """
[tool.sessionkit.grids]
mine = ["1,16,8192,8192,128,bf16,1"]

[tool.sessionkit.grids.long]
dtype = ["bf16", "fp16"]
head_dim = 128
seq_len = [8192, 16384]
tokens = 16384
hidden = 2048
causal = [true, false]

[tool.sessionkit.grids.decode]
dtype = "bf16"
head_dim = [64]
seq_len_q = [1, 16]
seq_len_k = [4096]
batch_size = [8]
num_heads = 32
""")
    assert load_grid("mine", tmp_path) == [AttentionConfig(1, 16, 8192, 8192, 128, "bf16", True)]
    long = load_grid("long", tmp_path)
    assert len(long) == 8
    assert AttentionConfig(2, 16, 8192, 8192, 128, "fp16", False) in long
    decode = load_grid("decode", tmp_path)
    assert [(c.seq_len_q, c.seq_len_k) for c in decode] == [(1, 4096), (16, 4096)]
    assert set(grids.grid_names(tmp_path)) == {"quick", "seeds", "standard", "mine", "long",
                                               "decode", "gqa", "headdims"}


@pytest.mark.parametrize("body, fragment", [
    ('[tool.sessionkit.grids]\nbad = "x"\n', "must be a list"),
    ('[tool.sessionkit.grids]\nbad = []\n', "empty list"),
    ('[tool.sessionkit.grids]\nbad = [1, 2]\n', "config strings"),
    ('[tool.sessionkit.grids]\nbad = ["1,2,3"]\n', "expected B,H"),
    ('[tool.sessionkit.grids.bad]\ndtype="bf16"\nhead_dim=64\nseq_len=8\nbatch_size=1\n'
     'num_heads=1\nfoo=1\n', "unknown key 'foo'"),
    ('[tool.sessionkit.grids.bad]\ndtype="bf16"\nseq_len=8\nbatch_size=1\nnum_heads=1\n',
     "missing 'head_dim'"),
    ('[tool.sessionkit.grids.bad]\ndtype="bf16"\nhead_dim=64\nseq_len=8\nnum_heads=1\n',
     "exactly one of 'batch_size' and 'tokens'"),
    ('[tool.sessionkit.grids.bad]\ndtype="bf16"\nhead_dim=64\nseq_len=8\nbatch_size=1\n'
     'hidden=100\n', "not a multiple"),
    ('[tool.sessionkit.grids.bad]\ndtype="bf16"\nhead_dim=64\nseq_len=[8, -1]\nbatch_size=1\n'
     'num_heads=2\n', "seq_len must be a positive integer"),
    ('[tool.sessionkit]\ngrids = 3\n', "must be a table"),
    # a table with an empty list made a grid of no config, which the bench ran as nothing
    ('[tool.sessionkit.grids.bad]\ndtype=[]\nhead_dim=64\nseq_len=8\nbatch_size=1\n'
     'num_heads=1\n', "'dtype' is an empty list"),
    ('[tool.sessionkit.grids.bad]\ndtype="bf16"\nhead_dim=64\nseq_len=8\nbatch_size=1\n'
     'num_heads=1\ncausal=[]\n', "'causal' is an empty list"),
])
def test_bad_project_grids_are_one_line_usage_errors(tmp_path, body, fragment):
    if body.startswith("[tool.sessionkit]\n"):
        (tmp_path / "pyproject.toml").write_text(body)
    else:
        _pyproject(tmp_path, body)
    with pytest.raises(UsageError, match=fragment) as info:
        load_grid("quick", tmp_path)
    assert "\n" not in str(info.value)


def test_unknown_grid_lists_known_ones(tmp_path):
    with pytest.raises(UsageError, match="known grids: decode, gqa, headdims, quick, seeds, standard"):
        load_grid("nope", tmp_path)


def test_broken_toml_is_a_usage_error(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.sessionkit\n")
    with pytest.raises(UsageError, match="cannot read"):
        load_grid("quick", tmp_path)


def test_gqa_grid_is_llama_style():
    configs = grids.load_grid("gqa")
    assert {(c.num_heads, c.num_heads_k, c.head_dim, c.dtype) for c in configs} == {(32, 8, 128,
                                                                                    "bf16")}
    assert sorted({c.seq_len_q for c in configs}) == [1024, 2048, 4096, 8192, 16384]
    assert {c.causal for c in configs} == {False, True}
    assert all(c.causal_alignment == "top_left" and c.seq_len_q == c.seq_len_k for c in configs)
    assert AttentionConfig(2, 32, 16384, 16384, 128, "bf16", True, 8) in configs


def test_decode_grid_is_bottom_right_against_long_caches():
    configs = grids.load_grid("decode")
    assert {c.seq_len_q for c in configs} == {1, 4, 16}
    assert min(c.seq_len_k for c in configs) == 1024 and max(c.seq_len_k for c in configs) == 131072
    assert all(c.bottom_right and c.num_heads_k == 8 and c.batch_size == 8 for c in configs)
    assert AttentionConfig(8, 32, 1, 32768, 128, "bf16", True, 8, "bottom_right") in configs
    # a single query against Sk keys, bottom-right, sees them all
    assert AttentionConfig(8, 32, 1, 32768, 128, "bf16", True, 8, "bottom_right").flops == \
        4 * 8 * 32 * 128 * 32768


def test_headdims_grid_has_96_and_256():
    configs = grids.load_grid("headdims")
    assert {c.head_dim for c in configs} == {96, 256}
    assert all(c.num_heads * c.head_dim in (2048, 2016) or c.num_heads == 2048 // c.head_dim
               for c in configs)
    assert any(c.head_dim == 256 and c.seq_len_q == 4096 for c in configs)


def test_grid_tables_take_the_causal_words_of_the_config_text(tmp_path):
    _pyproject(tmp_path, """
[tool.sessionkit.grids.cache]
dtype = "bf16"
head_dim = 128
seq_len_q = [1]
seq_len_k = [4096]
batch_size = 8
num_heads = 32
causal = ["br", false, true]
""")
    configs = load_grid("cache", tmp_path)
    assert [c.mask for c in configs] == ["causal-br", "full", "causal"]
    assert configs[0].pairs == 4096 and configs[2].pairs == 1


def test_a_grid_past_the_cap_is_refused_before_it_is_expanded(tmp_path):
    """Lists that multiply to 10^10 combinations are a slip: refused in one line, at once."""
    import time

    many = "[" + ", ".join(str(i) for i in range(1, 101)) + "]"
    _pyproject(tmp_path, f'[tool.sessionkit.grids.huge]\ndtype="bf16"\nhead_dim=64\n'
                         f'seq_len={many}\nbatch_size={many}\nnum_heads={many}\ncausal=[0, 1]\n')
    started = time.monotonic()
    with pytest.raises(UsageError, match="2,000,000 combinations; a grid holds at most 10,000") as info:
        load_grid("quick", tmp_path)
    assert time.monotonic() - started < 5 and "\n" not in str(info.value)
    configs = ", ".join(f'"1,1,{s},{s},64,bf16,0"' for s in range(1, 10_002))
    (tmp_path / "pyproject.toml").write_text(f"[tool.sessionkit.grids]\nmine = [{configs}]\n")
    with pytest.raises(UsageError, match="10,001 configs; a grid holds at most 10,000"):
        load_grid("quick", tmp_path)
