"""Step 6, compare: what the firmware must print (reference: HF PyTorch float32; emulate: the
int8 scheme in NumPy, bit for bit), how close it must be (compare: one verdict per precision)
and the budgets it must fit (budgets)."""
