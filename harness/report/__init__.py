"""Step 7, report: the Markdown reports of a run (markdown) and the modelled ESP32-CAM speed
from the counts a target measured (board)."""
