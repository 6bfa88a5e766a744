"""Training: the paper's three stages (recipe.py) and LoRA glue (lora.py)."""
