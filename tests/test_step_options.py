"""Typed step options: one declaration gives the CLI options, the defaults and the one check."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from sessionkit.cli import cli
from sessionkit.errors import UsageError
from sessionkit.steps import REGISTRY, get_step
from sessionkit.steps.typed import OptionError, StepOptions, option

STEPS = [name for name in REGISTRY if get_step(name).options_type.specs()]


@dataclass(frozen=True)
class Sample(StepOptions):
    count: int = option(3, unit="count", min=1, max=5, help="How many.")
    ratio: float = option(0.5, unit="fraction", min=0, max=1, help="How much.")
    limit_s: float = option(10.0, flag="--limit", unit="s", min=0, min_open=True, help="How long.")
    mode: str = option("fast", choices=("fast", "slow"), help="How.")
    names: tuple[str, ...] = option((), flag="--name", multiple=True, help="Who.")
    loud: bool = option(False, help="Shout.")


def test_one_declaration_gives_flags_defaults_and_help():
    specs = {s.name: s for s in Sample.specs()}
    assert [s.flag for s in specs.values()] == ["--count", "--ratio", "--limit", "--mode", "--name",
                                                "--loud"]
    assert specs["count"].help_text() == "How many.  [default: 3; 1<=x<=5]"
    assert specs["ratio"].help_text() == "How much.  [default: 0.5; 0<=x<=1; unit: fraction]"
    assert specs["limit_s"].range_text == "x>0" and specs["names"].help_text() == "Who."
    assert Sample.parse({}) == Sample()
    params = {p.name: p for p in Sample.click_params()}
    assert params["limit_s"].opts == ["--limit"] and params["names"].multiple
    assert params["loud"].is_flag and params["mode"].metavar == "[fast|slow]"


@pytest.mark.parametrize("raw, message", [
    ({"count": "0"}, "Invalid value for '--count': 0 is not in the range 1<=x<=5."),
    ({"count": "two"}, "Invalid value for '--count': 'two' is not a valid integer."),
    ({"count": 2.5}, "Invalid value for '--count': 2.5 is not a valid integer."),
    ({"count": True}, "Invalid value for '--count': True is not a valid integer."),
    ({"ratio": "nan"}, "Invalid value for '--ratio': 'nan' is not a valid float."),
    ({"limit_s": 0}, "Invalid value for '--limit': 0.0 is not in the range x>0."),
    ({"mode": "medium"}, "Invalid value for '--mode': 'medium' is not one of 'fast', 'slow'."),
    ({"loud": "maybe"}, "Invalid value for '--loud': 'maybe' is not a valid boolean."),
    ({"colour": "red"}, "unknown option 'colour'; the options are: count, ratio, limit_s, mode, "
                        "names, loud"),
])
def test_bad_values_are_one_line_usage_errors(raw, message):
    with pytest.raises(UsageError) as err:
        Sample.parse(raw)
    assert str(err.value) == message and err.value.exit_code == 2


def test_building_the_dataclass_checks_too():
    with pytest.raises(OptionError, match="'--count': 9 is not in the range 1<=x<=5"):
        Sample(count=9)
    assert Sample.parse({"names": ("a", "b", "a"), "loud": "yes"}).names == ("a", "b", "a")


@pytest.mark.parametrize("name", STEPS)
def test_defaults_round_trip_through_what_is_stored(name):
    """What steps.options stores is read back to the same options (configs as their text)."""
    options_type = get_step(name).options_type
    defaults = options_type()
    assert options_type.parse(defaults.to_json()) == defaults


@settings(max_examples=200, deadline=None)
@given(step=st.sampled_from(STEPS), data=st.data())
def test_any_text_for_any_option_is_taken_or_refused_in_one_line(step, data):
    options_type = get_step(step).options_type
    spec = data.draw(st.sampled_from(options_type.specs()))
    text = data.draw(st.one_of(st.text(max_size=30), st.sampled_from(
        ["0", "-1", "1", "2.5", "1e309", "nan", "45s", "off", "quick", "ours", "1,8,128,128,64,fp16,0"])))
    raw = (text,) if spec.multiple else text
    try:
        options = options_type.parse({spec.name: raw})
    except UsageError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(("Invalid value for", "unknown"))
        return
    assert options_type.parse(options.to_json()) == options


@pytest.mark.parametrize("text", ["", " "])
def test_an_empty_csv_path_is_refused_not_ignored(text):
    """--csv '' used to be taken, and no CSV was written, without a word."""
    from sessionkit.steps.bench import BenchOptions

    with pytest.raises(OptionError, match="'--csv': an empty file name"):
        BenchOptions.parse({"csv_path": text})
    result = CliRunner().invoke(cli, ["step", "bench", "--csv", text])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert result.output.startswith("Error: Invalid value for '--csv': an empty file name.")


def test_the_cli_checks_with_the_same_declaration():
    runner = CliRunner()
    result = runner.invoke(cli, ["step", "bench", "--time-limit", "soon"])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert result.output.startswith("Error: Invalid value for '--time-limit': bad duration 'soon'")
    helped = " ".join(runner.invoke(cli, ["step", "bench", "--help"]).output.split())
    assert "--time-limit DURATION Time for all configs together" in helped
    assert "medians are steady. [default: 150s]" in helped


def test_bench_help_names_every_builtin_grid_and_the_kv_heads():
    from sessionkit.bench.grids import BUILTIN_GRIDS

    helped = " ".join(CliRunner().invoke(cli, ["step", "bench", "--help"]).output.split())
    grid_help = helped.split("--grid TEXT", 1)[1].split("--config", 1)[0]
    assert all(name in grid_help for name in BUILTIN_GRIDS), grid_help
    assert "--config B,H,Sq,Sk,D,DTYPE,CAUSAL[,H_KV]" in helped
