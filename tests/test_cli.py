"""The atcdn command as an operator meets it: --help, refusing bad settings and taken
ports with one clear line, the start banner, ``atcdn cid`` and ``atcdn push``."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
from pathlib import Path

import httpx
import pytest
from atcdn.cli.banner import edge_banner, origin_banner
from atcdn.cli.main import build_parser
from atcdn.core.cid import compute
from atcdn.core.settings import EdgeSettings, LogSettings, OriginSettings

from tests.helpers.env import ROOT, TOKEN
from tests.helpers.servers import atcdn, free_port


def run_cli(*args: str, input: bytes | None = None, env: dict | None = None,
            timeout: float = 30) -> subprocess.CompletedProcess:
    """Run atcdn in its own session; on timeout its whole group (workers too) is killed."""
    proc = subprocess.Popen(atcdn(*args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT, start_new_session=True,
                            env={**os.environ, **(env or {})})
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _walk(parser: argparse.ArgumentParser, path: str = "atcdn"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, f"{path} {name}")


def test_every_command_and_flag_has_help_default_and_variable():
    parser = build_parser()
    assert "``" not in parser.description  # no raw RST in the top line
    commands = list(_walk(parser))
    assert {"atcdn origin serve", "atcdn edge serve", "atcdn up", "atcdn cid",
            "atcdn push"} <= {name for name, _ in commands}
    for name, sub in commands:
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    assert choice.help, f"{name} {choice.dest}: no description"
                continue
            if action.option_strings == ["-h", "--help"] or not action.option_strings:
                continue
            text = action.help or ""
            flag = f"{name} {action.option_strings[-1]}"
            assert len(text) > 12, f"{flag}: no description"
            assert "default:" in text or "required" in text, f"{flag}: no default: {text}"
            assert "ATCDN_" in text or "no environment variable" in text, f"{flag}: {text}"


def test_help_names_the_variable_and_default_of_a_setting():
    out = run_cli("edge", "serve", "--help").stdout.decode()
    assert "ATCDN_EDGE_CACHE_SIZE" in out and "10.0 GiB" in out and "10G" in out
    assert "ATCDN_PDS_FALLBACK" in out


@pytest.mark.parametrize("args, variable", [
    (["edge", "serve", "--origin", "127.0.0.1:8101"], "ATCDN_EDGE_ORIGIN"),
    (["edge", "serve", "--cache-size", "lots"], "ATCDN_EDGE_CACHE_SIZE"),
    (["origin", "serve", "--port", "eighty"], "ATCDN_ORIGIN_PORT"),
])
def test_bad_settings_refuse_to_start_with_one_line(tmp_path: Path, args, variable):
    done = run_cli(*args, "--port" if "--port" not in args else "--host",
                   str(free_port()) if "--port" not in args else "127.0.0.1",
                   env={"ATCDN_EDGE_CACHE_DIR": str(tmp_path)}, timeout=20)
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert "Traceback" not in err and variable in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_origin_without_scheme_names_the_fix():
    with pytest.raises(ValueError, match="http://127.0.0.1:8101"):
        EdgeSettings(origin="127.0.0.1:8101")
    assert EdgeSettings(origin="https://origin.example:8443").origin


def _one_line_refusal(done: subprocess.CompletedProcess, port: int) -> None:
    err = done.stderr.decode()
    assert done.returncode != 0, err
    assert "Traceback" not in err, err
    assert f"port {port}" in err and "already in use" in err, err
    assert len([line for line in err.splitlines() if "in use" in line]) == 1


def test_second_origin_on_a_taken_port_refuses(origin: str, tmp_path: Path):
    """The first-run bug: a second origin on the same port started and shared it."""
    port = int(origin.rsplit(":", 1)[1])
    done = run_cli("origin", "serve", "--port", str(port), "--data-dir", str(tmp_path / "o2"))
    _one_line_refusal(done, port)
    assert httpx.get(origin + "/health").status_code == 200  # the first one is untouched


def test_edge_on_a_port_shared_with_reuseport_refuses(tmp_path: Path):
    """A listener with SO_REUSEPORT (as granian opens) still counts as taken."""
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = run_cli("edge", "serve", "--port", str(port), "--cache-dir", str(tmp_path))
    _one_line_refusal(done, port)


def test_banners_say_what_an_operator_needs(tmp_path: Path):
    logs = LogSettings()
    lines = "\n".join(origin_banner(OriginSettings(data_dir=tmp_path, token=None), logs))
    assert str(tmp_path) in lines and "store: fs" in lines and "read-only" in lines
    lines = "\n".join(origin_banner(OriginSettings(data_dir=tmp_path, token="s3cret"), logs))
    assert "token set" in lines and "s3cret" not in lines and "read-only" not in lines
    edge = EdgeSettings(cache_dir=tmp_path, cache_size="2G", origin="http://10.0.0.5:8100",
                        pds_fallback=False, purge_token="p4ss")
    lines = "\n".join(edge_banner(edge, logs))
    assert "http://10.0.0.5:8100" in lines and str(tmp_path) in lines
    assert "2.0 GiB" in lines and "PDS fallback: off" in lines and "p4ss" not in lines
    lines = "\n".join(edge_banner(EdgeSettings(cache_dir=tmp_path), logs))
    assert "PDS fallback: on" in lines and "https://plc.directory" in lines


def test_servers_print_the_banner_once_at_start(tmp_path: Path):
    from tests.helpers.servers import Process

    port = free_port()
    proc = Process(atcdn("origin", "serve", "--port", str(port), "--data-dir",
                         str(tmp_path / "data")),
                   env={"ATCDN_ORIGIN_TOKEN": ""}, log=tmp_path / "origin.log", cwd=ROOT)
    try:
        proc.wait_http(f"http://127.0.0.1:{port}/health")
        log = proc.tail()
        assert log.count("atcdn origin on") == 1 and "read-only" in log, log
        assert str((tmp_path / "data").resolve()) in log
    finally:
        proc.stop()


def test_cid_of_files_and_stdin(tmp_path: Path):
    data = b"an operator's file\n" * 1000
    (tmp_path / "a.bin").write_bytes(data)
    (tmp_path / "b.bin").write_bytes(b"")
    done = run_cli("cid", str(tmp_path / "a.bin"), str(tmp_path / "b.bin"))
    assert done.stdout.decode().split() == [compute(data), compute(b"")]
    assert run_cli("cid", "-", input=data).stdout.decode().strip() == compute(data)
    missing = run_cli("cid", str(tmp_path / "nope"))
    assert missing.returncode == 1 and b"Traceback" not in missing.stderr


def test_push_stores_a_tree_with_plain_progress(origin: str, tmp_path: Path):
    tree = tmp_path / "media"
    (tree / "sub").mkdir(parents=True)
    (tree / ".hidden").write_bytes(b"skip me")
    blobs = {tree / "a.jpg": b"a" * 300_000, tree / "sub" / "b.mp4": b"b" * 5000}
    for path, data in blobs.items():
        path.write_bytes(data)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    done = run_cli("push", str(tree), "--origin", origin, "--token-file", str(token_file),
                   "--did", "did:plc:" + "a" * 24)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert sorted(lines) == sorted(f"{compute(d)} {len(d)} {p}" for p, d in blobs.items())
    err = done.stderr.decode()  # not a terminal: plain lines, one per file
    assert "[1/2]" in err and "[2/2]" in err and "\x1b[" not in err
    for data in blobs.values():
        assert httpx.get(f"{origin}/blob/{compute(data)}").content == data
    bad = run_cli("push", str(tree / "a.jpg"), "--origin", origin,
                  env={"ATCDN_ORIGIN_TOKEN": "wrong"})
    assert bad.returncode == 1 and b"401" in bad.stderr and b"Traceback" not in bad.stderr


def test_push_progress_bar_on_a_terminal(origin: str, tmp_path: Path, capsys):
    from atcdn.cli.push import push
    from atcdn.core.settings import PushSettings

    (tmp_path / "x.bin").write_bytes(b"x" * 2_000_000)
    settings = PushSettings(origin=origin, token=TOKEN)
    assert push([str(tmp_path / "x.bin")], settings, fancy=True) == 0
    captured = capsys.readouterr()
    assert "1/1 files" in captured.err and compute(b"x" * 2_000_000) in captured.out

