"""The operator CLI's help (quart_app/__main__.py): plain text, every
registered command listed on one line with its summary, and every command
(and action) answering --help."""

from __future__ import annotations

import argparse

import pytest

from quart_app.__main__ import _parser


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def help_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        _parser().parse_args([*argv, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def test_help_lists_every_registered_command_on_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = help_of([], capsys)
    commands = subcommands(_parser())
    assert {"serve", "migrate", "doctor", "smoke", "check", "users", "keys"} <= set(commands)
    lines = text.splitlines()
    for name in commands:
        [line] = [x for x in lines if x.startswith(f"    {name} ")]
        assert len(line.split(maxsplit=1)) == 2, line  # the name, then its summary
    assert text.startswith("usage: python -m quart_app")
    assert "QUART_APP_" in text  # the description and epilog, as written


def test_every_command_and_action_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for name, parser in subcommands(_parser()).items():
        text = help_of([name], capsys)
        assert text.startswith(f"usage: python -m quart_app {name}")
        if any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
            for action in subcommands(parser):
                assert help_of([name, action], capsys).startswith(
                    f"usage: python -m quart_app {name} {action}"
                )


def test_smoke_takes_a_url_and_a_key() -> None:
    args = _parser().parse_args(["smoke", "http://127.0.0.1:8000", "--key", "k"])
    assert (args.command, args.url, args.key) == ("smoke", "http://127.0.0.1:8000", "k")
    with pytest.raises(SystemExit):
        _parser().parse_args(["smoke", "http://127.0.0.1:8000"])
