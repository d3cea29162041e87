"""What is asked and what is loaded: the model config and its entries (config, selection), a validated request
(params, sweeps, lora_files), the backends that load each entry's weights (backends/), the load itself (loading,
load_report; attention and sage_attention: the attention kernel per GPU), LoRA adapters (lora), the speed caches
(compile_cache, step_cache and cache_schedule, the steps it computed) and the checkpoints fluxnb builds itself (tiny,
synthetic, synthetic_lora)."""
