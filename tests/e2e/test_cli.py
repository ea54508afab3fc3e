"""The duet binary's dispatch: help, version, unknown commands and flags."""
import subprocess

import pytest


def run(duet_bin, *args):
    return subprocess.run([duet_bin, *args], capture_output=True, text=True, timeout=30)


def test_help_lists_commands(duet_bin):
    r = run(duet_bin, "--help")
    assert r.returncode == 0
    assert "usage: duet <command>" in r.stdout
    assert "info" in r.stdout


def test_version(duet_bin):
    r = run(duet_bin, "--version")
    assert r.returncode == 0
    assert r.stdout.startswith("duet ")


def test_no_args_is_usage_error(duet_bin):
    r = run(duet_bin)
    assert r.returncode == 2
    assert "usage" in r.stderr


def test_unknown_command(duet_bin):
    r = run(duet_bin, "frobnicate")
    assert r.returncode == 2
    assert "unknown command 'frobnicate'" in r.stderr


@pytest.mark.parametrize("args,needle", [
    (["info", "--bogus"], "unknown flag '--bogus'"),
    (["info", "--log-level", "loud"], "--log-level takes"),
    (["info", "extra"], "unexpected argument 'extra'"),
])
def test_bad_flags(duet_bin, args, needle):
    r = run(duet_bin, *args)
    assert r.returncode == 2
    assert needle in r.stderr


def test_subcommand_help(duet_bin):
    r = run(duet_bin, "info", "--help")
    assert r.returncode == 0
    assert "usage: duet info" in r.stdout
    assert "--log-level" in r.stdout


def test_info(duet_bin):
    r = run(duet_bin, "info", "--gpu")
    assert r.returncode == 0
    assert "cuda backend:" in r.stdout
