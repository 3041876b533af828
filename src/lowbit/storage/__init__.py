"""Storage: lowbit's checkpoint folders, safetensors headers, streaming shards and atomic writes."""
