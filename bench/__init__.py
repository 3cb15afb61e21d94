"""adaptlang benchmark suite against PEFT and the bare base model (``python -m bench``)."""
