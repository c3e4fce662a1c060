# What every CMake build of the core outside ESP-IDF shares (ports/linux, ports/xtensa-sim,
# fuzz): C11 without extensions, and TINYLLM_WARNINGS (warnings as errors) for the core and
# the port's own sources. Include it after project().
set(CMAKE_C_STANDARD 11)
set(CMAKE_C_STANDARD_REQUIRED ON)
set(CMAKE_C_EXTENSIONS OFF)
set(TINYLLM_WARNINGS -Wall -Wextra -Wpedantic -Wshadow -Wconversion -Wno-sign-conversion -Werror)
