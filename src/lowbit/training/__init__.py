"""Fine-tuning on a quantized base: peft's LoRA on QuantLinear (``lora``), training examples
(``examples``), losses, the loop with checkpointing and resume (``loop``), the output folder
(``output``), merging by requantizing (``merge``) and ``lowbit.finetune`` (``api``).

Named ``training``, not ``finetune``: a subpackage named like the function would replace
``lowbit.finetune`` by the module on import (as ``pipeline/`` is not ``quantize/``).
"""
