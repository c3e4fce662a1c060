"""Steps 2 and 3, the card: the export of a model to the card's files (export, quant: the int8
scheme and the lm_head proxy; stage: a whole card folder with prompts.txt), reading a weight set
back (weights), the FAT image (fatimage) and writing it to a real card (sdwriter)."""
