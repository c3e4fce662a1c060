"""End to end: the firmware, booted on a target, against the PyTorch reference and the int8
emulation. `pytest --target linux` / `--target xtensa-sim` (pytest-embedded's option) picks
the target; by default every target this machine can run."""

from __future__ import annotations

import json

import pexpect
import pytest

from harness import FIXTURES
from harness.model.prompts import Prompt, load_prompt_set
from harness.oracle import budgets
from harness.oracle.compare import LogitComparison, logit_comparison, logit_verdict, per_token
from harness.targets import protocol

MODELS = ["micro", pytest.param("tiny-llm", marks=pytest.mark.slow)]
PRECISIONS = ["float32", "int8"]
PROMPT_SETS = ["smoke", "edge"]
PROMPTS = [f"{s}/{p['name']}" for s in PROMPT_SETS
           for p in json.loads((FIXTURES / "prompts" / f"{s}.json").read_text())["prompts"]]
# One test case on an emulated target may take about this long (estimated from the budgets,
# harness.oracle.budgets.estimated_seconds); costlier cases are skipped there with their estimate and
# run on linux. The teacher-forced case first drops to the generated positions (below).
MAX_CASE_SECONDS = {"xtensa-sim": 75.0, "esp32": 60.0}


def _dut(firmwares, request, target_name, model, precision, sanitize=False):
    dut = firmwares.get(target_name, model, precision, sanitize)
    request.node.user_properties.append(("firmware_log", dut.logfile))
    return dut


def _prompt(firmwares, model, name):
    set_name, prompt_name = name.split("/")
    return next(p for p in load_prompt_set(set_name, firmwares.cards[model].spec) if p.name == prompt_name)


def _cost(target_name, model, precision, prompts, teacher_forced=False) -> float:
    prompt_steps = sum(len(p.ids) - 1 for p in prompts) if not teacher_forced else 0
    decode_steps = sum(p.n_new for p in prompts) + (sum(len(p.ids) - 1 for p in prompts) if teacher_forced else 0)
    return budgets.estimated_seconds(model, precision, target_name, prompt_steps, decode_steps) or 0.0


def _skip_if_too_costly(target_name, model, precision, prompts, teacher_forced=False, firmwares=None):
    """Skips a case whose runs would take an emulated target too long. Runs the session already
    made (memoized greedy runs, the boot prompt file's) cost nothing more and are not counted."""
    if firmwares is not None and not teacher_forced:
        prompts = [p for p in prompts if (target_name, model, precision, p, 2) not in firmwares.transcripts]
    cost = _cost(target_name, model, precision, prompts, teacher_forced)
    limit = MAX_CASE_SECONDS.get(target_name)
    if limit is not None and cost > limit:
        pytest.skip(f"{target_name}: ~{cost:.0f} s of emulation ({model} {precision}) exceeds this suite's {limit:.0f} s "
                    "per case; the linux target runs it")


def _expected_tokens(oracle, model, precision, prompt):
    if precision == "float32":
        return oracle.float32(model, prompt).tokens
    return oracle.int8(model, prompt)[0]


@pytest.mark.parametrize("prompt_name", PROMPTS)
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("model", MODELS)
def test_greedy_tokens_match(firmwares, oracle, request, target_name, model, precision, prompt_name):
    """float32: identical to HF PyTorch; int8: identical to the int8 emulation."""
    prompt = _prompt(firmwares, model, prompt_name)
    _skip_if_too_costly(target_name, model, precision, [prompt], firmwares=firmwares)
    _dut(firmwares, request, target_name, model, precision)
    transcript = firmwares.run(target_name, model, precision, prompt)
    assert not transcript.errors, transcript.errors
    protocol.check_human_lines(transcript)
    result = transcript.results[0]
    assert result["precision"] == precision
    assert result["prompt"] == list(prompt.ids)
    assert result["tokens"] == _expected_tokens(oracle, model, precision, prompt)
    assert len(result["steps"]) == len(prompt.ids) + prompt.n_new - 1
    assert result["peak_arena"] <= result["arena_budget"]


@pytest.mark.parametrize("prompt_set", PROMPT_SETS)
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("model", MODELS)
def test_teacher_forced_logits_within_tolerance(firmwares, oracle, request, record_property,
                                               target_name, model, precision, prompt_set):
    prompts = load_prompt_set(prompt_set, firmwares.cards[model].spec)
    # Teacher forcing computes logits at every position (int8 on linux twice: against its
    # emulation and along the float32 sequence, to measure how often int8 picks float32's token;
    # the int8 bits are the same on every target, so the emulated ones skip that pass). On an
    # emulated target the prompts are taken in order while their cost fits one case's time; the
    # logits of the rest are checked at their generated positions, from the greedy run the token
    # test made (k=2, memoized: the same positions of the same sequence, since its tokens equal the
    # oracle's). On esp32 that is most of tiny-llm: QEMU's SD model streams a float32 lm_head in ~5 s.
    limit = MAX_CASE_SECONDS.get(target_name, float("inf"))
    measure_agreement = precision == "int8" and target_name not in MAX_CASE_SECONDS
    forced_prompts, spent = [], 0.0
    for p in prompts:
        cost = _cost(target_name, model, precision, [Prompt(p.name, p.ids + (0,) * p.n_new, 0)], teacher_forced=True)
        cost *= 2 if measure_agreement else 1
        if spent + cost <= limit:
            forced_prompts.append(p)
            spent += cost
    generated_only = [p for p in prompts if p not in forced_prompts]
    _skip_if_too_costly(target_name, model, precision, generated_only, firmwares=firmwares)
    if generated_only:
        record_property("logits_at_generated_positions_only", [p.name for p in generated_only])
        print(f"{target_name}/{model}/{precision}/{prompt_set}: teacher forcing over {[p.name for p in generated_only]} "
              "would exceed the case's time: their logits are checked at the generated positions (k=2)")
    dut = _dut(firmwares, request, target_name, model, precision)
    fw_vs_oracle = logit_comparison(precision)
    int8_vs_float32 = LogitComparison(rank_tolerance=float("inf"))  # only top-1 agreement is measured
    for prompt in prompts:
        ref = oracle.float32(model, prompt)
        if precision == "float32":
            sequence, oracle_logits = list(prompt.ids) + ref.tokens, ref.logits
        else:
            tokens, oracle_logits = oracle.int8(model, prompt)
            sequence = list(prompt.ids) + tokens
        timeout = budgets.command_timeout(model, precision, target_name, 0, len(sequence))
        if prompt in generated_only:
            transcript = firmwares.run(target_name, model, precision, prompt)
            assert transcript.results[0]["tokens"] == sequence[len(prompt.ids):]
        else:
            forced = Prompt(prompt.name + "-tf", tuple(sequence[:-1]), 1)
            transcript = dut.generate(forced, k=8, teacher_forced=True, timeout=timeout)
        assert not transcript.errors, transcript.errors
        steps = transcript.results[0]["steps"]
        if prompt not in generated_only:
            assert all("top" in s for s in steps) and len(steps) == len(oracle_logits)
        fw_vs_oracle.add(steps, oracle_logits)
        if measure_agreement and prompt not in generated_only:
            # along the float32 sequence: does int8 pick float32's token? (measured, reported)
            forced32 = Prompt(prompt.name + "-tf32", tuple((list(prompt.ids) + ref.tokens)[:-1]), 1)
            int8_vs_float32.add(dut.generate(forced32, k=2, teacher_forced=True, timeout=timeout).results[0]["steps"],
                                ref.logits)
    record_property("logits_vs_oracle", fw_vs_oracle.to_json())
    print(f"{target_name}/{model}/{precision}/{prompt_set}: {fw_vs_oracle.to_json()}")
    assert logit_verdict(fw_vs_oracle, precision) == []  # the main job's rule (harness/oracle/compare.py)
    if measure_agreement:
        agreement = 1 - len(int8_vs_float32.top1_mismatches) / max(int8_vs_float32.steps, 1)
        record_property("int8_top1_agreement_with_float32", agreement)
        print(f"{target_name}/{model}/{prompt_set}: int8 firmware top-1 agreement with float32 = {agreement:.3f} "
              f"over {int8_vs_float32.steps} teacher-forced steps")
        assert agreement > 0.85


@pytest.mark.parametrize("model", MODELS)
def test_boot_time_prompt_file(firmwares, oracle, request, target_name, model):
    """The card's prompts.txt runs unattended at boot; every line gives a result."""
    spec = firmwares.cards[model].spec
    prompts = load_prompt_set("smoke", spec)
    target = firmwares.target(target_name)
    if target.is_device:  # a device always runs it: its session boot did
        dut = firmwares.get(target_name, model, "float32")
        request.node.user_properties.append(("firmware_log", dut.logfile))
        assert [t.results[0]["tokens"] for t in dut.boot_runs] == [oracle.float32(model, p).tokens for p in prompts]
        return
    _skip_if_too_costly(target_name, model, "float32", prompts)
    dut = firmwares.start(target_name, model, "float32", prompts="card", log_name=f"{model}-boot-prompts")
    request.node.user_properties.append(("firmware_log", dut.logfile))
    try:
        assert dut.boot.info is not None and dut.boot.info["precision"] == "float32"
        assert len(dut.boot_runs) == len(prompts)  # one READY after each line
        assert [t.results[0]["tokens"] for t in dut.boot_runs] == [oracle.float32(model, p).tokens for p in prompts]
    finally:
        dut.close()
    assert dut.exit_code == 0


@pytest.mark.parametrize("precision", PRECISIONS)
def test_sanitizer_build_runs_micro_clean(firmwares, oracle, request, target_name, precision):
    if target_name != "linux":
        pytest.skip(f"ASan/UBSan builds exist for the linux target only, not {target_name}")
    dut = firmwares.start(target_name, "micro", precision, sanitize=True, log_name=f"micro-{precision}")
    request.node.user_properties.append(("firmware_log", dut.logfile))
    try:
        for prompt_set in PROMPT_SETS:
            for prompt in load_prompt_set(prompt_set, firmwares.cards["micro"].spec):
                result = dut.generate(prompt, k=8, teacher_forced=True, timeout=600).results[0]
                assert result["tokens"] == _expected_tokens(oracle, "micro", precision, prompt)
    finally:
        dut.close()
    log = dut.log_text()
    assert "runtime error" not in log and "AddressSanitizer" not in log and "LeakSanitizer" not in log
    assert dut.exit_code == 0


def test_resident_and_streamed_weights_agree(firmwares, request, target_name):
    """A budget too small to keep the layer weights resident streams them: same tokens and logits."""
    dut = firmwares.get(target_name, "micro", "float32")
    streamed = firmwares.start(target_name, "micro", "float32", extra=("--resident", "0"), log_name="micro-streamed")
    request.node.user_properties.append(("firmware_log", streamed.logfile))
    try:
        assert streamed.boot.info["resident_bytes"] == 0 < dut.boot.info["resident_bytes"]
        for prompt in load_prompt_set("smoke", firmwares.cards["micro"].spec):
            a = dut.generate(prompt, k=8).results[0]
            b = streamed.generate(prompt, k=8).results[0]
            assert a["tokens"] == b["tokens"]
            assert [s.get("top") for s in a["steps"]] == [s.get("top") for s in b["steps"]]
            assert b["read_calls"] > a["read_calls"]
    finally:
        streamed.close()


@pytest.mark.parametrize("precision", PRECISIONS)
def test_chunks_in_the_ports_buffer_or_the_arena_read_and_compute_the_same(firmwares, request, target_name, precision):
    """The ESP32 app streams into two chunk buffers in internal SRAM (port.h: one is read while
    the other is computed); linux and xtensa-sim have the same so their arenas lay out like the
    board's. With room for one, lm_head reads then computes; with none the buffer comes from the
    arena: the same chunks, reads per step, tokens and logits, only more arena used."""
    if target_name == "esp32":
        pytest.skip("esp32: the chunk buffer is a build option (CONFIG_TINYLLM_CHUNK_BUFFER_KB), not a console one; "
                    "the boot log and TINYLLM_INFO show it in use there")
    dut = firmwares.get(target_name, "micro", precision)  # the default: two chunk buffers, read-ahead
    chunk = dut.boot.info["chunk_bytes"]
    one = firmwares.start(target_name, "micro", precision, extra=("--chunk-buffer-bytes", str(chunk)),
                          log_name=f"micro-{precision}-one-chunk-buffer")
    arena = firmwares.start(target_name, "micro", precision, extra=("--chunk-buffer-bytes", "0"),
                            log_name=f"micro-{precision}-chunks-in-arena")
    request.node.user_properties.append(("firmware_log", arena.logfile))
    try:
        infos = [dut.boot.info, one.boot.info, arena.boot.info]
        assert [(i["chunk_buffer"], i["chunk_buffers"]) for i in infos] == [("port", 2), ("port", 1), ("arena", 1)]
        assert infos[0]["chunk_bytes"] == infos[1]["chunk_bytes"] == infos[2]["chunk_bytes"]
        assert infos[2]["arena_used"] >= infos[0]["arena_used"] + chunk == infos[1]["arena_used"] + chunk
        for prompt in load_prompt_set("smoke", firmwares.cards["micro"].spec):
            a, b, c = (d.generate(prompt, k=8).results[0] for d in (dut, one, arena))
            assert a["tokens"] == b["tokens"] == c["tokens"]
            assert [s.get("top") for s in a["steps"]] == [s.get("top") for s in b["steps"]] == [
                s.get("top") for s in c["steps"]]
            assert [(s["bytes"], s["reads"]) for s in a["steps"]] == [(s["bytes"], s["reads"]) for s in b["steps"]] == [
                (s["bytes"], s["reads"]) for s in c["steps"]]
    finally:
        one.close()
        arena.close()


@pytest.mark.parametrize(("precision", "extra"), [("int8", ()), ("float32", ("--lm-head", "full"))])
def test_a_resident_lm_head_in_chunks_smaller_than_the_vocab(firmwares, oracle, request, target_name, precision,
                                                            extra):
    """micro's lm_head fits the arena (int8, and float32 streamed in full), so it is resident; with
    64-row chunks it is computed in 8 passes of the logits buffer (regression: a resident lm_head
    was computed in one pass into a chunk-sized buffer, writing past it)."""
    prompt = load_prompt_set("smoke", firmwares.cards["micro"].spec)[1]
    dut = firmwares.start(target_name, "micro", precision, extra=(*extra, "--chunk", "64"),
                          log_name=f"micro-{precision}-resident-lm-head-64-row-chunks")
    request.node.user_properties.append(("firmware_log", dut.logfile))
    try:
        assert dut.boot.info["resident_bytes"] > 0
        got = dut.generate(prompt, timeout=120).results[0]
    finally:
        dut.close()
    assert got["tokens"] == _expected_tokens(oracle, "micro", precision, prompt)
    assert got["read_calls"] <= 2 * len(got["steps"])  # only the embedding row (+ its int8 scale) is read


def test_every_budget_from_streamed_to_resident_boots_and_agrees(firmwares, oracle, request, target_name):
    """Budgets between "everything streamed" and "everything resident" make part of the weights
    resident; each must lay out (no E_OOM) and give the reference's tokens. One firmware tries
    them all with `load float32 arena=N` (the same layout code a boot runs)."""
    prompt = load_prompt_set("smoke", firmwares.cards["micro"].spec)[1]
    dut = firmwares.start(target_name, "micro", "float32", log_name="micro-budget-sweep")
    request.node.user_properties.append(("firmware_log", dut.logfile))
    try:
        full = dut.boot.info
        streamed_use = dut.command("load float32 resident=0", timeout=60).info["arena_used"]
        smallest = streamed_use + 64  # + the alignment the core keeps free
        resident_seen = set()
        for budget in range(smallest, full["arena_used"] + 20000, (full["arena_used"] + 20000 - smallest) // 6):
            t = dut.command(f"load float32 arena={budget}", timeout=60)
            assert not t.errors, (budget, t.errors)
            assert t.info["arena_budget"] == budget
            resident_seen.add(t.info["resident_bytes"])
            assert dut.generate(prompt).results[0]["tokens"] == oracle.float32("micro", prompt).tokens
        assert dut.command(f"load float32 arena={smallest - 4096}", timeout=60).errors[0].code == "E_OOM"
    finally:
        dut.close()
    assert len(resident_seen) >= 3  # none, some and all of the layer weights resident


def test_int8_reads_a_quarter_of_float32(firmwares, target_name, request):
    """With every weight streamed (`resident=0`), int8 reads a quarter of the full float32
    stream (one byte per weight plus a float scale per row). With the layers resident (the
    default), the pruned float32 lm_head reads about what an int8 lm_head would (its int8
    proxy, plus the candidate float32 rows)."""
    prompt = load_prompt_set("smoke", firmwares.cards["micro"].spec)[0]
    dut = firmwares.start(target_name, "micro", "float32", log_name="micro-quarter")
    request.node.user_properties.append(("firmware_log", dut.logfile))
    try:
        full_default = dut.generate(prompt, full=True).results[0]
        pruned = dut.generate(prompt).results[0]
        assert not dut.command("load float32 resident=0", timeout=60).errors
        full = dut.generate(prompt, full=True).results[0]
        assert not dut.command("load int8 resident=0", timeout=60).errors
        i8 = dut.generate(prompt).results[0]
    finally:
        dut.close()
    assert 0.25 <= i8["bytes_read"] / full["bytes_read"] < 0.3, i8["bytes_read"] / full["bytes_read"]
    assert pruned["tokens"] == full_default["tokens"] == full["tokens"]
    ratio = pruned["bytes_read"] / full_default["bytes_read"]
    assert 0.25 <= ratio < 0.35, ratio


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("model", MODELS)
def test_per_token_io_memory_and_cycles_within_budget(firmwares, request, record_property, target_name, model, precision):
    """Bytes and read calls per token, peak arena, and (xtensa-sim) instructions per token,
    against fixtures/budgets.json."""
    prompts = load_prompt_set("smoke", firmwares.cards[model].spec)
    _skip_if_too_costly(target_name, model, precision, prompts, firmwares=firmwares)
    _dut(firmwares, request, target_name, model, precision)
    budget = budgets.load_budgets()["models"][model][precision]
    for prompt in prompts:
        figures = per_token(firmwares.run(target_name, model, precision, prompt).results[0])
        record_property(f"{prompt.name}_per_token", figures)
        print(f"{target_name}/{model}/{precision}/{prompt.name}: {figures}")
        assert budgets.check(figures, model, precision, target_name) == []
        # the I/O budget is the design's exact cost: reading less would mean a skipped tensor. A
        # pruned float32 lm_head adds one float32 row (one read call) per candidate.
        candidates = figures["candidates_per_token"]
        assert figures["bytes_per_token"] == pytest.approx(
            budget["bytes_per_token"] + candidates * budget.get("bytes_per_candidate", 0), abs=1e-6)
        assert figures["reads_per_token"] == pytest.approx(budget["reads_per_token"] + candidates, abs=1e-6)
        assert (candidates > 0) == (precision == "float32")  # float32 fixtures carry the proxy


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("model", MODELS)
def test_sd_commands_per_token_within_budget(firmwares, request, record_property, target_name, model, precision):
    """What the card sees, counted by QEMU's SD model (not by the firmware): data-read commands
    (CMD17 single block, CMD18 multi-block) and all commands per generated token, against
    fixtures/budgets.json. A one-token prompt: every step is a decode step."""
    if target_name != "esp32":
        pytest.skip(f"{target_name} reads files through its host, not an emulated SD card")
    prompt = Prompt("sd-count", (1,), 3)
    dut = _dut(firmwares, request, target_name, model, precision)
    # every streamed byte lands in the app's internal-SRAM chunk buffers, read into by DMA, the
    # next chunk by the reader task while the main task computes
    info = dut.boot.info
    assert (info["chunk_buffer"], info["chunk_buffers"], info["read_ahead"]) == ("port", 2, 1), info
    timeout = budgets.command_timeout(model, precision, target_name, 0, prompt.n_new)
    t = dut.generate(prompt, timeout=timeout)  # not the memoized run: its SD commands are counted now
    assert not t.errors and t.sd_commands is not None
    n = len(t.results[0]["tokens"])
    reads = protocol.sd_data_reads(t.sd_commands) / n
    total = sum(t.sd_commands.values()) / n
    figures = {"sd_read_commands_per_token": reads, "sd_commands_per_token": total, "by_command": t.sd_commands}
    record_property("sd_commands", figures)
    print(f"{target_name}/{model}/{precision}: {figures}")
    budget = budgets.load_budgets()["models"][model][precision]
    assert reads <= budget["sd_read_commands_per_token"][target_name], figures
    assert total <= budget["sd_commands_per_token"][target_name], figures
    assert reads > 0  # the lm_head streams from the card at every token
    # the firmware's own count below the core (FatFs read() calls) agrees with what the card saw:
    # one data-read command each, two where an unaligned read (a candidate or embedding row)
    # straddles a sector boundary, none where FatFs's per-file sector buffer already holds a small
    # read's sector (measured: 1,170 read() calls and 1,185 commands for 3 tokens of tiny-llm
    # float32)
    result, data_commands = t.results[0], protocol.sd_data_reads(t.sd_commands)
    assert result["read_calls"] <= result["disk_reads"], result
    assert abs(data_commands - result["disk_reads"]) <= 0.05 * result["disk_reads"] + 3, (data_commands, result)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_two_boots_give_identical_results(firmwares, request, target_name, precision):
    """Same tokens and logits on every run; on xtensa-sim (QEMU -icount) the same cycle counts too."""
    prompt = load_prompt_set("smoke", firmwares.cards["micro"].spec)[1]
    runs = []
    for i in range(2):
        dut = firmwares.start(target_name, "micro", precision, log_name=f"micro-{precision}-determinism-{i}")
        request.node.user_properties.append(("firmware_log", dut.logfile))
        try:
            runs.append(dut.generate(prompt, k=8).results[0])
        finally:
            dut.close()
    assert runs[0]["tokens"] == runs[1]["tokens"]
    assert [s.get("top") for s in runs[0]["steps"]] == [s.get("top") for s in runs[1]["steps"]]
    assert runs[0]["bytes_read"] == runs[1]["bytes_read"] and runs[0]["read_calls"] == runs[1]["read_calls"]
    if target_name in ("xtensa-sim", "esp32"):  # QEMU -icount: instruction-driven virtual time
        # A CCOUNT reading is virtual time floored to the counter's tick, and where the run stands
        # within a tick when a step starts is not the same on every boot: on xtensa-sim the sim
        # machine's 40 MHz CCOUNT ticks once per 25 instructions (its phase is set at QEMU's
        # reset; CI saw one step 25 longer and a later one 25 shorter, same total); on esp32
        # (240 MHz of shift=3 time: 1.92 ticks per instruction) CI saw, once the reader task ran
        # beside the main task, one step 1 cycle apart. Each step is a
        # difference of two floored readings, so the same instructions agree to within one tick.
        tick = 25 if target_name == "xtensa-sim" else 1
        # esp32, an open defect: on a loaded host a step sometimes takes one short interrupt more
        # or less on one boot (188 cycles in one step of a sharded run beside other work; 231 cycles
        # in 3 of 12 steps of a clean-clone run with three lanes on two cores; 273 cycles in one
        # step of a clean-clone run beside a busy core, 2026-12-04; never in 13 boots of the case
        # alone beside 1-3 busy cores). The suspect is a host-timed event in Espressif's esp32
        # machine (the UART's transmit path under a slow reader). Until it is found, an esp32 step
        # may be off by up to 0.02% of its cycles (~500 of a micro step's 2.5 M; what was seen
        # stays under 0.012%); the tokens, logits, bytes and reads must agree exactly, and the
        # instruction budgets' margins are far wider.
        interrupt = 256 if target_name == "esp32" else tick

        def allowed(a: dict, b: dict) -> float:
            return max(interrupt, 2e-4 * max(a["cycles"], b["cycles"])) if target_name == "esp32" else tick

        off = [(a, b) for a, b in zip(runs[0]["steps"], runs[1]["steps"], strict=True) if abs(a["cycles"] - b["cycles"]) > tick]
        assert all(abs(a["cycles"] - b["cycles"]) <= allowed(a, b) for a, b in off), off
        # The total also spans what the steps do not: the console lines printed between them,
        # through the UART the suspect above lives in. On esp32 it may be off by one more such
        # interrupt (a quiet clean-clone run, 2026-12-04: the total 4 cycles apart, every step
        # within a tick).
        between = interrupt if target_name == "esp32" else 0
        assert abs(runs[0]["total_cycles"] - runs[1]["total_cycles"]) <= tick + sum(allowed(a, b) for a, b in off) + between
        if off:
            print(f"{target_name}: {len(off)} of {len(runs[0]['steps'])} steps one interrupt apart between boots")


def test_a_hung_command_times_out_with_the_log(firmwares, request, target_name):
    """A command that does not finish in time raises CommandTimeout (a pexpect TIMEOUT) naming the
    log and quoting its tail; the firmware is then stopped (killed), never left running."""
    dut = firmwares.start(target_name, "micro", "float32", log_name="micro-timeout")
    request.node.user_properties.append(("firmware_log", dut.logfile))
    long_prompt = Prompt("long", tuple([1] * 100), 28)  # ~130 steps with logits at every one
    with pytest.raises(pexpect.TIMEOUT, match=r"(?s)no TINYLLM_READY within .*this boot was stopped\. Log .*last lines"):
        dut.generate(long_prompt, k=8, teacher_forced=True, timeout=0.001)
    assert dut.ended and not dut.alive
    dut.close()
