"""Model FLOPs utilisation (MFU): the share of an accelerator's peak arithmetic that training achieves.

Training costs about 6 FLOPs per parameter per token (a multiply and an add, forward, and twice that backward) plus
the attention scores and mixing, 12 * n_layer * n_embd * block_size (the PaLM paper's appendix B). MFU is that
times the tokens per second, over the dense peak of the accelerator for the dtype trained in, from the vendors'
data sheets; unknown hardware has no MFU."""
from microgpt.layout import param_count

PEAK_FLOPS = {  # FLOP/s, dense, per GPU: (a fragment of the device's name, dtype) -> peak
    ("H100", "bfloat16"): 989e12, ("H100", "float32"): 67e12, ("H100", "float64"): 67e12,
    ("H200", "bfloat16"): 989e12, ("H200", "float32"): 67e12, ("H200", "float64"): 67e12,
    ("A100", "bfloat16"): 312e12, ("A100", "float32"): 19.5e12, ("A100", "float64"): 19.5e12,
}


def flops_per_token(cfg):
    """Training FLOPs per token of a model."""
    return 6 * param_count(cfg) + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size


def mfu(tokens_per_second, cfg, device_name, dtype, devices=1):
    """The share of the peak of `devices` accelerators named `device_name` that training at tokens_per_second (the
    whole batch's, which the devices share) achieves in `dtype`; None for hardware not in PEAK_FLOPS."""
    peak = next((flops for (gpu, kind), flops in PEAK_FLOPS.items() if gpu in device_name and kind == dtype), None)
    return tokens_per_second * flops_per_token(cfg) / (peak * devices) if peak else None
