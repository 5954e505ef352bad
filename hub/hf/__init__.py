"""The Hugging Face Hub protocol, so huggingface_hub, the hf CLI, PEFT and transformers work against Quiver."""
