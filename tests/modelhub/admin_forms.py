"""What the model admin's add form takes (modelhub/admin.py), filled in for a transformers model."""


def add_form(source, **extra):
    data = {
        "name": "new-model",
        "display_name": "",
        "backend": "transformers",
        "source": str(source),
        "revision": "",
        "dtype": "float32",
        "device": "cpu",
        "quantization": "none",
        "compute_dtype": "auto",
        "chat_template": "",
        "reply_parts": "auto",
        "visibility": "all",
        "context_length": "",
        "system_prompt": "",
        "temperature": "0.7",
        "top_p": "0.95",
        "top_k": "50",
        "max_new_tokens": "64",
        "repetition_penalty": "1.0",
        "enabled": "on",
        "connect_timeout": "5",
        "read_timeout": "60",
    }
    data.update(extra)
    return data
