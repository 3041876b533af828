"""Tables, plots and reports of what quantization costs."""
