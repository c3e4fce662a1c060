"""The end-to-end report: Markdown + a PNG, from the perf record of `run_e2e`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.oracle.budgets import seed_board
from harness.report import board
from harness.targets import TARGETS


def _timing_note(target: str) -> str:
    """What tokens/s and cycles mean on a target (the target's own `timing_note`)."""
    return next((t.timing_note for t in TARGETS if t.name == target), "")


def _plot(record: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    precisions = list(record["precisions"])
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    # where QEMU counted what the board would do, plot the modelled board speed: emulator
    # tokens/s next to the seed's board range would mislead
    modelled = all("board_model" in record["precisions"][p] for p in precisions)
    speed = [record["precisions"][p]["board_model"]["tokens_per_s"] if modelled
             else record["precisions"][p]["tokens_per_s"] for p in precisions]
    axes[0].bar(precisions, speed, color=["#4477aa", "#ee6677"][: len(precisions)])
    seed = seed_board()
    for i, p in enumerate(precisions):
        lo, hi = seed.tokens_per_s[p]
        axes[0].plot([i - 0.4, i + 0.4], [lo, lo], "k--", linewidth=1)
        axes[0].plot([i - 0.4, i + 0.4], [hi, hi], "k--", linewidth=1)
    axes[0].set_yscale("log")
    config = record["precisions"][precisions[0]]["board_model"].get("config", "") if modelled else ""
    axes[0].set_title(f"modelled ESP32-CAM tokens/s\n({config})" if modelled else f"tokens/s on {record['target']}",
                      fontsize=9 if modelled else None)
    axes[0].set_xlabel("dashed: the seed's board range")
    mib = [record["precisions"][p]["bytes_per_token"] / 2**20 for p in precisions]
    axes[1].bar(precisions, mib, color="#228833")
    axes[1].set_title("MiB read from the card per token")
    peak = [record["precisions"][p]["peak_arena"] / 1024 for p in precisions]
    budget = (record["precisions"][precisions[0]].get("arena_budget") or 0) / 1024
    axes[2].bar(precisions, peak, color="#ccbb44")
    if budget:
        axes[2].axhline(budget, color="k", linestyle="--", linewidth=1)
    axes[2].set_title("peak arena KiB (dashed: budget)")
    fig.suptitle(f"Tiny-LLM firmware: {record['model']} on {record['target']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_report(record: dict[str, Any], out: Path) -> Path:
    lines = _summary(record) + _notes(record) + _prompt_table(record)
    png = out / "perf.png"
    if _plot(record, png):
        lines += ["", f"![performance]({png.name})"]
    lines += ["", "Firmware logs: " + ", ".join(f"`{e['log']}`" for e in record["precisions"].values()),
              "Raw record: `perf.json`.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _summary(record: dict[str, Any]) -> list[str]:
    """The title, the run's facts and one row per precision: match, logits, speed, I/O, memory."""
    lines = [
        f"# Tiny-LLM end-to-end report: `{record['model']}` on `{record['target']}`",
        "",
        f"**Result: {'PASS' if record['ok'] else 'FAIL'}** — firmware tokens and logits against the PyTorch "
        "reference (float32) and the bit-exact int8 emulation (int8).",
        "",
        f"- model: {record['model']}, {record['params']:,} parameters",
        f"- SD image: {record['image']['bytes'] / 2**20:.0f} MiB FAT{record['image'].get('fat_type', 32)}, "
        f"{record['image'].get('cluster_bytes', 512) // 1024 or 0.5} KiB clusters, built in {record['image']['seconds']:.2f} s, "
        f"sha256 `{record['image']['sha256'][:16]}…`",
        f"- reference (HF LlamaForCausalLM, eager, float32): {record['reference']['tokens']} tokens, "
        f"{record['reference']['tokens_per_s']:.1f} decode tokens/s in this one run (KV cache, prefill excluded; "
        "the C core against PyTorch measured fairly, one thread each and interleaved repeats: "
        "`tinyllm-harness bench`), "
        f"smallest top-1/top-2 margin "
        f"{record['reference']['min_margin']:.4f}",
        "",
        "| precision | tokens match | logits vs oracle (max abs / NMSE) | tokens/s | MiB read/token "
        "(of it from flash) | reads/token | cycles/token | instructions/token | peak arena | int8 top-1 = float32 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for precision, e in record["precisions"].items():
        agreement = e.get("top1_agreement_with_float32")
        lines.append(
            f"| {precision} | {'yes' if e['tokens_match'] else '**NO**'} | {e['logits']['max_abs']:.2e} / "
            f"{e['logits']['nmse']:.1e} ({e['oracle']}) | {e['tokens_per_s']:.1f} | "
            f"{e['bytes_per_token'] / 2**20:.2f} ({e.get('flash_bytes_per_token', 0) / 2**20:.2f}) | "
            f"{e['reads_per_token']:.0f} | "
            f"{e['cycles_per_token']:.3g} | "
            f"{'-' if e.get('instructions_per_token') is None else format(e['instructions_per_token'], '.3g')} | "
            f"{e['peak_arena'] / 1024:.0f} KiB of {(e['arena_budget'] or 0) / 1024:.0f} | "
            f"{'' if agreement is None else f'{agreement:.1%}'} |"
        )
    return lines


def _notes(record: dict[str, Any]) -> list[str]:
    """RAM, the pruned lm_head, the modelled board, budgets and the seed's board figures."""
    lines: list[str] = []
    if "static_ram" in record:
        static = sum(record["static_ram"].values())
        lines += ["", "Peak RAM (arena peak + image, heap and stack): " + ", ".join(
            f"{p} {e['peak_ram'] / 1024:.0f} KiB" for p, e in record["precisions"].items()) +
            f" (image, heap and stack: {static / 1024:.0f} KiB)"]
    ram = {p: e for p, e in record["precisions"].items() if "internal_ram_peak" in e}
    if ram:
        lines += ["", "Internal RAM (the port's heap beside the PSRAM arena: chunk buffers, FatFs, tasks), most in use "
                  "since boot: " + ", ".join(f"{p} {e['internal_ram_peak'] / 1024:.0f} KiB of "
                                             f"{e['internal_ram_size'] / 1024:.0f} KiB" for p, e in ram.items())]
    f32 = record["precisions"].get("float32")
    if f32 and f32.get("lm_head") == "pruned":
        lines += ["", f"float32 lm_head pruned through its int8 proxy: {f32['candidates_per_token']:.1f} float32 rows "
                  f"read per token on average (most in one step: {f32['max_candidates']}), "
                  f"{f32['fallback_steps']} steps fell back to the full stream; tokens and top-k logits are the full "
                  "stream's bit for bit (docs/contracts.md §2)."]
    tiers = {p: e for p, e in record["precisions"].items() if e.get("flash_tier", "none") != "none"}
    if tiers:
        lines += ["", "Flash tier (docs/contracts.md §1b; the ESP32 app's weights partition, a file standing in for it "
                  "elsewhere): " + "; ".join(
                      f"{p} {e['flash_tier']}, {e['flash_bytes_per_token'] / 2**20:.2f} MiB of "
                      f"{e['bytes_per_token'] / 2**20:.2f} MiB per token from flash" for p, e in tiers.items()) + "."]
    sd = {p: e for p, e in record["precisions"].items() if "sd_read_bytes_per_token" in e}
    if sd:
        lines += ["", "What QEMU's SD card model saw per token (teacher-forced steps): " + "; ".join(
            f"{p} {e['sd_read_bytes_per_token'] / 2**20:.2f} MiB in {e['sd_read_commands_per_token']:.0f} data-read "
            f"commands ({e['sd_commands_per_token']:.0f} commands in all)" for p, e in sd.items()) + "."]
    lines += _board_section(record)
    over = [problem for e in record["precisions"].values() for problem in e.get("over_budget", [])]
    lines += ["", "Budgets (fixtures/budgets.json): " + ("all within" if not over else "**over**: " + "; ".join(over))]
    seed = seed_board()
    (f32_lo, f32_hi), (i8_lo, i8_hi) = seed.tokens_per_s["float32"], seed.tokens_per_s["int8"]
    lines += [
        "",
        f"Seed's figures for the real ESP32-CAM, for comparison: float32 {f32_lo}–{f32_hi} tokens/s, int8 {i8_lo}–"
        f"{i8_hi} tokens/s, ~{seed.peak_ram['float32'] // 1024} KB peak RAM, ~{seed.sd_seeks_per_token} SD seeks "
        "per token. " + _timing_note(record["target"]) + " Bytes, reads and arena are the same on every target.",
    ]
    return lines


def _prompt_table(record: dict[str, Any]) -> list[str]:
    """Every prompt's generated tokens against the oracle's, per precision."""
    lines = [
        "",
        "## Prompts",
        "",
        "| precision | prompt | prompt tokens | generated | match | µs/token |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for precision, e in record["precisions"].items():
        for row in e["prompts"]:
            lines.append(f"| {precision} | {row['prompt']} | {row['n_prompt']} | {' '.join(map(str, row['tokens']))} | "
                         f"{'yes' if row['match'] else '**NO** expected ' + ' '.join(map(str, row['expected']))} | "
                         f"{row['us_per_token']:.0f} |")
    return lines


def _board_section(record: dict[str, Any]) -> list[str]:
    """The modelled ESP32-CAM speed (harness/report/board.py), where QEMU counted SD commands and
    instructions; labelled as a model, with every assumption."""
    entries = {p: e for p, e in record["precisions"].items() if "board_model" in e}
    if not entries:
        return []
    return ["", "## Modelled ESP32-CAM speed (a model, not a measurement)", "",
            "From the counts QEMU measured per token (SD read commands and bytes from its SD card model, "
            "instructions from -icount) and the constants below; no board was involved.", "",
            *board.markdown_tables(entries, seed_board().tokens_per_s)]


def write_comparison(records: list[dict[str, Any]], out: Path) -> Path:
    """One table, a column per target, from several runs of the main job (their own reports are
    linked): what is the same on every target (tokens, bytes, reads, arena) and what each target
    alone can count (instructions under QEMU -icount, SD commands in Espressif's QEMU)."""
    def cell(e: dict[str, Any], key: str, fmt: str) -> str:
        value = e.get(key)
        return "-" if value is None else format(value, fmt)

    rows = [
        ("tokens match the oracle", lambda e: "yes" if e["tokens_match"] else "**NO**"),
        ("logits within tolerance", lambda e: "yes" if e["logits_ok"] else "**NO**"),
        ("logits max abs error", lambda e: f"{e['logits']['max_abs']:.2e}"),
        ("MiB read per token", lambda e: f"{e['bytes_per_token'] / 2**20:.2f}"),
        ("of it from the flash tier", lambda e: f"{e.get('flash_bytes_per_token', 0) / 2**20:.2f} "
         f"({e.get('flash_tier', 'none')})"),
        ("read calls per token", lambda e: f"{e['reads_per_token']:.0f}"),
        ("instructions per token (QEMU -icount)", lambda e: cell(e, "instructions_per_token", ".4g")),
        ("SD read commands per token (QEMU's card)", lambda e: cell(e, "sd_read_commands_per_token", ".0f")),
        ("SD MiB sent per token (QEMU's card, 512-byte blocks)", lambda e: "-" if e.get("sd_read_bytes_per_token") is None
         else f"{e['sd_read_bytes_per_token'] / 2**20:.2f}"),
        ("SD commands per token (QEMU's card)", lambda e: cell(e, "sd_commands_per_token", ".0f")),
        ("float32 lm_head / candidate rows per token", lambda e: e.get("lm_head", "-") if e.get("lm_head") != "pruned"
         else f"pruned / {e['candidates_per_token']:.1f}"),
        ("peak arena KiB", lambda e: f"{e['peak_arena'] / 1024:.0f}"),
        ("peak internal RAM KiB (ESP32 heap, of its size)", lambda e: "-" if "internal_ram_peak" not in e
         else f"{e['internal_ram_peak'] / 1024:.0f} of {e['internal_ram_size'] / 1024:.0f}"),
        ("modelled ESP32-CAM tokens/s (from QEMU's counts)",
         lambda e: format(e["board_model"]["tokens_per_s"], ".2f") if "board_model" in e else "-"),
        ("tokens/s (the target's own clock)", lambda e: f"{e['tokens_per_s']:.3g}"),
    ]
    columns = [(r["target"], p, e) for r in records for p, e in r["precisions"].items()]
    targets = ", ".join("`" + r["target"] + "`" for r in records)
    lines = [f"# Tiny-LLM end to end: `{records[0]['model']}` on {targets}", "",
             f"**Result: {'PASS' if all(r['ok'] for r in records) else 'FAIL'}**", "",
             "| | " + " | ".join(f"{t} {p}" for t, p, _ in columns) + " |",
             "| --- |" + " --- |" * len(columns)]
    for label, fn in rows:
        lines.append(f"| {label} | " + " | ".join(fn(e) for _, _, e in columns) + " |")
    lines += ["", "Bytes, reads and the arena are the same on every target (the same core and arena layout). "
              "Tokens/s are each target's own clock: the host's on linux, virtual time (instructions) on the "
              "emulated targets — none of them is the board's speed."]
    lines += [""] + [f"- {r['target']}: {_timing_note(r['target'])} Report: `{Path(r['report']).relative_to(out)}`"
                     for r in records] + [""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
