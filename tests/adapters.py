"""LoRA adapters made in the test run, with random weights so that they visibly change the replies.

`make_tiny_adapter` builds on a base folder (the session's tiny random Llama, `tiny_model_dir`);
`make_builtin_adapter` on the built-in model (modelhub/builtin/chitchat), the one a real vLLM and a
real daphne serve in the live tests. torch, peft and transformers load when one is made."""

from tests import ROOT

BUILTIN = ROOT / "modelhub" / "builtin" / "chitchat"


def make_tiny_adapter(base_dir, folder, seed, target_modules=("q_proj", "v_proj")):
    """A rank-4 LoRA on `base_dir` with random (non-zero) weights, so it visibly changes the output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=list(target_modules), init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(folder)
    return folder


def make_builtin_adapter(folder, seed):
    """A rank-8 LoRA on the built-in model's attention projections, B drawn at random so that it changes
    the replies."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(BUILTIN, dtype=torch.float32)
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
    )
    model = get_peft_model(base, config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.15)
    model.save_pretrained(folder)
    return folder
