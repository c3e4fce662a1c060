@echo off
rem Build the Tiny-LLM app for the ESP32-CAM, flash it and open the serial monitor (Windows).
rem
rem   Open the "ESP-IDF 5.4 CMD" shortcut (or run %IDF_PATH%\export.bat), then:
rem   ci\flash_esp32.bat COM5 [float32^|int8]
rem
rem Put the card image on the micro-SD card first. In the monitor type e.g. gen 1 450 263 n=16; Ctrl-] quits.
setlocal
set "PORT=%~1"
if "%PORT%"=="" set "PORT=%ESPPORT%"
set "PRECISION=%~2"
if "%PRECISION%"=="" set "PRECISION=float32"
if "%PORT%"=="" (
  echo usage: %~nx0 PORT [float32^|int8]   ^(or set ESPPORT^)
  exit /b 2
)
if /i not "%PRECISION%"=="float32" if /i not "%PRECISION%"=="int8" (
  echo precision must be float32 or int8, not "%PRECISION%"
  exit /b 2
)
where idf.py >nul 2>nul
if errorlevel 1 (
  echo idf.py not found: install ESP-IDF v5.4 and run export.bat first
  exit /b 2
)
rem One build serves both precisions: the firmware boots float32; "load int8" switches.
set "CONFIG=board"
if /i "%PRECISION%"=="int8" echo the firmware boots float32: type "load int8" in the monitor ^(or put it in prompts.txt^)
set "BUILD=build_esp32_%CONFIG%"
cd /d "%~dp0..\firmware" || exit /b 2
call idf.py -B "%BUILD%" -D "SDKCONFIG=%BUILD%/sdkconfig" -D "SDKCONFIG_DEFAULTS=sdkconfig.defaults;sdkconfig.ci.%CONFIG%" -D IDF_TARGET=esp32 build || exit /b 1
call idf.py -B "%BUILD%" -D "SDKCONFIG=%BUILD%/sdkconfig" -p %PORT% flash || exit /b 1
rem The flash tier (docs/contracts.md 1b): set TINYLLM_CARD_DIR to the card folder (an export) and the
rem precision's tier is made with the harness's Python (%PYTHON%, default python) and written to 0xd0000.
if defined TINYLLM_CARD_DIR (
  if not defined PYTHON set "PYTHON=python"
  pushd "%~dp0.." || exit /b 2
  call %PYTHON% -m harness.cli flash-tier --card "%TINYLLM_CARD_DIR%" --precision %PRECISION% --out "build\flash-tier-%PRECISION%.bin" || exit /b 1
  call esptool.py --chip esp32 -p %PORT% write_flash 0xd0000 "build\flash-tier-%PRECISION%.bin" || exit /b 1
  popd
)
call idf.py -B "%BUILD%" -D "SDKCONFIG=%BUILD%/sdkconfig" -p %PORT% monitor
