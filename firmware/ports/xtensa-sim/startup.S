/*
 * Start-up for QEMU's `-M sim -cpu lx106` (a generic Xtensa core, call0 ABI, no FPU).
 *
 * The CPU starts at the reset vector 0x50000000 (the sim's system ROM), not at the ELF
 * entry, so the first instructions live in section .reset placed there by sim.ld.
 * Exception vectors point into our own table (VECBASE) so that a fault becomes a
 * clear error line and an exit, not a jump into unmapped memory and a hang.
 */
    .section .reset, "ax"
    .global _reset
_reset:
    j       _boot
    .align  4
    .literal_position
_boot:
    movi    a0, 0x2F            /* PS: UM=1, EXCM=0, INTLEVEL=15 (no interrupts are used) */
    wsr.ps  a0
    movi    a0, tl_sim_vectors
    wsr.vecbase a0
    rsync
    movi    a1, __stack_top
    movi    a0, tl_sim_start    /* C: zero .bss, run, exit through semihosting */
    callx0  a0
1:  j       1b

/* Vector table: offsets from the lx106 configuration (VECBASE + 0x10 debug/level 2,
 * 0x20 NMI, 0x30 kernel, 0x50 user, 0x70 double exception). */
    .section .vectors, "ax"
    .align  1024
    .global tl_sim_vectors
tl_sim_vectors:                 /* each stub: a2 = vector id, a4 = the pc that vector saved */
    .org    0x10
    movi    a2, 2
    rsr.epc2 a4
    j       .Lfatal_common
    .org    0x20
    movi    a2, 3
    rsr.epc3 a4
    j       .Lfatal_common
    .org    0x30
    movi    a2, 1
    rsr.epc1 a4
    j       .Lfatal_common
    .org    0x50
    movi    a2, 0
    rsr.epc1 a4
    j       .Lfatal_common
    .org    0x70
    movi    a2, 4
    rsr.depc a4
    j       .Lfatal_common
    .align  4
    .literal_position
.Lfatal_common:                 /* cause and faulting address from special registers */
    rsr.exccause a3
    rsr.excvaddr a5
    movi    a1, __stack_top     /* the fault may have come from a bad stack */
    movi    a0, tl_sim_fatal
    callx0  a0
1:  j       1b

    .text
    .align  4
/* long tl_sim_simcall(long nr, long a, long b, long c): Xtensa ISS semihosting call.
 * a2 = call number, a3..a5 = arguments; result in a2, errno in a3. */
    .global tl_sim_simcall
tl_sim_simcall:
    simcall
    ret

/* void tl_sim_spin(unsigned n): exactly 2*n instructions (for CCOUNT calibration). */
    .global tl_sim_spin
tl_sim_spin:
1:  addi    a2, a2, -1
    bnez    a2, 1b
    ret

/* uint32_t tl_sim_ccount(void) */
    .global tl_sim_ccount
tl_sim_ccount:
    rsr.ccount a2
    ret
