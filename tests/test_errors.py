"""The core names a bad argument as the core calls it; the command line renames it to its flag."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from attnscope import masks
from attnscope.cli import app
from attnscope.errors import ArgumentError, UserError
from attnscope.inspector.report import validate_head_range


def test_the_core_speaks_of_its_own_arguments():
    with pytest.raises(ArgumentError) as found:
        masks.from_parts(5, window=0)
    assert str(found.value) == "window must be >= 1, got 0"
    assert isinstance(found.value, ValueError) and isinstance(found.value, UserError)
    with pytest.raises(ArgumentError, match=r"^padding_count 6 must be within 0\.\.5"):
        masks.from_parts(5, padding_count=6)
    with pytest.raises(ArgumentError, match=r"^layer 9 is out of range \(the model has 4 layers: 0\.\.3\)$"):
        validate_head_range(9, None, 4, 8)


def test_the_command_line_names_its_flags():
    runner = CliRunner()
    mask = runner.invoke(app, ["mask", "-q", "5", "--padding", "6"])
    assert mask.exit_code == 2 and "--padding 6 must be within 0..5" in mask.output
    assert ArgumentError("head", "8 is out of range").message_for({"head": "--head"}) == "--head 8 is out of range"
