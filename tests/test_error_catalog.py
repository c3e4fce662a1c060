"""The bad-input catalog: every bad console command and damaged card this suite feeds the
firmware, one table, each with the error code it must get and the words that name the problem.

Each test writes the error lines it saw to build/reports/error-cases/<target>-<table>.json;
`python tests/test_error_catalog.py build/reports/error-cases > docs/error-cases.md` renders
them (the committed table is such a run's output, not hand-written).

Other bad-input tests stay where they need a program of their own (tests/test_firmware_errors.py:
NaN weights, storage faults, named pipes, board faults; tests/test_cli.py: the harness CLI).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

F32 = "tinyllm_float32_weights"
I8 = "tinyllm_weights"  # the seed's name for the int8 set
REPORTS = Path(__file__).resolve().parent.parent / "build" / "reports" / "error-cases"


@dataclass(frozen=True)
class CommandCase:
    name: str
    line: str
    code: str
    names: str  # must appear in the message


@dataclass(frozen=True)
class CardCase:
    name: str
    damage: Callable[[Path], None]
    code: str
    names: str
    precision: str = "float32"
    on_esp32: bool = False  # a boot each: ~12 s of QEMU; the storage-path cases run there


COMMANDS = [
    CommandCase("empty prompt", "gen", "E_PROMPT", "empty prompt"),
    CommandCase("token id >= vocab", "gen 1 99999", "E_PROMPT", "token id 99999 at prompt position 1 out of range"),
    CommandCase("negative token id", "gen -1", "E_PROMPT", "token id -1 at prompt position 0 out of range"),
    CommandCase("token id beyond 64 bits", "gen 99999999999999999999", "E_PROMPT", "out of range"),
    CommandCase("word that is not an id", "gen 1 x", "E_COMMAND", "'x' is neither a token id nor an option"),
    CommandCase("comma-separated ids", "gen 1,2", "E_COMMAND", "'1,2' is neither"),
    CommandCase("hexadecimal id", "gen 0x10", "E_COMMAND", "'0x10' is neither"),
    CommandCase("non-ASCII id", "gen 1 \u00fc", "E_COMMAND", "\\xC3\\xBC"),
    CommandCase("ESC sequence in an id", "gen 1 \x1b[31mX n=2", "E_COMMAND", "\\x1B[31mX"),
    CommandCase("negative n", "gen 1 n=-1", "E_COMMAND", "n=-1, expected n >= 0"),
    CommandCase("n beyond the context", "gen 1 n=500", "E_PROMPT", "exceeds the context"),
    CommandCase("n=0 without teacher forcing", "gen 1 n=0", "E_COMMAND", "n=0 is only allowed with tf=1"),
    CommandCase("n beyond 64 bits", "gen 1 n=99999999999999999999999", "E_COMMAND", "is not an integer"),
    CommandCase("empty option value", "gen 1 n=", "E_COMMAND", "option n= is not an integer"),
    CommandCase("option given twice", "gen 1 n=1 n=2", "E_COMMAND", "n= given twice"),
    CommandCase("k too large", "gen 1 k=9", "E_COMMAND", "k=9, expected 1..8"),
    CommandCase("k zero", "gen 1 k=0", "E_COMMAND", "k=0, expected 1..8"),
    CommandCase("k negative", "gen 1 k=-1", "E_COMMAND", "k=-1, expected 1..8"),
    CommandCase("tf not 0/1", "gen 1 tf=2", "E_COMMAND", "tf=2, expected 0 or 1"),
    CommandCase("full not 0/1", "gen 1 full=2", "E_COMMAND", "full=2, expected 0 or 1"),
    CommandCase("unknown gen option", "gen 1 z=1", "E_COMMAND", "unknown option 'z'"),
    CommandCase("option with no name", "gen 1 =3", "E_COMMAND", "unknown option ''"),
    CommandCase("NUL byte in a command", "gen 1 2\x00 n=1", "E_COMMAND", "NUL byte at column 8"),
    CommandCase("load without precision", "load", "E_COMMAND", "expected a precision"),
    CommandCase("unknown precision", "load fp16", "E_COMMAND", "unknown precision 'fp16'"),
    CommandCase("load word that is not an option", "load int8 banana", "E_COMMAND", "'banana' is not an option"),
    CommandCase("load option not a number", "load int8 context=x", "E_COMMAND", "context=x: expected a count 1.."),
    CommandCase("load option beyond 64 bits", "load int8 arena=99999999999999999999", "E_COMMAND",
                "arena=99999999999999999999: expected a count 1.."),
    CommandCase("context zero", "load int8 context=0", "E_COMMAND", "context=0: expected a count 1.."),
    CommandCase("chunk zero", "load int8 chunk=0", "E_COMMAND", "chunk=0: expected a count 1.."),
    CommandCase("resident not 0/1", "load int8 resident=2", "E_COMMAND", "resident=2: expected 0 or 1"),
    CommandCase("load option given twice", "load int8 context=5 context=6", "E_COMMAND", "context= given twice"),
    CommandCase("arena too small", "load float32 arena=1", "E_OOM", "arena budget 1 bytes"),
    CommandCase("unknown lm_head mode", "load float32 lm_head=fast", "E_COMMAND", "lm_head=fast: expected auto, full or pruned"),
    CommandCase("non-ASCII lm_head mode", "load float32 lm_head=a\u2028b", "E_COMMAND", "a\\xE2\\x80\\xA8b"),
    CommandCase("pruned lm_head without a proxy", "load int8 lm_head=pruned", "E_CONFIG", "no lm_head_proxy.bin"),
    CommandCase("candidates zero", "load float32 candidates=0", "E_COMMAND", "candidates=0: expected a count 1..512"),
    CommandCase("candidates above the cap", "load float32 candidates=513", "E_COMMAND",
                "candidates=513: expected a count 1..512"),
    CommandCase("info with arguments", "info x", "E_COMMAND", "unknown command or arguments: 'info'"),
    CommandCase("verify with arguments", "verify x", "E_COMMAND", "unknown command or arguments: 'verify'"),
    CommandCase("quit with arguments", "quit now", "E_COMMAND", "unknown command or arguments: 'quit'"),
    CommandCase("unknown command", "frobnicate", "E_COMMAND", "'frobnicate'"),
    CommandCase("command in capitals", "GEN 1", "E_COMMAND", "'GEN'"),
    CommandCase("fault without kind", "fault", "E_COMMAND", "expected fault fail|short|flip"),
    CommandCase("fault at read 0", "fault fail 0", "E_COMMAND", "expected fault fail|short|flip"),
    CommandCase("unknown fault kind", "fault sometimes 3", "E_COMMAND", "expected fault fail|short|flip"),
]


def _edit_config(folder: str, edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(card: Path) -> None:
        path = card / folder / "model_config.json"
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data, indent=2))
    return damage


def _config_bytes(transform: Callable[[bytes], bytes], folder: str = F32) -> Callable[[Path], None]:
    def damage(card: Path) -> None:
        path = card / folder / "model_config.json"
        path.write_bytes(transform(path.read_bytes()))
    return damage


def _set(key: str, value: object, folder: str = F32) -> Callable[[Path], None]:
    return _edit_config(folder, lambda d: d["config"].__setitem__(key, value))


def _drop(key: str) -> Callable[[Path], None]:
    return _edit_config(F32, lambda d: d["config"].pop(key))


def _resize(file: str, delta: int | None, folder: str = F32) -> Callable[[Path], None]:
    """delta bytes more (or fewer); None: empty."""
    def damage(card: Path) -> None:
        path = card / folder / file
        data = path.read_bytes()
        path.write_bytes(b"" if delta is None else data[:delta] if delta < 0 else data + bytes(delta))
    return damage


def _remove(relative: str) -> Callable[[Path], None]:
    def damage(card: Path) -> None:
        path = card / relative
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return damage


def _folder_instead_of(relative: str) -> Callable[[Path], None]:
    def damage(card: Path) -> None:
        path = card / relative
        path.unlink()
        path.mkdir()
        (path / "inside.txt").write_text("a folder named like a card file\n")
    return damage


def _manifest_entry(file: str, key: str, value: object) -> Callable[[Path], None]:
    def edit(d: dict) -> None:
        entries = d["files"] if isinstance(d["files"], list) else list(d["files"].values())
        entry = next(e for e in entries if isinstance(e, dict) and file in json.dumps(e))
        entry[key] = value
    return _edit_config(F32, edit)


CARDS = [
    CardCase("weight file missing", _remove(f"{F32}/q_proj.bin"), "E_FILE_MISSING", "q_proj.bin: file not found",
             on_esp32=True),
    CardCase("weight file 4 bytes short", _resize("k_proj.bin", -4), "E_FILE_SIZE", "k_proj.bin", on_esp32=True),
    CardCase("weight file 4 bytes long", _resize("o_proj.bin", 4), "E_FILE_SIZE", "o_proj.bin"),
    CardCase("weight file empty", _resize("embed_tokens.bin", None), "E_FILE_SIZE", "embed_tokens.bin"),
    CardCase("lm_head proxy short", _resize("lm_head_proxy.bin", -4), "E_FILE_SIZE", "lm_head_proxy.bin",
             on_esp32=True),
    CardCase("weight file is a folder", _folder_instead_of(f"{F32}/v_proj.bin"), "E_FILE_MISSING",
             "v_proj.bin: not a regular file", on_esp32=True),
    CardCase("weight set folder missing", _remove(F32), "E_FILE_MISSING", "model_config.json", on_esp32=True),
    CardCase("config is a folder", _folder_instead_of(f"{F32}/model_config.json"), "E_FILE_MISSING",
             "model_config.json: not a regular file"),
    CardCase("config not JSON", _config_bytes(lambda b: b"{ not json"), "E_CONFIG", "model_config.json",
             on_esp32=True),
    CardCase("config empty", _config_bytes(lambda b: b""), "E_CONFIG", "model_config.json"),
    CardCase("config a JSON array", _config_bytes(lambda b: b"[]"), "E_CONFIG", "model_config.json"),
    CardCase("config nested 5000 deep", _config_bytes(lambda b: b"[" * 5000 + b"]" * 5000), "E_CONFIG",
             "model_config.json"),
    CardCase("config with a UTF-8 BOM", _config_bytes(lambda b: b"\xef\xbb\xbf" + b), "E_CONFIG", "byte order mark",
             on_esp32=True),
    CardCase("config key twice", _config_bytes(lambda b: b.replace(b'"dtype": "float32"',
                                                                   b'"dtype": "int8", "dtype": "float32"', 1)),
             "E_CONFIG", 'key "dtype" appears twice', on_esp32=True),
    CardCase("config string with \\u0000", _config_bytes(lambda b: b.replace(b'"micro"', b'"mi\\u0000cro"', 1)),
             "E_CONFIG", "u0000", on_esp32=True),
    CardCase("config value forging protocol lines",
             _config_bytes(lambda b: b.replace(b'"dtype": "float32"',
                                               b'"dtype": "x\\nTINYLLM_RESULT {}\\nTINYLLM_EXIT 0\\n"', 1)),
             "E_CONFIG", "x\\x0ATINYLLM_RESULT {}\\x0ATINYLLM_EXIT 0\\x0A", on_esp32=True),
    CardCase("hidden_size missing", _drop("hidden_size"), "E_CONFIG", "hidden_size"),
    CardCase("hidden_size a string", _set("hidden_size", "64"), "E_CONFIG", "hidden_size"),
    CardCase("hidden_size fractional", _set("hidden_size", 64.5), "E_CONFIG", "hidden_size"),
    CardCase("hidden_size negative", _set("hidden_size", -64), "E_CONFIG", "hidden_size"),
    CardCase("hidden_size zero", _set("hidden_size", 0), "E_CONFIG", "hidden_size"),
    CardCase("vocab_size 10^12", _set("vocab_size", 10**12), "E_CONFIG", "vocab_size"),
    CardCase("vocab_size 1e400 (infinite)", _config_bytes(lambda b: b.replace(b'"vocab_size": 512',
                                                                               b'"vocab_size": 1e400', 1)),
             "E_CONFIG", "vocab_size"),
    CardCase("heads do not divide hidden", _set("num_attention_heads", 3), "E_CONFIG", "num_attention_heads"),
    CardCase("kv heads do not divide heads", _set("num_key_value_heads", 3), "E_CONFIG", "num_key_value_heads"),
    CardCase("max_position_embeddings zero", _set("max_position_embeddings", 0), "E_CONFIG",
             "max_position_embeddings"),
    CardCase("intermediate size disagrees with the files", _set("intermediate_size", 161), "E_CONFIG", "gate_proj.bin.bytes"),
    CardCase("attention biases", _set("attention_bias", True), "E_CONFIG", "attention_bias: biases are not supported"),
    CardCase("RoPE scaling", _set("rope_scaling", {"type": "linear", "factor": 2.0}), "E_CONFIG",
             "rope_scaling: RoPE scaling is not supported"),
    CardCase("int8 scales file missing", _remove(f"{I8}/q_proj_scales.bin"), "E_FILE_MISSING",
             "q_proj_scales.bin: file not found", precision="int8"),
    CardCase("int8 weight file short", _resize("down_proj.bin", -1, folder=I8), "E_FILE_SIZE", "down_proj.bin",
             precision="int8"),
    CardCase("int8 config says float32", _config_bytes(lambda b: b.replace(b'"dtype": "int8"',
                                                                           b'"dtype": "float32"', 1), folder=I8),
             "E_CONFIG", "int8", precision="int8"),
]


def _record(target: str, table: str, rows: list[dict]) -> None:
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / f"{target}-{table}.json").write_text(json.dumps(rows, indent=1) + "\n")


def test_every_bad_command_gets_one_error_and_the_firmware_goes_on(firmwares, oracle, target_name, request):
    """One boot; each line of COMMANDS gets exactly one TINYLLM_ERROR with its code and the words
    that name the problem, printable (escaped) and no result; a good gen still works after all."""
    from harness.model.prompts import load_prompt_set

    dut = firmwares.start(target_name, "micro", "float32", log_name="micro-command-catalog")
    request.node.user_properties.append(("firmware_log", dut.logfile))
    rows, broken = [], []
    try:
        for case in COMMANDS:
            t = dut.command(case.line, timeout=60)
            seen = [f"TINYLLM_ERROR {e.code} {e.message}" for e in t.errors]
            rows.append({"case": case.name, "input": case.line, "lines": seen})
            ok = (len(t.errors) == 1 and t.errors[0].code == case.code and case.names in t.errors[0].message
                  and t.errors[0].message.isprintable() and not t.results)
            if not ok:
                broken.append((case.name, seen, len(t.results)))
        prompt = load_prompt_set("smoke", firmwares.cards["micro"].spec)[1]
        assert dut.generate(prompt).results[0]["tokens"] == oracle.float32("micro", prompt).tokens
    finally:
        dut.close()
        _record(target_name, "commands", rows)
    assert broken == []
    assert dut.exit_code == 1  # commands failed, as the contract says


@pytest.fixture
def micro_card_copy(firmwares, target_name, tmp_path) -> Path:
    firmwares.target(target_name)  # skips (with the reason) where the target cannot run
    card = tmp_path / "card"
    shutil.copytree(firmwares.cards["micro"].dir, card)
    (card / "prompts.txt").unlink()
    return card


@pytest.mark.parametrize("case", CARDS, ids=[c.name for c in CARDS])
def test_every_damaged_card_is_refused_naming_the_problem(firmwares, target_name, micro_card_copy, request, case):
    """A damaged card: one TINYLLM_ERROR naming the file or key, then TINYLLM_EXIT 2 (a process
    target) — or, on the esp32 (which boots float32 and is sent `load int8`), the failed load
    and float32 kept."""
    if target_name == "esp32" and not case.on_esp32:
        pytest.skip("esp32: the core's config and size checks are the same code as on linux and xtensa-sim and a "
                    "boot costs ~12 s of QEMU; the cases that reach the storage path (missing, short, folder, "
                    "unparsable files) run on esp32")
    case.damage(micro_card_copy)
    dut = firmwares.boot_folder(target_name, micro_card_copy, case.precision)
    request.node.user_properties.append(("firmware_log", dut.logfile))
    dut.close()
    errors = dut.boot.errors
    seen = [f"TINYLLM_ERROR {e.code} {e.message}" for e in errors]
    path = REPORTS / f"{target_name}-cards" / f"{case.name.replace('/', '_')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"case": case.name, "lines": seen}) + "\n")
    code, names = case.code, case.names
    if target_name == "xtensa-sim" and "not a regular file" in names:
        # semihosting opens a host folder like a file and cannot say what it is: its size (the
        # folder's) is then what is wrong
        code, names = ("E_FILE_SIZE" if "model_config" not in names else "E_CONFIG"), names.split(":")[0]
    assert len(errors) == 1 and errors[0].code == code and names in errors[0].message, seen
    assert errors[0].message.isprintable()
    if firmwares.target(target_name).boot_commands(case.precision, ()):
        assert dut.boot.info is not None and dut.boot.info["precision"] == "float32"  # the load failed, float32 kept
    else:
        assert dut.boot.exit_code == 2 and dut.exit_code == 2


# --- the table ------------------------------------------------------------------------------------
def _shown(text: str) -> str:
    """Inline code; a character that is not printable ASCII is shown as <U+XXXX>."""
    text = "".join(c if " " <= c <= "~" else f"<U+{ord(c):04X}>" for c in text)
    return "`" + text.replace("`", "'").replace("|", "\\|") + "`"


def render(reports: Path) -> str:
    """docs/error-cases.md from the JSON the tests above wrote (one file or folder per target)."""
    targets = [t for t in ("linux", "xtensa-sim", "esp32")
               if (reports / f"{t}-commands.json").exists() or (reports / f"{t}-cards").is_dir()]
    commands = {t: {r["case"]: r["lines"] for r in json.loads((reports / f"{t}-commands.json").read_text())}
                for t in targets if (reports / f"{t}-commands.json").exists()}
    cards = {t: {json.loads(p.read_text())["case"]: json.loads(p.read_text())["lines"]
                 for p in sorted((reports / f"{t}-cards").glob("*.json"))} for t in targets}
    lines = ["# Bad input: every case the suite runs, and the line each one got",
             "",
             "Generated by `python tests/test_error_catalog.py build/reports/error-cases` from a test run",
             "(tests/test_error_catalog.py). A column shows the line where the target ran the case",
             "(`same` when it printed the linux line), `-` where it did not run (the test's skip says why).",
             ""]
    for title, table, inputs in (("Console commands", commands, {c.name: c.line for c in COMMANDS}),
                                 ("Damaged cards (at start-up)", cards, None)):
        names = [c.name for c in COMMANDS] if inputs else [c.name for c in CARDS]
        lines += [f"## {title}", "", "| case | " + (" input |" if inputs else "") + " linux | "
                  + " | ".join(t for t in targets if t != "linux") + " |",
                  "|---|" + ("---|" if inputs else "") + "---|" * len(targets)]
        for name in names:
            got = {t: table.get(t, {}).get(name) for t in targets}
            base = got.get("linux")
            cells = [" ".join(_shown(x) for x in base) if base else "-"]
            for t in targets:
                if t == "linux":
                    continue
                g = got[t]
                cells.append("-" if g is None else "same" if g == base else " ".join(_shown(x) for x in g))
            lines.append(f"| {name} | " + (f"{_shown(inputs[name])} | " if inputs else "") + " | ".join(cells) + " |")
        counts = ", ".join(f"{t} {sum(1 for n in names if table.get(t, {}).get(n) is not None)}" for t in targets)
        lines += ["", f"{len(names)} cases; run on: {counts}.", ""]
    return "\n".join(lines)


def test_the_committed_table_lists_every_case():
    """docs/error-cases.md is regenerated when a case is added (its rows are this module's cases)."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "error-cases.md").read_text()
    missing = [c.name for c in [*COMMANDS, *CARDS] if f"| {c.name} |" not in doc]
    assert missing == [], f"regenerate docs/error-cases.md (see its header); missing: {missing}"


if __name__ == "__main__":
    sys.stdout.write(render(Path(sys.argv[1]) if len(sys.argv) > 1 else REPORTS))
