"""Issue 12, item 1: one registry of ops. The commands, `batch`, the library functions, the metadata
and the README's table agree with it, and a new op is one entry plus its kernel."""

from __future__ import annotations

import inspect
import typing
from pathlib import Path

import pytest
import torch
import typer
from typer.main import get_command
from typer.testing import CliRunner

import roicli
from roicli import registry
from roicli.cli import app
from roicli.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]


def options_of(command_name: str, application=app) -> dict:
    group = get_command(application)
    return {p.name: p for p in group.commands[command_name].params}


def choices(option) -> tuple:
    return typing.get_args(option.type_descriptor.annotation)


def test_readme_table_is_the_registry_table():
    assert registry.docs_table() in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("op", list(registry.OPS.values()), ids=list(registry.OPS))
def test_each_op_command_and_function_take_the_registry_parameters(op):
    """The command has each parameter as an option with the registry's default and help; the
    library function takes it under the same name with the same default."""
    opts = options_of(op.name)
    signature = inspect.signature(op.load())
    for p in op.params:
        option = opts[p.name]
        assert option.default == p.default and option.help == p.help
        if p.choices:
            assert choices(option) == p.choices
        if p.type is bool:
            assert option.opts == ["--" + p.name.replace("_", "-")] and option.secondary_opts == [
                "--no-" + p.name.replace("_", "-")
            ]
        assert signature.parameters[p.name].default == p.default
    other = {name for name in registry.shared_params() if name not in {p.name for p in op.params}}
    assert not other & set(opts)  # another op's parameter is not offered here
    assert choices(opts["box_format"]) == op.box_formats


def test_batch_offers_every_op_and_every_op_parameter():
    opts = options_of("batch")
    assert choices(opts["op"]) == tuple(registry.OPS)
    for name, takers in registry.shared_params().items():
        assert opts[name].default is None
        assert opts[name].help.startswith(" and ".join(op.name for op, _ in takers))
    assert "--no-aligned for align, --aligned for precise" in opts["aligned"].help


def test_resolve_fills_defaults_checks_values_and_refuses_other_ops_parameters():
    align = registry.get("align")
    assert align.resolve({}) == {"sampling_ratio": -1, "aligned": False, "mode": "avg"}
    assert align.resolve({"mode": "max", "aligned": None}) == {"sampling_ratio": -1, "aligned": False, "mode": "max"}
    for given, text in [
        ({"mode": "mean"}, "mode: expected avg or max, got 'mean'"),
        ({"sampling_ratio": 1.5}, "sampling_ratio: expected an integer, got 1.5"),
        ({"aligned": "yes"}, "aligned: expected True or False, got 'yes'"),
    ]:
        with pytest.raises(UsageError) as e:
            align.resolve(given)
        assert str(e.value) == text and e.value.param == next(iter(given))
    with pytest.raises(UsageError) as e:
        registry.get("precise").resolve({"mode": "max"})
    assert str(e.value) == "mode: applies to op align, not op precise" and e.value.params == ("mode", "op")
    with pytest.raises(UsageError) as e:
        registry.get("rotated")
    assert str(e.value) == "op: expected one of align, pool, precise, got 'rotated'"


def test_metadata_records_the_registry_parameters():
    result = roicli.pool(torch.ones(1, 1, 4, 4), [[0, 0, 4, 4]], op="precise", output_size=1)
    assert {k: result.metadata[k] for k in ("op", "aligned")} == {"op": "precise", "aligned": True}
    assert "mode" not in result.metadata and "sampling_ratio" not in result.metadata


# ---- a new op is one registry entry plus its kernel --------------------------------------------------------


def scaled_max(input, rois, output_size, spatial_scale=1.0, factor=1.0):
    """A toy kernel: RoI Pool's values times `factor`."""
    from roicli.ops import roi_pool

    return roi_pool(input, rois, output_size, spatial_scale) * factor


def test_a_new_op_is_one_entry(monkeypatch, tmp_path):
    entry = registry.Op(
        "scaled",
        "Scaled RoI Pool",
        f"{__name__}:scaled_max",
        "RoI Pool times a factor (a test op).",
        params=(registry.Param("factor", float, 1.0, help="What to multiply by.", summary="a factor", minimum=0),),
    )
    monkeypatch.setitem(registry.OPS, "scaled", entry)
    fmap = torch.arange(16.0).reshape(1, 1, 4, 4)
    result = roicli.pool(fmap, [[0, 0, 3, 3]], op="scaled", output_size=1, factor=2.5)
    assert result.tensors["pooled"].item() == 15 * 2.5  # the max of the whole map, times 2.5
    assert result.metadata["op"] == "scaled" and result.metadata["factor"] == 2.5
    with pytest.raises(UsageError) as e:
        roicli.pool(fmap, [[0, 0, 3, 3]], op="scaled", factor=-1)
    assert str(e.value) == "factor: expected >= 0, got -1.0"
    # the command line: a fresh app built by the same code gets `roicli scaled --factor`
    from roicli.cli import pooling
    from roicli.cli._common import OneLineErrors

    fresh = typer.Typer(cls=OneLineErrors)
    pooling.register(fresh)
    assert options_of("scaled", fresh)["factor"].default == 1.0
    feats, rois, out = tmp_path / "f.safetensors", tmp_path / "r.json", tmp_path / "o.safetensors"
    from safetensors.torch import load_file, save_file

    save_file({"f": fmap}, feats)
    rois.write_text("[[0, 0, 3, 3]]")
    result = CliRunner().invoke(fresh, ["scaled", str(feats), str(rois), "-o", str(out), "--factor", "4",
                                        "--output-size", "1", "-q"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert load_file(out)["pooled"].item() == 60.0
