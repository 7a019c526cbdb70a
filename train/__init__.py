"""Training stage: QLoRA (bitsandbytes NF4 + peft LoRA) with an explicit loop, chat formatting and evaluation."""
