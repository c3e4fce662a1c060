# Debian's Xtensa lx106 cross compiler (gcc-xtensa-lx106) with picolibc, bare metal.
set(CMAKE_SYSTEM_NAME Generic)
set(CMAKE_SYSTEM_PROCESSOR xtensa)
set(CMAKE_C_COMPILER xtensa-lx106-elf-gcc)
set(CMAKE_ASM_COMPILER xtensa-lx106-elf-gcc)
set(CMAKE_AR xtensa-lx106-elf-ar)
set(CMAKE_RANLIB xtensa-lx106-elf-ranlib)
set(CMAKE_TRY_COMPILE_TARGET_TYPE STATIC_LIBRARY)
set(PICOLIBC_SPECS /usr/lib/xtensa-lx106-elf/picolibc.specs)
# -mtext-section-literals keeps literals beside their code ("literal placed after use" otherwise);
# -mlongcalls because the image spans more than a call0's reach.
set(CMAKE_C_FLAGS_INIT "--specs=${PICOLIBC_SPECS} -mtext-section-literals -mlongcalls -ffunction-sections -fdata-sections")
set(CMAKE_ASM_FLAGS_INIT "-mtext-section-literals -mlongcalls")
set(CMAKE_EXE_LINKER_FLAGS_INIT "-nostartfiles -Wl,--gc-sections")  # the specs come with the C flags
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
