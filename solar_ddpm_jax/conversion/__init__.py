"""Published PyTorch checkpoints in, shareable safetensors weights out (see solar_ddpm_jax.convert).

    published          the published network: shapes, settings, torch -> Flax key mapping,
                       and the config that builds it
    torch_checkpoint   reading a torch checkpoint file into checked state dicts
    workdir            the model's parameter tree, and writing a workdir that sampling reads
    safetensors_export model.safetensors + config.json out of a workdir and back in
"""
