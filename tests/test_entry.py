"""The host commands' console-script entry points on an install without fiqa-compile's dependencies."""
from __future__ import annotations

import sys

import pytest

from fiqa_compile import entry


@pytest.mark.parametrize("command, module", [(entry.distill_main, "fiqa_compile.distill"),
                                             (entry.train_main, "fiqa_compile.train.teacher")])
def test_a_missing_compile_extra_is_one_clear_line(monkeypatch, capsys, command, module):
    monkeypatch.setitem(sys.modules, "torch", None)  # as on a device install: import torch fails
    monkeypatch.delitem(sys.modules, module, raising=False)
    assert command(["--help"]) == 2
    err = capsys.readouterr().err
    assert "needs the fiqa-compile dependencies" in err and "'torch' is not installed" in err
    assert "pip install torch==2.13.0 && pip install . ./host" in err
    assert "Traceback" not in err


def test_other_import_errors_are_not_hidden(monkeypatch):
    """Only fiqa-compile's dependencies get the install hint; a broken module of our own must still raise."""
    monkeypatch.setitem(sys.modules, "fiqa_compile.no_such_module", None)
    with pytest.raises(ModuleNotFoundError):
        entry.run_command("fiqa-x", "fiqa_compile.no_such_module")


def test_commands_run_when_everything_is_installed(capsys):
    with pytest.raises(SystemExit) as done:
        entry.eval_main(["--help"])
    assert done.value.code == 0 and "fiqa-eval" in capsys.readouterr().out


def test_paper_checkpoint_loaders_import_from_the_models_package():
    """README names them under fiqa_compile.models; they are resolved lazily there."""
    from fiqa_compile.models import load_dsl_fiqa_checkpoint, load_vit_fiqa_checkpoint
    from fiqa_compile.models.dsl_fiqa import load_dsl_fiqa_checkpoint as dsl
    from fiqa_compile.models.vit_fiqa import load_vit_fiqa_checkpoint as vit

    assert load_vit_fiqa_checkpoint is vit and load_dsl_fiqa_checkpoint is dsl
    with pytest.raises(AttributeError, match="no attribute 'load_nothing'"):
        import fiqa_compile.models as models

        models.load_nothing


@pytest.mark.parametrize("command", [entry.compile_main, entry.labels_main, entry.train_main, entry.distill_main,
                                     entry.eval_main])
def test_help_explains_every_option_in_plain_text(command, capsys):
    """--help is the manual on a device without a browser: every option says what it does, no reST markup."""
    import argparse

    parsers = []
    real = argparse.ArgumentParser.parse_args

    def spy(self, *args, **kwargs):
        parsers.append(self)
        return real(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(argparse.ArgumentParser, "parse_args", spy)
        with pytest.raises(SystemExit) as done:
            command(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "``" not in text
    undocumented = [a.dest for a in parsers[0]._actions if not a.help]
    assert undocumented == [], undocumented


def test_a_missing_part_of_an_installed_package_is_not_called_a_missing_extra(monkeypatch):
    """torch is installed here: a submodule it lacks (a version mismatch) must surface as the real error."""
    import types

    fake = types.ModuleType("fiqa_compile.broken_command")

    def main(argv):
        import torch.this_submodule_does_not_exist  # noqa: F401

    fake.main = main
    monkeypatch.setitem(sys.modules, "fiqa_compile.broken_command", fake)
    with pytest.raises(ModuleNotFoundError, match="torch.this_submodule_does_not_exist"):
        entry.run_command("fiqa-x", "fiqa_compile.broken_command")
